"""The open_tunnel path of a new tunnel: ask the serving node, wait for its Accept.

The Dial's handler (vnet.route.service) takes this path when the serve's node
holds no spare Accept stream (vnet.route.spares): it pushes an open_tunnel
event on the node's Control stream and waits for the node's Accept call,
which makes the splice (RouteServicer.Accept) and hands it over here, until
the Rendezvous's deadline for it (moved by each Accept the node makes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from vnet.core.sessions import Pending
from vnet.route.splice import Splice, lost_if_made
from vnet.wire import route_messages as msg

if TYPE_CHECKING:
    from vnet.core.registry import Serve
    from vnet.route.link import Link
    from vnet.route.service import RouteServicer


@dataclass(eq=False)
class Handover:
    """How a waiting Dial gets the splice the serving node's Accept makes."""

    ctx: grpc.aio.ServicerContext[bytes, bytes]
    splice: asyncio.Future[Splice]


async def ask(
    s: RouteServicer,
    link: Link,
    owner: Link,
    serve: Serve,
    context: grpc.aio.ServicerContext[bytes, bytes],
    tunnel_id: str,
) -> Splice:
    """The splice owner's Accept makes after an open_tunnel event for tunnel_id."""
    now = s.clock()
    pending = s.pending.add(tunnel_id, owner.core, link.core, serve.serveid, now)
    made: asyncio.Future[Splice] = asyncio.get_running_loop().create_future()
    s.handovers[pending] = Handover(context, made)
    owner.answers.asked(tunnel_id, now)
    owner.push(msg.open_tunnel_event(tunnel_id, serve.serveid, link.vnet.vnetid))
    try:
        if not await _answered(s, made, pending):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"vnet {serve.vnetid} did not accept the tunnel to serveid {serve.serveid}",
            )
        splice = made.result()
    except asyncio.CancelledError:
        # Gone after Accept made the splice: its pump will never run here.
        await lost_if_made(made, lambda splice: splice.dial)
        raise
    finally:
        s.pending.forget(pending)
        s.handovers.pop(pending, None)
    return splice


async def _answered(s: RouteServicer, made: asyncio.Future[Splice], pending: Pending) -> bool:
    """Wait for made; False once the Rendezvous's deadline for it passes.

    Each Accept from its node moves that deadline (Rendezvous.deadline).
    """
    while not made.done():
        now = s.clock()
        deadline = s.pending.deadline(pending)
        if now >= deadline:
            return False
        # asyncio.wait: no task per waiting tunnel, and made is not cancelled.
        await asyncio.wait((made,), timeout=deadline - now)
    return True
