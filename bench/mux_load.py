"""The load generator of `bench.mux`, a child process of its own: real TCP clients of one path.

It reads one test per line on stdin, warms up, says "warm", waits for "go" (the parent reads
the CPU counters in between), runs the test and says "done {json}". Every reply is compared
byte for byte with what was sent (each request carries its connection and sequence number, so
bytes delivered to the wrong logical tunnel fail too); a mismatch says "error ..." and ends
the run. Tests (PORT: the path's local port on 127.0.0.1):

    ping PORT ROUNDS          1-byte ping-pong on one connection (blocking socket): p50/p99 us
    many PORT CONNS SECONDS DEPTH   CONNS connections doing 32-byte request/response back to
                              back, DEPTH requests at a time (1, or 16 as `redis-benchmark -P 16`)
    hol PORT ROUNDS SECONDS   1-byte ping-pong on one connection while another moves bulk data
                              both ways (every byte checked): p50/p99 us, and the bulk's MB/s
    conns PORT PARALLEL SECONDS   a new connection per request (connect, 32 bytes each way,
                              half-close, the far end's close), PARALLEL at a time
    idle PORT N               N connections, each one byte each way, then held until "close"
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable

from bench.datapath import _line, _percentile, _say
from bench.procs import HOST, BenchError

TIMEOUT = 30.0
WARM_S = 0.5
PING_WARMUP = 200
SIZE = 32
# The bulk connection's reads and writes, and what it moves before the pings start.
READ = 64 * 1024
HOL_WARM = 4 * 1024 * 1024
# Idle connections opened at once.
BATCH = 64
_PAD = bytes(range(256))


def _request(conn: int, seq: int) -> bytes:
    return struct.pack("!II", conn, seq) + _PAD[: SIZE - 8]


def _ping(port: int, rounds: int, until: float = float("inf")) -> list[float]:
    """Round-trip times of rounds 1-byte pings (fewer if the clock passes until)."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    with sock:
        for i in range(rounds):
            if i and time.perf_counter() > until:
                break
            byte = bytes([i % 251])
            start = time.perf_counter()
            sock.sendall(byte)
            got = sock.recv(1)
            out.append(time.perf_counter() - start)
            if got != byte:
                raise BenchError(f"ping {i}: sent {byte!r}, got {got!r}")
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> None:
    writer.write(req)
    try:
        got = await asyncio.wait_for(reader.readexactly(len(req)), TIMEOUT)
    except asyncio.IncompleteReadError as exc:
        raise BenchError(f"the connection ended after {len(exc.partial)} reply bytes") from None
    if got != req:
        raise BenchError(f"a {len(req)}-byte request came back as other bytes: {got[:12]!r}...")


async def _many(port: int, conns: int, depth: int, stop: float) -> int:
    """Every connection sends depth requests at once (as `redis-benchmark -P`) and waits for
    all their replies, back to back until stop; the requests answered."""

    async def one(index: int) -> int:
        reader, writer = await asyncio.open_connection(HOST, port)
        seq = 0
        try:
            while time.perf_counter() < stop:
                await _exchange(
                    reader, writer, b"".join(_request(index, seq + i) for i in range(depth))
                )
                seq += depth
        finally:
            writer.close()
        return seq

    return sum(await asyncio.gather(*(one(i) for i in range(conns))))


# A number for every connection of the conns test, carried in its request.
_serial = [0]


async def _conns(port: int, parallel: int, stop: float) -> int:
    async def worker(index: int) -> int:
        done = 0
        while time.perf_counter() < stop:
            _serial[0] += 1
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), TIMEOUT)
            try:
                await _exchange(reader, writer, _request(index, _serial[0]))
                writer.write_eof()
                extra = await asyncio.wait_for(reader.read(64), TIMEOUT)
                if extra:
                    raise BenchError(f"{len(extra)} bytes after the reply, not the far end's close")
            finally:
                writer.close()
            done += 1
        return done

    return sum(await asyncio.gather(*(worker(i) for i in range(parallel))))


async def _idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    held: list[asyncio.StreamWriter] = []

    async def one(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        held.append(writer)
        req = bytes([index % 251])
        await _exchange(reader, writer, req)

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + BATCH))))
    return held


def _pattern_at(pos: int, size: int) -> memoryview:
    return _BULK[pos % 256 : pos % 256 + size]


_BULK = memoryview(_PAD * (READ // 256 + 2))


def _bulk(
    port: int, stop: threading.Event, moved: list[int], warmed: threading.Event
) -> Callable[[], int]:
    """One connection sending the byte pattern flat out until stop, the echo read back and
    checked by a second thread; returns a join() that half-closes and gives the bytes echoed."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    errors: list[BaseException] = []

    def send() -> None:
        pos = 0
        try:
            while not stop.is_set():
                sock.sendall(_pattern_at(pos, READ))
                pos += READ
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append(exc)

    def receive() -> None:
        try:
            while data := sock.recv(READ):
                if data != _pattern_at(moved[0], len(data)):
                    raise BenchError(f"the bulk echo differs after {moved[0]:,} bytes")
                moved[0] += len(data)
                if moved[0] >= HOL_WARM:
                    warmed.set()
        except (OSError, BenchError) as exc:
            errors.append(exc)
        # Also when it failed: the waiter sees how far it got.
        warmed.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (send, receive)]
    for thread in threads:
        thread.start()

    def join() -> int:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
        sock.close()
        if errors:
            raise BenchError(f"the bulk connection failed: {errors[0]!r}")
        if any(thread.is_alive() for thread in threads):
            raise BenchError("the bulk connection did not end")
        return moved[0]

    return join


async def _hol(port: int, rounds: int, seconds: float) -> dict[str, float]:
    """1-byte ping-pong on one connection while another moves bulk data both ways, for rounds
    round trips or seconds, whichever ends first."""
    stop, moved, warmed = threading.Event(), [0], threading.Event()
    join = _bulk(port, stop, moved, warmed)
    try:
        await asyncio.to_thread(warmed.wait, TIMEOUT)
        if moved[0] < HOL_WARM:
            raise BenchError(f"the bulk connection moved {moved[0]:,} bytes in {TIMEOUT:.0f} s")
        _say("warm")
        await _line()
        start, first = time.perf_counter(), moved[0]
        times = _ping(port, rounds, start + seconds)
        rate = (moved[0] - first) / (time.perf_counter() - start) / 1e6
    finally:
        join()
    return {
        "p50": _percentile(times, 0.5) * 1e6,
        "p99": _percentile(times, 0.99) * 1e6,
        "count": float(len(times)),
        "mbps": rate,
    }


async def _phased(run: Callable[[float], Awaitable[int]], seconds: float) -> dict[str, float]:
    await run(time.perf_counter() + WARM_S)
    _say("warm")
    await _line()
    start = time.perf_counter()
    count = await run(start + seconds)
    return {"count": float(count), "seconds": time.perf_counter() - start}


async def serve() -> None:
    while True:
        test, *args = (await _line()).split()
        port = int(args[0])
        try:
            if test == "ping":
                rounds = int(args[1])
                _ping(port, PING_WARMUP)
                _say("warm")
                await _line()
                times = _ping(port, rounds)
                result = {
                    "p50": _percentile(times, 0.5) * 1e6,
                    "p99": _percentile(times, 0.99) * 1e6,
                }
                result["count"] = float(rounds)
            elif test == "many":
                conns, seconds, depth = int(args[1]), float(args[2]), int(args[3])
                result = await _phased(functools.partial(_many, port, conns, depth), seconds)
            elif test == "hol":
                result = await _hol(port, int(args[1]), float(args[2]))
            elif test == "conns":
                parallel, seconds = int(args[1]), float(args[2])
                result = await _phased(functools.partial(_conns, port, parallel), seconds)
            else:
                held = await _idle(port, int(args[1]))
                _say("warm")
                await _line()
                for writer in held:
                    writer.close()
                result = {"count": float(len(held))}
        except (OSError, BenchError, TimeoutError) as exc:
            _say(f"error {test} {' '.join(args[1:])}: {type(exc).__name__}: {exc}")
            return
        _say("done " + json.dumps(result))
