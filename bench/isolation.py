"""One stalled reader must not slow the other tunnels (the original vnet's flaw).

On the vnet path: measure bulk throughput, 1-byte ping-pong and the route's
Ping RPC unloaded; then open one more tunnel to the echo service, push
256 MiB into it and never read the echoes, so the echo service's replies pile
up against a reader that has stopped; and measure the same again while it
stays stalled. The route's memory is read before and during.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from dataclasses import dataclass

from bench import client
from bench.client import Address
from bench.paths import BenchPath
from bench.procs import BenchError
from harness.procs import rss_kib

STALL_BYTES = 256 * 1024 * 1024
CONTROL_PINGS = 50


class Stall:
    """A connection that writes and never reads, from a thread of its own."""

    def __init__(self, addr: Address) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.sent = 0
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        block = bytes(1024 * 1024)
        # Unbounded blocking would outlive the run; 10 s without progress ends it.
        self.sock.settimeout(10)
        try:
            while self.sent < STALL_BYTES:
                self.sent += self.sock.send(block)
                self.last_progress = time.monotonic()
        except OSError:
            pass

    def stalled(self, quiet: float = 1.0) -> bool:
        """True once nothing more has gone out for `quiet` seconds: every buffer is full."""
        return time.monotonic() - self.last_progress > quiet

    def close(self) -> None:
        self.sock.close()
        self._thread.join(15)


def _control_pings(route: Address) -> list[float]:
    """Round trips of the route's Ping RPC, in microseconds."""
    from vnet.node.client import RouteClient

    async def run() -> list[float]:
        rc = RouteClient(f"{route[0]}:{route[1]}")
        try:
            await rc.connect(10)
            await rc.join("bench-isolation", "bench")
            return [await rc.ping() * 1e6 for _ in range(CONTROL_PINGS)]
        finally:
            await rc.close()

    return asyncio.run(run())


@dataclass
class Figures:
    bulk: float
    ping_p50: float
    ping_p99: float
    control_p50: float
    control_max: float
    route_rss: float


def _measure(path: BenchPath, nbytes: int, pings: int) -> Figures:
    assert path.route is not None
    bulk = client.bulk(path.sink, nbytes, 120.0)
    samples = sorted(client.ping_pong(path.echo, pings))
    control = sorted(_control_pings(path.route))
    return Figures(
        bulk=bulk,
        ping_p50=statistics.median(samples),
        ping_p99=samples[min(len(samples) - 1, int(0.99 * len(samples)))],
        control_p50=statistics.median(control),
        control_max=control[-1],
        route_rss=rss_kib(path.processes["vnet route"]) / 1024,
    )


def run(path: BenchPath, bulk_mib: int, pings: int) -> tuple[list[str], list[list[str]]]:
    """The isolation table: each figure unloaded, with a stalled reader, and the ratio."""
    nbytes = bulk_mib * 1024 * 1024
    before = _measure(path, nbytes, pings)
    stall = Stall(path.echo)
    try:
        deadline = time.monotonic() + 60
        while not stall.stalled():
            if time.monotonic() > deadline:
                raise BenchError("the stalled tunnel kept moving for 60 s")
            time.sleep(0.1)
        during = _measure(path, nbytes, pings)
        held = stall.sent
    finally:
        stall.close()
    rows: list[tuple[str, float, float]] = [
        ("bulk on another tunnel (MB/s)", before.bulk, during.bulk),
        ("ping-pong p50 on another tunnel (us)", before.ping_p50, during.ping_p50),
        ("ping-pong p99 on another tunnel (us)", before.ping_p99, during.ping_p99),
        ("route Ping RPC p50 (us)", before.control_p50, during.control_p50),
        ("route Ping RPC max (us)", before.control_max, during.control_max),
        ("route RSS (MiB)", before.route_rss, during.route_rss),
    ]
    table = [[name, f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}x" if a else "-"] for name, a, b in rows]
    table.append(
        ["bytes the stalled tunnel took before it stopped (MiB)", "-", f"{held / 2**20:,.0f}", "-"]
    )
    return ["measurement", "unloaded", "one reader stalled", "ratio"], table
