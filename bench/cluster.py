"""`python -m bench.cluster` (a table of `make bench`): a route cluster's capacity.

For 1, 2 and 3 routes sharing one etcd (harness/etcd.py), each route process pinned to a
core of its own where the machine has them (`taskset`; this one may have fewer cores than
processes, and the table says so), one pair of nodes per route: "home-i" serves the bench
target's sink and echo, "office-i" maps them. Within: office-i is on home-i's route, so a
tunnel passes one route. Across: office-i is on the next route, so every tunnel passes two
routes (the peer service between them). All pairs run at once; the rows are the aggregate
new tunnels per second (a connection and a one-byte round trip each, 16 in flight per pair)
and the aggregate MB/s of a bulk upload (4 connections per pair), medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.client import (
    Address,
    concurrent_bulk,
    parallel_connections,
    probe_echo,
    probe_listen,
    probe_sink,
)
from bench.procs import HOST, BenchError, Children, command, free_port, wait_ready
from bench.report import markdown_table, plain_table

LOG_LEVEL = "warning"
PARALLEL = 16
BULK_CONNS = 4
# Per pair; quick: a smoke run.
FULL = (2000, 256)  # tunnels, MiB of bulk
QUICK = (300, 32)
DEADLINE = 300.0


@dataclass
class Pair:
    sink: Address
    echo: Address


def _taskset(core: int) -> list[str]:
    cores = os.cpu_count() or 1
    if cores < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core % cores)]


def _start_cluster(
    children: Children, workdir: Path, etcd_url: str, routes: int, across: bool, tag: str
) -> list[Pair]:
    token = secrets.token_urlsafe(16)
    ports = [free_port() for _ in range(routes)]
    level = ["--log-level", LOG_LEVEL]
    for i, port in enumerate(ports):
        ini = workdir / f"{tag}-route{i}.ini"
        ini.write_text(
            f"[route]\nip={HOST}\nport={port}\nmax_tunnels_per_node=4096\n"
            f"[cluster]\netcd={etcd_url}\nroute_id={tag}-r{i}\nadvertise={HOST}:{port}\n"
            f"token={token}\n"
        )
        children.start(
            f"{tag}-route{i}", [*_taskset(i), *command("vnet-route", ["route"]), *level, str(ini)]
        )
    for i, port in enumerate(ports):
        wait_ready(f"route {i}", lambda p=port: probe_listen((HOST, p)), children)  # type: ignore[misc]
    sink_port, echo_port = free_port(), free_port()
    children.start(
        f"{tag}-target",
        [sys.executable, "-m", "bench.target", "--sink-port", str(sink_port),
         "--echo-port", str(echo_port)],
    )  # fmt: skip
    wait_ready("target", lambda: probe_echo((HOST, echo_port)), children)
    pairs = []
    for i in range(routes):
        home_route = ports[i]
        office_route = ports[(i + 1) % routes] if across else home_route
        use_sink, use_echo = free_port(), free_port()
        group = f"{tag}{i}"
        home = workdir / f"{tag}-home{i}.ini"
        home.write_text(
            f"[route]\nip={HOST}\nport={home_route}\n[vnet]\nname=home{i}\ngroup={group}\n"
            f"[serve.sink]\nserveid=701\nport={sink_port}\n"
            f"[serve.echo]\nserveid=702\nport={echo_port}\n"
        )
        office = workdir / f"{tag}-office{i}.ini"
        office.write_text(
            f"[route]\nip={HOST}\nport={office_route}\n[vnet]\nname=office{i}\ngroup={group}\n"
            f"[use.sink]\nserveid=701\nport={use_sink}\n"
            f"[use.echo]\nserveid=702\nport={use_echo}\n"
        )
        for role, ini in (("home", home), ("office", office)):
            children.start(f"{tag}-{role}{i}", [*command("vnet", []), *level, str(ini)])
        pair = Pair((HOST, use_sink), (HOST, use_echo))
        wait_ready(f"pair {i}", lambda p=pair: probe_echo(p.echo), children, 60)  # type: ignore[misc]
        wait_ready(f"pair {i}", lambda p=pair: probe_sink(p.sink), children, 60)  # type: ignore[misc]
        pairs.append(pair)
    return pairs


def _all_at_once(pairs: Sequence[Pair], work: Callable[[Pair], object]) -> float:
    """Run work for every pair in its own thread; the wall time until the last ends."""
    errors: list[BaseException] = []

    def run(pair: Pair) -> None:
        try:
            work(pair)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in pairs]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    if errors:
        raise BenchError(f"a pair failed: {errors[0]!r}")
    return time.perf_counter() - start


def measure(pairs: Sequence[Pair], tunnels: int, bulk_mib: int) -> tuple[float, float]:
    """(new tunnels/s, MB/s), both aggregate over every pair at once."""
    took = _all_at_once(pairs, lambda p: parallel_connections(p.echo, tunnels, PARALLEL, DEADLINE))
    rate = tunnels * len(pairs) / took
    nbytes = bulk_mib * 1024 * 1024
    took = _all_at_once(pairs, lambda p: concurrent_bulk(p.sink, nbytes, BULK_CONNS, DEADLINE))
    return rate, nbytes * len(pairs) / took / 1e6


HEADER = ["routes", "tunnels pass", "new tunnels/s (all pairs)", "MB/s (all pairs)"]


def rows(routes: Sequence[int], quick: bool, repeat: int) -> list[list[str]]:
    """The table's body: a fresh etcd, then for each size a fresh cluster per layout."""
    from harness.etcd import EtcdServer

    tunnels, bulk_mib = QUICK if quick else FULL
    body: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="vnet-bench-cluster-") as scratch:
        workdir = Path(scratch)
        etcd = EtcdServer(workdir)
        asyncio.run(etcd.start())
        try:
            for n in routes:
                for across in (False, True) if n > 1 else (False,):
                    tag = f"n{n}{'x' if across else 'w'}"
                    children = Children(workdir)
                    try:
                        pairs = _start_cluster(children, workdir, etcd.url, n, across, tag)
                        got = [measure(pairs, tunnels, bulk_mib) for _ in range(repeat)]
                    finally:
                        children.stop_all()
                    rate = statistics.median(g[0] for g in got)
                    mbs = statistics.median(g[1] for g in got)
                    where = "across two routes" if across else "within one route"
                    body.append([str(n), where, f"{rate:,.0f}", f"{mbs:,.1f}"])
                    print(
                        f"cluster: {n} route(s), {where}: {rate:,.0f} tunnels/s, {mbs:,.1f} MB/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            asyncio.run(etcd.stop())
    return body


def title(routes: Sequence[int], quick: bool, repeat: int) -> str:
    tunnels, bulk_mib = QUICK if quick else FULL
    cores = os.cpu_count() or 1
    pinned = (
        f"each route pinned with taskset to core i mod {cores}"
        if _taskset(0)
        else "not pinned (taskset missing or one core)"
    )
    return (
        f"route cluster (bench/cluster.py: {', '.join(map(str, routes))} routes on one etcd, a "
        f"home and an office node per route, all pairs at once; {tunnels} tunnels, "
        f"{PARALLEL} in flight, and {bulk_mib} MiB over {BULK_CONNS} connections per pair; "
        f"median of {repeat}; {cores} core(s), {pinned})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--routes", default="1,2,3", help="cluster sizes (default 1,2,3)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (default 3)")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.routes.split(",") if x.strip()]
    try:
        body = rows(sizes, args.quick, args.repeat)
    except BenchError as exc:
        print(f"bench.cluster: {exc}", file=sys.stderr)
        return 1
    table = markdown_table(HEADER, body) if args.markdown else plain_table(HEADER, body)
    print(f"{title(sizes, args.quick, args.repeat)}\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
