"""How a route's tunnels and the route itself end, apart from a node's own fin or reset.

The half-close reaper (vnet.route.splice.reap) resets tunnels that one side
closed and then left silent; go_away tells every node the route is stopping and gives the
tunnels a grace to finish. Both work on a RouteServicer's tables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from vnet.route.splice import reap
from vnet.wire import route_messages as msg

if TYPE_CHECKING:
    from vnet.route.service import RouteServicer

log = logging.getLogger(__name__)


async def reap_half_closed(servicer: RouteServicer) -> None:
    """Reset tunnels closed one way and then silent past the limit (splice.reap)."""
    await reap(servicer.splices, servicer.timeouts.half_close_idle)


async def go_away(servicer: RouteServicer, reason: str) -> None:
    """Tell every node the route is stopping; let tunnels finish for a while."""
    grace = servicer.timeouts.stop_grace
    # New tunnels are still accepted: a short connection can finish in
    # the grace (measured with make soak: refusing them failed more).
    servicer.stopping = True
    event = msg.going_away_event(reason, int(grace * 1000))
    for link in servicer.sessions.values():
        link.push(event)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waits = [s.closed_future() for s in servicer.splices]
    if waits:
        _, unfinished = await asyncio.wait(waits, timeout=grace)
        for waiting in unfinished:
            waiting.cancel()
    if servicer.splices:
        log.info(
            "resetting %d tunnel(s) still open after %.1fs",
            len(servicer.splices),
            loop.time() - started,
        )
