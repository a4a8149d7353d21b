"""The measurements of the WAN benchmark, run from the office namespace against one path.

Bulk throughput and the unloaded ping reuse bench/client.py; what is new here is time to first
byte, a download client, and the loaded ping: a ping-pong that runs before, during and after a
bulk transfer on another connection of the same path, with every round trip time-stamped so the
queue can be seen building and draining.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import client
from bench.client import Address
from bench.procs import BenchError

# (seconds since the transfer started, round trip in ms), one per ping.
Timeline = list[tuple[float, float]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ping_ms(addr: Address, rounds: int) -> list[float]:
    return [us / 1000 for us in client.ping_pong(addr, rounds, warmup=3)]


def first_byte_ms(addr: Address, count: int) -> list[float]:
    """Connect, send 1 byte, read its echo: ms from connect() to the echoed byte, count times.

    The whole of what a new connection costs before any answer arrives: for direct TCP the
    handshake and one round trip, for a tunnel whatever it does to open one as well.
    """
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection(addr, timeout=client.IO_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise BenchError(f"echo at {addr} answered with a different byte or closed")
            out.append((time.perf_counter() - t0) * 1000)
    return out


class MemoryWatch:
    """Samples the host's TCP memory in a thread while a row runs: was the host (other work
    on it) in TCP memory pressure at any point?"""

    def __init__(self, sample: Callable[[], tuple[int, int, int]], every: float = 0.1) -> None:
        self.peak, self.mark, self._entries0 = sample()
        self.entries = 0
        self._sample, self._every = sample, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            now, self.mark, entries = self._sample()
            self.peak = max(self.peak, now)
            self.entries = entries - self._entries0

    def stop(self) -> bool:
        """True when the host's TCP memory reached the pressure mark, or the machine entered
        memory pressure, during the row."""
        self._stop.set()
        self._thread.join(5)
        now, self.mark, entries = self._sample()
        self.peak, self.entries = max(self.peak, now), entries - self._entries0
        return self.peak >= self.mark or self.entries > 0


class Download:
    """Reads an endless stream from the source until stop(); counts what arrived."""

    def __init__(self, addr: Address) -> None:
        self.sock = socket.create_connection(addr, timeout=client.IO_TIMEOUT)
        self.received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pull, daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        buf = memoryview(bytearray(1024 * 1024))
        try:
            while not self._stop.is_set():
                n = self.sock.recv_into(buf)
                if n == 0:
                    raise BenchError("the source closed the download")
                self.received += n
        except (OSError, BenchError) as exc:
            if not self._stop.is_set():
                self.error = exc

    @property
    def count(self) -> int:
        return self.received

    def stop(self) -> int:
        self._stop.set()
        # Unblocks recv_into; closing with unread data resets the connection, as a user
        # cancelling a download does.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(client.IO_TIMEOUT + 5)
        self.sock.close()
        if self.error is not None:
            raise BenchError(f"download failed: {self.error!r}")
        return self.received


class Upload:
    """bench.client.Background (a sink transfer that runs until stopped), with a count."""

    def __init__(self, addr: Address) -> None:
        self.flow = client.Background(addr)

    @property
    def count(self) -> int:
        return self.flow.sent

    def stop(self) -> int:
        return self.flow.stop()


class Pinger:
    """A 1-byte ping-pong in a thread of its own, every round trip time-stamped."""

    def __init__(self, addr: Address) -> None:
        self.sock = client._connect(addr)
        self.samples: list[tuple[float, float]] = []  # (perf_counter at send, ms)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(1)
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                self.sock.sendall(b"x")
                if self.sock.recv_into(buf, 1) != 1:
                    raise BenchError("echo closed during the loaded ping-pong")
                self.samples.append((t0, (time.perf_counter() - t0) * 1000))
        except (OSError, BenchError) as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(client.IO_TIMEOUT + 5)
        self.sock.close()
        if self.error is not None:
            raise BenchError(f"loaded ping-pong failed: {self.error!r}")


@dataclass
class Loaded:
    p50: float
    p99: float
    pings: int
    mbps: float
    timeline: Timeline = field(default_factory=list)
    # When the transfer stopped, seconds since it started (the timeline's x axis).
    load_s: float = 0.0
    # When it started, on time.perf_counter() (CLOCK_MONOTONIC, as the vnet processes'
    # loop.time() in their logs), so a trace can be lined up with the governor's.
    began: float = 0.0


@dataclass(frozen=True)
class LoadPlan:
    before_s: float  # ping alone first: the unloaded level on the chart
    load_s: float  # how long the transfer runs
    settle_s: float  # start of the window the figures come from, after the transfer began
    after_max_s: float  # ping on after the transfer until the queue drained, at most this


def loaded(
    echo: Address,
    start_flow: Callable[[], Upload | Download],
    plan: LoadPlan,
    snapshot: Callable[[], None] | None = None,
    received: Callable[[], int] | None = None,
    drained: Callable[[], bool] | None = None,
) -> Loaded:
    """The ping-pong next to a transfer. p50/p99 and throughput come from the window
    [settle_s, load_s] after the transfer started: its steady state, not its ramp.

    received: the receiving end's byte count, when the receiver is not this process (an
    upload); by default the flow's own count. drained: true once no hop holds bytes of the
    transfer any more; waited for (within after_max_s) both before and after, so that no
    measurement starts on a link still busy with the previous one's leftovers."""
    deadline = time.perf_counter() + plan.after_max_s
    while drained is not None and not drained() and time.perf_counter() < deadline:
        time.sleep(0.2)
    pinger = Pinger(echo)
    flow: Upload | Download | None = None
    try:
        # These sleeps are the experiment's phases, not synchronisation.
        time.sleep(plan.before_s)
        before = [ms for _, ms in pinger.samples]
        flow = start_flow()
        began = time.perf_counter()
        time.sleep(plan.settle_s)
        count = received or (lambda: flow.count if flow is not None else 0)
        w0, c0 = time.perf_counter(), count()
        middle = (plan.load_s - plan.settle_s) / 2
        time.sleep(middle)
        if snapshot is not None:
            snapshot()
        time.sleep(max(0.0, began + plan.load_s - time.perf_counter()))
        w1, c1 = time.perf_counter(), count()
        flow.stop()
        flow = None
        ended = time.perf_counter()
        # Until three pings in a row are back near the unloaded level: the queue drained, and
        # the next measurement starts on an empty link.
        calm = (statistics.median(before) if before else 0.0) + 5.0
        deadline = ended + plan.after_max_s
        while time.perf_counter() < deadline:
            if pinger.error is not None:
                break
            recent = [ms for t, ms in pinger.samples if t > ended][-3:]
            if len(recent) == 3 and max(recent) <= calm and (drained is None or drained()):
                break
            time.sleep(0.1)
    finally:
        if flow is not None:
            with contextlib.suppress(BenchError):
                flow.stop()
        pinger.stop()
    window = [ms for t, ms in pinger.samples if w0 <= t <= w1]
    if not window:
        raise BenchError("no ping-pong round trip completed during the transfer")
    return Loaded(
        p50=statistics.median(window),
        p99=percentile(window, 0.99),
        pings=len(window),
        mbps=(c1 - c0) / (w1 - w0) / 1e6,
        timeline=[(t - began, ms) for t, ms in pinger.samples],
        load_s=ended - began,
        began=began,
    )
