"""The route's side of vnet/core/steering.py: while other nodes' probes pass through a node,
the route's connection toward that node (the one their governed bulk tunnels fill) uses a
loss-based congestion control instead of BBR, until HOLD_S after the last probe.

The route does not know a node's governor, only that its probes go through a node: they
come every round trip while bulk is governed, and once a second on a path too short to
govern, whose connection is left alone (Holds pairs the probes).
"""

from __future__ import annotations

import asyncio
import logging

from vnet import congestion
from vnet.core.steering import Holds, Lossy

log = logging.getLogger(__name__)


class Steering:
    """The route's connections switched while probes pass through their node."""

    def __init__(self) -> None:
        # By gRPC peer string ("ipv4:10.0.0.2:4711"): one per node connection.
        self.holds: Holds[str] = Holds()
        # Connections found lossy while switched: left alone a while (vnet/core/steering.py).
        self.lossy: Lossy[str] = Lossy()
        self._switched: dict[str, list[congestion.Switched]] = {}
        # Scans under way in a thread, by peer.
        self._finding: dict[str, asyncio.Future[list[congestion.Switched]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def probed(self, peer: str) -> None:
        """A probe went through the node at peer (its connection's gRPC peer string)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self.holds.mark(peer, now):
            for one in self._switched.get(peer, ()):
                if one.check(now):
                    self.lossy.found(peer, now)
            return
        if self.lossy.spares(peer, now):
            return
        far = congestion.peer_of(peer)
        if far is not None and peer not in self._finding:
            # In a thread: the scan reads every descriptor of the process, ~20 ms at 2,000
            # connections, and on the loop that would stop every tunnel of the route as long
            # (the kind of stall a keystroke next to a transfer feels; vnet/gcpause.py).
            found = loop.run_in_executor(None, congestion.govern, {far})
            self._finding[peer] = found
            found.add_done_callback(lambda done: self._found(peer, done))
        if self._timer is None:
            self._arm(loop)

    def _found(self, peer: str, found: asyncio.Future[list[congestion.Switched]]) -> None:
        """The scan for peer's connection ended: keep what it switched while the hold lasts,
        put it back at once if the hold ran out meanwhile."""
        self._finding.pop(peer, None)
        if found.cancelled():
            return
        error = found.exception()
        if error is not None:
            log.warning("switching the connection to %s failed: %s", peer, error)
            return
        switched = found.result()
        if peer in self.holds:
            congestion.restore(self._switched.pop(peer, []))
            self._switched[peer] = switched
        else:
            congestion.restore(switched)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self.holds.next_due()
        if due == float("inf"):
            self._timer = None
            return
        self._timer = loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        for peer in self.holds.due(loop.time()):
            congestion.restore(self._switched.pop(peer, []))
        self._arm(loop)
