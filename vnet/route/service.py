"""The route's servicer: call metadata -> core decision -> wire message.

A thin adapter: who is joined, resumes, control-stream expiry and the
rendezvous of Dial and Accept live in vnet.core.sessions, registry decisions
in vnet.core.registry, credentials and penalties in vnet.core.auth, the
fail-fast rule in vnet.core.unanswered; messages are built and parsed in
vnet.wire.route_messages, the byte pumps are vnet.route.splice, the method
table's error translation is vnet.route.rpc. What stays here is I/O: each
session's queue of its own control events (tunnels to accept, unserve
requests) and splices, the futures that hand a Dial its splice or an Unserve
its answer, and the timers. Serve changes reach the control streams through
vnet.route.fanout (one log per group that each stream reads at its own pace,
coalesced), and ids claimed after a restart are held by vnet.core.claims. The
clock and the secrets are passed in, so tests can move time instead of
waiting it out. The server around it (ports, TLS, health, reflection) is
vnet.route.server.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from vnet import wire
from vnet.core.budget import MIB, Budget
from vnet.core.claims import Claims, Conflict
from vnet.core.config import RouteLimits
from vnet.core.errors import LimitExceeded, NotFound, RouteUnavailable, Unanswered, VnetError
from vnet.core.registry import Registry, Serve
from vnet.core.sessions import Pending, Rendezvous, Session, Sessions
from vnet.route import asking, spares
from vnet.route import rpc as route_rpc
from vnet.route.admission import BAD_CREDENTIALS as BAD_CREDENTIALS
from vnet.route.admission import Admission, JoinGate, admin_facts, metadata
from vnet.route.between import Between
from vnet.route.fanout import Fanout
from vnet.route.link import CONTROL_QUEUE as CONTROL_QUEUE
from vnet.route.link import Link, forget_splice
from vnet.route.lists import Lists
from vnet.route.peer import Elsewhere, Peers, parse_serveid
from vnet.route.security import RouteSecurity
from vnet.route.splice import Leg, Splice, SpliceStats, Stream
from vnet.route.timeouts import RouteTimeouts as RouteTimeouts
from vnet.wire import route_messages as msg

if TYPE_CHECKING:
    from vnet.route.member import Member

log = logging.getLogger(__name__)

# A tick of the expiry timer that comes this much later than asked for was the
# route's own backlog (its loop was busy), not the node's: it is not counted.
STALL_SLACK = 0.05


_TUNNEL_ID = re.compile(r"[0-9a-f]{16}")

# Why a session ended, when its node said it was leaving (Leave).
LEFT = "left"
STOPPING = "route stopping"


def _secret() -> str:
    return secrets.token_urlsafe(24)


def _hex_id() -> str:
    return secrets.token_hex(8)


def _nowhere(group: str, serveid: int) -> str | None:
    return None


def _nowhere_vnet(group: str, vnetid: str) -> str | None:
    return None


class RouteServicer:
    """Handlers for vnetrpc.v1.RouteService.

    clock gives the time in seconds (monotonic: penalties, expiry, the
    Accept deadlines, the fail-fast rule); secret makes session and resume
    tokens, ids the boot, tunnel and unserve request ids.
    """

    def __init__(
        self,
        timeouts: RouteTimeouts | None = None,
        security: RouteSecurity | None = None,
        limits: RouteLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        secret: Callable[[], str] = _secret,
        ids: Callable[[], str] = _hex_id,
    ) -> None:
        self.timeouts = timeouts or RouteTimeouts()
        self.security = security or RouteSecurity()
        self.limits = limits or RouteLimits()
        self.clock = clock
        self._ids = ids
        self.admission = Admission(self.security, clock)
        # Ids claimed by nodes back from an earlier boot are held for a while.
        self.claims = Claims(clock, clock())
        self.registry = Registry(self.claims)
        self.fanout = Fanout(self.registry)
        self.gate = JoinGate()
        # Seconds the expiry timer found the route's own loop behind (STALL_SLACK).
        self._stalled = 0.0
        # (kind, group) -> (registry version, encoded List answer).
        self.lists = Lists(self)
        self.boot_id = ids()
        self.table = Sessions(self.registry, self.limits.max_nodes, secret)
        # The I/O side of each live session of the table.
        self.sessions: dict[Session, Link] = {}
        self.pending = Rendezvous(self.timeouts.accept, self.timeouts.accept_limit)
        self.handovers: dict[Pending, asking.Handover] = {}
        # What one node asks of another through the route: unserve, probes.
        self.between = Between(
            self._peer, self.registry, self.timeouts.unserve, self.timeouts.echo, ids, clock
        )
        self.splices: set[Splice] = set()
        # Accept streams nodes opened ahead of their next Dials (vnet.route.spares).
        self.spares = spares.Spares()
        # Set when the route starts going away.
        self.stopping = False
        # While not "", new joins and tunnels are refused with it (an admin's drain).
        self.refusing = ""
        self.stats = SpliceStats()
        self.budget = Budget(
            self.limits.tunnel_memory * MIB, self.limits.tunnel_memory_per_node * MIB
        )
        # Refused calls by status code name, for the metrics endpoint.
        self.rejected: collections.Counter[str] = collections.Counter()
        # Called with each tunnel's set-up time (Dial to spliced), in seconds.
        self.observe_setup: Callable[[float], None] = lambda _: None
        # Made once: every splice's on_done, not a bound method each.
        self._forget = functools.partial(forget_splice, self.splices)
        # In a route cluster (vnet.route.member): the store decides the ids; locate
        # and locate_vnet give the "host:port" of the other route holding a serve, a
        # node (None when it is not another route).
        self.member: Member | None = None
        self.locate: Callable[[str, int], str | None] = _nowhere
        self.locate_vnet: Callable[[str, str], str | None] = _nowhere_vnet
        # Tunnels and unserves to and from other routes (vnet.route.peer); stand-in
        # links of other routes' nodes whose Dial waits here for an Accept.
        self.peers = Peers(self)
        self.remote: dict[Session, Link] = {}

    # --- sessions --------------------------------------------------------

    def _session(self, context: grpc.aio.ServicerContext[Any, Any]) -> Link:
        """The caller's session; its token is checked again on every call."""
        session = self.table.get(metadata(context, wire.MD_SESSION))
        link = None if session is None else self.sessions.get(session)
        if link is None:
            self.admission.unknown_session(context)
        self.admission.admit(context, link.vnet.group)
        return link

    @property
    def auth_failures(self) -> int:
        return self.admission.failures

    def node_time(self) -> float:
        """The clock without the time the route itself was stalled: what the
        Control-after-Join timer measures, so a node is judged on its own delay."""
        return self.clock() - self._stalled

    def _tell_conflicts(self, conflicts: Iterable[Conflict]) -> None:
        """Both nodes of a claim conflict hear of it (and the log says so)."""
        for conflict in conflicts:
            log.warning("group %s: %s", conflict.group, conflict.words())
            event = msg.id_conflict_event(conflict)
            for vnetid in {conflict.kept_by, conflict.lost_by}:
                found = self.table.of_vnet(vnetid)
                link = None if found is None else self.sessions.get(found)
                if link is not None:
                    link.push(event)

    def end_session(self, link: Link, why: str) -> None:
        """End a session from the route's side (an admin's kick, a revoked token):
        its node is told (going_away, no grace) and its control stream closes."""
        link.push(msg.going_away_event(why, 0))
        self._drop(link, why)

    def moved_away(self, vnetid: str, route_id: str) -> None:
        """vnetid now serves from route route_id: its session here is stale, unless
        this route told it to go (stopping, draining): its tunnels here get the grace."""
        if self.stopping or self.refusing:
            return
        found = self.table.of_vnet(vnetid)
        link = None if found is None else self.sessions.get(found)
        if link is not None:
            self._drop(link, f"it resumed on route {route_id}")

    def _drop(self, link: Link, why: str) -> None:
        gone = self.table.drop(link.core)
        if gone is not None:
            self._ended(link, gone, why)

    def _ended(self, link: Link, gone: Iterable[Serve], why: str) -> None:
        """The I/O side of a session the table has ended: tell, reset, log."""
        session = link.core
        self.sessions.pop(session, None)
        withdrawn = 0
        for serve in gone:
            self.fanout.removed(serve, session.vnet.group)
            withdrawn += 1
        if link.wake is not None:
            self.fanout.group(session.vnet.group).waiting.discard(link.wake)
        left = why == LEFT
        if left:
            because = f"vnet {session.vnet.vnetid} left"
        elif why == STOPPING:
            because = "the route is stopping"
        else:
            because = f"vnet {session.vnet.vnetid} is gone ({why})"
        if self.member is not None and self.table.of_vnet(session.vnet.vnetid) is None:
            self.member.left(session.vnet, session.resume_digest, left)
        for splice in list(link.splices):
            splice.abort(because)
        self.spares.end(session, None, NotFound(because))
        for pending in self.pending.of_session(session):
            handover = self.handovers.get(pending)
            if handover is not None and not handover.splice.done():
                handover.splice.set_exception(NotFound(because))
        # "left" only for a node that said so (Leave): a control stream
        # that broke is a lost connection, whatever the node meant.
        log.info(
            "vnet %s (%s) %s group %s%s; %d serve(s) withdrawn",
            session.vnet.vnetid,
            session.vnet.name,
            "left" if left else "dropped from",
            session.vnet.group,
            "" if left else f": {why}",
            withdrawn,
        )

    async def expire_uncontrolled(self) -> None:
        """Now and then, drop_uncontrolled: a quarter of the time allowed
        apart, and at least once a second (the rule reads the clock given,
        which tests move on faster than real time)."""
        loop = asyncio.get_running_loop()
        tick = max(min(self.timeouts.join / 4, 1.0), 0.02)
        while True:
            began = loop.time()
            await asyncio.sleep(tick)
            late = loop.time() - began - tick
            self.gate.lag = late
            if late > STALL_SLACK:
                # The loop was busy with the route's own work (a storm): whatever
                # a node did meanwhile could not even be read. Not its time.
                self._stalled += late
            self.drop_uncontrolled()

    def drop_uncontrolled(self) -> None:
        """Drop the sessions that did not open their Control stream in time:
        the table's rule (Sessions.uncontrolled), on the route's clock."""
        for session in self.table.uncontrolled(self.node_time(), self.timeouts.join):
            link = self.sessions.get(session)
            if link is not None:
                self._drop(link, "no control stream after join")

    # --- unary RPCs ------------------------------------------------------

    async def Join(
        self, request: msg.JoinAsk, context: grpc.aio.ServicerContext[Any, Any]
    ) -> msg.JoinAnswer:
        group = request.group or "default"
        # The token decides the group: a group token admits to its group only.
        self.admission.admit(context, group)
        if self.refusing:
            raise RouteUnavailable(self.refusing)
        earlier_boot = bool(request.resume_boot_id) and request.resume_boot_id != self.boot_id
        # Back-pressure: too many joined and not yet controlled is a storm.
        try:
            self.gate.admit(self.table.joining)
        except LimitExceeded:
            if earlier_boot:
                self.claims.expect()
            raise
        resume_vnetid = request.resume_vnetid
        if self.member is not None:
            # The store decides; it keeps ids across a restart, so no claims here.
            resume_vnetid = await self.member.vnetid_for(
                request.name, group, resume_vnetid, request.resume_token
            )
            earlier_boot = False
        joined = self.table.join(
            request.name,
            group,
            self.node_time(),
            resume_vnetid,
            request.resume_token,
            earlier_boot=earlier_boot,
            resume_serveids=request.resume_serveids,
            proven=self.member is not None,
        )
        if joined.replaced is not None:
            stale = self.sessions.get(joined.replaced)
            if stale is not None:
                self._ended(stale, joined.withdrawn, "replaced by its own new connection")
        session = joined.session
        link = self.sessions[session] = Link(session, **admin_facts(context))
        self._tell_conflicts(joined.conflicts)
        vnet = session.vnet
        if self.member is not None:
            await self.member.joined(link, joined.resume_token, self._drop)
        log.info(
            "vnet %s (%s) joined group %s from %s",
            vnet.vnetid,
            vnet.name,
            vnet.group,
            context.peer(),
        )
        return msg.JoinAnswer(
            session.token, vnet.vnetid, vnet.group, self.boot_id, joined.resume_token
        )

    async def RegisterServe(
        self, request: msg.ServeAsk, context: grpc.aio.ServicerContext[Any, Any]
    ) -> msg.Registered:
        link = self._session(context)
        vnet = link.vnet
        own = self.registry.serve_count(vnet.vnetid)
        if (
            not self.registry.owns(vnet.vnetid, request.serveid)
            and own >= self.limits.max_serves_per_node
        ):
            raise LimitExceeded(f"this vnet has {own} serves, the most the route allows")
        fields = (request.name, request.ip, request.port, request.info, request.type)
        if self.member is not None:
            reg = await self.member.register(vnet, request.serveid, *fields, request.unserve)
        else:
            reg = self.registry.register(
                vnet.vnetid, request.serveid, *fields, unserve=request.unserve
            )
        # Appended to the group's feed: this reply waits for no node's stream.
        if reg.replaced is not None:
            self.fanout.removed(reg.replaced, vnet.group)
        self.fanout.added(reg.serve, vnet.group)
        log.info(
            "vnet %s registered serve %s (%s) -> %s:%s%s",
            vnet.vnetid,
            reg.serve.serveid,
            reg.serve.name,
            reg.serve.ip,
            reg.serve.port,
            f" (asked for {request.serveid})" if reg.reassigned else "",
        )
        return msg.Registered(reg.serve, reg.reassigned)

    async def UnregisterServe(
        self, serveid: int, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        link = self._session(context)
        serve = self.registry.unregister(link.vnet.vnetid, serveid)
        self.fanout.removed(serve, link.vnet.group)
        spares.end_serve(self, serve, "it was withdrawn")
        if self.member is not None:
            await self.member.unregister(link.vnet, serveid)
        log.info("vnet %s withdrew serve %s (%s)", serve.vnetid, serve.serveid, serve.name)

    async def ListServes(self, request: None, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.lists.serves(self._session(context).vnet.group)

    async def ListVnets(self, request: None, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.lists.vnets(self._session(context).vnet.group)

    async def Leave(self, request: None, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._drop(self._session(context), LEFT)

    async def Ping(
        self, request: msg.PingAsk, context: grpc.aio.ServicerContext[Any, Any]
    ) -> msg.Pong:
        link = self._session(context)
        echoed = bool(request.via) and await self.between.ping_via(link, request.via)
        return msg.Pong(request.nonce, self.boot_id, echoed)

    async def Echo(self, probe: int, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.between.probes.answered(self._session(context), probe)

    async def Unserve(
        self, request: msg.UnserveAsk, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Serve:
        link = self._session(context)
        group, vnetid = link.vnet.group, request.vnetid
        far = None if self.table.of_vnet(vnetid) else self.locate_vnet(group, vnetid)
        if far:  # a node of the group on another route: asked through that route
            return await self.peers.unserve(link, request, far)
        return await self.between.unserve(link, request)

    async def AnswerUnserve(
        self, request: msg.UnserveAnswer, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.between.answer_unserve(self._session(context), request)

    def _peer(self, link: Link, vnetid: str) -> Link:
        """The live node vnetid of link's group; NotFound otherwise."""
        found = self.table.of_vnet(vnetid)
        peer = None if found is None else self.sessions.get(found)
        if peer is None or peer.vnet.group != link.vnet.group or peer.core.closed:
            # Another group's node looks exactly like one that does not exist.
            raise NotFound(f"no vnet {vnetid!r} in this group")
        return peer

    # --- control stream ----------------------------------------------------

    async def Control(
        self, serve_changes: bool, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """The snapshot, then the node's own events and its group's serve changes.

        Serve changes are read from the group's feed when it is flushed: all
        that this stream has not sent yet as one message (ServeChanges, for a
        node that asked for them; else one message a change), or a snapshot
        when it is far behind. A stream that writes slowly (its node reads
        slowly) just falls behind; nothing piles up for it.
        """
        link = self._session(context)
        self.table.open_control(link.core)
        self.gate.controlled(self.clock())
        group = self.fanout.group(link.vnet.group)
        wake = link.wake = asyncio.Event()
        why = "control stream closed"
        try:
            link.cursor, snapshot = group.snapshot()
            yield snapshot
            while True:
                if link.events:
                    # Before the check below: a going_away pushed just before the
                    # route ended the session still goes out.
                    yield link.events.popleft()
                elif link.core.closed:
                    break
                elif group.flushed > link.cursor:
                    link.cursor, out = group.batch(link.cursor, serve_changes)
                    for data in out:
                        yield data
                else:
                    # No await between the checks above and this wait: no wake-up is lost.
                    wake.clear()
                    group.waiting.add(wake)
                    await wake.wait()
            why = "its control stream was not read"
        except asyncio.CancelledError:
            why = "connection lost"
            raise
        finally:
            group.waiting.discard(wake)
            self._drop(link, why)

    # --- tunnels -----------------------------------------------------------

    async def Dial(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        # Translates its own refusals (no wrapper coroutine held per tunnel).
        try:
            try:
                link, owner, serve = self._dial_target(context)
            except Elsewhere as far:
                # On another route; or here after all, after a stale answer there.
                link = far.link
                found = await self.peers.relay(far, context)
                if found is None:
                    return
                owner, serve = found
        except VnetError as exc:
            await route_rpc.refuse(context, exc, self.rejected)
        link.core.tunnels += 1
        try:
            try:
                splice = await self._accepted(link, owner, serve, context)
            except VnetError as exc:
                await route_rpc.refuse(context, exc, self.rejected)
            # This handler pumps the dialling node's stream until the tunnel ends.
            await splice.run(splice.dial)
            await route_rpc.end_unless_told(splice.dial, context)
        finally:
            link.core.tunnels -= 1

    def _dial_target(
        self, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Link, Link, Serve]:
        """The caller, the serve's node and the serve; refused here, before anything
        waits. Elsewhere when the serve's node is on another route (locate)."""
        link = self._session(context)
        if self.refusing:
            raise RouteUnavailable(self.refusing)
        serveid = parse_serveid(metadata(context, wire.MD_SERVEID))
        found = self.owner_of(link.vnet.group, serveid)
        cap = self.limits.max_tunnels_per_node
        far = None if found is not None else self.locate(link.vnet.group, serveid)
        if found is None and not far:
            raise NotFound(f"no serveid {serveid} in this group")
        if link.core.tunnels >= cap:
            raise LimitExceeded(f"this vnet has {cap} tunnels open, the most the route allows")
        if found is None:
            raise Elsewhere(link, serveid, far or "")
        self.takes_tunnels(found[0])
        return link, *found

    def owner_of(self, group: str, serveid: int) -> tuple[Link, Serve] | None:
        """The serve's node and the serve, when both are here (its node has a session)."""
        try:
            serve = self.registry.find(group, serveid)
        except NotFound:
            return None
        found = self.table.of_vnet(serve.vnetid)
        owner = None if found is None else self.sessions.get(found)
        return None if owner is None else (owner, serve)

    def takes_tunnels(self, owner: Link) -> None:
        """Refuse a new tunnel to owner's serves while it is at its cap or silent."""
        cap = self.limits.max_tunnels_per_node
        if owner.core.tunnels >= cap:
            raise LimitExceeded(f"vnet {owner.vnet.vnetid} has {cap} tunnels open; try later")
        silent = owner.answers.silent_for(self.clock())
        if silent:
            # Frozen but not yet dead: reset the client now, not after the accept timeout.
            raise Unanswered(
                f"vnet {owner.vnet.vnetid} has answered no tunnel request for {silent:.0f}s; "
                "refusing new tunnels to it until it does"
            )

    async def _accepted(
        self,
        link: Link,
        owner: Link,
        serve: Serve,
        context: grpc.aio.ServicerContext[bytes, bytes],
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Splice:
        """Ask the serve's node to accept; the splice its Accept made.

        link is the dialling node's (a stand-in for a node on another route:
        vnet.route.peer); headers go out in the dialler's response headers.

        A coroutine of its own so that its frame (the pending entry, the
        future) is gone while the tunnel runs.
        """
        # Response headers first, before the other leg's pump can write here
        # (one writer per context): then a write cut off by a cancel cannot
        # hold them too, and an abort after it still ends the call
        # (route_rpc.end_unless_told) instead of failing in core and leaving
        # the dialling node hanging.
        await context.send_initial_metadata(headers)
        # The dialling node may name the tunnel, so both nodes log the same
        # id; only a well-formed one not in use is taken.
        tunnel_id = metadata(context, wire.MD_TUNNEL)
        if not _TUNNEL_ID.fullmatch(tunnel_id) or tunnel_id in self.pending:
            tunnel_id = self._ids()
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A spare the node opened ahead of time, if it holds one; else ask it.
        splice = await spares.hand(self, link, owner, serve, tunnel_id, context)
        if splice is None:
            splice = await asking.ask(self, link, owner, serve, context, tunnel_id)
        self.observe_setup(loop.time() - started)
        log.debug(
            "tunnel %s: vnet %s -> serveid %s on vnet %s",
            tunnel_id,
            link.vnet.vnetid,
            serve.serveid,
            serve.vnetid,
        )
        return splice

    async def Accept(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        # Headers first, as in _accepted, before the dialling side's pump can
        # write to this leg; the lookup below comes after, with no await
        # between it and the splice's hand-over.
        await context.send_initial_metadata(())
        if metadata(context, wire.MD_SPARE):
            # Opened ahead of a Dial; held until one takes it.
            await spares.hold(self, context)
            return
        # Translates its own refusals (no wrapper coroutine held per tunnel).
        try:
            link = self._session(context)
            tunnel_id = metadata(context, wire.MD_TUNNEL)
            now = self.clock()
            # Any answer, even one too late for its tunnel, shows the node is alive.
            link.answers.answered(tunnel_id, now)
            pending = self.pending.take(tunnel_id, link.core, now)
            handover = self.handovers.get(pending)
            dialer = self.sessions.get(pending.dialer) or self.remote.get(pending.dialer)
            if handover is None or handover.splice.done() or dialer is None:
                raise NotFound("no such tunnel waiting for this vnet")
        except VnetError as exc:
            await route_rpc.refuse(context, exc, self.rejected)
        splice = self.splice(tunnel_id, pending.serveid, handover.ctx, context, dialer, link)
        handover.splice.set_result(splice)
        del pending, handover, dialer  # not held while the tunnel runs
        link.core.tunnels += 1
        try:
            # This handler pumps the serving node's stream until the tunnel ends.
            await splice.run(splice.accept)
        finally:
            link.core.tunnels -= 1
        await route_rpc.end_unless_told(splice.accept, context)

    def splice(
        self,
        tunnel_id: str,
        serveid: int,
        dial: Stream,
        accept: Stream,
        dialer: Link,
        owner: Link,
    ) -> Splice:
        """A tunnel's splice of its two legs, known to the route and to both ends (owner
        a stand-in when the serve is on another route: vnet.route.peer)."""
        splice = Splice(
            tunnel_id=tunnel_id,
            serveid=serveid,
            dial=Leg(dial),
            accept=Leg(accept),
            stats=self.stats,
            on_done=self._forget,
            ends=(dialer, owner),
            budget=self.budget,
        )
        self.splices.add(splice)
        dialer.splices.add(splice)
        owner.splices.add(splice)
        return splice

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's handlers; tunnel methods pass raw bytes through."""
        return route_rpc.method_handlers(self)

    async def close(self) -> None:
        for link in list(self.sessions.values()):
            self._drop(link, STOPPING)
        await self.peers.close()
