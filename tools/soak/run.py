"""The run: client workers, quiet moments, the disruption schedule and recovery probes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.etcd import EtcdServer
from harness.procs import HOST, HarnessError, free_port, rss_kib
from tools.soak.fleet import OFFICES, Fleet, SoakError, tunnels_open
from tools.soak.load import (
    MIB,
    Lost,
    Source,
    Spec,
    Tally,
    Truncated,
    bulk_client,
    pick_size,
    pingpong_client,
)
from tools.soak.report import revision
from tools.soak.services import Services
from vnet.node.tunnel import reset_socket

EXCHANGE, ECHO = 700, 701
CONCURRENCY = (20, 50)
DISRUPT_EVERY = (20.0, 30.0)
DISRUPTIONS = (
    ("route SIGTERM + restart", "route", signal.SIGTERM),
    ("route kill -9 + restart", "route", signal.SIGKILL),
    ("office-a kill -9 + restart", "office-a", signal.SIGKILL),
    ("home kill -9 + restart", "home", signal.SIGKILL),
)
# With --cluster: three routes sharing etcd, each node knowing two of them.
CLUSTER_ROUTES = ("route-a", "route-b", "route-c")
CLUSTER_DISRUPTIONS = (
    ("route-a kill -9 + restart", "route-a", signal.SIGKILL),
    ("route-b SIGTERM + restart", "route-b", signal.SIGTERM),
    ("route-c kill -9 + restart", "route-c", signal.SIGKILL),
    ("home kill -9 + restart", "home", signal.SIGKILL),
)
# Which routes each node names, in order: every tunnel crosses two routes.
CLUSTER_NODE_ROUTES = {
    "home": ("route-a", "route-b"),
    "office-a": ("route-b", "route-c"),
    "office-b": ("route-c", "route-a"),
}
# A dead route's entries leave the store this soon (its lease).
CLUSTER_LEASE_TTL = 5
CONN_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0
RECOVERY_TIMEOUT = 60.0
DRAIN_TIMEOUT = CONN_TIMEOUT + 30.0

# At a quiet moment: role -> (open fds, pid, RSS in KiB), and the route's open tunnels.
Quiet = tuple[dict[str, tuple[int, int, int]], int]


@dataclass
class Disruption:
    what: str
    at: float
    quiet: Quiet  # just before
    since: float  # time.monotonic() of the signal
    exit: int | None = None
    recovery: float | None = None

    def overlaps(self, start: float, end: float) -> bool:
        return start <= self.since + (self.recovery or RECOVERY_TIMEOUT) and end >= self.since


class Soak:
    def __init__(self, minutes: float, seed: int, workdir: Path, cluster: bool = False) -> None:
        self.minutes, self.seed, self.workdir = minutes, seed, workdir
        self.cluster = cluster
        self.routes: tuple[str, ...] = CLUSTER_ROUTES if cluster else ("route",)
        self.disruptions_planned = CLUSTER_DISRUPTIONS if cluster else DISRUPTIONS
        self.etcd: EtcdServer | None = None
        self.rng = random.Random(seed)
        self.src = Source(random.Random(seed))
        self.fleet = Fleet(workdir)
        self.services = Services(self.src, self.fleet.killed, self.elapsed)
        self.ports: dict[tuple[str, int], int] = {}
        self.office_of: dict[int, str] = {}
        # Each route's Prometheus port: its open tunnels, read at quiet moments, must be 0.
        self.metrics_ports: dict[str, int] = {}
        self.work, self.probes = Tally(), Tally()
        self.lost: list[str] = []
        self.truncated: list[str] = []  # clean EOFs that no kill of the office explains
        # (start, end, completed) of every client connection, to relate them to disruptions
        self.spans: list[tuple[float, float, bool]] = []
        self.disruptions: list[Disruption] = []
        self.active, self.idle = 0, asyncio.Event()
        self.paused, self.stopping, self.target = True, False, CONCURRENCY[0]
        self.changed = asyncio.Event()
        self.interrupted = asyncio.Event()
        self.started = time.monotonic()
        self.duration = 0.0
        self.load = "/".join(f"{x:.2f}" for x in os.getloadavg())
        self.revision = revision()  # now: the processes load the code as it is when they start
        self.own_rss = 0
        self.final_exits: dict[str, int | None] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", file=sys.stderr, flush=True)

    # --- connections --------------------------------------------------------

    def make_spec(self, rng: random.Random) -> Spec:
        kind = rng.choices(
            ("exchange", "exchange-late-eof", "echo", "echo-pingpong"), (35, 25, 25, 15)
        )[0]
        if kind == "echo-pingpong":
            rounds = tuple(rng.randint(1, 16384) for _ in range(rng.randint(1, 20)))
            return Spec(kind, sum(rounds), 0, self.src.offset(rng, sum(rounds)), 0, rounds)
        up, down = pick_size(rng), (pick_size(rng) if kind.startswith("exchange") else 0)
        return Spec(kind, up, down, self.src.offset(rng, up), self.src.offset(rng, down))

    async def connect(self, port: int, spec: Spec) -> int:
        reader, writer = await asyncio.open_connection(HOST, port, limit=4 * MIB)
        ok = False
        try:
            client = pingpong_client if spec.rounds else bulk_client
            moved = await client(self.src, reader, writer, spec)
            ok = True
            return moved
        finally:
            if ok:
                writer.close()
            else:
                reset_socket(writer)

    def describe(self, port: int, spec: Spec, exc: BaseException) -> str:
        return (
            f"{self.elapsed():.1f}s {self.office_of[port]}:{port} {spec.kind} up={spec.up}"
            f" down={spec.down} up_at={spec.up_at} down_at={spec.down_at}: {exc}"
        )

    async def attempt(self, tally: Tally, port: int, spec: Spec, timeout: float) -> bool:
        """One connection, counted: True only when it completed byte-exact."""
        start, why, ok = time.monotonic(), "", False
        tally.tried += 1
        self.active += 1
        self.idle.clear()
        try:
            async with asyncio.timeout(timeout):
                moved = await self.connect(port, spec)
        except Lost as exc:
            tally.lost += 1
            self.lost.append(self.describe(port, spec, exc))
        except (Truncated, asyncio.IncompleteReadError) as exc:
            office = self.office_of[port]
            if self.fleet.killed(office, start, time.monotonic()):
                # The kernel closes a killed process's sockets with a FIN: no node can help it.
                why = f"clean EOF, {office} was killed"
            else:
                why = "clean EOF before the full answer"
                self.truncated.append(self.describe(port, spec, exc))
        except TimeoutError:
            why = f"no end within {timeout:.0f}s"
        except OSError as exc:
            why = type(exc).__name__
            if type(exc) is OSError:
                why = f"OSError {errno.errorcode.get(exc.errno or 0, exc.errno)}"
        else:
            tally.completed += 1
            tally.moved += moved
            ok = True
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()
        if why:
            tally.failed += 1
            tally.why[why] += 1
        if tally is self.work:
            self.spans.append((start, time.monotonic(), ok))
        return ok

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def worker(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:{index}")
        while not self.stopping:
            if self.paused or index >= self.target:
                await self.changed.wait()
                continue
            spec = self.make_spec(rng)
            serveid = ECHO if spec.kind.startswith("echo") else EXCHANGE
            port = self.ports[(rng.choice(OFFICES), serveid)]
            if not await self.attempt(self.work, port, spec, CONN_TIMEOUT):
                # Pacing, not waiting for anything: a refused connect returns at once, and
                # fifty workers retrying in a tight loop would only burn the CPU vnet needs.
                await asyncio.sleep(rng.uniform(0.05, 0.2))

    async def vary(self) -> None:
        while not self.stopping:
            self.target = self.rng.randint(*CONCURRENCY)
            self.notify()
            await asyncio.sleep(5)

    async def sampler(self) -> None:
        while True:
            self.fleet.sample()
            self.own_rss = max(self.own_rss, rss_kib(os.getpid()))
            await asyncio.sleep(1)

    async def quiet(self) -> Quiet:
        """fds, RSS and the route's open tunnels with no client connection open: pause the
        workload, let it drain, let the counts settle."""
        was_paused, self.paused = self.paused, True
        self.notify()
        if self.active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), DRAIN_TIMEOUT)
        # vnet closes its sides of the last tunnels a moment after the clients did.
        counts = (self.fleet.fds(), await self.tunnels_open())
        same, deadline = 0, time.monotonic() + 5
        while (same < 5 or counts[1] != 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = (self.fleet.fds(), await self.tunnels_open())
            same = same + 1 if now == counts else 0
            counts = now
        self.paused = was_paused
        self.notify()
        pids = {role: child.pid for role, child in self.fleet.children.items()}
        fds = {role: (n, pids[role], rss_kib(pids[role])) for role, n in counts[0].items()}
        return fds, counts[1]

    async def tunnels_open(self) -> int:
        """Tunnels open on every route together; -1 when one cannot be read."""
        counts = [await tunnels_open(port) for port in self.metrics_ports.values()]
        return -1 if -1 in counts else sum(counts)

    async def recover(self, since: float) -> float | None:
        """Seconds from `since` until every office reaches both services byte-exact again."""
        rng = random.Random(f"{self.seed}:probe:{since}")

        async def path(port: int, serveid: int) -> float | None:
            while (left := since + RECOVERY_TIMEOUT - time.monotonic()) > 0:
                size = 64 * 1024
                kind = "exchange" if serveid == EXCHANGE else "echo"
                at = self.src.offset(rng, size)
                spec = Spec(kind, size, size if kind == "exchange" else 0, at, at)
                if await self.attempt(self.probes, port, spec, min(PROBE_TIMEOUT, left)):
                    return time.monotonic() - since
                await asyncio.sleep(0.05)  # pacing: a refused connect returns at once
            return None

        times = await asyncio.gather(*(path(p, sid) for (_, sid), p in self.ports.items()))
        return None if None in times else max(t for t in times if t is not None)

    async def disrupt(self, what: str, role: str, sig: int) -> Disruption:
        quiet = await self.quiet()
        # Load again first, so the disruption catches connections in the middle of transfers.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupted.wait(), 3)
        since = time.monotonic()
        record = Disruption(what, since - self.started, quiet, since)
        record.exit = await self.fleet.stop(role, sig)
        self.fleet.start(role)
        record.recovery = await self.recover(since)
        return record

    # --- the run ------------------------------------------------------------

    async def setup(self) -> None:
        exchange_port, echo_port = await self.services.start()
        ports = {role: free_port() for role in self.routes}
        self.metrics_ports = {role: free_port() for role in self.routes}
        cluster = ""
        if self.cluster:
            self.etcd = EtcdServer(self.workdir)
            try:
                await self.etcd.start()
            except HarnessError as exc:
                raise SoakError(f"etcd would not start: {exc}") from None
            cluster = (
                f"[cluster]\netcd={self.etcd.url}\ntoken={secrets.token_urlsafe(16)}\n"
                f"lease_ttl={CLUSTER_LEASE_TTL}\n"
            )
        for role, port in ports.items():
            text = f"[route]\nip={HOST}\nport={port}\nmetrics={HOST}:{self.metrics_ports[role]}\n"
            if cluster:
                text += f"{cluster}route_id={role}\nadvertise={HOST}:{port}\n"
            (self.workdir / f"{role}.ini").write_text(text)

        def route_lines(node: str) -> str:
            if not self.cluster:
                return f"[route]\nip={HOST}\nport={ports['route']}\n"
            named = ", ".join(f"{HOST}:{ports[r]}" for r in CLUSTER_NODE_ROUTES[node])
            return f"[route]\nroutes={named}\n"

        (self.workdir / "home.ini").write_text(
            f"{route_lines('home')}[vnet]\nname=home\ngroup=soak\n"
            f"[serve.exchange]\nserveid={EXCHANGE}\nport={exchange_port}\n"
            f"[serve.echo]\nserveid={ECHO}\nport={echo_port}\n"
        )
        for office in OFFICES:
            for serveid in (EXCHANGE, ECHO):
                self.ports[(office, serveid)] = free_port()
                self.office_of[self.ports[(office, serveid)]] = office
            (self.workdir / f"{office}.ini").write_text(
                f"{route_lines(office)}[vnet]\nname={office}\ngroup=soak\n"
                f"[use.exchange]\nserveid={EXCHANGE}\nport={self.ports[(office, EXCHANGE)]}\n"
                f"[use.echo]\nserveid={ECHO}\nport={self.ports[(office, ECHO)]}\n"
            )
        for role in self.routes:
            self.fleet.start(role)
        for role in self.routes:
            await self.fleet.wait_for_line(role, "route listening on")
        self.fleet.start("home")
        for office in OFFICES:
            self.fleet.start(office)
        await self.fleet.wait_for_line("home", f"registered as serveid {EXCHANGE}")
        await self.fleet.wait_for_line("home", f"registered as serveid {ECHO}")
        for (office, _), port in self.ports.items():
            await self.fleet.wait_for_line(office, f"listening on {HOST}:{port}")
        if await self.recover(time.monotonic()) is None:
            raise SoakError("the first connections through the offices never completed")

    async def run(self) -> tuple[Quiet, Quiet]:
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.setup()
            first = await self.quiet()
            self.started = time.monotonic()
            self.note(f"running {self.minutes:g} min, seed {self.seed}, logs in {self.workdir}")
            deadline = self.started + self.minutes * 60
            tasks = [asyncio.create_task(self.worker(i)) for i in range(CONCURRENCY[1])]
            tasks += [asyncio.create_task(self.vary()), asyncio.create_task(self.sampler())]
            self.paused = False
            self.notify()
            due = self.started + self.rng.uniform(*DISRUPT_EVERY)
            while not self.interrupted.is_set():
                with contextlib.suppress(TimeoutError):
                    wait = max(min(due, deadline) - time.monotonic(), 0)
                    await asyncio.wait_for(self.interrupted.wait(), wait)
                if self.interrupted.is_set() or time.monotonic() >= deadline:
                    break
                if time.monotonic() > deadline - 5:
                    due = deadline  # too late for a disruption: no load would follow it
                    continue
                plan = self.disruptions_planned
                record = await self.disrupt(*plan[len(self.disruptions) % len(plan)])
                self.disruptions.append(record)
                took = "NOT recovered" if record.recovery is None else f"{record.recovery:.1f}s"
                self.note(
                    f"{record.what}: recovered in {took}; {self.work.tried} connections,"
                    f" {self.work.lost + self.probes.lost + len(self.services.lost)} LOST"
                )
                due = time.monotonic() + self.rng.uniform(*DISRUPT_EVERY)
            self.stopping = True
            self.notify()
            why = "interrupted" if self.interrupted.is_set() else "time is up"
            self.note(f"{why}: letting the connections in flight finish")
            await asyncio.wait(tasks[: CONCURRENCY[1]], timeout=DRAIN_TIMEOUT)
            self.duration = self.elapsed()
            last = await self.quiet()
        finally:
            for task in tasks[:-1]:
                task.cancel()
            await self.stop_all()
            if tasks:
                tasks[-1].cancel()  # the sampler last: it tells a crash from an asked exit
        return first, last

    async def stop_all(self) -> None:
        for role in (*OFFICES, "home", *self.routes):
            if role in self.fleet.children:
                self.final_exits[role] = await self.fleet.stop(role, signal.SIGTERM)
        await self.services.close()
        if self.etcd is not None:
            await self.etcd.stop()
