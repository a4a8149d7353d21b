"""Control-plane load: many raw sessions against a real `vnet-route` process.

Each simulated node speaks the .proto through the generated stubs, as a client in any other
language would, on a connection of its own: Join, a Control stream it keeps reading, two
RegisterServe (serveid 0: the route assigns a dynamic one). Nothing of vnet's node code runs,
so the figures are the route's.

Measured, per size N (see docs/BENCHMARKS.md, "Control plane"):
- join storm: all N start at once; the time until every one is in (joined, snapshot read,
  both registrations answered), Join/Register refusals by status, sessions the route dropped,
  and a probe session's Ping latency (p50 / p99 / max) throughout;
- fan-out per change: the probe registers one serve; control messages sent because of it,
  the time until the last node saw it, and the route's CPU for it;
- ListVnets / ListServes p50 at N;
- the route's memory per idle node (VmRSS growth / N);
- restart storm: kill -9 and restart the route on the same port; every node reconnects as
  the real node does (exponential backoff 0.5-15 s with equal jitter, honouring a retry hint)
  and rejoins with its resume pair (and, where the route's .proto has them, its serveids);
  the time until all are back and how many vnetids and serveids changed.

Serveids: a group has 499 dynamic ones, so a group of more than 249 nodes cannot hold two each;
the registrations past that are answered RESOURCE_EXHAUSTED ("no free serveid"), an expected
answer that counts as "in", and reported separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from harness.procs import HOST, Child, free_port, rss_kib, spawn
from vnetrpc.v1 import route_pb2 as pb
from vnetrpc.v1 import route_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
# The serve the probe session adds and removes for the fan-out figure: static, so no node's
# dynamic serveid can take it.
PROBE_SERVEID = 999
CALL_TIMEOUT = 10.0
RECONNECT_MIN = 0.5
RECONNECT_MAX = 15.0
# The retry hint a route may attach to RESOURCE_EXHAUSTED (trailing metadata, milliseconds).
RETRY_HINT = "vnet-retry-after-ms"
RESUME_FIELD = "resume_serveids"


def _md(session: str = "") -> tuple[tuple[str, str], ...]:
    return (("vnet-session", session),) if session else ()


def retry_hint(exc: grpc.aio.AioRpcError) -> float:
    """The route's retry hint in seconds, 0 without one."""
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_HINT:
            with contextlib.suppress(ValueError):
                return int(value) / 1000
    return 0.0


@dataclass
class Node:
    """One simulated node."""

    index: int
    group: str
    port: int
    channel: grpc.aio.Channel | None = None
    stub: Any = None
    session: str = ""
    vnetid: str = ""
    resume_token: str = ""
    boot_id: str = ""
    serves_wanted: int = 2
    serveids: list[int] = field(default_factory=list)
    full: int = 0  # registrations refused for lack of serveids
    control: Any = None
    reader: asyncio.Task[None] | None = None
    messages: int = 0
    seen: dict[int, float] = field(default_factory=dict)  # serveid -> when it last appeared
    gone: dict[int, float] = field(default_factory=dict)  # serveid -> when it last left
    ended: str = ""  # why the control stream ended, "" while it is open
    refusals: dict[str, int] = field(default_factory=dict)

    def connect(self) -> None:
        self.channel = grpc.aio.insecure_channel(
            f"{HOST}:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = pb_grpc.RouteServiceStub(self.channel)

    def refused(self, exc: grpc.aio.AioRpcError, what: str) -> None:
        key = f"{what} {exc.code().name}"
        self.refusals[key] = self.refusals.get(key, 0) + 1

    async def join(self, resume: bool) -> None:
        req = pb.JoinRequest(name=f"n{self.index}", group=self.group)
        if resume:
            req.resume_vnetid, req.resume_token = self.vnetid, self.resume_token
            # A route whose .proto has them (not main's before this round's work) holds the
            # ids a node claims with them after a restart.
            if RESUME_FIELD in pb.JoinRequest.DESCRIPTOR.fields_by_name:
                getattr(req, RESUME_FIELD).extend(self.serveids)
                req.resume_boot_id = self.boot_id
        resp = await self.stub.Join(req, timeout=CALL_TIMEOUT)
        self.session, self.vnetid, self.resume_token = resp.session, resp.vnetid, resp.resume_token
        self.boot_id = resp.boot_id

    async def open_control(self) -> None:
        self.ended = ""
        request = pb.ControlRequest()
        if "serve_changes" in pb.ControlRequest.DESCRIPTOR.fields_by_name:
            request.serve_changes = True
        self.control = self.stub.Control(request, metadata=_md(self.session), timeout=None)
        first = await asyncio.wait_for(self.control.read(), CALL_TIMEOUT)
        if first is grpc.aio.EOF:
            raise ConnectionError("control stream ended before its snapshot")
        self._note(first)
        self.reader = asyncio.get_running_loop().create_task(self._read())

    def _note(self, event: Any) -> None:
        self.messages += 1
        now = time.monotonic()
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            for s in event.snapshot.serves:
                self.seen[s.serveid] = now
        elif kind == "serve_added":
            self.seen[event.serve_added.serveid] = now
        elif kind == "serve_removed":
            self.gone[event.serve_removed.serveid] = now
        elif kind == "serve_changes":
            for r in event.serve_changes.removed:
                self.gone[r.serveid] = now
            for s in event.serve_changes.added:
                self.seen[s.serveid] = now

    async def _read(self) -> None:
        try:
            while True:
                event = await self.control.read()
                if event is grpc.aio.EOF:
                    self.ended = "EOF"
                    return
                self._note(event)
        except grpc.aio.AioRpcError as exc:
            self.ended = exc.code().name
        except asyncio.CancelledError:
            self.ended = "cancelled"

    async def register(self, wanted: Sequence[int]) -> None:
        got: list[int] = []
        for serveid in wanted:
            req = pb.RegisterServeRequest(
                serveid=serveid, name=f"s{serveid}", ip="127.0.0.1", port=22
            )
            while True:
                try:
                    resp = await self.stub.RegisterServe(
                        req, metadata=_md(self.session), timeout=CALL_TIMEOUT
                    )
                    got.append(resp.serve.serveid)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    hint = retry_hint(exc)
                    if hint > 0:
                        # Busy (a restarted route is giving serveids back first): as a node does.
                        self.refused(exc, "register (busy)")
                        await asyncio.sleep(hint * random.uniform(1.0, 1.5))
                        continue
                    self.full += 1
                break
        self.serveids = got

    async def bring_up(self, resume: bool, deadline: float) -> None:
        """Join (again), open Control, register: retried as a node does, until deadline."""
        delay = RECONNECT_MIN
        # Back again, a real node registers what it had (as wishes) and tries again the
        # serves it could not register (0: any free one).
        wanted = [*self.serveids, *[0] * self.full] if resume else [0] * self.serves_wanted
        while True:
            try:
                self.full = 0
                await self.join(resume)
                await self.open_control()
                await self.register(wanted)
                return
            except (grpc.aio.AioRpcError, ConnectionError, TimeoutError) as exc:
                hint = 0.0
                if isinstance(exc, grpc.aio.AioRpcError):
                    self.refused(exc, "bring-up")
                    hint = retry_hint(exc)
                else:
                    self.refusals["bring-up timeout"] = self.refusals.get("bring-up timeout", 0) + 1
                await self.drop_control()
                if time.monotonic() > deadline:
                    raise
                # Equal jitter, as vnet.node.node does; never sooner than the route's hint.
                await asyncio.sleep(max(delay / 2 + random.uniform(0, delay / 2), hint))
                delay = min(delay * 2, RECONNECT_MAX)

    async def drop_control(self) -> None:
        if self.control is not None:
            self.control.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        self.control = self.reader = None

    async def close(self) -> None:
        await self.drop_control()
        if self.channel is not None:
            await self.channel.close()


@dataclass
class Route:
    """A vnet-route process on a fixed port (restarted on the same one)."""

    workdir: Path
    code: Path | None  # run this tree's vnet (e.g. main's, for the BEFORE figures)
    port: int = field(default_factory=free_port)
    child: Child | None = None
    restarts: int = 0

    def start(self) -> None:
        ini = self.workdir / "route.ini"
        ini.write_text(f"[route]\nip={HOST}\nport={self.port}\nmax_nodes=20000\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.code is not None:
            env["PYTHONPATH"] = f"{self.code}:{self.code / 'generated'}"
        argv = [sys.executable, "-m", "vnet", "route", "--log-level", "warning", str(ini)]
        profile = os.environ.get("VNET_BENCH_PROFILE")
        if profile:  # a cProfile of the route (written when it stops), for looking into it
            argv[1:1] = ["-m", "cProfile", "-o", f"{profile}.{self.restarts}"]
        log = self.workdir / f"route-{self.restarts}.log"
        self.child = spawn("route", argv, log, self.workdir, env, True)
        deadline = time.monotonic() + 30
        while True:
            try:
                import socket

                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                if self.child.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the route did not start; see {log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.child is not None
        self.child.send(signal.SIGKILL)
        self.child.proc.wait(10)
        self.restarts += 1

    def stop(self) -> None:
        if self.child is not None and self.child.proc.poll() is None:
            self.child.send(signal.SIGTERM)
            try:
                self.child.proc.wait(10)
            except Exception:
                self.child.send(signal.SIGKILL)
                self.child.proc.wait(10)

    def cpu(self) -> float:
        assert self.child is not None
        fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        assert self.child is not None
        return rss_kib(self.child.pid)


class Pinger:
    """A probe session's Ping round trips, one after another (20 ms apart), while a storm runs.

    In a process of its own (this module's --pinger mode): in the generator's own loop, busy
    with thousands of simulated nodes, the figure would be the generator's latency.
    """

    def __init__(self, workdir: Path, port: int, group: str) -> None:
        self.out = workdir / "pings.txt"
        self.port, self.group = port, group
        self.child: Child | None = None

    def start(self) -> None:
        self.out.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "bench.control",
            "--pinger",
            str(self.port),
            "--group",
            self.group,
            "--samples",
            str(self.out),
        ]
        self.child = spawn("pinger", argv, self.out.with_suffix(".log"), REPO, None, True)
        deadline = time.monotonic() + 30
        # Started once it has joined and written its first sample.
        while not (self.out.exists() and self.out.read_text().strip()):
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pinger did not start; see {self.out.with_suffix('.log')}")
            time.sleep(0.02)

    def stop(self) -> tuple[float, float, float]:
        """(p50, p99, max) in ms."""
        assert self.child is not None
        self.child.send(signal.SIGTERM)
        self.child.proc.wait(10)
        samples = [float(x) for x in self.out.read_text().split()]
        return percentiles(samples)


async def _ping_forever(port: int, group: str, out: Path) -> None:
    probe = Node(-2, group, port, serves_wanted=0)
    probe.connect()
    await probe.bring_up(False, time.monotonic() + 30)
    with out.open("w") as f:
        while True:
            began = time.monotonic()
            # A failure counts as the time it took (up to the 5 s timeout).
            with contextlib.suppress(grpc.aio.AioRpcError):
                await probe.stub.Ping(
                    pb.PingRequest(nonce=1), metadata=_md(probe.session), timeout=5
                )
            f.write(f"{time.monotonic() - began:.6f}\n")
            f.flush()
            await asyncio.sleep(0.02)


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    if not samples:
        return (float("nan"),) * 3
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000, ordered[-1] * 1000


@dataclass
class StormResult:
    nodes: int
    groups: int
    join_s: float = 0.0
    join_cpu_s: float = 0.0
    restart_cpu_s: float = 0.0
    join_refusals: dict[str, int] = field(default_factory=dict)
    serves: int = 0
    full: int = 0
    dropped: int = 0
    fill_messages: int = 0
    ping_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fanout_messages: float = 0.0
    fanout_ms: float = 0.0
    fanout_cpu_ms: float = 0.0
    missed_change: int = 0
    list_vnets_ms: float = 0.0
    list_serves_ms: float = 0.0
    kib_per_node: float = 0.0
    restart_s: float = 0.0
    restart_refusals: dict[str, int] = field(default_factory=dict)
    vnetids_changed: int = 0
    serveids_changed: int = 0
    restart_dropped: int = 0
    restart_missed: int = 0


def _merge(nodes: Sequence[Node]) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in nodes:
        for key, count in node.refusals.items():
            out[key] = out.get(key, 0) + count
        node.refusals.clear()
    return out


async def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _probe_up(probe: Node, group: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    probe.group = group
    await probe.bring_up(resume=bool(probe.vnetid), deadline=deadline)


async def _list_ms(probe: Node, method: str, calls: int) -> float:
    stub_call = getattr(probe.stub, method)
    request = pb.ListVnetsRequest() if method == "ListVnets" else pb.ListServesRequest()
    samples = []
    for _ in range(calls):
        began = time.monotonic()
        await stub_call(request, metadata=_md(probe.session), timeout=CALL_TIMEOUT)
        samples.append(time.monotonic() - began)
    return statistics.median(samples) * 1000


async def _fanout(route: Route, probe: Node, nodes: Sequence[Node], rounds: int) -> StormResult:
    """Add and remove the probe's serve `rounds` times; medians of what each change cost."""
    out = StormResult(len(nodes), 0)
    group = [n for n in nodes if n.group == probe.group]
    msgs, times, cpus = [], [], []
    for i in range(rounds):
        before_msgs = sum(n.messages for n in group)
        cpu = route.cpu()
        began = time.monotonic()
        if i % 2 == 0:
            await probe.register([PROBE_SERVEID])
            ok = await _wait(
                lambda t=began: all(n.seen.get(PROBE_SERVEID, 0) >= t for n in group), 30
            )
            stamp = [n.seen.get(PROBE_SERVEID, began) for n in group]
        else:
            await probe.stub.UnregisterServe(
                pb.UnregisterServeRequest(serveid=PROBE_SERVEID),
                metadata=_md(probe.session),
                timeout=CALL_TIMEOUT,
            )
            probe.serveids = []
            ok = await _wait(
                lambda t=began: all(n.gone.get(PROBE_SERVEID, 0) >= t for n in group), 30
            )
            stamp = [n.gone.get(PROBE_SERVEID, began) for n in group]
        if not ok:
            out.missed_change += 1
        times.append((max(stamp, default=began) - began) * 1000)
        # Route CPU: a little settling time so the last writes are counted.
        await asyncio.sleep(0.2)
        cpus.append((route.cpu() - cpu) * 1000)
        msgs.append(sum(n.messages for n in group) - before_msgs)
    out.fanout_messages = statistics.median(msgs)
    out.fanout_ms = statistics.median(times)
    out.fanout_cpu_ms = statistics.median(cpus)
    if probe.serveids:
        await probe.stub.UnregisterServe(
            pb.UnregisterServeRequest(serveid=PROBE_SERVEID),
            metadata=_md(probe.session),
            timeout=CALL_TIMEOUT,
        )
        probe.serveids = []
    return out


async def storm(
    workdir: Path,
    nodes_n: int,
    groups: int = 1,
    restart: bool = True,
    code: Path | None = None,
    fanout_rounds: int = 4,
    deadline_s: float = 180.0,
) -> StormResult:
    """One size: a fresh route, the join storm, the figures at N, then the restart storm."""
    route = Route(workdir, code)
    route.start()
    result = StormResult(nodes_n, groups)
    probe = Node(-1, "g0", route.port, serves_wanted=0)
    nodes = [Node(i, f"g{i % groups}", route.port) for i in range(nodes_n)]
    try:
        probe.connect()
        await _probe_up(probe, "g0", 30)
        pinger = Pinger(workdir, route.port, "g0")
        pinger.start()
        await asyncio.sleep(0.3)
        rss0 = route.rss()
        for node in nodes:
            node.connect()
        began = time.monotonic()
        cpu = route.cpu()
        deadline = began + deadline_s
        outcome = await asyncio.gather(
            *(n.bring_up(False, deadline) for n in nodes), return_exceptions=True
        )
        result.join_s = time.monotonic() - began
        result.join_cpu_s = route.cpu() - cpu
        result.ping_ms = pinger.stop()
        failed = [o for o in outcome if isinstance(o, BaseException)]
        result.join_refusals = _merge(nodes)
        if failed:
            result.join_refusals["never in"] = len(failed)
        # Let the route finish telling everyone, then judge who was dropped.
        await asyncio.sleep(1.0)
        result.dropped = sum(1 for n in nodes if n.ended)
        result.fill_messages = sum(n.messages for n in nodes)
        result.serves = sum(len(n.serveids) for n in nodes)
        result.full = sum(n.full for n in nodes)
        fan = await _fanout(route, probe, nodes, fanout_rounds)
        result.fanout_messages, result.fanout_ms = fan.fanout_messages, fan.fanout_ms
        result.fanout_cpu_ms, result.missed_change = fan.fanout_cpu_ms, fan.missed_change
        result.list_vnets_ms = await _list_ms(probe, "ListVnets", 30)
        result.list_serves_ms = await _list_ms(probe, "ListServes", 30)
        await asyncio.sleep(0.5)
        result.kib_per_node = (route.rss() - rss0) / nodes_n
        if restart:
            await _restart(route, probe, nodes, result, deadline_s)
    finally:
        await asyncio.gather(*(n.close() for n in [probe, *nodes]), return_exceptions=True)
        route.stop()
    return result


async def _restart(
    route: Route, probe: Node, nodes: Sequence[Node], result: StormResult, deadline_s: float
) -> None:
    before = {n.index: (n.vnetid, tuple(n.serveids)) for n in nodes}
    route.kill()
    route.start()
    began = time.monotonic()
    deadline = began + deadline_s

    async def back(node: Node) -> None:
        # A node notices when its control stream fails (here at once: the process is gone).
        await _wait(lambda: bool(node.ended), 30)
        await node.drop_control()
        # The first try after the first backoff step, as vnet.node.node does.
        await asyncio.sleep(RECONNECT_MIN / 2 + random.uniform(0, RECONNECT_MIN / 2))
        await node.bring_up(True, deadline)

    cpu = route.cpu()
    outcome = await asyncio.gather(*(back(n) for n in [probe, *nodes]), return_exceptions=True)
    result.restart_s = time.monotonic() - began
    result.restart_cpu_s = route.cpu() - cpu
    failed = [o for o in outcome if isinstance(o, BaseException)]
    result.restart_refusals = _merge(nodes)
    if failed:
        result.restart_refusals["never back"] = len(failed)
    result.vnetids_changed = sum(1 for n in nodes if n.vnetid != before[n.index][0])
    # A serveid a node had and does not have back is one that changed.
    result.serveids_changed = sum(len(set(before[n.index][1]) - set(n.serveids)) for n in nodes)
    await asyncio.sleep(1.0)
    result.restart_dropped = sum(1 for n in nodes if n.ended)
    # Every node sees every other node's serves after the restart (snapshot or events).
    by_group: dict[str, set[int]] = {}
    for n in nodes:
        by_group.setdefault(n.group, set()).update(n.serveids)
    started = began

    def missing() -> list[Node]:
        return [n for n in nodes if any(n.seen.get(s, 0) < started for s in by_group[n.group])]

    # This process reads thousands of streams: give it (bounded) time to read what came.
    await _wait(lambda: not missing(), 15)
    missed = missing()
    result.restart_missed = len(missed)
    if missed and os.environ.get("VNET_BENCH_DEBUG"):
        n = missed[0]
        print(
            "missed:",
            n.index,
            n.group,
            n.vnetid,
            n.ended,
            n.messages,
            [(s, n.seen.get(s, 0) - started) for s in sorted(by_group[n.group])],
            file=sys.stderr,
        )


def _fmt_refusals(refusals: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) or "none"


def rows(results: Sequence[StormResult]) -> tuple[list[str], list[list[str]]]:
    header = ["measure", *(f"{r.nodes:,} nodes, {r.groups} group(s)" for r in results)]

    def row(name: str, fmt: Any) -> list[str]:
        return [name, *(fmt(r) for r in results)]

    body = [
        row("join storm: all in (s)", lambda r: f"{r.join_s:.1f}"),
        row("join storm: route CPU (s)", lambda r: f"{r.join_cpu_s:.1f}"),
        row(
            "join storm: serves in / refused (no free serveid)", lambda r: f"{r.serves} / {r.full}"
        ),
        row("join storm: dropped sessions", lambda r: f"{r.dropped}"),
        row("join storm: control messages to fill the group(s)", lambda r: f"{r.fill_messages:,}"),
        row("join storm: retried calls", lambda r: _fmt_refusals(r.join_refusals)),
        row(
            "join storm: Ping p50 / p99 / max (ms)",
            lambda r: "{:.0f} / {:.0f} / {:.0f}".format(*r.ping_ms),
        ),
        row("one serve change: messages sent", lambda r: f"{r.fanout_messages:.0f}"),
        row("one serve change: last node saw it (ms)", lambda r: f"{r.fanout_ms:.0f}"),
        row("one serve change: route CPU (ms)", lambda r: f"{r.fanout_cpu_ms:.0f}"),
        row("ListVnets p50 (ms)", lambda r: f"{r.list_vnets_ms:.1f}"),
        row("ListServes p50 (ms)", lambda r: f"{r.list_serves_ms:.1f}"),
        row("route memory per idle node (KiB)", lambda r: f"{r.kib_per_node:.0f}"),
        row("restart storm: all back (s)", lambda r: f"{r.restart_s:.1f}"),
        row("restart storm: route CPU (s)", lambda r: f"{r.restart_cpu_s:.1f}"),
        row("restart storm: retried calls", lambda r: _fmt_refusals(r.restart_refusals)),
        row(
            "restart storm: vnetids / serveids changed",
            lambda r: f"{r.vnetids_changed} / {r.serveids_changed}",
        ),
        row(
            "restart storm: dropped after / missed a serve",
            lambda r: f"{r.restart_dropped} / {r.restart_missed}",
        ),
    ]
    return header, body


def markdown(results: Sequence[StormResult]) -> str:
    header, body = rows(results)
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def run_all(
    workdir: Path,
    sizes: Sequence[int],
    spread: int,
    groups: int,
    restart: bool = True,
    code: Path | None = None,
    say: Any = print,
) -> list[StormResult]:
    """Each size in one group, then `spread` nodes over `groups` groups (0: not), each on a
    fresh route; say() gets each run's table as it is done."""
    results = []
    runs = [(n, 1) for n in sizes] + ([(spread, groups)] if spread else [])
    for n, g in runs:
        res = asyncio.run(storm(workdir, n, g, restart, code))
        results.append(res)
        say(markdown([res]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench.control", description=__doc__)
    p.add_argument("--sizes", default="100,500,2000", help="node counts (one group each)")
    p.add_argument("--groups", type=int, default=200, help="groups of the extra spread run")
    p.add_argument("--spread", type=int, default=2000, help="nodes of the spread run (0: none)")
    p.add_argument("--code", type=Path, help="run the route from this source tree instead")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument("--pinger", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--group", default="g0", help=argparse.SUPPRESS)
    p.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pinger:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(_ping_forever(args.pinger, args.group, args.samples))
        return 0
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="vnet-control-") as tmp:
        results = run_all(
            Path(tmp), sizes, args.spread, args.groups, not args.no_restart, args.code
        )
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
