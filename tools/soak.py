"""Soak: the real vnet-route and vnet commands under minutes of churn and disruptions.

Not part of CI or pytest. `python tools/soak.py [--minutes N] [--seed S] [--keep]` (or
`make soak ARGS=...`) starts, all on 127.0.0.1, a route, a node "home" serving an exchange
service (serveid 700) and an echo service (701) that run inside this process, and two nodes
"office-a" and "office-b" mapping both to local ports. Until the time is up it keeps 20-50 client
connections open through the offices, each checked byte for byte both ways, and every 20-30 s
disrupts one thing, in turn: a graceful route restart, a route kill -9, a kill -9 of office-a,
a kill -9 of home. office-b is never disrupted: its counts at start and end are one process's.

A connection caught by a disruption may fail, but only with an error: a reset, a refusal, or an
EOF before the whole answer. One that ends like a success with wrong or missing bytes is LOST.
Before each disruption and at the end the load pauses; with no client connection open the route
must hold no tunnel (its Prometheus gauge), and fds and RSS of every process are recorded.

Exit status: 0 when nothing was LOST, every disruption recovered within 60 s, no process died
unasked and the route held no tunnel when idle; 1 otherwise; 2 when the setup failed; 130 when
interrupted. Logs are kept when it fails (or with --keep), in the directory it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import hashlib
import math
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vnet.node.tunnel import reset_socket

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
MAX_SIZE = 4 * MIB
READ = MIB  # the size of vnet's own reads, so one read can take a whole tunnel frame
SEND = 256 * 1024
HEADER = struct.Struct("!QQQQ")  # up, down, offset of the up stream, offset of the down stream
EXCHANGE, ECHO = 700, 701
OFFICES = ("office-a", "office-b")
CONCURRENCY = (20, 50)
DISRUPT_EVERY = (20.0, 30.0)
DISRUPTIONS = (
    ("route SIGTERM + restart", "route", signal.SIGTERM),
    ("route kill -9 + restart", "route", signal.SIGKILL),
    ("office-a kill -9 + restart", "office-a", signal.SIGKILL),
    ("home kill -9 + restart", "home", signal.SIGKILL),
)
CONN_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0
RECOVERY_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # on SIGTERM the route gives open tunnels 5 s before it resets them
DRAIN_TIMEOUT = CONN_TIMEOUT + 30.0

# At a quiet moment: role -> (open fds, pid, RSS in KiB), and the route's open tunnels.
Quiet = tuple[dict[str, tuple[int, int, int]], int]


class SoakError(Exception):
    """The soak cannot run: a process would not start, or the first connections failed."""


class Lost(Exception):
    """A connection ended like a success with wrong or missing bytes: what must never happen."""


class Truncated(Exception):
    """A clean EOF before the whole answer: the client notices, but vnet promises a reset."""


class Source:
    """Every stream is a slice of one random block at a random offset.

    The block is longer than any transfer, so a stream never repeats within itself (a chunk
    reordered or repeated cannot match by chance) and two connections' streams differ (bytes
    crossing between tunnels are caught). Slices cost nothing: the client stays cheap.
    """

    def __init__(self, rng: random.Random) -> None:
        self.data = rng.randbytes(3 * MAX_SIZE)
        self.view = memoryview(self.data)

    def offset(self, rng: random.Random, size: int) -> int:
        return rng.randrange(len(self.data) - size + 1)

    def slice(self, offset: int, size: int) -> memoryview:
        return self.view[offset : offset + size]

    def digest(self, offset: int, size: int) -> bytes:
        return hashlib.sha256(self.slice(offset, size)).digest()


@dataclass(frozen=True)
class Spec:
    """One client connection: exchange, exchange-late-eof, echo or echo-pingpong."""

    kind: str
    up: int
    down: int = 0
    up_at: int = 0
    down_at: int = 0
    rounds: tuple[int, ...] = ()


@dataclass
class Tally:
    tried: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    moved: int = 0
    why: collections.Counter[str] = field(default_factory=collections.Counter)


def pick_size(rng: random.Random) -> int:
    """0 to 4 MiB, mostly small: many connections, and long ones for disruptions to catch."""
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.4:
        return rng.randint(1, 4096)
    if r < 0.75:
        return rng.randint(4097, 256 * 1024)
    return rng.randint(256 * 1024 + 1, MAX_SIZE)


def discard(task: asyncio.Task[None]) -> None:
    """Cancel a helper task, or mark its error as seen (the connection failed anyway)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def send_view(writer: asyncio.StreamWriter, data: memoryview) -> None:
    for start in range(0, len(data), SEND):
        writer.write(data[start : start + SEND])
        await writer.drain()


async def receive(
    src: Source, reader: asyncio.StreamReader, at: int, size: int, reached: asyncio.Event
) -> tuple[int, bytes, bytes]:
    """Reads until EOF: (bytes read, SHA-256 of the first `size`, up to 64 bytes after them).

    A failure may cut a stream short but never change it, so when the connection fails, or
    ends early, the bytes that did arrive must still be the stream's first bytes.
    """
    hasher, got, tail = hashlib.sha256(), 0, bytearray()
    try:
        while chunk := await reader.read(READ):
            view = memoryview(chunk)
            split = min(max(size - got, 0), len(view))
            hasher.update(view[:split])
            if len(tail) < 64:  # more than 32 is wrong already; no need to keep it all
                tail += view[split : split + 64]
            got += len(view)
            if got >= size:
                reached.set()
    except OSError:
        if hasher.digest() != src.digest(at, min(got, size)):
            raise Lost(f"the first {got} bytes differ, then the connection failed") from None
        raise
    if got < size and hasher.digest() != src.digest(at, got):
        raise Lost(f"the first {got} bytes differ, then EOF")
    return got, hasher.digest(), bytes(tail)


async def bulk_client(
    src: Source, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: Spec
) -> int:
    """exchange: the header, the upload while the download comes, FIN, then the service's
    SHA-256 of the upload. echo: the upload while it comes back, FIN."""
    exchange = spec.kind.startswith("exchange")
    at, size = (spec.down_at, spec.down) if exchange else (spec.up_at, spec.up)
    reached = asyncio.Event()
    if size == 0:
        reached.set()

    async def send() -> None:
        if exchange:
            writer.write(HEADER.pack(spec.up, spec.down, spec.up_at, spec.down_at))
        await send_view(writer, src.slice(spec.up_at, spec.up))
        if spec.kind == "exchange-late-eof":
            # FIN only after the whole download: the answer then follows an idle stream,
            # where the early FIN races a busy one.
            await reached.wait()
        writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        got, digest, tail = await receive(src, reader, at, size, reached)
        if not sender.done():
            raise Truncated("EOF while the client was still sending")
        await sender
    finally:
        discard(sender)
    due = size + 32 if exchange else size
    if got < due:
        raise Truncated(f"EOF after {got} of {due} bytes")
    if got > due:
        raise Lost(f"{got} bytes where {due} were due")
    if digest != src.digest(at, size):
        raise Lost("the bytes received differ")
    if exchange and tail != src.digest(spec.up_at, spec.up):
        raise Lost("the service's SHA-256 of the upload differs")
    return spec.up + size


async def pingpong_client(
    src: Source, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: Spec
) -> int:
    """Interactive echo: each piece must come back before the next goes; then FIN."""
    at = spec.up_at
    for size in spec.rounds:
        piece = src.slice(at, size)
        writer.write(piece)
        await writer.drain()
        if await reader.readexactly(size) != piece:
            raise Lost(f"the echo of the piece at {at - spec.up_at} differs")
        at += size
    writer.write_eof()
    if await reader.read(READ):
        raise Lost("bytes after the last echo")
    return 2 * spec.up


class Services:
    """The exchange and echo services behind home, in this process."""

    def __init__(
        self,
        src: Source,
        killed: Callable[[str, float, float], bool],
        clock: Callable[[], float],
    ) -> None:
        self.src, self.killed, self.clock = src, killed, clock
        self.lost: list[str] = []
        self.cut = 0  # upstreams cut short by home's kill -9 (the kernel's FIN)
        self.servers: list[asyncio.Server] = []

    async def start(self) -> tuple[int, int]:
        for handler in (self._exchange, self._echo):
            self.servers.append(await asyncio.start_server(handler, HOST, 0, limit=4 * MIB))
        exchange, echo = (int(s.sockets[0].getsockname()[1]) for s in self.servers)
        return exchange, echo

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Header (up, down, offsets); sends `down` bytes while it reads until EOF; then the
        SHA-256 of what it read. It knows what the client sent, so it checks that too."""
        accepted = time.monotonic()
        sender: asyncio.Task[None] | None = None
        try:
            up, down, up_at, down_at = HEADER.unpack(await reader.readexactly(HEADER.size))
            if max(up, down) > MAX_SIZE or max(up_at + up, down_at + down) > len(self.src.data):
                self.lost.append(f"{self.clock():.1f}s exchange service: garbled header")
                reset_socket(writer)
                return
            sender = asyncio.create_task(send_view(writer, self.src.slice(down_at, down)))
            got, digest, _ = await receive(self.src, reader, up_at, up, asyncio.Event())
            await sender
            if got != up or digest != self.src.digest(up_at, up):
                # A clean EOF after too few bytes: a real service would have taken them as
                # all there is. Expected only when home itself died: the kernel closes a
                # killed process's sockets with a FIN.
                if got < up and self.killed("home", accepted, time.monotonic()):
                    self.cut += 1
                else:
                    self.lost.append(
                        f"{self.clock():.1f}s exchange service: clean EOF after {got} of {up} bytes"
                    )
                reset_socket(writer)
                return
            writer.write(digest)
            await writer.drain()
            writer.close()
        except Lost as exc:
            self.lost.append(f"{self.clock():.1f}s exchange service: {exc}")
            reset_socket(writer)
        except (OSError, asyncio.IncompleteReadError):
            reset_socket(writer)
        finally:
            if sender is not None:
                discard(sender)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(READ):
                writer.write(chunk)
                await writer.drain()
            writer.close()
        except OSError:
            reset_socket(writer)


def free_port(taken: set[int]) -> int:
    """A free port outside the ephemeral range: the run opens tens of thousands of client
    connections, and one of their local ports could take a listener's port between a
    process's kill and its restart."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    candidates: list[int] = [
        p for p in [*range(20000, lo), *range(hi + 1, 65536)] if p not in taken
    ]
    random.shuffle(candidates)
    for port in candidates[:500]:
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise SoakError("no free port outside the ephemeral range")


def vm_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def tunnels_open(metrics_port: int) -> int:
    """The route's vnet_tunnels_open gauge; -1 when it cannot be read."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(HOST, metrics_port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = await reader.read()
            writer.close()
    except OSError:  # TimeoutError included
        return -1
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("vnet_tunnels_open "):
            return int(float(line.split()[1]))
    return -1


def open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


@dataclass
class Child:
    role: str
    proc: asyncio.subprocess.Process
    log: Path
    asked: bool = False  # we signalled it, so its exit is not a crash

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])


class Fleet:
    """The route and the nodes as real processes, one log file per incarnation."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: dict[str, Child] = {}
        self.started: collections.Counter[str] = collections.Counter()
        self.crashes: list[str] = []
        self.peak_rss: dict[str, tuple[int, int]] = {}  # role -> (KiB, pid)
        self.kills: list[tuple[str, float]] = []
        self.spawns: list[tuple[str, float]] = []

    def killed(self, role: str, start: float, end: float) -> bool:
        """Whether a connection that began at `start` and ended at `end` (seen from this
        process) may have had a killed `role` as its peer: one was killed before the end, and
        the connection began before its replacement was even spawned. Not "after the kill":
        a process dies a moment after SIGKILL, and the kernel completes connections to it
        in the meantime."""
        for at in (at for r, at in self.kills if r == role and at <= end):
            replaced = min((t for r, t in self.spawns if r == role and t > at), default=math.inf)
            if start <= replaced:
                return True
        return False

    async def start(self, role: str) -> Child:
        self.started[role] += 1
        self.spawns.append((role, time.monotonic()))
        log = self.workdir / f"{role}-{self.started[role]}.log"
        program = "vnet-route" if role == "route" else "vnet"
        out = open_log(log)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(BIN / program),
                f"{role}.ini",
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # Its own session: Ctrl-C in the terminal reaches only the soak, which then
                # stops the children itself, in order.
                start_new_session=True,
            )
        finally:
            os.close(out)
        self.children[role] = Child(role, proc, log)
        return self.children[role]

    async def stop(self, role: str, sig: int) -> int | None:
        """Signal, wait (bounded), kill -9 as the last resort; the exit status, if any."""
        child = self.children[role]
        child.asked = True
        for attempt in (sig, signal.SIGKILL):
            if child.proc.returncode is not None:
                break
            if attempt == signal.SIGKILL:
                self.kills.append((role, time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        return child.proc.returncode

    async def wait_for_line(self, role: str, text: str) -> None:
        child = self.children[role]
        deadline = time.monotonic() + READY_TIMEOUT
        while text not in child.log.read_text(errors="replace"):
            if child.proc.returncode is not None:
                raise SoakError(f"{role} exited ({child.proc.returncode}):\n{child.tail()}")
            if time.monotonic() > deadline:
                raise SoakError(f"{role} never logged {text!r}:\n{child.tail()}")
            await asyncio.sleep(0.05)

    def fds(self) -> dict[str, int]:
        return {role: fd_count(child.proc.pid) for role, child in self.children.items()}

    def sample(self) -> None:
        """Once a second: peak RSS, and processes that exited without being asked."""
        for role, child in self.children.items():
            if child.proc.returncode is not None:
                if not child.asked:
                    child.asked = True
                    self.crashes.append(
                        f"{role} (pid {child.proc.pid}) exited with {child.proc.returncode}"
                        f" unasked; its log:\n{child.tail()}"
                    )
                continue
            kib = vm_rss_kib(child.proc.pid)
            if kib > self.peak_rss.get(role, (0, 0))[0]:
                self.peak_rss[role] = (kib, child.proc.pid)


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
    def __init__(self, minutes: float, seed: int, workdir: Path) -> None:
        self.minutes, self.seed, self.workdir = minutes, seed, workdir
        self.rng = random.Random(seed)
        self.src = Source(random.Random(seed))
        self.fleet = Fleet(workdir)
        self.services = Services(self.src, self.fleet.killed, self.elapsed)
        self.ports: dict[tuple[str, int], int] = {}
        self.office_of: dict[int, str] = {}
        self.metrics_port = 0
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
            self.own_rss = max(self.own_rss, vm_rss_kib(os.getpid()))
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
        counts = (self.fleet.fds(), await tunnels_open(self.metrics_port))
        same, deadline = 0, time.monotonic() + 5
        while (same < 5 or counts[1] != 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = (self.fleet.fds(), await tunnels_open(self.metrics_port))
            same = same + 1 if now == counts else 0
            counts = now
        self.paused = was_paused
        self.notify()
        pids = {role: child.proc.pid for role, child in self.fleet.children.items()}
        fds = {role: (n, pids[role], vm_rss_kib(pids[role])) for role, n in counts[0].items()}
        return fds, counts[1]

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
        await self.fleet.start(role)
        record.recovery = await self.recover(since)
        return record

    # --- the run ------------------------------------------------------------

    async def setup(self) -> None:
        exchange_port, echo_port = await self.services.start()
        taken: set[int] = set()
        route_port, self.metrics_port = free_port(taken), free_port(taken)
        route = f"[route]\nip={HOST}\nport={route_port}\n"
        # Its open tunnels, read at quiet moments, must be 0: anything else is a leak.
        (self.workdir / "route.ini").write_text(f"{route}metrics={HOST}:{self.metrics_port}\n")
        (self.workdir / "home.ini").write_text(
            f"{route}[vnet]\nname=home\ngroup=soak\n"
            f"[serve.exchange]\nserveid={EXCHANGE}\nport={exchange_port}\n"
            f"[serve.echo]\nserveid={ECHO}\nport={echo_port}\n"
        )
        for office in OFFICES:
            for serveid in (EXCHANGE, ECHO):
                self.ports[(office, serveid)] = free_port(taken)
                self.office_of[self.ports[(office, serveid)]] = office
            (self.workdir / f"{office}.ini").write_text(
                f"{route}[vnet]\nname={office}\ngroup=soak\n"
                f"[use.exchange]\nserveid={EXCHANGE}\nport={self.ports[(office, EXCHANGE)]}\n"
                f"[use.echo]\nserveid={ECHO}\nport={self.ports[(office, ECHO)]}\n"
            )
        await self.fleet.start("route")
        await self.fleet.wait_for_line("route", "route listening on")
        await self.fleet.start("home")
        for office in OFFICES:
            await self.fleet.start(office)
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
                record = await self.disrupt(*DISRUPTIONS[len(self.disruptions) % 4])
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
        for role in (*OFFICES, "home", "route"):
            if role in self.fleet.children:
                self.final_exits[role] = await self.fleet.stop(role, signal.SIGTERM)
        await self.services.close()


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
        ("command", f"python tools/soak.py --minutes {soak.minutes:g} --seed {soak.seed}"),
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
        "  failed in all  before it: route tunnels, fds (route/home/office-a/office-b)"
    )
    for n, d in enumerate(ds, 1):
        took = "NO" if d.recovery is None else f"{d.recovery:.1f} s"
        caught = [ok for s0, s1, ok in soak.spans if s0 < d.since < s1]
        flight = f"{sum(caught)}/{len(caught) - sum(caught)}"
        failed = sum(d.overlaps(*f) for f in failures)
        fds = "/".join(str(d.quiet[0].get(r, (-1,))[0]) for r in ("route", "home", *OFFICES))
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
    for role in ("route", "home", *OFFICES):
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


async def main_async(minutes: float, seed: int, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vnet-soak-"))
    soak = Soak(minutes, seed, workdir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, soak.interrupted.set)
    try:
        start, end = await soak.run()
    except SoakError as exc:
        print(f"soak: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 2
    report, failures = summary(soak, start, end)
    print(report, flush=True)
    if failures or keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        return 1
    return 130 if soak.interrupted.is_set() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long (default: 3)")
    parser.add_argument("--seed", type=int, help="workload seed (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the logs even if it passes")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be more than 0")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args.minutes, seed, args.keep))
    # Like vnet itself: the client must not be what limits the run on a small machine.
    result: int = uvloop.run(main_async(args.minutes, seed, args.keep))
    return result


if __name__ == "__main__":
    sys.exit(main())
