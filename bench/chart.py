"""Optional PNG chart of a run: throughput against concurrency, and latency percentiles.

Needs matplotlib, which is not a dependency of vnet (`.venv/bin/pip install matplotlib`);
without it the chart is skipped with a note and the rest of the run is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench import report

LATENCIES = [
    ("ping_p50", "p50"),
    ("ping_p99", "p99"),
    ("loaded_p50", "p50 under bulk"),
    ("loaded_p99", "p99 under bulk"),
]


def draw(
    out: Path,
    results: report.Results,
    paths: Sequence[str],
    concurrency: Sequence[int],
    title: str,
) -> str:
    """Write the chart; returns what happened, for the run's notes."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return f"chart: skipped, matplotlib is not installed (pip install matplotlib) for {out}"
    levels = [1, *concurrency]
    keys = ["bulk", *(f"bulk{n}" for n in concurrency)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    for name in paths:
        values = [report.median(results.get(k, {}).get(name, [])) for k in keys]
        points = [(c, v) for c, v in zip(levels, values, strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            left.plot(xs, ys, marker="o", linewidth=2, label=name)
    left.set_xscale("log")
    left.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    left.yaxis.set_major_formatter(plain)
    left.yaxis.set_minor_formatter(plain)
    left.tick_params(axis="y", which="minor", labelsize=7)
    left.set_xticks(levels, [str(c) for c in levels])
    left.set_xlabel("concurrent bulk connections")
    left.set_ylabel("total throughput (MB/s, log scale)")
    left.set_title("Throughput against concurrency")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="center right")

    width = 0.8 / len(LATENCIES)
    for i, (key, label) in enumerate(LATENCIES):
        where: list[float] = []
        heights: list[float] = []
        for j, name in enumerate(paths):
            value = report.median(results.get(key, {}).get(name, []))
            if value is not None:
                where.append(j + (i - (len(LATENCIES) - 1) / 2) * width)
                heights.append(value)
        bars = right.bar(where, heights, width, label=label)
        right.bar_label(
            bars, labels=[f"{y:,.0f}" for y in heights], fontsize=6, rotation=90, padding=2
        )
    right.set_xticks(range(len(paths)), list(paths))
    right.set_yscale("log")
    right.set_ylabel("1-byte round trip (us, log scale)")
    right.set_title("Ping-pong latency, unloaded and next to a bulk transfer")
    right.grid(True, axis="y", which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"chart: wrote {out}"
