"""`python -m bench.datapath`: a node's tunnel data path per message, by how it uses gRPC.

A prototype measurement for issue 15, not part of `make bench`. It starts a real `vnet-route`,
then for each variant two node-like child processes of this module: *home* joins, registers
serveid 801 and answers every OpenTunnel with an Accept call that echoes each data frame back;
*office* joins and dials 801. The control plane (join, register, the control stream) is the
node's own `RouteClient` on the main loop in every variant; only the tunnel calls differ:

- `aio`: grpc.aio on the main loop, as the nodes do now (`vnet.node.client.TunnelCall`).
- `aio-thread`: grpc.aio on a second event loop in a thread of its own, a channel of its own,
  with the tunnel's frame handling on that loop too (the "event loop thread per channel").
- `aio-hop`: that data loop, but the frame handling on the main loop, each read and write
  handed across (what a node keeping its sockets on the main loop would pay).
- `sync`: gRPC's synchronous API (`grpc.insecure_channel`, a request iterator fed from a
  queue, the response iterator read by a thread per tunnel that also handles the frame).
- `sync-loop`: the synchronous calls, but each frame handed to the main loop and the reply
  put back from there (again: sockets staying on the main loop).
- `cq`: gRPC's core API (private `grpc._cython.cygrpc`): a call with a completion queue of its
  own, polled by the one thread that handles its frames, taking turns with its writes.
- `cq-2t`: the same with two threads per tunnel, as a node's full-duplex tunnel would need: one
  polls the queue, the other writes and is told by the first when its write completed.
- `cq-shared`: every call on the channel's one completion queue, polled by one thread that also
  does the frames' work (home's echo, office's next request): no thread hand-over at all, the
  floor of a data path done by its poller.

The frames are vnet's own (`vnet.wire.encode_data` / `decode_frame`), so the route relays them
exactly as in production. There is no local TCP socket at either end: office makes the
requests itself and home answers them, so the figures are the gRPC side of a node's
per-message work. Per variant it measures: a 1-byte ping-pong on one tunnel and a 16 KiB echo
(latency p50/p99 and each process's CPU per round trip, from /proc), and 50 tunnels doing
32-byte request/response at once, as `redis-benchmark -c 50` does (requests/s and CPU per
request). Variants alternate within every repetition; the tables show medians.

    flock /tmp/vnet-bench.lock python -m bench.datapath [--repeat 3] [--variants aio,sync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import probe_listen
from bench.datapath_calls import (
    Aio,
    AioHop,
    AioThread,
    CqCall,
    CqDuplex,
    CqShared,
    SharedCall,
    Sync,
    SyncCall,
    SyncLoop,
    check,
    new_loop,
    transport,
)
from bench.procs import HOST, BenchError, Children, command, free_port, wait_ready
from vnet import wire
from vnet.node.client import OpenTunnel, RouteClient, TunnelCall

VARIANTS = ("aio", "aio-thread", "aio-hop", "sync", "sync-loop", "cq", "cq-2t", "cq-shared")
SERVEID = 801
# Every wait of a child on its parent or the route, and of the parent on a child's answer.
TIMEOUT = 60.0
WARMUP = 200


# --- the two node-like children ------------------------------------------------------------------


async def _joined(port: int, name: str) -> RouteClient:
    client = RouteClient(f"{HOST}:{port}")
    await client.connect(TIMEOUT)
    await client.join(name, "datapath", timeout=TIMEOUT)
    return client


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _home(port: int, variant: str) -> None:
    client = await _joined(port, f"home-{variant}")
    data = transport(variant, f"{HOST}:{port}")
    tasks: set[asyncio.Task[None]] = set()
    events = client.control()
    # The first event is the group's snapshot; the serve is registered after it, as a node does.
    await anext(events)
    await client.register(SERVEID, "echo", HOST, 9, "", timeout=TIMEOUT)
    _say("ready")
    async for event in events:
        if isinstance(event, OpenTunnel):
            md = ((wire.MD_SESSION, client.session), (wire.MD_TUNNEL, event.tunnel_id))
            call = data.open(wire.ACCEPT_METHOD, md)
            task = asyncio.create_task(_quietly(data.serve(call)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _quietly(coro: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await coro


async def _line() -> str:
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), TIMEOUT)
    if not line:
        raise SystemExit(0)
    return line.strip()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _office(port: int, variant: str) -> None:
    client = await _joined(port, f"office-{variant}")
    data = transport(variant, f"{HOST}:{port}")
    md = ((wire.MD_SESSION, client.session), (wire.MD_SERVEID, str(SERVEID)))
    _say("ready")
    while True:
        test, *args = (await _line()).split()
        if test == "ping":
            rounds, size = int(args[0]), int(args[1])
            result = await _ping(data, data.open(wire.DIAL_METHOD, md), rounds, size)
        else:
            tunnels, seconds, size = int(args[0]), float(args[1]), int(args[2])
            calls = [data.open(wire.DIAL_METHOD, md) for _ in range(tunnels)]
            result = await _many(data, calls, seconds, size)
        _say("done " + json.dumps(result))


async def _ping(data: Any, call: Any, rounds: int, size: int) -> dict[str, float]:
    """rounds round trips of a size-byte frame on one tunnel; latencies in us."""
    frame = wire.encode_data(b"p" * size)
    sync = isinstance(data, Sync) and not isinstance(data, SyncLoop | CqShared)

    def blocking(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            check(data.exchange_blocking(call, frame), frame)
            out.append(time.perf_counter() - start)
        return out

    async def looped(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            check(await data.exchange(call, frame), frame)
            out.append(time.perf_counter() - start)
        return out

    async def run(n: int) -> list[float]:
        if isinstance(data, CqShared):
            return await asyncio.wrap_future(data.ping(call, frame, n))
        if sync:
            return await asyncio.to_thread(blocking, n)
        if isinstance(data, AioThread) and not isinstance(data, AioHop):
            # The whole loop on the data loop: that is this variant's shape.
            return await data.data.run(_aio_loop(data.aio, call, frame, n))
        return await looped(n)

    await run(min(WARMUP, rounds))
    _say("warm")
    await _line()
    times = await run(rounds)
    _close(call)
    return {"p50": _percentile(times, 0.5) * 1e6, "p99": _percentile(times, 0.99) * 1e6}


async def _aio_loop(aio: Aio, call: TunnelCall, frame: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        check(await aio.exchange(call, frame), frame)
        out.append(time.perf_counter() - start)
    return out


async def _aio_until(aio: Aio, call: TunnelCall, frame: bytes, stop: float) -> int:
    done = 0
    while time.perf_counter() < stop:
        check(await aio.exchange(call, frame), frame)
        done += 1
    return done


async def _many(data: Any, calls: list[Any], seconds: float, size: int) -> dict[str, float]:
    """Every tunnel does request/response back to back for `seconds`; the requests done."""
    frame = wire.encode_data(b"r" * size)
    sync = isinstance(data, Sync) and not isinstance(data, SyncLoop | CqShared)
    if isinstance(data, CqShared):
        await asyncio.wrap_future(data.many(calls, frame, time.perf_counter() + 0.5))
        _say("warm")
        await _line()
        start = time.perf_counter()
        count = await asyncio.wrap_future(data.many(calls, frame, start + seconds))
        elapsed = time.perf_counter() - start
        for call in calls:
            _close(call)
        return {"requests": float(count), "seconds": elapsed}

    def blocking(call: Any, stop: float) -> int:
        done = 0
        while time.perf_counter() < stop:
            check(data.exchange_blocking(call, frame), frame)
            done += 1
        return done

    async def looped(call: Any, stop: float) -> int:
        if sync:
            return await asyncio.to_thread(blocking, call, stop)
        if isinstance(data, AioThread) and not isinstance(data, AioHop):
            return await data.data.run(_aio_until(data.aio, call, frame, stop))
        done = 0
        while time.perf_counter() < stop:
            check(await data.exchange(call, frame), frame)
            done += 1
        return done

    if sync:
        # A thread per tunnel: the default executor's few workers would serialise them.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(len(calls) + 4))
    await asyncio.gather(*(looped(c, time.perf_counter() + 0.5) for c in calls))
    _say("warm")
    await _line()
    start = time.perf_counter()
    counts = await asyncio.gather(*(looped(c, start + seconds) for c in calls))
    elapsed = time.perf_counter() - start
    for call in calls:
        _close(call)
    return {"requests": float(sum(counts)), "seconds": elapsed}


def _close(call: Any) -> None:
    if isinstance(call, TunnelCall | CqCall | CqDuplex | SharedCall):
        call.cancel()
    elif isinstance(call, SyncCall):
        call.requests.put(None)
        call.call.cancel()
    else:
        call.cancel()


def _child(role: str, port: int, variant: str) -> None:
    main = _home if role == "home" else _office
    loop = new_loop()
    asyncio.set_event_loop(loop)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(main(port, variant))


# --- the parent: the route, the children, the clock and the CPU counters -------------------------


def cpu_seconds(pid: int) -> float:
    """user+system CPU of one process, all its threads (also those ended since)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    """Context switches (voluntary and not) of the threads of a process that are running now."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


@dataclass
class Pair:
    """One variant's home and office, and office's pipes."""

    variant: str
    home: Any
    office: Any
    pids: dict[str, int] = field(default_factory=dict)

    def ask(self, line: str) -> None:
        self.office.stdin.write(line + "\n")
        self.office.stdin.flush()

    def answer(self, want: str) -> str:
        got = _read_line(self.office, want)
        return got.removeprefix(want).strip()


# Each child's stderr, by pid: what a failed run quotes.
_LOGS: dict[int, Path] = {}


def _read_line(proc: Any, want: str) -> str:
    done: Future[str] = Future()

    def read() -> None:
        done.set_result(proc.stdout.readline())

    threading.Thread(target=read, daemon=True).start()
    try:
        line = str(done.result(TIMEOUT)).strip()
    except TimeoutError:
        raise BenchError(f"no {want!r} from a child within {TIMEOUT:.0f} s") from None
    if not line:
        log = _LOGS.get(proc.pid)
        tail = log.read_text().strip().splitlines()[-1:] if log else []
        raise BenchError(f"a child ended before saying {want!r}: {' '.join(tail) or 'no output'}")
    if not line.startswith(want):
        raise BenchError(f"a child said {line!r}, expected {want!r}")
    return line


def _spawn(role: str, port: int, variant: str, workdir: Path) -> Any:
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "bench.datapath", "--role", role, "--variant", variant]
    argv += ["--route-port", str(port)]
    path = workdir / f"{role}-{variant}.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True
        )
    _LOGS[proc.pid] = path
    return proc


def _start_pair(variant: str, port: int, route_pid: int, workdir: Path) -> Pair:
    home = _spawn("home", port, variant, workdir)
    _read_line(home, "ready")
    office = _spawn("office", port, variant, workdir)
    _read_line(office, "ready")
    return Pair(variant, home, office, {"office": office.pid, "route": route_pid, "home": home.pid})


def _stop_pair(pair: Pair) -> None:
    for proc in (pair.office, pair.home):
        proc.terminate()
    for proc in (pair.office, pair.home):
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001 - a child that will not stop is killed
            proc.kill()
            proc.wait(5)


def _measured(pair: Pair, request: str) -> tuple[dict[str, float], dict[str, float]]:
    """Ask office for a test; its result and each process's CPU seconds during it."""
    pair.ask(request)
    pair.answer("warm")
    before = {name: (cpu_seconds(pid), switches(pid)) for name, pid in pair.pids.items()}
    pair.ask("go")
    result = json.loads(pair.answer("done"))
    after = {name: (cpu_seconds(pid), switches(pid)) for name, pid in pair.pids.items()}
    used = {name: after[name][0] - before[name][0] for name in before}
    used |= {f"cs.{name}": float(after[name][1] - before[name][1]) for name in before}
    return result, used


@dataclass
class Row:
    """One variant's figures from one repetition."""

    figures: dict[str, float]


def _key(name: str) -> str:
    return name if name.startswith("cs.") else f"cpu.{name}"


def _one_round(pair: Pair, pings: int, tunnels: int, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for size in (1, 16384):
        rounds = pings if size == 1 else max(200, pings // 4)
        result, cpu = _measured(pair, f"ping {rounds} {size}")
        tag = "ping1" if size == 1 else "ping16k"
        out[f"{tag}.p50"], out[f"{tag}.p99"] = result["p50"], result["p99"]
        for name, secs in cpu.items():
            out[f"{tag}.{_key(name)}"] = (
                secs / rounds if name.startswith("cs.") else secs / rounds * 1e6
            )
    result, cpu = _measured(pair, f"many {tunnels} {seconds} 32")
    requests = result["requests"]
    out["many.rate"] = requests / result["seconds"]
    for name, secs in cpu.items():
        out[f"many.{_key(name)}"] = (
            secs / requests if name.startswith("cs.") else secs / requests * 1e6
        )
    return out


def _nodes_cs(med: Callable[[str, str], float], variant: str, tag: str) -> float:
    return med(variant, f"{tag}.cs.office") + med(variant, f"{tag}.cs.home")


def _table(results: dict[str, list[dict[str, float]]]) -> str:
    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    lines = []
    for tag, title in (("ping1", "1-byte ping-pong"), ("ping16k", "16 KiB echo")):
        lines += [
            f"| {title}, one tunnel | p50 us | p99 us | office | route | home | "
            "nodes | sum (us CPU per round trip) | switches in the nodes |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in results:
            cpu = [med(v, f"{tag}.cpu.{n}") for n in ("office", "route", "home")]
            lines.append(
                f"| {v} | {med(v, f'{tag}.p50'):.0f} | {med(v, f'{tag}.p99'):.0f} | "
                + " | ".join(f"{c:.0f}" for c in cpu)
                + f" | {cpu[0] + cpu[2]:.0f} | {sum(cpu):.0f} | {_nodes_cs(med, v, tag):.1f} |"
            )
        lines.append("")
    lines += [
        "| 50 tunnels, 32-byte request/response | requests/s | office | route | home | "
        "nodes | sum (us CPU per request) | switches in the nodes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in results:
        cpu = [med(v, f"many.cpu.{n}") for n in ("office", "route", "home")]
        lines.append(
            f"| {v} | {med(v, 'many.rate'):,.0f} | "
            + " | ".join(f"{c:.0f}" for c in cpu)
            + f" | {cpu[0] + cpu[2]:.0f} | {sum(cpu):.0f} | {_nodes_cs(med, v, 'many'):.1f} |"
        )
    return "\n".join(lines)


def _parent(args: argparse.Namespace) -> int:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        print(f"datapath: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vnet-datapath-"))
    children = Children(workdir)
    port = free_port()
    ini = workdir / "route.ini"
    ini.write_text(f"[route]\nip={HOST}\nport={port}\n")
    route = children.start(
        "route", [*command("vnet-route", ["route"]), "--log-level", "warning", str(ini)]
    )
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    try:
        wait_ready("the route", lambda: probe_listen((HOST, port)), children)
        for rep in range(args.repeat):
            # Rotated, so no variant always runs first (or last) in a repetition.
            order = variants[rep % len(variants) :] + variants[: rep % len(variants)]
            for variant in order:
                pair = _start_pair(variant, port, route.proc.pid, workdir)
                try:
                    row = _one_round(pair, args.pings, args.tunnels, args.seconds)
                finally:
                    _stop_pair(pair)
                children.check()
                results[variant].append(row)
                print(
                    f"  round {rep + 1} {variant}: ping p50 {row['ping1.p50']:.0f} us, "
                    f"nodes {row['ping1.cpu.office'] + row['ping1.cpu.home']:.0f} us CPU/rt; "
                    f"50 tunnels {row['many.rate']:,.0f}/s, nodes "
                    f"{row['many.cpu.office'] + row['many.cpu.home']:.0f} us CPU/request",
                    flush=True,
                )
    except BenchError as exc:
        print(f"datapath: {exc} (logs in {workdir})")
        return 1
    finally:
        children.stop_all()
    print()
    print(_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.datapath", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pings", type=int, default=5000, help="1-byte round trips per run")
    parser.add_argument("--tunnels", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=4.0, help="of the 50-tunnel test")
    parser.add_argument("--json", help="also write every repetition's figures here")
    parser.add_argument("--role", choices=("home", "office"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--route-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _child(args.role, args.route_port, args.variant)
        return 0
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
