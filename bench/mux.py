"""`python -m bench.mux`: several tunnels on one stream, against one stream per tunnel.

A measurement for issue 15, not part of `make bench` and not a change to vnet. It starts a
real `vnet-route` per variant and round, and two node-like child processes of this module
that join, register and dial with vnet's own `RouteClient`, as `bench.datapath` does, but with
real TCP at both ends: *office* listens on 127.0.0.1 (each accepted socket is one logical
tunnel), *home* connects to the echo target (`bench.target`, a process of its own) for each.

- `aio`: today's shape. A Dial (office) and an Accept (home) per connection, each carried by
  the node's own pump, `vnet.node.tunnel.relay`.
- `mux` (`mux-N`): ONE Dial/Accept tunnel (or N, 1-64) between office and home carrying
  every connection, as inner frames inside vnet's data frames (`bench.mux_proto`): a new
  connection is an open frame, no gRPC call; what queues up while a write is in flight goes
  out in one message.
- `ssh`: the OpenSSH chain of `bench/sshchain.py` (sshd, `ssh -R`, `ssh -L`), and `direct`:
  the target itself, the same workloads in the same run.

The clients are a process of their own (`bench.mux_load`), every reply checked byte for byte.
Per path and round: 1-byte ping-pong on one connection, 50 connections doing 32-byte
request/response back to back (one request at a time, then 16), a new connection per request
50 and 16 at a time, the ping-pong again next to a bulk transfer on another connection
(head-of-line blocking), and for vnet the memory per idle connection (1,000 held open). CPU
is each process's user+system time from /proc (route, office, home; sshd with its
per-connection children, both ssh clients).

    flock /tmp/vnet-bench.lock python -m bench.mux [--repeat 1] [--paths direct,ssh,aio,mux,mux-4]
    python -m bench.mux --tables run1.json run2.json run3.json   (medians and ranges)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import mux_load, sshchain
from bench.client import probe_echo, probe_listen
from bench.datapath import _LOGS, _joined, _line, _read_line, _say, cpu_seconds
from bench.datapath_calls import new_loop
from bench.mux_proto import MuxStream
from bench.procs import (
    HOST,
    BenchError,
    Children,
    command,
    free_port,
    group_cpu_seconds,
    wait_ready,
)
from harness.procs import rss_kib
from vnet.core.pacing import Pacer
from vnet.node.client import OpenTunnel
from vnet.node.tunnel import READER_LIMIT, raise_fd_limit, relay

PATHS = ("direct", "ssh", "aio", "mux", "mux-N")
SERVEID = 801
ROLES = ("office", "route", "home")
TESTS = ("ping", "many", "pipe16", "conns50", "conns16", "hol")


def _is_vnet(name: str) -> bool:
    """aio, mux, or mux-N (N mux streams, 1-64)."""
    count = name.removeprefix("mux-")
    return name in ("aio", "mux") or (count.isdigit() and 1 <= int(count) <= 64)


def _streams(variant: str) -> int:
    """How many mux streams office opens: none for aio (a Dial per connection)."""
    return 0 if variant == "aio" else int(variant.partition("-")[2] or 1)


# --- the two node-like children ------------------------------------------------------------------


async def _home(port: int, variant: str, target: int, fault: str) -> None:
    client = await _joined(port, f"home-{variant}")
    tasks: set[asyncio.Task[None]] = set()
    streams: list[MuxStream] = []

    def start(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # One per node, as the node has: bulk tunnels read less while an interactive one runs.
    pacer = Pacer()

    def opened(stream: MuxStream, tunnel: int) -> None:
        start(_home_logical(stream, tunnel, target))

    events = client.control()
    # The first event is the group's snapshot; the serve is registered after it, as a node does.
    await anext(events)
    await client.register(SERVEID, "echo", HOST, target, "", timeout=mux_load.TIMEOUT)
    _say("ready")
    async for event in events:
        if not isinstance(event, OpenTunnel):
            continue
        call = client.accept(event.tunnel_id)
        if variant == "aio":
            start(_home_aio(call, target, pacer))
        else:
            stream = MuxStream(call, opened, fault)
            stream.done.add_done_callback(_stream_ended)
            streams.append(stream)


async def _home_aio(call: Any, target: int, pacer: Pacer) -> None:
    try:
        reader, writer = await asyncio.open_connection(HOST, target, limit=READER_LIMIT)
    except OSError:
        call.cancel()
        return
    await relay(reader, writer, call, "home", pacer=pacer, local="the service")


async def _home_logical(stream: MuxStream, tunnel: int, target: int) -> None:
    try:
        reader, writer = await asyncio.open_connection(HOST, target, limit=READER_LIMIT)
    except OSError:
        stream.reset(tunnel)
        return
    logical = stream.attach(tunnel, writer)
    if logical is not None:
        await stream.pump(logical, reader)


def _stream_ended(done: asyncio.Future[None]) -> None:
    # A mux stream carries every connection: its end is the run's failure, said loudly.
    error = None if done.cancelled() else done.exception()
    sys.stderr.write(f"a mux stream ended: {error!r}\n")
    os._exit(3)


async def _office(port: int, variant: str) -> None:
    client = await _joined(port, f"office-{variant}")
    # The route drops a session that has not opened its control stream after a while.
    control = asyncio.create_task(_drain(client.control()))
    streams = [MuxStream(client.dial(SERVEID)) for _ in range(_streams(variant))]
    for stream in streams:
        stream.done.add_done_callback(_stream_ended)
    ids = itertools.count(1)
    pacer = Pacer()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not streams:
            await relay(reader, writer, client.dial(SERVEID), "office", pacer=pacer)
            return
        tunnel = next(ids)
        stream = streams[tunnel % len(streams)]
        await stream.pump(stream.open(tunnel, writer), reader)

    # The connection tests keep many handshakes in flight (bench.target says why).
    server = await asyncio.start_server(accepted, HOST, 0, limit=READER_LIMIT, backlog=4096)
    _say(f"ready {server.sockets[0].getsockname()[1]}")
    while not control.done():
        await _line()
        messages = sum(s.counters.messages for s in streams)
        frames = sum(s.counters.frames for s in streams)
        _say("stats " + json.dumps({"messages": messages, "frames": frames}))


async def _drain(events: Any) -> None:
    async for _ in events:
        pass


def _child(role: str, args: argparse.Namespace) -> None:
    # Warnings, and every tunnel reset with its reason (relay says them at INFO), to the log.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("vnet.node.tunnel").setLevel(logging.INFO)
    raise_fd_limit()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    if role == "home":
        main = _home(args.route_port, args.variant, args.target_port, args.fault)
    elif role == "office":
        main = _office(args.route_port, args.variant)
    else:
        main = mux_load.serve()
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        loop.run_until_complete(main)


# --- the parent: route, target, chain, children, and the counters -------------------------------


# The children import bench and vnet from this tree, whatever their working directory.
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _spawn(workdir: Path, name: str, extra: list[str]) -> Any:
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    path = workdir / f"{name}.log"
    with path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.mux", *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
        )
    _LOGS[proc.pid] = path
    return proc


def _ask(proc: Any, line: str, want: str) -> str:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return _read_line(proc, want).removeprefix(want).strip()


def _stop(procs: Sequence[Any]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Tested:
    """One path under test: where its clients connect, and the processes whose CPU counts."""

    name: str
    port: int
    pids: dict[str, int] = field(default_factory=dict)
    # For ssh: sshd serves each connection in a child, so its whole process group counts.
    groups: bool = False
    office: Any = None

    def cpu(self) -> dict[str, float]:
        read = group_cpu_seconds if self.groups else cpu_seconds
        return {role: read(pid) for role, pid in self.pids.items()}


@dataclass
class Run:
    """The run's long-lived parts."""

    workdir: Path
    children: Children
    target: int
    load: Any
    fault: str = ""
    ssh: Tested | None = None
    notes: list[str] = field(default_factory=list)


def _measured(
    run: Run, path: Tested, test: str, rest: str
) -> tuple[dict[str, float], dict[str, float]]:
    """A test of the load child on path: its result, each process's CPU seconds during it, and
    (mux) the office's messages and inner frames written meanwhile."""
    _ask(run.load, f"{test} {path.port} {rest}", "warm")
    stats = json.loads(_ask(path.office, "stats", "stats")) if path.office else {}
    before = path.cpu()
    result = json.loads(_ask(run.load, "go", "done"))
    used = {role: secs - before[role] for role, secs in path.cpu().items()}
    if path.office:
        after = json.loads(_ask(path.office, "stats", "stats"))
        result["messages"] = after["messages"] - stats["messages"]
        result["frames"] = after["frames"] - stats["frames"]
    return result, used


def _round(run: Run, path: Tested, args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    # Row tag: the load child's test and its arguments after the port (bench.mux_load).
    tests = {
        "ping": ("ping", f"{args.pings}"),
        "many": ("many", f"{args.conns} {args.seconds} 1"),
        "pipe16": ("many", f"{args.conns} {args.seconds} 16"),
        "conns50": ("conns", f"50 {args.seconds}"),
        "conns16": ("conns", f"16 {args.seconds}"),
        "hol": ("hol", f"{args.hol} {args.seconds}"),
    }
    for tag, (test, rest) in tests.items():
        result, cpu = _measured(run, path, test, rest)
        count = result["count"]
        if tag in ("ping", "hol"):
            out[f"{tag}.p50"], out[f"{tag}.p99"] = result["p50"], result["p99"]
        if tag == "hol":
            # CPU per ping means nothing next to the bulk transfer: its rate instead.
            out["hol.mbps"] = result["mbps"]
            continue
        if tag != "ping":
            out[f"{tag}.rate"] = count / result["seconds"]
        for role, secs in cpu.items():
            out[f"{tag}.cpu.{role}"] = secs / count * 1e6
        if result.get("messages"):
            out[f"{tag}.fpm"] = result["frames"] / result["messages"]
    if _is_vnet(path.name) and args.idle:
        before = {role: rss_kib(pid) for role, pid in path.pids.items()}
        _ask(run.load, f"idle {path.port} {args.idle}", "warm")
        for role, pid in path.pids.items():
            out[f"idle.kib.{role}"] = (rss_kib(pid) - before[role]) / args.idle
        _ask(run.load, "go", "done")
    return out


def _vnet_round(run: Run, variant: str, args: argparse.Namespace) -> dict[str, float]:
    work = run.workdir / f"{variant}-{len(list(run.workdir.glob(f'{variant}-*')))}"
    work.mkdir()
    children = Children(work, ENV)
    port = free_port()
    ini = work / "route.ini"
    ini.write_text(f"[route]\nip={HOST}\nport={port}\nmax_tunnels_per_node=20000\n")
    route = children.start(
        "route", [*command("vnet-route", ["route"]), "--log-level", "warning", str(ini)]
    )
    procs: list[Any] = []
    try:
        wait_ready("the route", lambda: probe_listen((HOST, port)), children)
        base = ["--variant", variant, "--route-port", str(port)]
        home_args = ["--role", "home", *base, "--target-port", str(run.target)]
        home = _spawn(work, "home", [*home_args, "--fault", run.fault])
        procs.append(home)
        _read_line(home, "ready")
        office = _spawn(work, "office", ["--role", "office", *base])
        procs.append(office)
        listen = int(_read_line(office, "ready").split()[1])
        pids = {"office": office.pid, "route": route.proc.pid, "home": home.pid}
        path = Tested(variant, listen, pids, office=None if variant == "aio" else office)
        wait_ready(f"{variant}'s echo", lambda: probe_echo((HOST, listen)), children)
        row = _round(run, path, args)
        children.check()
        return row
    finally:
        _stop(procs)
        children.stop_all()


def _start_ssh(run: Run) -> None:
    why = sshchain.missing()
    if why:
        run.notes.append(f"ssh: skipped, {why}")
        return
    local, processes = sshchain.start_forwards(run.children, run.workdir, {"echo": run.target})
    wait_ready("the ssh chain", lambda: probe_echo(local["echo"]), run.children)
    pids = dict(
        zip(ROLES, (processes["ssh office"], processes["sshd"], processes["ssh home"]), strict=True)
    )
    run.ssh = Tested("ssh", local["echo"][1], pids, groups=True)


def _parent(args: argparse.Namespace) -> int:
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(p for p in set(paths) if not (_is_vnet(p) or p in PATHS[:2]))
    if unknown:
        print(f"mux: unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vnet-mux-"))
    children = Children(workdir, ENV)
    target = free_port()
    children.start(
        "target",
        [
            sys.executable,
            "-m",
            "bench.target",
            "--sink-port",
            str(free_port()),
            "--echo-port",
            str(target),
        ],
    )
    load = _spawn(workdir, "load", ["--role", "load"])
    run = Run(workdir, children, target, load, fault=args.fault)
    results: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    before = _machine()
    try:
        wait_ready("the echo target", lambda: probe_echo((HOST, target)), children)
        if "ssh" in paths:
            _start_ssh(run)
        for rep in range(args.repeat):
            # Rotated, so no path always runs first (or last) in a repetition.
            order = paths[rep % len(paths) :] + paths[: rep % len(paths)]
            for name in order:
                if _is_vnet(name):
                    row = _vnet_round(run, name, args)
                elif name == "ssh":
                    if run.ssh is None:
                        continue
                    row = _round(run, run.ssh, args)
                else:
                    row = _round(run, Tested("direct", target), args)
                children.check()
                results[name].append(row)
                print(_progress(rep, name, row), flush=True)
    except BenchError as exc:
        print(f"mux: {exc} (logs in {workdir})")
        return 1
    finally:
        _stop([load])
        children.stop_all()
    results = {p: rows for p, rows in results.items() if rows}
    print()
    print(f"{before} before the run, {_machine().rpartition(',')[2].strip()} after")
    for note in run.notes:
        print(note)
    print(_tables(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _progress(rep: int, name: str, row: dict[str, float]) -> str:
    def cpu(tag: str) -> str:
        total = sum(row.get(f"{tag}.cpu.{r}", 0.0) for r in ROLES)
        return f"{total:.0f} us" if total else "-"

    return (
        f"  round {rep + 1} {name}: ping p50 {row['ping.p50']:.0f} us ({cpu('ping')}); "
        f"50 conns {row['many.rate']:,.0f}/s ({cpu('many')}); a conn per request "
        f"{row['conns50.rate']:,.0f}/s ({cpu('conns50')}), 16 at a time "
        f"{row['conns16.rate']:,.0f}/s ({cpu('conns16')}); -P 16 {row['pipe16.rate']:,.0f}/s "
        f"({cpu('pipe16')}); ping beside bulk p50 {row['hol.p50']:.0f} us, "
        f"bulk {row['hol.mbps']:.0f} MB/s"
    )


def _machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"machine: {os.cpu_count()} CPUs, load average {' '.join(load)}"


# --- the tables -----------------------------------------------------------------------------------


def _figure(rows: list[dict[str, float]], key: str, fmt: str) -> str:
    values = [r[key] for r in rows if key in r]
    if not values:
        return "-"
    mid = format(statistics.median(values), fmt)
    if len(values) == 1:
        return mid
    return f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _sum_rows(rows: list[dict[str, float]], tag: str) -> list[dict[str, float]]:
    """Each row with its total CPU per operation over the three processes added."""
    out = []
    for row in rows:
        cpu = [row.get(f"{tag}.cpu.{r}") for r in ROLES]
        extra = (
            {f"{tag}.cpu.total": sum(c for c in cpu if c is not None)} if cpu[0] is not None else {}
        )
        out.append({**row, **extra})
    return out


TITLES = {
    "ping": ("1-byte ping-pong, one connection", "p50 / p99 us", "round trip"),
    "many": ("50 connections, 32-byte request/response back to back", "requests/s", "request"),
    "pipe16": ("the same, 16 requests at a time (as `-P 16`)", "requests/s", "request"),
    "conns50": ("a new connection per request, 50 at a time", "connections/s", "connection"),
    "conns16": ("a new connection per request, 16 at a time", "connections/s", "connection"),
}


def _tables(results: dict[str, list[dict[str, float]]]) -> str:
    lines = []
    for tag in TESTS[:-1]:
        title, rate, per = TITLES[tag]
        lines += [
            f"| {title} | {rate} | office | route | home | total (us CPU per {per}) | "
            "frames per message |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, raw in results.items():
            rows = _sum_rows(raw, tag)
            if tag == "ping":
                head = f"{_figure(rows, 'ping.p50', '.0f')} / {_figure(rows, 'ping.p99', '.0f')}"
            else:
                head = _figure(rows, f"{tag}.rate", ",.0f")
            cpu = [_figure(rows, f"{tag}.cpu.{r}", ".0f") for r in (*ROLES, "total")]
            lines.append(
                f"| {name} | {head} | {' | '.join(cpu)} | {_figure(rows, f'{tag}.fpm', '.2f')} |"
            )
        lines.append("")
    lines += [
        "| 1-byte ping-pong next to a bulk transfer on another connection | p50 us | p99 us | "
        "bulk MB/s (each way) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        figures = [_figure(rows, f"hol.{k}", ".0f") for k in ("p50", "p99", "mbps")]
        lines.append(f"| {name} | {' | '.join(figures)} |")
    lines.append("")
    idle = {n: rows for n, rows in results.items() if any("idle.kib.route" in r for r in rows)}
    if idle:
        lines += [
            "| memory per idle connection (KiB of RSS) | office | route | home |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, rows in idle.items():
            kib = [_figure(rows, f"idle.kib.{r}", ".1f") for r in ROLES]
            lines.append(f"| {name} | {' | '.join(kib)} |")
    lines.append(
        "(ssh's columns: ssh -L, sshd and its children, ssh -R; direct: no processes of its own)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mux", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--paths", default="direct,ssh,aio,mux,mux-4", help=f"of {', '.join(PATHS)}"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pings", type=int, default=3000, help="1-byte round trips per run")
    parser.add_argument("--conns", type=int, default=50, help="connections of the request test")
    parser.add_argument("--seconds", type=float, default=3.0, help="of each rate test")
    parser.add_argument(
        "--hol",
        type=int,
        default=1000,
        help="pings next to the bulk transfer (at most --seconds of them)",
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle connections (0: none)")
    parser.add_argument("--json", help="also write every round's figures here")
    parser.add_argument("--tables", nargs="+", help="print the tables of these --json files")
    parser.add_argument("--role", choices=("home", "office", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--route-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target-port", type=int, help=argparse.SUPPRESS)
    # Test only: home's mux corrupts what it delivers ("flip"), to show the check catches it.
    parser.add_argument("--fault", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _child(args.role, args)
        return 0
    if args.tables:
        merged: dict[str, list[dict[str, float]]] = {}
        for name in args.tables:
            for path, rows in json.loads(Path(name).read_text()).items():
                merged.setdefault(path, []).extend(rows)
        print(_tables(merged))
        return 0
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
