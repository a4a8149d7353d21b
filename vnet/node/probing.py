"""The node's side of its Governor (vnet/core/queueing.py): the probes that time the
path while bulk tunnels are governed, and the echoes it owes other nodes' probes.

One probe at a time: a Ping through the route and the peer of the busiest bulk
tunnel, on the same connection (and so behind the same queues) as the tunnels'
frames. Idle otherwise: the task sleeps on an event the pacer sets when a tunnel
turns interactive, so a node with no typing and no transfer sends nothing.

While bulk is paced to the path's rate, the node's connection to the route uses a
loss-based congestion control instead of BBR (vnet/core/steering.py says why), and gets
the host's back when pacing ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

from vnet import congestion
from vnet.core.errors import NotFound, VnetError
from vnet.core.queueing import PROBE_GAP_S, Governor, Phase
from vnet.core.steering import Lossy
from vnet.node.client import RouteClient

log = logging.getLogger(__name__)

# Longer than the route's own wait for an echo (2 s): the route answers first.
PROBE_TIMEOUT_S = 3.0


class Prober:
    """Runs the governor's probes for as long as the node runs."""

    def __init__(self, governor: Governor, client: Callable[[], RouteClient]) -> None:
        self.governor = governor
        self._client = client
        self.wake = asyncio.Event()
        # Peers the route answered for alone (they do not echo): probed as the
        # route alone from then on, so their path keeps one base of its own.
        self._silent: set[str] = set()
        # The client whose connection is switched while pacing, and that connection.
        self._steered: RouteClient | None = None
        self._switched: list[congestion.Switched] = []
        # The path's estimate when the connection was switched, and routes found lossy.
        self._capacity = 0.0
        self._lossy: Lossy[str] = Lossy()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:
            # Never leave bulk tunnels paced with nobody timing the path.
            self.governor.halt()
            log.exception("the probes stopped; bulk tunnels are not paced from now on")
        finally:
            self._unsteer()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self.governor.next_probe_in(loop.time())
            await self._steer()
            if wait is None:
                # Not governing: sleep until a tunnel turns interactive.
                self.wake.clear()
                await self.wake.wait()
                continue
            if wait > 0:
                # The probe schedule itself, not synchronisation.
                await asyncio.sleep(wait)
                continue
            peer = self.governor.probe_due(loop.time())
            if peer is None:
                await asyncio.sleep(PROBE_GAP_S)
                continue
            await self._probe(loop, "" if peer in self._silent else peer)

    async def _steer(self) -> None:
        """Switch the connection to the route while bulk is paced to the path's rate, and
        back after (not in the drain: it is short, and on a local path all there is)."""
        now = asyncio.get_running_loop().time()
        client = self._client() if self.governor.phase is Phase.TRACK else None
        if client is not None and self._lossy.spares(client.address, now):
            client = None
        if client is not None and client is self._steered:
            for one in self._switched:
                if one.check(now):
                    # Lossy: left alone a while, and the estimate cubic pulled down restored.
                    self._lossy.found(client.address, now)
                    self.governor.recover(self._capacity)
            return
        self._unsteer()
        if client is None:
            return
        self._steered = client
        self._capacity = self.governor.capacity
        peers = await _resolve(client.address)
        self._switched = congestion.govern(peers)

    def _unsteer(self) -> None:
        congestion.restore(self._switched)
        self._switched, self._steered = [], None

    async def _probe(self, loop: asyncio.AbstractEventLoop, peer: str) -> None:
        sent_at = loop.time()
        # The round trip on a clock of its own: uvloop's loop.time() counts whole
        # milliseconds, which is a tenth of the governor's target in noise alone.
        began = time.perf_counter()
        try:
            if peer:
                echoed = await self._client().ping_via(peer, PROBE_TIMEOUT_S)
            else:
                await self._client().ping(PROBE_TIMEOUT_S)
                echoed = False
        except NotFound:
            # The peer left; the next probe goes through whichever is busiest then.
            self.governor.lost()
            return
        except VnetError as exc:
            log.debug("probe through %s failed: %s", peer or "the route", exc)
            self.governor.lost()
            # Not a tight loop against a route that is down.
            await asyncio.sleep(PROBE_TIMEOUT_S / 3)
            return
        if peer and not echoed:
            # Its round trip may have been the route's 2 s wait for that node.
            self._silent.add(peer)
            self.governor.lost()
            log.info(
                "probes through vnet %s are not echoed (that node or the route is older); "
                "timing the route alone for it",
                peer,
            )
            return
        rtt = time.perf_counter() - began
        now = loop.time()
        g = self.governor
        g.probed(peer, rtt, sent_at, now)
        if log.isEnabledFor(logging.DEBUG):
            # One line a probe: the governor's trace (bench.wan --logs keeps it).
            log.debug(
                "probe via %s at %.3f: rtt %.2f ms, delay %.2f ms, rate %.2f MB/s, "
                "path %.2f MB/s, %s",
                peer or "the route",
                sent_at,
                rtt * 1e3,
                g.delay * 1e3,
                g.rate / 1e6,
                g.capacity / 1e6,
                g.phase.value,
            )


async def _resolve(address: str) -> set[tuple[str, int]]:
    """The (ip, port) pairs a "host:port" target may be connected to."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        return set()
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM
        )
    except OSError:
        return set()
    peers = set()
    for info in found:
        # A scoped IPv6 address ("fe80::1%eth0") is not one getpeername() reports as such.
        with contextlib.suppress(ValueError):
            peers.add((str(ipaddress.ip_address(str(info[4][0]))), int(port)))
    return peers


async def echo(client: RouteClient, probe: int) -> None:
    """Answer another node's probe (an echo_asked event) at once."""
    try:
        await client.echo(probe)
    except VnetError as exc:
        # The route timed the probe out already, or the connection is going:
        # the prober on the other side copes with a missing echo.
        log.debug("echo of probe %s failed: %s", probe, exc)
