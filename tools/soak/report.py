"""The printed report of a soak run and its verdict."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tools.soak.fleet import OFFICES
from tools.soak.load import MIB

if TYPE_CHECKING:
    from tools.soak.run import Quiet, Soak


ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def revision() -> str:
    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=10)
        return run.stdout.decode().strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "vnet")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head} + uncommitted changes in vnet/" if dirty else head


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def summary(soak: Soak, first: Quiet, last: Quiet) -> tuple[str, list[str]]:
    """The printed report, and what failed (empty: the run passed)."""
    w, p, ds = soak.work, soak.probes, soak.disruptions
    lost = w.lost + p.lost + len(soak.services.lost)
    why = ", ".join(f"{n} {k}" for k, n in w.why.most_common()) or "none"
    recoveries = [d.recovery for d in ds if d.recovery is not None]
    failures = [(s0, s1) for s0, s1, ok in soak.spans if not ok]
    outside = sum(not any(d.overlaps(*f) for d in ds) for f in failures)
    rows = [
        ("machine", machine()),
        ("vnet revision at the start", soak.revision),
        (
            "command",
            f"python -m tools.soak --minutes {soak.minutes:g} --seed {soak.seed}"
            + (" --cluster" if soak.cluster else ""),
        ),
        ("load average before the run", soak.load),
        ("duration", f"{soak.duration:.1f} s"),
        ("client connections tried", f"{w.tried}"),
        ("  completed byte-exact", f"{w.completed}"),
        ("  failed, detected", f"{w.failed} ({why})"),
        ("  failed outside a disruption", f"{outside}"),
        ("  LOST", f"{w.lost}"),
        ("recovery probes", f"{p.tried} tried, {p.completed} completed, {p.lost} LOST"),
        ("exchange service: wrong upstream", f"{len(soak.services.lost)} LOST"),
        ("  upstream cut by home's kill", f"{soak.services.cut} (the kernel's FIN: expected)"),
        ("LOST in all", f"{lost}"),
        ("bytes moved (completed, both ways)", f"{(w.moved + p.moved) / MIB:,.0f} MiB"),
        ("disruptions", f"{len(ds)}, {len(recoveries)} recovered"),
        ("max recovery", f"{max(recoveries):.1f} s" if recoveries else "-"),
        ("processes that died unasked", f"{len(soak.fleet.crashes)}"),
        ("routes", ", ".join(soak.routes) + (" (a cluster on one etcd)" if soak.cluster else "")),
        ("route tunnels open when quiet", f"{first[1]} at the start, {last[1]} at the end"),
        (
            "exit status at the end (SIGTERM)",
            ", ".join(f"{r} {c}" for r, c in soak.final_exits.items()),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["vnet soak", *(f"{k:<{width}}  {v}" for k, v in rows), ""]
    lines.append(
        f"{'#':>2}  {'at':>7}  {'disruption':<26}  exit  recovered  in flight: ok/failed"
        "  failed in all  before it: route tunnels, fds "
        f"({'/'.join((*soak.routes, 'home', *OFFICES))})"
    )
    for n, d in enumerate(ds, 1):
        took = "NO" if d.recovery is None else f"{d.recovery:.1f} s"
        caught = [ok for s0, s1, ok in soak.spans if s0 < d.since < s1]
        flight = f"{sum(caught)}/{len(caught) - sum(caught)}"
        failed = sum(d.overlaps(*f) for f in failures)
        fds = "/".join(str(d.quiet[0].get(r, (-1,))[0]) for r in (*soak.routes, "home", *OFFICES))
        lines.append(
            f"{n:>2}  {d.at:>5.1f} s  {d.what:<26}  {d.exit!s:>4}  {took:>9}  {flight:>19}"
            f"  {failed:>13}  {d.quiet[1]:>24}, {fds}"
        )
    lines += [
        "",
        "RSS and fds of each process at a quiet moment (no client connection open), at the start"
        " and at the end:",
        f"{'process':<9}  {'peak RSS':>9}  {'RSS start':>9}  {'RSS end':>9}  {'fds start':>9}"
        f"  {'fds end':>7}  {'pid start':>9}  {'pid end':>9}  restarts",
    ]
    for role in (*soak.routes, "home", *OFFICES):
        peak = soak.fleet.peak_rss.get(role, (0, 0))[0]
        (f0, p0, r0), (f1, p1, r1) = (q[0].get(role, (-1, 0, 0)) for q in (first, last))
        lines.append(
            f"{role:<9}  {mib(peak):>9}  {mib(r0):>9}  {mib(r1):>9}  {f0:>9}  {f1:>7}"
            f"  {p0:>9}  {p1:>9}  {soak.fleet.started[role] - 1}"
        )
    lines.append(f"{'soak':<9}  {mib(soak.own_rss):>9}  (this process: clients and services)")
    for title, items in (
        ("LOST", soak.lost + soak.services.lost),
        ("clean EOF before the full answer", soak.truncated),
        ("died unasked", soak.fleet.crashes),
    ):
        if items:
            lines += ["", f"{title} (first 10 of {len(items)}):", *(f"  {i}" for i in items[:10])]
    verdict = [f"{lost} LOST"] if lost else []
    if len(recoveries) < len(ds):
        verdict.append(f"{len(ds) - len(recoveries)} disruption(s) not recovered in time")
    if soak.fleet.crashes:
        verdict.append(f"{len(soak.fleet.crashes)} process(es) died unasked")
    leaks = [q[1] for q in (first, *(d.quiet for d in ds), last) if q[1] != 0]
    if leaks:
        verdict.append(f"the route held tunnels with no client connected ({leaks})")
    result = "FAIL: " + "; ".join(verdict) if verdict else "PASS"
    lines += ["", f"result: {result}{' (interrupted)' if soak.interrupted.is_set() else ''}"]
    return "\n".join(lines), verdict
