"""Tunnels across routes: both ends of PeerService.Dial (protos/vnetrpc/v1/peer.proto).

A node on this route dials a serve whose node is on another route of the
cluster (RouteServicer.locate names that route's address): this route is the
*dialling* route. It opens a PeerService.Dial call to the *serving* route
(one channel per peer address, reused) and splices the node's Dial stream
with that call, through the same Splice as a tunnel within one route: the
frames pass as the bytes they came as, and fin, reset and half-close follow
the same TunnelState. The serving route takes the peer call as it takes a
Dial of its own node (RouteServicer._accepted: a pending entry, an
open_tunnel event to its node, that node's Accept, a splice), with a
stand-in Link for the dialling node, who has no session there.

The one retry: a serving route that does not hold the serve (the dialling
route's view of the registry is stale) ends the call at once, before any
header, with NOT_FOUND and the "vnet-not-here" trailer. Nothing was sent
anywhere then, so the dialling route looks again (here, then `locate`, each
route once); any other failure, and any failure after the serving route's
headers (the tunnel had begun), is the tunnel's and reaches the node as it
would within one route.

PeerAccess is the route's credential with its peers (the [cluster] token,
peer TLS); Peers holds the channels and the counters the metrics show.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from vnet import wire
from vnet.cluster.credentials import ClusterCredentials, PeerTls
from vnet.core.auth import peer_address
from vnet.core.errors import (
    InvalidRequest,
    LimitExceeded,
    NotFound,
    RouteUnavailable,
    Unanswered,
    Unauthenticated,
    VnetError,
)
from vnet.core.limits import SERVEID_MAX
from vnet.core.registry import Registry, Serve, Vnet
from vnet.core.sessions import Session
from vnet.core.tunnel_state import Phase
from vnet.route import rpc as route_rpc
from vnet.route.admission import BAD_CREDENTIALS, bearer, metadata
from vnet.route.link import Link
from vnet.route.security import RouteSecurity
from vnet.route.splice import Splice
from vnet.wire import peer_messages as pw
from vnet.wire.options import common_options, keepalive_options
from vnet.wire.route_messages import UnserveAsk

if TYPE_CHECKING:
    from vnet.route.service import RouteServicer

log = logging.getLogger(__name__)

# Routes a Dial is tried on, at most, after "not here" answers (each once).
MAX_ROUTES = 3
# After a clean end (a fin each way) the dialling route waits this long for
# the serving route's OK before it lets the call go: cancelling it at once
# could overtake the last fin on its way to the serving node.
LINGER = 5.0
# The serving route's answer (its headers, or a refusal) must come this soon.
ANSWER_TIMEOUT = 10.0
# Reconnecting to a peer route: the first and the longest wait, in milliseconds.
RECONNECT_MS = (250, 2000)

_NOT_HERE = ((pw.MD_NOT_HERE, "1"),)
_ROUTE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class PeerAccess:
    """This route's credential with the other routes of its cluster.

    token: the [cluster] token, sent on every PeerService call this route
    makes and the only one its own PeerService accepts ("" accepts none).
    tls: [cluster] peer_tls_*: calls to peers go over TLS with this
    certificate, and the peers' certificates are checked against tls.ca.
    secure: the routes serve TLS ([route] tls_cert): without peer TLS, calls
    to peers still go over TLS, checked against the system's CAs.
    route_id: this route's id, named in its calls for the peers' logs.

    The route's start-up makes it with PeerAccess.of(credentials, security)
    and sets RouteServicer.peers.access.
    """

    token: str
    tls: PeerTls | None = None
    secure: bool = False
    route_id: str = ""

    @classmethod
    def of(cls, credentials: ClusterCredentials, security: RouteSecurity) -> PeerAccess:
        """From [cluster]'s resolved credentials and the route's own security."""
        return cls(
            credentials.token,
            credentials.peer_tls,
            security.tls is not None,
            credentials.settings.route_id,
        )


class Elsewhere(Exception):  # noqa: N818 - not an error: where the Dial goes instead
    """The serve of link's Dial is on the route at address (RouteServicer.locate)."""

    def __init__(self, link: Link, serveid: int, address: str) -> None:
        super().__init__(address)
        self.link = link
        self.serveid = serveid
        self.address = address


class _NotHere(Exception):  # noqa: N818 - an answer, not a failure
    """The serve is not on this route (answered NOT_FOUND with the "not here" trailer)."""


def parse_serveid(raw: str) -> int:
    """A serveid from call metadata; InvalidRequest unless ASCII digits 1-999."""
    # ASCII digits only: int() would take other scripts' digits too.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= SERVEID_MAX:
        raise InvalidRequest(
            f"{wire.MD_SERVEID} must be a serveid 1-{SERVEID_MAX}, not {raw[:20]!r}"
        )
    return int(raw)


def _stand_in(vnetid: str, name: str, group: str, now: float, peer: str) -> Link:
    """A Link for a tunnel's node on another route: it has no session here, but
    the splice's bookkeeping (ends, budget, the admin's tunnel list) wants one."""
    session = Session(token="", vnet=Vnet(vnetid, name, group), resume_digest=b"", joined_at=now)
    return Link(session, peer=peer)


def _header(headers: Any, key: str) -> str:
    for k, v in headers or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("ascii", "replace")
    return ""


class Peers:
    """The route's peer streams: its PeerService handler, its calls to the
    other routes, and their counters."""

    def __init__(self, servicer: RouteServicer) -> None:
        self.servicer = servicer
        # Set by the route's start-up when it has a [cluster] section.
        self.access: PeerAccess | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Peer tunnels opened, by side: "out" (dialled from here), "in" (served here).
        self.tunnels: collections.Counter[str] = collections.Counter()
        # PeerService calls this route refused, by reason.
        self.refused: collections.Counter[str] = collections.Counter()
        # Answers from peers that were not a tunnel: "not_here", "timeout" (none in
        # time), else the refusal's status code name ("UNAVAILABLE" when unreachable).
        self.answers: collections.Counter[str] = collections.Counter()
        # Frame bytes through peer streams, of tunnels that have closed, by
        # direction ("sent" to peers, "received" from them); open ones are added at scrape.
        self._closed_bytes: collections.Counter[str] = collections.Counter()
        self._live: dict[Splice, str] = {}

    def bytes(self, direction: str) -> int:
        """Frame bytes sent to ("sent") or received from ("received") peers so far."""
        total = self._closed_bytes[direction]
        for splice, side in self._live.items():
            total += _bytes_of(splice, side)[direction]
        return total

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    def handlers(self) -> grpc.GenericRpcHandler:
        return pw.peer_handlers(self.Dial, self.Unserve)

    def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The calling route's cluster token, or Unauthenticated (counted, penalised)."""
        s = self.servicer
        address = peer_address(context.peer() or "")
        s.admission.not_penalised(address)
        token = self.access.token if self.access is not None else ""
        given = bearer(context).encode()
        # Constant time; and no cluster token means no route may call.
        if not token or not hmac.compare_digest(given, token.encode()):
            self.refused["unauthenticated"] += 1
            s.admission.failed(address)
            raise Unauthenticated(BAD_CREDENTIALS)

    # --- the serving route ------------------------------------------------

    async def Dial(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        """PeerService.Dial: another route's node dials a serve of one of ours."""
        s = self.servicer
        try:
            far, owner, serve = self._arriving(context)
        except _NotHere as exc:
            self.refused["not_here"] += 1
            s.rejected[grpc.StatusCode.NOT_FOUND.name] += 1
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc), trailing_metadata=_NOT_HERE)
        except VnetError as exc:
            await route_rpc.refuse(context, exc, s.rejected)
        session = far.core
        s.remote[session] = far
        try:
            try:
                # Its headers say "here": from now on a failure is the tunnel's.
                here = ((pw.MD_HERE, owner.vnet.vnetid),)
                splice = await s._accepted(far, owner, serve, context, here)
            except VnetError as exc:
                await route_rpc.refuse(context, exc, s.rejected)
            self._opened(splice, "in")
            try:
                # This handler pumps the peer stream until the tunnel ends.
                await splice.run(splice.dial)
            finally:
                self._ended(splice)
            await route_rpc.end_unless_told(splice.dial, context)
        finally:
            s.remote.pop(session, None)

    def _arriving(
        self, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Link, Link, Serve]:
        """The dialling node's stand-in, the serve's node and the serve; refused
        here (or _NotHere), before anything waits."""
        s = self.servicer
        self._admit(context)
        if s.refusing:
            raise RouteUnavailable(s.refusing)
        group = metadata(context, pw.MD_GROUP)
        vnetid = metadata(context, pw.MD_VNETID)
        serveid = parse_serveid(metadata(context, wire.MD_SERVEID))
        if not group or not Registry.valid_vnetid(vnetid):
            raise InvalidRequest(f"{pw.MD_GROUP} and {pw.MD_VNETID} must name the dialling node")
        found = s.owner_of(group, serveid)
        if found is None:
            raise _NotHere(f"no serveid {serveid} in this group on this route")
        owner, serve = found
        s.takes_tunnels(owner)
        route = metadata(context, pw.MD_ROUTE)
        # Shown in the admin's lists: only a route id is taken.
        name = f"(on route {route})" if _ROUTE_ID.fullmatch(route) else "(on another route)"
        return _stand_in(vnetid, name, group, s.clock(), context.peer() or ""), owner, serve

    async def Unserve(
        self, request: pw.PeerUnserveAsk, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Serve:
        """PeerService.Unserve: another route's node asks one of ours to offer a service."""
        s = self.servicer
        try:
            self._admit(context)
            if not request.group or not Registry.valid_vnetid(request.from_vnetid):
                raise InvalidRequest("group and from_vnetid must name the asking node")
            found = s.table.of_vnet(request.ask.vnetid)
            asked = None if found is None else s.sessions.get(found)
            if asked is None or asked.vnet.group != request.group or asked.core.closed:
                self.refused["not_here"] += 1
                s.rejected[grpc.StatusCode.NOT_FOUND.name] += 1
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no vnet {request.ask.vnetid!r} in this group on this route",
                    trailing_metadata=_NOT_HERE,
                )
            asking = _stand_in(
                request.from_vnetid, "(on another route)", request.group, 0.0, context.peer()
            )
            return await s.between.unserve(asking, request.ask)
        except VnetError as exc:
            await route_rpc.refuse(context, exc, s.rejected)

    # --- the dialling route ------------------------------------------------

    async def unserve(self, link: Link, request: UnserveAsk, address: str) -> Serve:
        """link's Unserve of a node on the route at address: asked there."""
        access = self.access
        if access is None:
            raise RouteUnavailable(
                f"vnet {request.vnetid} is on another route, and this route has no cluster "
                "credentials"
            )
        method = self._channel(address, access).unary_unary(pw.PEER_UNSERVE_METHOD)
        md = ((wire.MD_AUTH, f"Bearer {access.token}"), (pw.MD_ROUTE, access.route_id))
        data = pw.encode_unserve(link.vnet.group, link.vnet.vnetid, request)
        # The asked node has the serving route's unserve timeout to answer.
        timeout = self.servicer.timeouts.unserve + ANSWER_TIMEOUT
        try:
            return pw.decode_unserved(await method(data, metadata=md, timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code is grpc.StatusCode.NOT_FOUND and pw.not_here(exc.trailing_metadata()):
                self.answers["not_here"] += 1
                raise NotFound(f"no vnet {request.vnetid!r} in this group") from None
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                # The asked node's refusal, or the node's own malformed request.
                self.answers[code.name] += 1
                raise wire.error_of(exc) from None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                self.answers["timeout"] += 1
                raise Unanswered(f"the route at {address} did not answer in time") from None
            raise self._failure(address, f"vnet {request.vnetid}", code, details) from None

    async def relay(
        self, far: Elsewhere, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> tuple[Link, Serve] | None:
        """Run far.link's Dial as a tunnel through the route at far.address.

        None once the tunnel has run there; the serve's node and serve when a
        "not here" answer sent it looking and it is on this route now. Raises
        VnetError for a refusal (before anything reached the node).
        """
        s = self.servicer
        link = far.link
        group = link.vnet.group
        tunnel_id = metadata(context, wire.MD_TUNNEL)
        if not wire_tunnel_id(tunnel_id):
            tunnel_id = s._ids()
        tried: list[str] = []
        address = far.address
        started = asyncio.get_running_loop().time()
        link.core.tunnels += 1
        try:
            while True:
                tried.append(address)
                opened = await self._open(address, link, far.serveid, tunnel_id)
                if opened is not None:
                    break
                # Not there, and nothing sent anywhere: where is it now?
                found = s.owner_of(group, far.serveid)
                if found is not None:
                    s.takes_tunnels(found[0])
                    return found
                address = s.locate(group, far.serveid) or ""
                if not address or address in tried or len(tried) >= MAX_ROUTES:
                    raise NotFound(f"no serveid {far.serveid} in this group")
                log.info(
                    "serveid %s of group %s: not on the route at %s; trying %s",
                    far.serveid,
                    group,
                    tried[-1],
                    address,
                )
            call, vnetid = opened
            # Set-up as the route's histogram counts it: Dial to spliced (the serving
            # node's Accept is still to come, on the other route).
            s.observe_setup(asyncio.get_running_loop().time() - started)
            await self._spliced(link, far.serveid, tunnel_id, address, call, vnetid, context)
            return None
        finally:
            link.core.tunnels -= 1

    def _channel(self, address: str, access: PeerAccess) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            t = self.servicer.timeouts
            options = [
                *common_options(),
                *keepalive_options(t.keepalive, t.keepalive_timeout),
                # A peer route that restarts (or comes back after a cut) is
                # reached again within seconds: gRPC's own backoff grows to 120 s.
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS[0]),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_MS[0]),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_MS[1]),
            ]
            if access.tls is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=access.tls.ca,
                    private_key=access.tls.private_key,
                    certificate_chain=access.tls.cert_chain,
                )
                channel = grpc.aio.secure_channel(address, credentials, options=options)
            elif access.secure:
                channel = grpc.aio.secure_channel(
                    address, grpc.ssl_channel_credentials(), options=options
                )
            else:
                channel = grpc.aio.insecure_channel(address, options=options)
            self._channels[address] = channel
        return channel

    async def _open(
        self, address: str, link: Link, serveid: int, tunnel_id: str
    ) -> tuple[Any, str] | None:
        """A PeerService.Dial call the serving route said "here" to, and its
        node's vnetid; None when it answered "not here"; VnetError otherwise."""
        access = self.access
        if access is None:
            raise RouteUnavailable(
                f"serveid {serveid} is on another route, and this route has no cluster credentials"
            )
        md = (
            (wire.MD_AUTH, f"Bearer {access.token}"),
            (pw.MD_GROUP, link.vnet.group),
            (wire.MD_SERVEID, str(serveid)),
            (pw.MD_VNETID, link.vnet.vnetid),
            (wire.MD_TUNNEL, tunnel_id),
            (pw.MD_ROUTE, access.route_id),
        )
        call = self._channel(address, access).stream_stream(pw.PEER_DIAL_METHOD)(metadata=md)
        try:
            headers = await asyncio.wait_for(call.initial_metadata(), ANSWER_TIMEOUT)
            here = _header(headers, pw.MD_HERE)
            if here:
                return call, here
            # Ended before its headers (or headers without the word): why?
            code = await asyncio.wait_for(call.code(), ANSWER_TIMEOUT)
            if code is grpc.StatusCode.NOT_FOUND and pw.not_here(await call.trailing_metadata()):
                self.answers["not_here"] += 1
                return None
            details = await call.details()
        except TimeoutError:
            call.cancel()
            self.answers["timeout"] += 1
            raise RouteUnavailable(
                f"the route at {address} (serveid {serveid}) did not answer in time"
            ) from None
        except BaseException:
            call.cancel()
            raise
        call.cancel()
        raise self._failure(address, f"serveid {serveid}", code, details or "")

    def _failure(self, address: str, what: str, code: Any, details: str) -> VnetError:
        """The node's error for a peer's refusal (or for a peer it could not
        reach): the peer's reason, in the family its own route would give."""
        self.answers[code.name] += 1
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return LimitExceeded(details)
        if code is grpc.StatusCode.UNAVAILABLE:
            # The peer's own refusal (draining, a silent node) or gRPC's
            # (the peer is unreachable): which, the details say.
            return RouteUnavailable(f"the route at {address}: {details}")
        if code is grpc.StatusCode.UNAUTHENTICATED:
            # The routes' credentials, not the node's: never UNAUTHENTICATED to it.
            log.warning("the route at %s refused this route's cluster credentials", address)
            return RouteUnavailable(
                f"the route at {address}, which holds {what}, "
                "refused this route's cluster credentials"
            )
        return RouteUnavailable(f"the route at {address}: {code.name}: {details}")

    async def _spliced(
        self,
        link: Link,
        serveid: int,
        tunnel_id: str,
        address: str,
        call: Any,
        vnetid: str,
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        """Splice the node's Dial with the peer call until the tunnel ends."""
        s = self.servicer
        try:
            # Headers first, before the peer pump can write here (one writer per context).
            await context.send_initial_metadata(())
            far = _stand_in(vnetid, f"(on the route at {address})", link.vnet.group, 0.0, address)
            splice = s.splice(tunnel_id, serveid, context, call, link, far)
        except BaseException:
            call.cancel()
            raise
        self._opened(splice, "out")
        log.debug(
            "tunnel %s: vnet %s -> serveid %s on vnet %s, through the route at %s",
            tunnel_id,
            link.vnet.vnetid,
            serveid,
            vnetid,
            address,
        )
        # The peer call has no handler of its own here: its pump is a task.
        pump = asyncio.create_task(splice.run(splice.accept))
        try:
            # This handler pumps the dialling node's stream until the tunnel ends.
            await splice.run(splice.dial)
            if splice.state.phase is Phase.CLOSED and not call.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.code(), LINGER)
        except BaseException:
            # The node went away (the splice has reset the tunnel): the pump stops too.
            pump.cancel()
            raise
        finally:
            call.cancel()  # nothing, once it has its status
            # Both pumps have ended or are stopping: this does not wait for long.
            await asyncio.wait((pump,))
            if not pump.cancelled():
                pump.exception()  # retrieved: the splice has dealt with it
            self._ended(splice)
        await route_rpc.end_unless_told(splice.dial, context)

    # --- counting ---------------------------------------------------------

    def _opened(self, splice: Splice, side: str) -> None:
        self.tunnels[side] += 1
        self._live[splice] = side

    def _ended(self, splice: Splice) -> None:
        side = self._live.pop(splice, None)
        if side is not None:
            self._closed_bytes.update(_bytes_of(splice, side))


def _bytes_of(splice: Splice, side: str) -> dict[str, int]:
    """A peer tunnel's frame bytes, by direction: the peer is the serving end
    of an "out" tunnel and the dialling end of an "in" one."""
    if side == "out":
        return {"sent": splice.bytes_to_serve, "received": splice.bytes_to_dialer}
    return {"sent": splice.bytes_to_dialer, "received": splice.bytes_to_serve}


def wire_tunnel_id(tunnel_id: str) -> bool:
    """Whether a "vnet-tunnel" value is well-formed (16 lower-case hex digits)."""
    return len(tunnel_id) == 16 and all(c in "0123456789abcdef" for c in tunnel_id)
