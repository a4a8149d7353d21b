"""The route's servicer: sessions, control streams, registry calls, tunnels.

A thin adapter: registry decisions live in vnet.core.registry, credentials in
vnet.core.auth, message shapes in vnet.wire, the byte pumps in vnet.route.splice, the
method table and status translation in vnet.route.rpc. The server around it
(ports, TLS, health, reflection) is vnet.route.server.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from vnet import wire
from vnet.core.auth import PenaltyBox, peer_address
from vnet.core.budget import MIB, Budget
from vnet.core.config import RouteLimits
from vnet.core.errors import (
    InvalidRequest,
    LimitExceeded,
    NotFound,
    Refused,
    SessionUnknown,
    Unanswered,
    Unauthenticated,
    VnetError,
)
from vnet.core.limits import HOST_MAX
from vnet.core.registry import Registry, Serve, Vnet
from vnet.core.unanswered import AnswerWatch
from vnet.route import rpc as route_rpc
from vnet.route.security import RouteSecurity
from vnet.route.splice import Leg, Splice, SpliceStats
from vnetrpc.v1 import route_pb2 as pb

log = logging.getLogger(__name__)

# A tunnel frame carries at most one read of a node's socket (512 KiB) plus
# framing; leave room, and refuse anything wildly larger.
MAX_MESSAGE = 4 * 1024 * 1024 + 1024
CONTROL_QUEUE = 10_000
# The shortest keepalive interval nodes may use (tests go down to this).
NODE_PING_FLOOR_MS = 500


@dataclass(frozen=True)
class RouteTimeouts:
    """How long the route waits for nodes; shortened in tests."""

    # A node must open its Control stream this soon after Join.
    join: float = 10.0
    # The serving node must answer an OpenTunnel this soon, counted from the
    # Dial or from the last tunnel it accepted, whichever is later: a node
    # working through a burst of them is slow, not gone.
    accept: float = 10.0
    # However busy the node, a Dial waits for its Accept no longer than this.
    accept_limit: float = 60.0
    # An asked node must answer an unserve request this soon.
    unserve: float = 10.0
    # When the route stops: how long open tunnels may still run.
    stop_grace: float = 5.0
    # Keepalive pings on idle connections, and how long an answer may take:
    # a dead or black-holed node is dropped within about the sum.
    keepalive: float = 10.0
    keepalive_timeout: float = 10.0
    # A tunnel closed in one direction and silent this long is reset.
    half_close_idle: float = 300.0


_TUNNEL_ID = re.compile(r"[0-9a-f]{16}")

# Why a session ended, when its node said it was leaving (Leave).
LEFT = "left"
STOPPING = "route stopping"

# One answer for every authentication failure, so it tells nothing.
BAD_CREDENTIALS = "invalid or missing credentials (token, or session: join again)"


@dataclass(eq=False)
class Session:
    """One joined node."""

    token: str
    vnet: Vnet
    events: asyncio.Queue[pb.ControlEvent] = field(
        default_factory=lambda: asyncio.Queue(CONTROL_QUEUE)
    )
    control_open: bool = False
    splices: set[Splice] = field(default_factory=set)
    closed: bool = False
    # Tunnels this node is an end of, open or being set up.
    tunnels: int = 0
    # SHA-256 of the secret that lets this node take the session over.
    resume_digest: bytes = b""
    # When (loop time) this node last answered an OpenTunnel with an Accept.
    accepted_at: float = float("-inf")
    # Its unanswered open_tunnels: a silent node's serves are refused at once.
    answers: AnswerWatch = field(default_factory=AnswerWatch)

    def push(self, event: pb.ControlEvent) -> None:
        if self.closed:
            return
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            # A node that does not read its control stream is broken; it
            # will be dropped when its stream ends, so drop it now.
            log.warning("vnet %s does not read its control stream; dropping it", self.vnet.vnetid)
            self.closed = True


@dataclass(eq=False)
class _Pending:
    owner: Session
    serveid: int
    dialer: Session
    ctx: grpc.aio.ServicerContext[bytes, bytes]
    splice: asyncio.Future[Splice]


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    auth = _metadata(context, wire.MD_AUTH)
    return auth[7:] if auth[:7].lower() == "bearer " else ""


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("ascii", "replace")
    return ""


class RouteServicer:
    """Handlers for vnetrpc.v1.RouteService."""

    def __init__(
        self,
        timeouts: RouteTimeouts | None = None,
        security: RouteSecurity | None = None,
        limits: RouteLimits | None = None,
    ) -> None:
        self.timeouts = timeouts or RouteTimeouts()
        self.security = security or RouteSecurity()
        self.limits = limits or RouteLimits()
        self.penalties = PenaltyBox(self.security.penalty)
        self.registry = Registry()
        self.boot_id = secrets.token_hex(8)
        self.sessions: dict[str, Session] = {}
        self.by_vnetid: dict[str, Session] = {}
        self.pending: dict[str, _Pending] = {}
        # Unserve requests waiting for the asked node: id -> (asked, answer).
        self.unserves: dict[str, tuple[Session, asyncio.Future[pb.AnswerUnserveRequest]]] = {}
        self.splices: set[Splice] = set()
        # Set when the route starts going away.
        self.stopping = False
        self.stats = SpliceStats()
        self.budget = Budget(
            self.limits.tunnel_memory * MIB, self.limits.tunnel_memory_per_node * MIB
        )
        self.auth_failures = 0
        # Refused calls by status code name, for the metrics endpoint.
        self.rejected: collections.Counter[str] = collections.Counter()
        # Called with each tunnel's set-up time (Dial to spliced), in seconds.
        self.observe_setup: Callable[[float], None] = lambda _: None
        self._timers: set[asyncio.Task[None]] = set()
        # Made once: every splice's on_done, not a bound method each.
        self._forget = self._forget_splice

    # --- sessions --------------------------------------------------------

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any], group: str) -> None:
        """Check the caller's token for `group`; count and penalise failures.

        An address with too many failures is refused before anything else is
        looked at.
        """
        address = peer_address(context.peer() or "")
        now = time.monotonic()
        self._not_penalised(address, now)
        if not self.security.tokens.admits(_bearer(context), group):
            self._failed(address, now)
            raise Unauthenticated(BAD_CREDENTIALS)

    def _not_penalised(self, address: str, now: float) -> None:
        wait = self.penalties.blocked_for(address, now)
        if wait > 0:
            raise LimitExceeded(
                f"too many failed attempts from {address}; try again in {wait:.0f}s"
            )

    def _failed(self, address: str, now: float) -> None:
        self.penalties.failure(address, now)
        self.auth_failures += 1
        log.warning("authentication failed from %s", address)

    def _session(self, context: grpc.aio.ServicerContext[Any, Any]) -> Session:
        """The caller's session; its token is checked again on every call."""
        session = self.sessions.get(_metadata(context, wire.MD_SESSION))
        if session is None or session.closed:
            address = peer_address(context.peer() or "")
            now = time.monotonic()
            self._not_penalised(address, now)
            # A good token with a stale session is a node that reconnected
            # while calls on its old session were in flight: not guessing.
            # With a bad token, a session id is one more thing to guess.
            if not self.security.tokens.admits_somewhere(_bearer(context)):
                self._failed(address, now)
            raise SessionUnknown(BAD_CREDENTIALS)
        self._admit(context, session.vnet.group)
        return session

    def _broadcast(self, group: str, event: pb.ControlEvent) -> None:
        for session in self.sessions.values():
            if session.vnet.group == group:
                session.push(event)

    def _drop(self, session: Session, why: str) -> None:
        if self.sessions.pop(session.token, None) is None:
            return
        session.closed = True
        self.by_vnetid.pop(session.vnet.vnetid, None)
        gone = self.registry.remove_vnet(session.vnet.vnetid)
        for serve in gone:
            self._serve_removed(serve, session.vnet.group)
        left = why == LEFT
        if left:
            because = f"vnet {session.vnet.vnetid} left"
        elif why == STOPPING:
            because = "the route is stopping"
        else:
            because = f"vnet {session.vnet.vnetid} is gone ({why})"
        for splice in list(session.splices):
            splice.abort(because)
        for tunnel_id, pending in list(self.pending.items()):
            if session in (pending.owner, pending.dialer):
                del self.pending[tunnel_id]
                if not pending.splice.done():
                    pending.splice.set_exception(NotFound(because))
        # "left" only for a node that said so (Leave): a control stream
        # that broke is a lost connection, whatever the node meant.
        log.info(
            "vnet %s (%s) %s group %s%s; %d serve(s) withdrawn",
            session.vnet.vnetid,
            session.vnet.name,
            "left" if left else "dropped from",
            session.vnet.group,
            "" if left else f": {why}",
            len(gone),
        )

    def _serve_removed(self, serve: Serve, group: str) -> None:
        event = pb.ControlEvent(
            serve_removed=pb.ServeRemoved(serveid=serve.serveid, vnetid=serve.vnetid)
        )
        self._broadcast(group, event)

    async def _expire_unless_controlled(self, session: Session) -> None:
        await asyncio.sleep(self.timeouts.join)
        if not session.control_open:
            self._drop(session, "no control stream after join")

    # --- unary RPCs ------------------------------------------------------

    async def Join(
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.JoinResponse:
        group = request.group or "default"
        # The token decides the group: a group token admits to its group only.
        self._admit(context, group)
        wanted = self._resume(request, group)
        if len(self.sessions) >= self.limits.max_nodes:
            raise LimitExceeded(f"the route is full ({self.limits.max_nodes} nodes)")
        vnet = self.registry.add_vnet(request.name, group, wanted=wanted)
        resume = secrets.token_urlsafe(24)
        session = Session(
            token=secrets.token_urlsafe(24),
            vnet=vnet,
            resume_digest=hashlib.sha256(resume.encode()).digest(),
        )
        self.sessions[session.token] = session
        self.by_vnetid[vnet.vnetid] = session
        timer = asyncio.create_task(self._expire_unless_controlled(session))
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)
        log.info(
            "vnet %s (%s) joined group %s from %s",
            vnet.vnetid,
            vnet.name,
            vnet.group,
            context.peer(),
        )
        return pb.JoinResponse(
            session=session.token,
            vnetid=vnet.vnetid,
            group=vnet.group,
            boot_id=self.boot_id,
            resume_token=resume,
        )

    def _resume(self, request: pb.JoinRequest, group: str) -> str:
        """The vnetid a rejoining node may have back ("" for a new one).

        With the right resume token its stale session (its old connection
        died unnoticed) is ended, freeing its static serveids. Without it, a
        vnetid still in use is not handed out: no one takes over another
        node's session. A free vnetid (after a route restart) is given back.
        """
        wanted = request.resume_vnetid
        if not wanted:
            return ""
        old = self.by_vnetid.get(wanted)
        if old is None:
            return wanted
        presented = hashlib.sha256(request.resume_token.encode()).digest()
        if hmac.compare_digest(presented, old.resume_digest) and old.vnet.group == group:
            self._drop(old, "replaced by its own new connection")
            return wanted
        return ""

    async def RegisterServe(
        self, request: pb.RegisterServeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterServeResponse:
        session = self._session(context)
        own = {
            s.serveid
            for s in self.registry.serves(session.vnet.group)
            if s.vnetid == session.vnet.vnetid
        }
        if request.serveid not in own and len(own) >= self.limits.max_serves_per_node:
            raise LimitExceeded(f"this vnet has {len(own)} serves, the most the route allows")
        reg = self.registry.register(
            session.vnet.vnetid,
            request.serveid,
            request.name,
            request.ip,
            request.port,
            request.info,
            request.type,
            unserve=request.unserve,
        )
        if reg.replaced is not None:
            self._serve_removed(reg.replaced, session.vnet.group)
        info = wire.serve_to_pb(reg.serve)
        self._broadcast(session.vnet.group, pb.ControlEvent(serve_added=info))
        log.info(
            "vnet %s registered serve %s (%s) -> %s:%s%s",
            session.vnet.vnetid,
            reg.serve.serveid,
            reg.serve.name,
            reg.serve.ip,
            reg.serve.port,
            f" (asked for {request.serveid})" if reg.reassigned else "",
        )
        return pb.RegisterServeResponse(serve=info, reassigned=reg.reassigned)

    async def UnregisterServe(
        self, request: pb.UnregisterServeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnregisterServeResponse:
        session = self._session(context)
        serve = self.registry.unregister(session.vnet.vnetid, request.serveid)
        self._serve_removed(serve, session.vnet.group)
        log.info("vnet %s withdrew serve %s (%s)", serve.vnetid, serve.serveid, serve.name)
        return pb.UnregisterServeResponse()

    async def ListServes(
        self, request: pb.ListServesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListServesResponse:
        session = self._session(context)
        serves = self.registry.serves(session.vnet.group)
        return pb.ListServesResponse(serves=[wire.serve_to_pb(s) for s in serves])

    async def ListVnets(
        self, request: pb.ListVnetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListVnetsResponse:
        session = self._session(context)
        vnets = self.registry.vnets(session.vnet.group)
        return pb.ListVnetsResponse(
            vnets=[wire.vnet_to_pb(v, self.registry.serve_count(v.vnetid)) for v in vnets]
        )

    async def Leave(
        self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LeaveResponse:
        self._drop(self._session(context), LEFT)
        return pb.LeaveResponse()

    async def Ping(
        self, request: pb.PingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PingResponse:
        self._session(context)
        return pb.PingResponse(nonce=request.nonce, boot_id=self.boot_id)

    async def Unserve(
        self, request: pb.UnserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnserveResponse:
        session = self._session(context)
        asked = self.by_vnetid.get(request.vnetid)
        if asked is None or asked.vnet.group != session.vnet.group or asked.closed:
            # Another group's node looks exactly like one that does not exist.
            raise NotFound(f"no vnet {request.vnetid!r} in this group")
        if asked is session:
            raise InvalidRequest("that is this node: serve it with serve run instead")
        if not 1 <= request.port <= 65535:
            raise InvalidRequest(f"port {request.port} is out of range (1-65535)")
        ip = request.ip or "127.0.0.1"
        if len(ip) > HOST_MAX or any(ord(ch) <= 32 for ch in ip):
            raise InvalidRequest("ip is not an address or host name")
        request_id = secrets.token_hex(8)
        answer: asyncio.Future[pb.AnswerUnserveRequest] = asyncio.get_running_loop().create_future()
        self.unserves[request_id] = (asked, answer)
        asked.push(
            pb.ControlEvent(
                unserve_asked=pb.UnserveAsked(
                    request_id=request_id,
                    from_vnetid=session.vnet.vnetid,
                    ip=ip,
                    port=request.port,
                )
            )
        )
        log.info(
            "vnet %s asks vnet %s to offer %s:%s",
            session.vnet.vnetid,
            asked.vnet.vnetid,
            ip,
            request.port,
        )
        try:
            reply = await asyncio.wait_for(answer, self.timeouts.unserve)
        except TimeoutError:
            raise Unanswered(f"vnet {asked.vnet.vnetid} did not answer in time") from None
        finally:
            self.unserves.pop(request_id, None)
        if reply.refusal or not reply.serveid:
            raise Refused(f"vnet {asked.vnet.vnetid} refused: {reply.refusal or 'no reason'}")
        serve = self.registry.find(asked.vnet.group, reply.serveid)
        if serve.vnetid != asked.vnet.vnetid or not serve.unserve:
            raise Refused(f"vnet {asked.vnet.vnetid} answered with a serve that is not its unserve")
        return pb.UnserveResponse(serve=wire.serve_to_pb(serve))

    async def AnswerUnserve(
        self, request: pb.AnswerUnserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AnswerUnserveResponse:
        session = self._session(context)
        waiting = self.unserves.get(request.request_id)
        if waiting is None or waiting[0] is not session:
            raise NotFound("no such unserve request waiting for this vnet")
        if not waiting[1].done():
            waiting[1].set_result(request)
        return pb.AnswerUnserveResponse()

    # --- control stream ----------------------------------------------------

    async def Control(
        self, request: pb.ControlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ControlEvent]:
        session = self._session(context)
        if session.control_open:
            raise InvalidRequest("this session already has a control stream")
        session.control_open = True
        why = "control stream closed"
        try:
            serves = self.registry.serves(session.vnet.group)
            yield pb.ControlEvent(
                snapshot=pb.ServeSnapshot(serves=[wire.serve_to_pb(s) for s in serves])
            )
            while not session.closed:
                yield await session.events.get()
            why = "its control stream was not read"
        except asyncio.CancelledError:
            why = "connection lost"
            raise
        finally:
            self._drop(session, why)

    # --- tunnels -----------------------------------------------------------

    async def Dial(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        # Translates its own refusals (no wrapper coroutine held per tunnel).
        try:
            session, owner, serve = self._dial_target(context)
        except VnetError as exc:
            await route_rpc.refuse(context, exc, self.rejected)
        session.tunnels += 1
        try:
            try:
                splice = await self._accepted(session, owner, serve, context)
            except VnetError as exc:
                await route_rpc.refuse(context, exc, self.rejected)
            # This handler pumps the dialling node's stream until the tunnel ends.
            await splice.run(splice.dial)
            await route_rpc.end_unless_told(splice.dial, context)
        finally:
            session.tunnels -= 1

    def _dial_target(
        self, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Session, Session, Serve]:
        """The caller, the serve's node and the serve; refused here, before anything waits."""
        session = self._session(context)
        raw = _metadata(context, wire.MD_SERVEID)
        if not raw.isdigit() or not 1 <= int(raw) <= 999:
            raise InvalidRequest(f"{wire.MD_SERVEID} must be a serveid 1-999, not {raw!r}")
        serve = self.registry.find(session.vnet.group, int(raw))
        owner = self.by_vnetid.get(serve.vnetid)
        if owner is None:
            raise NotFound(f"no serveid {serve.serveid} in this group")
        cap = self.limits.max_tunnels_per_node
        if session.tunnels >= cap:
            raise LimitExceeded(f"this vnet has {cap} tunnels open, the most the route allows")
        if owner.tunnels >= cap:
            raise LimitExceeded(f"vnet {owner.vnet.vnetid} has {cap} tunnels open; try later")
        silent = owner.answers.silent_for(time.monotonic())
        if silent:
            # Frozen but not yet dead: reset the client now, not after the accept timeout.
            raise Unanswered(
                f"vnet {owner.vnet.vnetid} has answered no tunnel request for {silent:.0f}s; "
                "refusing new tunnels to it until it does"
            )
        return session, owner, serve

    async def _accepted(
        self,
        session: Session,
        owner: Session,
        serve: Serve,
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> Splice:
        """Ask the serve's node to accept; the splice its Accept made.

        A coroutine of its own so that its frame (the pending entry, the
        future) is gone while the tunnel runs.
        """
        # Response headers first, before the other leg's pump can write here
        # (one writer per context): then a write cut off by a cancel cannot
        # hold them too, and an abort after it still ends the call
        # (route_rpc.end_unless_told) instead of failing in core and leaving
        # the dialling node hanging.
        await context.send_initial_metadata(())
        # The dialling node may name the tunnel, so both nodes log the same
        # id; only a well-formed one not in use is taken.
        tunnel_id = _metadata(context, wire.MD_TUNNEL)
        if not _TUNNEL_ID.fullmatch(tunnel_id) or tunnel_id in self.pending:
            tunnel_id = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        started = loop.time()
        made: asyncio.Future[Splice] = loop.create_future()
        self.pending[tunnel_id] = _Pending(owner, serve.serveid, session, context, made)
        owner.answers.asked(tunnel_id, time.monotonic())
        owner.push(
            pb.ControlEvent(
                open_tunnel=pb.OpenTunnel(
                    tunnel_id=tunnel_id, serveid=serve.serveid, from_vnetid=session.vnet.vnetid
                )
            )
        )
        try:
            if not await self._answered(made, owner, started):
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"vnet {serve.vnetid} did not accept the tunnel to serveid {serve.serveid}",
                )
            splice = made.result()
        except asyncio.CancelledError:
            # Gone after Accept made the splice: its pump will never run here.
            if made.done() and not made.cancelled() and made.exception() is None:
                await made.result().lost(made.result().dial)
            raise
        finally:
            self.pending.pop(tunnel_id, None)
        self.observe_setup(loop.time() - started)
        log.debug(
            "tunnel %s: vnet %s -> serveid %s on vnet %s",
            tunnel_id,
            session.vnet.vnetid,
            serve.serveid,
            serve.vnetid,
        )
        return splice

    async def _answered(self, made: asyncio.Future[Splice], owner: Session, since: float) -> bool:
        """Wait for made; False once owner has accepted nothing for timeouts.accept.

        Each Accept from owner moves the deadline of all its waiting Dials:
        under a burst a node answers hundreds of OpenTunnels in order, and the
        last of them are no less answered for coming late. A node that stops
        answering is still given up on within timeouts.accept.
        """
        loop = asyncio.get_running_loop()
        limit = since + self.timeouts.accept_limit
        while not made.done():
            now = loop.time()
            deadline = min(max(since, owner.accepted_at) + self.timeouts.accept, limit)
            if now >= deadline:
                return False
            # asyncio.wait: no task per waiting tunnel, and made is not cancelled.
            await asyncio.wait((made,), timeout=deadline - now)
        return True

    async def Accept(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        # Headers first, as in _accepted, before the dialling side's pump can
        # write to this leg; the lookup below comes after, with no await
        # between it and the splice's hand-over.
        await context.send_initial_metadata(())
        # Translates its own refusals (no wrapper coroutine held per tunnel).
        try:
            session = self._session(context)
            tunnel_id = _metadata(context, wire.MD_TUNNEL)
            # Any answer, even one too late for its tunnel, shows the node is alive.
            session.answers.answered(tunnel_id, time.monotonic())
            pending = self.pending.get(tunnel_id)
            if pending is None or pending.owner is not session or pending.splice.done():
                raise NotFound("no such tunnel waiting for this vnet")
        except VnetError as exc:
            await route_rpc.refuse(context, exc, self.rejected)
        del self.pending[tunnel_id]
        session.accepted_at = asyncio.get_running_loop().time()
        splice = Splice(
            tunnel_id=tunnel_id,
            serveid=pending.serveid,
            dial=Leg(pending.ctx),
            accept=Leg(context),
            stats=self.stats,
            on_done=self._forget,
            ends=(pending.dialer, session),
            budget=self.budget,
        )
        self.splices.add(splice)
        pending.dialer.splices.add(splice)
        session.splices.add(splice)
        pending.splice.set_result(splice)
        del pending  # not held while the tunnel runs
        session.tunnels += 1
        try:
            # This handler pumps the serving node's stream until the tunnel ends.
            await splice.run(splice.accept)
        finally:
            session.tunnels -= 1
        await route_rpc.end_unless_told(splice.accept, context)

    def _forget_splice(self, done: Splice) -> None:
        self.splices.discard(done)
        for end in done.ends:
            end.splices.discard(done)

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's handlers; tunnel methods pass raw bytes through."""
        return route_rpc.method_handlers(self)

    async def reap_half_closed(self) -> None:
        """Reset tunnels closed one way and then silent past the limit.

        A peer that half-closed and vanished (or a client that never reads
        its end) would otherwise hold the tunnel, its buffers and two
        streams forever.
        """
        idle = self.timeouts.half_close_idle
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(idle / 4, 0.02))
            now = loop.time()
            for splice in list(self.splices):
                if splice.half_closed and now - splice.last_activity > idle:
                    log.info(
                        "tunnel %s serveid %s: half-closed and idle for %.0fs; reset",
                        splice.tunnel_id,
                        splice.serveid,
                        idle,
                    )
                    splice.abort("idle after half-close")

    async def go_away(self, reason: str) -> None:
        """Tell every node the route is stopping; let tunnels finish for a while."""
        grace = self.timeouts.stop_grace
        # New tunnels are still accepted: a short connection can finish in
        # the grace (measured with make soak: refusing them failed more).
        self.stopping = True
        event = pb.ControlEvent(going_away=pb.GoingAway(reason=reason, grace_ms=int(grace * 1000)))
        for session in self.sessions.values():
            session.push(event)
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits = [s.closed_future() for s in self.splices]
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=grace)
            for waiting in unfinished:
                waiting.cancel()
        if self.splices:
            log.info(
                "resetting %d tunnel(s) still open after %.1fs",
                len(self.splices),
                loop.time() - started,
            )

    async def close(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        for session in list(self.sessions.values()):
            self._drop(session, STOPPING)
