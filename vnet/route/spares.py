"""Spare Accept streams: opened by a serving node ahead of time, given to the next Dials.

Without spares a tunnel is a chain: a Dial, an open_tunnel event on the
serving node's Control stream, that node's Accept, a splice. A spare is an
Accept the node opened before any Dial (metadata vnet-spare = the serveid):
the route holds it here, per (session, serveid), and a Dial to that serve
takes one, writes it an `opened` frame naming the tunnel (the node's first
message on it: tunnel id and dialling vnetid) and splices at once; the node
answers with an `accepted` frame, its first message, which the route reads
and does not forward (without it in the accept timeout the tunnel is reset). That takes
the control round trip, and the node's call set-up, off the tunnel's
critical path. With none held (spares off, an old node, a burst that drained
them) the Dial takes the open_tunnel path as before.

An idle spare is one held server call whose handler waits on a future: no
splice, no task, no tunnel of the node's cap (vnet.core.sessions
Session.tunnels counts it once it carries a tunnel), and no open_tunnel
request the fail-fast rule (vnet.core.unanswered) waits for; a spare given a
tunnel is one, until its accepted frame. The route ends
a serve's spares with a status when the serve is withdrawn, and all of a
session's when it ends; a route stopping ends them with the sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from vnet import wire
from vnet.core.errors import InvalidRequest, LimitExceeded, NotFound, RouteUnavailable, VnetError
from vnet.core.limits import SERVEID_MAX, SPARES_MAX
from vnet.core.sessions import Session
from vnet.route import rpc as route_rpc
from vnet.route.admission import metadata
from vnet.route.splice import Splice, lost_if_made

if TYPE_CHECKING:
    from vnet.core.registry import Serve
    from vnet.route.link import Link
    from vnet.route.service import RouteServicer

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Spare:
    """One held spare: its call, and the future its handler waits on for a splice
    (an exception instead ends the spare with that error's status)."""

    ctx: grpc.aio.ServicerContext[bytes, bytes]
    given: asyncio.Future[Splice]


class Spares:
    """The spares a route holds, per (session, serveid), oldest first."""

    def __init__(self) -> None:
        self._held: dict[tuple[Session, int], deque[Spare]] = {}
        # For the metrics: spares held now, and tunnels given to one so far.
        self.held = 0
        self.used = 0

    def add(
        self, session: Session, serveid: int, ctx: grpc.aio.ServicerContext[bytes, bytes]
    ) -> Spare:
        pool = self._held.setdefault((session, serveid), deque())
        if len(pool) >= SPARES_MAX:
            raise LimitExceeded(
                f"this vnet holds {len(pool)} spares for serveid {serveid}, the most allowed"
            )
        spare = Spare(ctx, asyncio.get_running_loop().create_future())
        pool.append(spare)
        self.held += 1
        return spare

    def count(self, session: Session, serveid: int) -> int:
        pool = self._held.get((session, serveid))
        return 0 if pool is None else len(pool)

    def remove(self, session: Session, serveid: int, spare: Spare) -> None:
        """spare's handler ended while it was held (its node cancelled it)."""
        pool = self._held.get((session, serveid))
        if pool is None or spare not in pool:
            return
        pool.remove(spare)
        self.held -= 1
        if not pool:
            del self._held[(session, serveid)]

    def take(self, session: Session, serveid: int) -> Spare | None:
        """The oldest live spare of the serve, out of the pool; None when there is none."""
        pool = self._held.get((session, serveid))
        while pool:
            spare = pool.popleft()
            self.held -= 1
            if not pool:
                del self._held[(session, serveid)]
            if not spare.given.done() and not spare.ctx.done():
                return spare
        return None

    def end(self, session: Session, serveid: int | None, why: VnetError) -> int:
        """End the spares of session's serveid (None: all of session's) with why's status."""
        keys = [k for k in self._held if k[0] is session and serveid in (None, k[1])]
        ended = 0
        for key in keys:
            for spare in self._held.pop(key):
                self.held -= 1
                ended += 1
                if not spare.given.done():
                    spare.given.set_exception(why)
        return ended


def end_serve(s: RouteServicer, serve: Serve, why: str) -> None:
    """End the spares held for serve (withdrawn). A serve its node registers again
    (new address, same serveid) keeps them: the node reads its serves at each tunnel."""
    found = s.table.of_vnet(serve.vnetid)
    if found is not None:
        s.spares.end(found, serve.serveid, NotFound(f"serveid {serve.serveid}: {why}"))


def _spare_serveid(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= SERVEID_MAX:
        raise InvalidRequest(f"{wire.MD_SPARE} must be a serveid 1-{SERVEID_MAX}, not {raw[:20]!r}")
    return int(raw)


async def hold(s: RouteServicer, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    """The Accept handler of a spare: held until a Dial gives it a tunnel, then
    this handler pumps the serving node's stream as Accept's does."""
    try:
        link = s._session(context)
        serveid = _spare_serveid(metadata(context, wire.MD_SPARE))
        if s.refusing or s.stopping:
            raise RouteUnavailable(s.refusing or "the route is stopping")
        if not s.registry.owns(link.vnet.vnetid, serveid):
            raise NotFound(f"serveid {serveid} is not registered by this vnet")
        session = link.core
        spare = s.spares.add(session, serveid, context)
    except VnetError as exc:
        await route_rpc.refuse(context, exc, s.rejected)
    try:
        splice = await spare.given
    except VnetError as exc:
        # Ended by the route (serve withdrawn, session over): not a refusal.
        await context.abort(wire.status_of(exc), str(exc))
    except asyncio.CancelledError:
        s.spares.remove(session, serveid, spare)
        # Given a tunnel just as its node went: its pump will never run here.
        await lost_if_made(spare.given, lambda splice: splice.accept)
        raise
    del spare
    session.tunnels += 1
    try:
        await _taken(s, link, splice, context)
        await splice.run(splice.accept)
    finally:
        session.tunnels -= 1
    await route_rpc.end_unless_told(splice.accept, context)


async def _taken(
    s: RouteServicer,
    link: Link,
    splice: Splice,
    context: grpc.aio.ServicerContext[bytes, bytes],
) -> None:
    """Read the node's accepted frame, its answer to the opened one: the node is
    alive, as an Accept call shows on the open_tunnel path. Without it in the
    accept timeout (a frozen node), or with anything else first, the tunnel is
    reset; the pump that runs next then only winds it up."""
    why = ""
    try:
        async with asyncio.timeout(s.timeouts.accept):
            first = await context.read()
    except TimeoutError:
        why = f"vnet {link.vnet.vnetid} did not accept the tunnel to serveid {splice.serveid}"
    else:
        if first is grpc.aio.EOF:
            why = f"vnet {link.vnet.vnetid} ended the spare of serveid {splice.serveid}"
        elif not wire.is_accepted(first):
            why = "protocol error: a spare's first frame from its node is not accepted"
    if why:
        log.info("tunnel %s: %s", splice.tunnel_id, why)
        splice.abort(why)
        return
    now = s.clock()
    link.answers.answered(splice.tunnel_id, now)
    link.core.accepted_at = max(link.core.accepted_at, now)


async def hand(
    s: RouteServicer,
    link: Link,
    owner: Link,
    serve: Serve,
    tunnel_id: str,
    context: grpc.aio.ServicerContext[bytes, bytes],
) -> Splice | None:
    """Give the Dial (context, of link's node) one of owner's spares for serve: the
    splice, made here; None when owner holds none that takes it (the caller then
    asks with open_tunnel). Response headers were sent on context already."""
    frame = b""
    while (spare := s.spares.take(owner.core, serve.serveid)) is not None:
        frame = frame or wire.encode_opened(tunnel_id, link.vnet.vnetid)
        try:
            # Its first message, before the dialling pump writes to it (its one writer).
            await spare.ctx.write(frame)
        except asyncio.CancelledError:
            # The dialling node went away meanwhile: this spare is spent.
            if not spare.given.done():
                spare.given.set_exception(NotFound("the dialling node went away"))
            raise
        except Exception as exc:  # noqa: BLE001 - the spare's call is gone: try the next
            log.debug("tunnel %s: a spare of vnet %s failed: %s", tunnel_id, owner.vnet.vnetid, exc)
            if not spare.given.done():
                spare.given.set_exception(RouteUnavailable("the spare's stream failed"))
            continue
        if spare.given.done():
            continue  # its handler ended during the write
        splice = s.splice(tunnel_id, serve.serveid, context, spare.ctx, link, owner)
        # Unanswered until the node's accepted frame comes (_taken), as an
        # open_tunnel is until its Accept: a frozen node is found out either way.
        owner.answers.asked(tunnel_id, s.clock())
        spare.given.set_result(splice)
        s.spares.used += 1
        return splice
    return None
