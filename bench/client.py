"""The measuring client. It runs in the bench process, never inside a relay.

Plain blocking sockets: sendall() of a prebuilt memoryview and recv_into() release the GIL for
the whole system call, so one Python thread keeps up with direct loopback TCP, and the threads
of the parallel test spend their time in the kernel rather than in the interpreter.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from dataclasses import dataclass

from bench.procs import BenchError
from bench.target import HEADER

Address = tuple[str, int]
CHUNK = 4 * 1024 * 1024
# Per blocking call; a whole measurement has its own deadline on top.
IO_TIMEOUT = 30.0
_PAYLOAD = memoryview(bytes(range(256)) * (CHUNK // 256))


def _connect(addr: Address, timeout: float = IO_TIMEOUT) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A Python-level timeout makes every recv/send a poll() plus the call; kernel timeouts on a
    # blocking socket bound each wait just as well at half the system calls per ping.
    sock.settimeout(None)
    limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise BenchError(f"connection closed after {got} of {n} reply bytes")
        got += k
    return bytes(buf)


def _expect_eof(sock: socket.socket) -> None:
    extra = sock.recv(64)
    if extra:
        raise BenchError(f"expected the server to close, got {len(extra)} more bytes")


def bulk(addr: Address, nbytes: int, deadline_s: float) -> float:
    """Send nbytes to the sink over one connection; MB/s (10^6 bytes) until the sink's ack."""
    deadline = time.perf_counter() + deadline_s
    with _connect(addr) as sock:
        start = time.perf_counter()
        sock.sendall(HEADER.pack(nbytes))
        left = nbytes
        while left:
            n = min(left, CHUNK)
            sock.sendall(_PAYLOAD[:n])
            left -= n
            if time.perf_counter() > deadline:
                raise BenchError(f"bulk transfer to {addr} exceeded {deadline_s:.0f} s")
        (count,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
        elapsed = time.perf_counter() - start
    if count != nbytes:
        raise BenchError(f"sink at {addr} counted {count} bytes, {nbytes} were sent")
    return nbytes / elapsed / 1e6


def ping_pong(addr: Address, rounds: int, warmup: int = 50) -> list[float]:
    """Round-trip times of a 1-byte echo, in microseconds, over one connection."""
    samples: list[float] = []
    buf = bytearray(1)
    with _connect(addr) as sock:
        for i in range(warmup + rounds):
            t0 = time.perf_counter_ns()
            sock.sendall(b"x")
            if sock.recv_into(buf, 1) != 1:
                raise BenchError(f"echo at {addr} closed during ping-pong")
            t1 = time.perf_counter_ns()
            if i >= warmup:
                samples.append((t1 - t0) / 1000)
    return samples


def one_connection(addr: Address) -> float:
    """Open, 1 byte each way, half-close, wait for the far close; microseconds.

    Waiting for the far side's close makes the whole lifetime of a tunnel part of the figure,
    teardown included, and keeps a fast client from piling up tunnels the relay still tears
    down in the background.
    """
    t0 = time.perf_counter_ns()
    with _connect(addr, timeout=10.0) as sock:
        sock.sendall(b"x")
        if _recv_exact(sock, 1) != b"x":
            raise BenchError(f"echo at {addr} answered with a different byte")
        sock.shutdown(socket.SHUT_WR)
        _expect_eof(sock)
    return (time.perf_counter_ns() - t0) / 1000


@dataclass(frozen=True)
class ConnResult:
    per_second: float
    latencies_us: list[float]


def serial_connections(addr: Address, count: int, deadline_s: float) -> ConnResult:
    deadline = time.perf_counter() + deadline_s
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        latencies.append(one_connection(addr))
        if time.perf_counter() > deadline:
            raise BenchError(f"{count} connections to {addr} exceeded {deadline_s:.0f} s")
    return ConnResult(count / (time.perf_counter() - start), latencies)


def parallel_connections(addr: Address, count: int, parallel: int, deadline_s: float) -> ConnResult:
    """count connections, parallel of them in flight at any time; total rate."""
    tickets = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        mine: list[float] = []
        try:
            while not stop.is_set():
                with lock:
                    ticket = next(tickets)
                if ticket >= count:
                    break
                mine.append(one_connection(addr))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            stop.set()
        with lock:
            latencies.extend(mine)

    # Daemon threads: if the run is interrupted, a thread blocked in a socket call must not
    # keep the interpreter alive; socket timeouts end them soon after anyway.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    deadline = start + deadline_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - start
    if any(thread.is_alive() for thread in threads):
        stop.set()
        raise BenchError(f"{count} connections to {addr} exceeded {deadline_s:.0f} s")
    if errors:
        raise BenchError(f"parallel connections to {addr} failed: {errors[0]!r}")
    return ConnResult(count / elapsed, latencies)


def probe_echo(addr: Address) -> None:
    """One byte round trip; raises OSError or BenchError until the path works end to end."""
    with _connect(addr, timeout=2.0) as sock:
        sock.sendall(b"r")
        if _recv_exact(sock, 1) != b"r":
            raise BenchError("echo answered with a different byte")


def probe_sink(addr: Address) -> None:
    with _connect(addr, timeout=2.0) as sock:
        sock.sendall(HEADER.pack(1) + b"r")
        (count,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
        if count != 1:
            raise BenchError(f"sink counted {count} bytes, not 1")


def probe_listen(addr: Address) -> None:
    with contextlib.closing(socket.create_connection(addr, timeout=2.0)):
        pass


def concurrent_bulk(addr: Address, total: int, conns: int, deadline_s: float) -> float:
    """conns connections each send total/conns bytes to the sink at once; total MB/s.

    All connections are open before the clock starts, and the clock stops at the last
    sink's ack: the figure is what the path carries in aggregate, not connection setup.
    """
    each = total // conns
    socks = [_connect(addr) for _ in range(conns)]
    errors: list[BaseException] = []
    gate = threading.Barrier(conns + 1, timeout=IO_TIMEOUT)

    def send(sock: socket.socket) -> None:
        try:
            gate.wait()
            sock.sendall(HEADER.pack(each))
            left = each
            while left:
                n = min(left, CHUNK)
                sock.sendall(_PAYLOAD[:n])
                left -= n
            (count,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
            if count != each:
                raise BenchError(f"sink counted {count} bytes, {each} were sent")
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in socks]
    try:
        for thread in threads:
            thread.start()
        gate.wait()
        start = time.perf_counter()
        deadline = start + deadline_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        elapsed = time.perf_counter() - start
    finally:
        # Closing unblocks any thread still in a socket call, so none outlives the test.
        for sock in socks:
            sock.close()
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"{conns} concurrent bulk transfers to {addr} exceeded {deadline_s:.0f} s")
    if errors:
        raise BenchError(f"concurrent bulk to {addr} failed: {errors[0]!r}")
    return each * conns / elapsed / 1e6


class Background:
    """A bulk transfer to the sink that runs until stop(), in a thread of its own.

    It declares an endless length and just stops sending, so there is no gap between
    transfers while something else is measured next to it.
    """

    def __init__(self, addr: Address) -> None:
        self.sock = _connect(addr)
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        try:
            self.sock.sendall(HEADER.pack(2**62))
            while not self._stop.is_set():
                self.sock.sendall(_PAYLOAD[: 1024 * 1024])
                self.sent += 1024 * 1024
        except OSError as exc:
            if not self._stop.is_set():
                self.error = exc

    def wait_flowing(self, nbytes: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < nbytes:
            if self.error is not None or time.monotonic() > deadline:
                raise BenchError(f"background bulk did not get going: {self.error!r}")
            time.sleep(0.01)

    def stop(self) -> int:
        """Stop and return how many bytes were sent; raises if the transfer broke."""
        self._stop.set()
        self._thread.join(IO_TIMEOUT + 5)
        self.sock.close()
        if self.error is not None:
            raise BenchError(f"background bulk failed: {self.error!r}")
        return self.sent
