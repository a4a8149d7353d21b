"""Issue 7's targets, checked against this run's medians: vnet against the OpenSSH chain.

A row is "not measured" when this run lacks what it needs (no ssh path, --no-idle, a size that
was not reached); it is never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import report
from bench.idle import IdleResult

# (metric key, what, vnet/ssh must be >= (True) or <= (False) this)
RATIO_TARGETS: list[tuple[str, str, bool, float]] = [
    ("bulk", "bulk throughput, 1 connection", True, 1.5),
    ("bulk8", "aggregate throughput, 8 concurrent", True, 1.5),
    ("bulk64", "aggregate throughput, 64 concurrent", True, 1.5),
    ("ping_p50", "1-byte ping-pong p50", False, 1.0),
    ("ping_p99", "1-byte ping-pong p99", False, 1.0),
    ("serial_rate", "new tunnels/s, 1 at a time", True, 3.0),
    ("parallel_rate", "new tunnels/s, 16 in parallel", True, 3.0),
]
IDLE_KIB = 30.0
LOADED_P99_US = 5000.0


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def rows(
    results: report.Results, idle: IdleResult | None, idle_sizes: Sequence[int], bulk_mib: int
) -> tuple[list[str], list[list[str]]]:
    body: list[list[str]] = []
    for key, what, higher, bar in RATIO_TARGETS:
        per_path = results.get(key, {})
        vnet = report.median(per_path.get("vnet", []))
        ssh = report.median(per_path.get("ssh", []))
        if key == "bulk":
            what += f" ({bulk_mib} MiB)"
        target = f"vnet/ssh {'>=' if higher else '<='} {bar:g}x"
        if vnet is None or ssh is None or ssh == 0:
            body.append([what, target, "-", _verdict(None)])
            continue
        ratio = vnet / ssh
        shown = f"{ratio:.2f}x ({vnet:,.0f} vs {ssh:,.0f})"
        body.append([what, target, shown, _verdict(ratio >= bar if higher else ratio <= bar)])
    for size in (1000, 10_000):
        kib = idle.route_kib(size) if idle is not None else None
        what = f"route memory per idle tunnel, {size:,} tunnels"
        target = f"<= {IDLE_KIB:g} KB"
        if kib is None:
            reached = "" if idle is None or size not in idle_sizes else " (size not reached)"
            body.append([what, target, "-" + reached, _verdict(None)])
        else:
            # VmRSS is in KiB; 1 KiB > 1 KB, so this errs on the strict side.
            body.append([what, target, f"{kib:.1f} KiB", _verdict(kib <= IDLE_KIB)])
    p99 = report.median(results.get("loaded_p99", {}).get("vnet", []))
    what = "ping-pong p99 while another tunnel runs bulk"
    target = f"<= {LOADED_P99_US / 1000:g} ms"
    if p99 is None:
        body.append([what, target, "-", _verdict(None)])
    else:
        body.append([what, target, f"{p99 / 1000:.2f} ms", _verdict(p99 <= LOADED_P99_US)])
    body.append(["the same with TLS between nodes and route", "-", "-", "not measured yet"])
    return ["target", "bar", "measured (vnet vs ssh)", "verdict"], body
