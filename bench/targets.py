"""The performance targets, checked against this run's medians: vnet against the OpenSSH chain.

Plaintext first (path vnet); then the same table over TLS (path vnet-tls, nodes reaching the
route over TLS), where the issue's bar is throughput >= 1.0x the ssh chain. The TLS latency and
connection-rate rows are reported without a bar: the issue sets none for them.

A row is "not measured" when this run lacks what it needs (no ssh or vnet-tls path, --no-idle,
a size that was not reached); it is never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench import report
from bench.idle import IdleResult

# (path, metric key, what, higher is better, PATH/ssh must be >= (higher) or <= this; None:
# reported without a bar)
RATIO_TARGETS: list[tuple[str, str, str, bool, float | None]] = [
    ("vnet", "bulk", "bulk throughput, 1 connection", True, 1.5),
    ("vnet", "bulk8", "aggregate throughput, 8 concurrent", True, 1.5),
    ("vnet", "bulk64", "aggregate throughput, 64 concurrent", True, 1.5),
    ("vnet", "ping_p50", "1-byte ping-pong p50", False, 1.0),
    ("vnet", "ping_p99", "1-byte ping-pong p99", False, 1.0),
    ("vnet", "serial_rate", "new tunnels/s, 1 at a time", True, 3.0),
    ("vnet", "parallel_rate", "new tunnels/s, 16 in parallel", True, 3.0),
]
TLS_TARGETS: list[tuple[str, str, str, bool, float | None]] = [
    ("vnet-tls", "bulk", "bulk throughput, 1 connection, TLS", True, 1.0),
    ("vnet-tls", "bulk8", "aggregate throughput, 8 concurrent, TLS", True, 1.0),
    ("vnet-tls", "bulk64", "aggregate throughput, 64 concurrent, TLS", True, 1.0),
    ("vnet-tls", "ping_p50", "1-byte ping-pong p50, TLS", False, None),
    ("vnet-tls", "ping_p99", "1-byte ping-pong p99, TLS", False, None),
    ("vnet-tls", "serial_rate", "new tunnels/s, 1 at a time, TLS", True, None),
    ("vnet-tls", "parallel_rate", "new tunnels/s, 16 in parallel, TLS", True, None),
]
IDLE_KIB = 30.0
LOADED_P99_US = 5000.0


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def _ratio_rows(
    results: report.Results,
    wanted: Sequence[tuple[str, str, str, bool, float | None]],
    bulk_mib: int,
) -> list[list[str]]:
    body: list[list[str]] = []
    for path, key, what, higher, bar in wanted:
        per_path = results.get(key, {})
        mine = report.median(per_path.get(path, []))
        ssh = report.median(per_path.get("ssh", []))
        if key == "bulk":
            what += f" ({bulk_mib} MiB)"
        if bar is None:
            target = f"{path}/ssh, no bar"
        else:
            target = f"{path}/ssh {'>=' if higher else '<='} {bar:.1f}x"
        if mine is None or ssh is None or ssh == 0:
            body.append([what, target, "-", _verdict(None)])
            continue
        ratio = mine / ssh
        shown = f"{ratio:.2f}x ({mine:,.0f} vs {ssh:,.0f})"
        if bar is None:
            body.append([what, target, shown, "reported"])
        else:
            body.append([what, target, shown, _verdict(ratio >= bar if higher else ratio <= bar)])
    return body


def rows(
    results: report.Results, idle: IdleResult | None, idle_sizes: Sequence[int], bulk_mib: int
) -> tuple[list[str], list[list[str]]]:
    body = _ratio_rows(results, RATIO_TARGETS, bulk_mib)
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
    body += _ratio_rows(results, TLS_TARGETS, bulk_mib)
    return ["target", "bar", "measured (vnet or vnet-tls vs ssh)", "verdict"], body
