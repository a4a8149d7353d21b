"""Memory that stalled readers pin (vnet only).

A stalled reader: a client that keeps sending into vnet's echo use and never reads the echoes.
Its tunnel fills every buffer on the way there and back (sockets, asyncio, gRPC's stream windows)
until the client's writes stop. This opens N such clients at once, waits until none of them has
sent anything for a while (every buffer is full), and reads the VmRSS of the route and the two
nodes: the growth over the idle figure, per stalled tunnel. Past the route's memory budget
([route] tunnel_memory and tunnel_memory_per_node, 512 and 256 MiB by default) the route resets
the longest-stalled tunnels; those are counted, and the route's total stays near its budget
however many stall. Then it closes them and waits (bounded) until the nodes released their
sockets.

`python -m bench.stalled` runs it alone against a fresh route and two nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Address
from bench.idle import ROLES, rss_kib

REPO = Path(__file__).resolve().parent.parent
COUNTS = (1, 50)
BLOCK = 256 * 1024
# Nothing sent by any client for this long: every buffer on the way is full.
QUIET = 2.0
# Far longer than filling takes here (a second or two); far slower is a bug.
DEADLINE = 60.0


@dataclass
class StalledResult:
    tunnels: int
    # Bytes the clients got in before they stalled, in total.
    sent: int = 0
    # Tunnels the route reset for its memory budget ([route] tunnel_memory).
    reset: int = 0
    took: float = 0.0
    # MiB of VmRSS growth per stalled tunnel, by role.
    per_tunnel: dict[str, float] = field(default_factory=dict)
    # MiB of VmRSS growth in total, by role.
    total: dict[str, float] = field(default_factory=dict)


async def _stall(addrs: Address, count: int, pids: dict[str, int]) -> StalledResult:
    res = StalledResult(count)
    base = {role: rss_kib(pid) for role, pid in pids.items()}
    block = bytes(BLOCK)
    last_progress = time.monotonic()
    writers: list[asyncio.StreamWriter] = []

    async def push() -> None:
        nonlocal last_progress
        _, writer = await asyncio.open_connection(*addrs)
        writers.append(writer)
        try:
            while True:
                writer.write(block)
                await writer.drain()
                res.sent += BLOCK
                last_progress = time.monotonic()
        except ConnectionError:
            # The route's budget reset it: counted, not a failure (docs/DESIGN.md, "Memory").
            res.reset += 1

    start = time.monotonic()
    pushers = [asyncio.ensure_future(push()) for _ in range(count)]
    try:
        while time.monotonic() - last_progress < QUIET or len(writers) < count:
            if time.monotonic() - start > DEADLINE:
                raise TimeoutError(f"{count} stalled tunnels kept moving for {DEADLINE:.0f} s")
            failed = [p for p in pushers if p.done() and p.exception() is not None]
            if failed:
                failed[0].result()  # raises what ended it
            await asyncio.sleep(0.1)
        res.took = time.monotonic() - start
        for role, pid in pids.items():
            grown = (rss_kib(pid) - base[role]) / 1024
            res.total[role] = grown
            res.per_tunnel[role] = grown / count
    finally:
        for pusher in pushers:
            pusher.cancel()
        await asyncio.gather(*pushers, return_exceptions=True)
        for writer in writers:
            writer.close()
    return res


def run_stalled(echo: Address, count: int, pids: dict[str, int]) -> StalledResult:
    return asyncio.run(_stall(echo, count, pids))


def run_fresh(count: int, workdir: Path, env: dict[str, str]) -> StalledResult:
    """count stalled tunnels through a route and two nodes started for this alone.

    Fresh processes: memory that an earlier test freed inside a process would be reused by
    the new buffers and hide their cost.
    """
    from bench.paths import start_paths
    from bench.procs import Children

    children = Children(workdir, env)
    try:
        path = start_paths(["vnet"], children, workdir).paths["vnet"]
        pids = {role: path.processes[role] for role in ROLES}
        res = run_stalled(path.echo, count, pids)
        children.check()
        return res
    finally:
        children.stop_all()


def table(results: Sequence[StalledResult]) -> tuple[list[str], list[list[str]]]:
    header = [
        "stalled tunnels",
        "MiB in before stalling",
        *(f"{r.removeprefix('vnet ')} MiB/tunnel" for r in ROLES),
        "route MiB total",
        "reset by the budget",
    ]
    body = [
        [
            f"{r.tunnels:,}",
            f"{r.sent / 2**20:,.0f}",
            *(f"{r.per_tunnel[role]:.1f}" for role in ROLES),
            f"{r.total['vnet route']:.0f}",
            f"{r.reset:,}",
        ]
        for r in results
    ]
    return header, body


def describe(r: StalledResult) -> str:
    per = ", ".join(f"{role.removeprefix('vnet ')} {r.per_tunnel[role]:.1f}" for role in ROLES)
    return (
        f"stalled {r.tunnels:>4}: {r.sent / 2**20:,.0f} MiB in, stalled after {r.took:.1f} s; "
        f"MiB per tunnel: {per}; route total +{r.total['vnet route']:.0f} MiB; "
        f"{r.reset} reset by the route's memory budget"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import _raise_fd_limit
    from bench.procs import BenchError

    p = argparse.ArgumentParser(prog="python -m bench.stalled", description=__doc__)
    p.add_argument("--counts", default=",".join(map(str, COUNTS)), help="stalled tunnel counts")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",") if x.strip()]
    _raise_fd_limit()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="vnet-stalled-") as tmp:
            try:
                print(describe(run_fresh(count, Path(tmp), env)), flush=True)
            except (BenchError, OSError) as exc:
                print(f"bench.stalled: {exc}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
