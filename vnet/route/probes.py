"""Round trips through another node: Ping with via_vnetid, answered by Echo.

A node that paces its bulk tunnels against queueing delay (vnet/core/queueing.py)
needs to time the queues its tunnels pass through: its own link, the route's
socket toward the receiving node, that node's link. A Ping to the route alone
sees only the first; a Ping through the receiving node sees them all, on the
same connections the tunnel's frames use. The route passes the probe on as a
control event and answers the Ping when that node has called Echo.

A node that never answers (one from before Echo existed ignores the event) is
remembered after one silent probe and answered for at once from then on, so an
old peer costs one 2 s wait, not one per probe.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Protocol

from vnet.core.errors import LimitExceeded, NotFound

# Longer than any queue the pacing lets stand (tens of ms), shorter than the
# node's own probe timeout, so a node hears "not echoed" rather than a timeout.
ECHO_TIMEOUT_S = 2.0
# Probes one node may have waiting at once; a governor sends one at a time.
PER_ASKER = 4
# Probes one node may start per second (a governor starts at most 50), with a burst:
# each costs the node it goes through an event and an Echo, so a node that sends
# them in a loop would load another node of its group.
RATE = 100.0
BURST = 20.0


class Peer(Protocol):
    """What the route knows of a node: enough to pass it an event."""

    def push(self, event: bytes) -> None: ...


class Probes:
    """The probes waiting for an Echo, by probe number."""

    def __init__(self, timeout: float = ECHO_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._numbers = itertools.count(1)
        self._waiting: dict[int, tuple[Peer, asyncio.Future[None]]] = {}
        self._asked_by: dict[int, int] = {}
        # Per asker: (tokens, when last counted) of its rate limit.
        self._tokens: weakref.WeakKeyDictionary[object, tuple[float, float]] = (
            weakref.WeakKeyDictionary()
        )
        # Nodes that let a probe time out: answered for from then on.
        self._silent: weakref.WeakSet[Peer] = weakref.WeakSet()
        # Totals for the metrics.
        self.echoed = 0
        self.unanswered = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def ask(self, asker: object, via: Peer, now: float) -> tuple[int, asyncio.Future[None]] | None:
        """Register a probe from asker through via at now: its number and the future its
        Echo sets. None when via is known not to echo (the caller answers at once).
        """
        tokens, then = self._tokens.get(asker, (BURST, now))
        tokens = min(BURST, tokens + (now - then) * RATE)
        if tokens < 1:
            raise LimitExceeded(f"more than {RATE:g} round trips through other nodes a second")
        self._tokens[asker] = (tokens - 1, now)
        if via in self._silent:
            return None
        key = id(asker)
        if self._asked_by.get(key, 0) >= PER_ASKER:
            raise LimitExceeded(f"more than {PER_ASKER} round trips through other nodes at once")
        number = next(self._numbers)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[number] = (via, done)
        self._asked_by[key] = self._asked_by.get(key, 0) + 1
        return number, done

    async def wait(self, asker: object, via: Peer, number: int, done: asyncio.Future[None]) -> bool:
        """Wait for probe number's Echo: True when it came, False after the timeout."""
        try:
            await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            self.unanswered += 1
            self._silent.add(via)
            return False
        finally:
            self._waiting.pop(number, None)
            key = id(asker)
            left = self._asked_by.get(key, 1) - 1
            if left:
                self._asked_by[key] = left
            else:
                self._asked_by.pop(key, None)
        self.echoed += 1
        return True

    def answered(self, by: Peer, number: int) -> None:
        """by's Echo of probe number."""
        waiting = self._waiting.get(number)
        if waiting is None or waiting[0] is not by:
            # Late (after its timeout), or another node's probe: nothing waits for it.
            raise NotFound("no such probe waiting for this vnet")
        if not waiting[1].done():
            waiting[1].set_result(None)
