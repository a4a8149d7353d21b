"""The node's messages: the requests its client sends, the answers and events it reads.

Requests are built from plain values and answers parsed into the dataclasses
below, so the node's gRPC adapter (vnet.node.client) never handles a
protobuf message itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from vnet.core.registry import Serve
from vnet.wire.messages import serve_from_pb, serves_from_pb
from vnetrpc.v1 import route_pb2 as pb
from vnetrpc.v1 import route_pb2_grpc as pb_grpc

# --- what the answers and events say ------------------------------------------


@dataclass(frozen=True)
class Joined:
    session: str
    vnetid: str
    group: str
    boot_id: str
    # Lets this node take its session over after a lost connection.
    resume_token: str = ""


@dataclass(frozen=True)
class Registered:
    serve: Serve
    reassigned: bool


@dataclass(frozen=True)
class VnetInfo:
    vnetid: str
    name: str
    group: str
    serves: int


@dataclass(frozen=True)
class Snapshot:
    serves: tuple[Serve, ...]


@dataclass(frozen=True)
class ServeAdded:
    serve: Serve


@dataclass(frozen=True)
class ServeRemoved:
    serveid: int
    vnetid: str


@dataclass(frozen=True)
class OpenTunnel:
    tunnel_id: str
    serveid: int
    from_vnetid: str


@dataclass(frozen=True)
class GoingAway:
    reason: str
    grace: float


@dataclass(frozen=True)
class UnserveAsked:
    request_id: str
    from_vnetid: str
    ip: str
    port: int
    type: str = "tcp"


@dataclass(frozen=True)
class EchoAsked:
    """Another node times a round trip through this one: answer with Echo."""

    probe: int


@dataclass(frozen=True)
class Pinged:
    """A Ping's answer: whether it went through the via node."""

    echoed: bool


@dataclass(frozen=True)
class ServeChanges:
    """Several serve changes at once: apply removed, then added."""

    removed: tuple[ServeRemoved, ...]
    added: tuple[ServeAdded, ...]


@dataclass(frozen=True)
class IdConflict:
    """Another node returning after a route restart claimed one of this node's ids."""

    kind: str
    ident: str
    kept_by: str
    lost_by: str
    detail: str


ControlEvent = (
    Snapshot
    | ServeAdded
    | ServeRemoved
    | OpenTunnel
    | GoingAway
    | UnserveAsked
    | ServeChanges
    | IdConflict
    | EchoAsked
)


def route_stub(channel: grpc.aio.Channel) -> pb_grpc.RouteServiceAsyncStub:
    """The generated stub for the route's unary and control calls on channel."""
    # grpc has no types here, so mypy cannot pick the stub's aio overload.
    return pb_grpc.RouteServiceStub(channel)  # type: ignore[return-value]


# --- requests -------------------------------------------------------------------


def join_request(
    name: str,
    group: str,
    resume_vnetid: str,
    resume_token: str,
    resume_boot_id: str = "",
    resume_serveids: Sequence[int] = (),
) -> pb.JoinRequest:
    return pb.JoinRequest(
        name=name,
        group=group,
        resume_vnetid=resume_vnetid,
        resume_token=resume_token,
        resume_boot_id=resume_boot_id,
        resume_serveids=list(resume_serveids),
    )


def register_request(
    serveid: int, name: str, ip: str, port: int, info: str, unserve: bool, type: str = "tcp"
) -> pb.RegisterServeRequest:
    return pb.RegisterServeRequest(
        serveid=serveid, name=name, type=type, ip=ip, port=port, info=info, unserve=unserve
    )


def unregister_request(serveid: int) -> pb.UnregisterServeRequest:
    return pb.UnregisterServeRequest(serveid=serveid)


def list_serves_request() -> pb.ListServesRequest:
    return pb.ListServesRequest()


def list_vnets_request() -> pb.ListVnetsRequest:
    return pb.ListVnetsRequest()


def unserve_request(vnetid: str, ip: str, port: int, type: str = "tcp") -> pb.UnserveRequest:
    return pb.UnserveRequest(vnetid=vnetid, ip=ip, port=port, type=type)


def answer_unserve_request(request_id: str, serveid: int, refusal: str) -> pb.AnswerUnserveRequest:
    return pb.AnswerUnserveRequest(request_id=request_id, serveid=serveid, refusal=refusal)


def ping_request(nonce: int = 0, via: str = "") -> pb.PingRequest:
    return pb.PingRequest(nonce=nonce, via_vnetid=via)


def echo_request(probe: int) -> pb.EchoRequest:
    return pb.EchoRequest(probe=probe)


def pinged_from_pb(msg: pb.PingResponse) -> Pinged:
    return Pinged(msg.via_echoed)


def leave_request() -> pb.LeaveRequest:
    return pb.LeaveRequest()


def control_request() -> pb.ControlRequest:
    # This node applies ServeChanges (vnet.node.node): batches welcome.
    return pb.ControlRequest(serve_changes=True)


# --- answers and events -----------------------------------------------------------


def joined_from_pb(msg: pb.JoinResponse) -> Joined:
    return Joined(msg.session, msg.vnetid, msg.group, msg.boot_id, msg.resume_token)


def registered_from_pb(msg: pb.RegisterServeResponse) -> Registered:
    return Registered(serve_from_pb(msg.serve), msg.reassigned)


def listed_serves_from_pb(msg: pb.ListServesResponse) -> list[Serve]:
    return serves_from_pb(msg.serves)


def vnets_from_pb(msg: pb.ListVnetsResponse) -> list[VnetInfo]:
    return [VnetInfo(v.vnetid, v.name, v.group, v.serves) for v in msg.vnets]


def unserved_from_pb(msg: pb.UnserveResponse) -> Serve:
    return serve_from_pb(msg.serve)


def event_from_pb(msg: pb.ControlEvent) -> ControlEvent | None:
    """The event a control message carries; None for a kind from a newer route."""
    kind = msg.WhichOneof("event")
    if kind == "snapshot":
        return Snapshot(tuple(serves_from_pb(msg.snapshot.serves)))
    if kind == "serve_added":
        return ServeAdded(serve_from_pb(msg.serve_added))
    if kind == "serve_removed":
        return ServeRemoved(msg.serve_removed.serveid, msg.serve_removed.vnetid)
    if kind == "open_tunnel":
        ot = msg.open_tunnel
        return OpenTunnel(ot.tunnel_id, ot.serveid, ot.from_vnetid)
    if kind == "unserve_asked":
        ua = msg.unserve_asked
        return UnserveAsked(ua.request_id, ua.from_vnetid, ua.ip, ua.port, ua.type or "tcp")
    if kind == "echo_asked":
        return EchoAsked(msg.echo_asked.probe)
    if kind == "going_away":
        return GoingAway(msg.going_away.reason, msg.going_away.grace_ms / 1000)
    if kind == "serve_changes":
        sc = msg.serve_changes
        return ServeChanges(
            tuple(ServeRemoved(r.serveid, r.vnetid) for r in sc.removed),
            tuple(ServeAdded(serve_from_pb(a)) for a in sc.added),
        )
    if kind == "id_conflict":
        ic = msg.id_conflict
        return IdConflict(ic.kind, ic.id, ic.kept_by, ic.lost_by, ic.detail)
    return None  # an event kind from a newer route: ignore it
