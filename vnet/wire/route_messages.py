"""The route's side of RouteService on the wire: requests in, answers and events out.

The route's handlers take and return the dataclasses here (or plain values);
the method table built by route_handlers converts them to and from protobuf
as gRPC (de)serializes, so no handler sees a message. Control events are
encoded once, to bytes, where they are made: a broadcast to a group then
costs one encoding, however many streams carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from vnet.core.claims import Conflict
from vnet.core.limits import SERVEID_MAX
from vnet.core.registry import Serve, Vnet
from vnet.wire.messages import SERVICE, serve_to_pb, vnet_to_pb
from vnetrpc.v1 import route_pb2 as pb

# --- requests (what a node asks) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinAsk:
    name: str
    group: str
    resume_vnetid: str
    resume_token: str
    # The boot the resume pair is from, and the serveids the node had then.
    resume_boot_id: str = ""
    resume_serveids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ServeAsk:
    """A RegisterServe request."""

    serveid: int
    name: str
    type: str
    ip: str
    port: int
    info: str
    unserve: bool


@dataclass(frozen=True, slots=True)
class UnserveAsk:
    """An Unserve request: ask vnetid to offer ip:port."""

    vnetid: str
    ip: str
    port: int
    type: str = "tcp"


@dataclass(frozen=True, slots=True)
class PingAsk:
    """A Ping request: a round trip to the route, or on through via (a vnetid)."""

    nonce: int
    via: str


@dataclass(frozen=True, slots=True)
class UnserveAnswer:
    """An AnswerUnserve request: the asked node's serveid, or its refusal."""

    request_id: str
    serveid: int
    refusal: str


# --- answers (what the route returns) -------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinAnswer:
    session: str
    vnetid: str
    group: str
    boot_id: str
    resume_token: str


@dataclass(frozen=True, slots=True)
class Registered:
    serve: Serve
    reassigned: bool


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int
    boot_id: str
    # The round trip went through the PingAsk's via node.
    echoed: bool = False


def _join(msg: pb.JoinRequest) -> JoinAsk:
    return JoinAsk(
        msg.name,
        msg.group,
        msg.resume_vnetid,
        msg.resume_token,
        msg.resume_boot_id,
        tuple(msg.resume_serveids[:SERVEID_MAX]),
    )


def _register(msg: pb.RegisterServeRequest) -> ServeAsk:
    return ServeAsk(msg.serveid, msg.name, msg.type, msg.ip, msg.port, msg.info, msg.unserve)


def _unserve(msg: pb.UnserveRequest) -> UnserveAsk:
    return UnserveAsk(msg.vnetid, msg.ip, msg.port, msg.type or "tcp")


def _answer_unserve(msg: pb.AnswerUnserveRequest) -> UnserveAnswer:
    return UnserveAnswer(msg.request_id, msg.serveid, msg.refusal)


def _joined(answer: JoinAnswer) -> pb.JoinResponse:
    return pb.JoinResponse(
        session=answer.session,
        vnetid=answer.vnetid,
        group=answer.group,
        boot_id=answer.boot_id,
        resume_token=answer.resume_token,
    )


def _registered(answer: Registered) -> pb.RegisterServeResponse:
    return pb.RegisterServeResponse(serve=serve_to_pb(answer.serve), reassigned=answer.reassigned)


def _serves(serves: Sequence[Serve]) -> pb.ListServesResponse:
    return pb.ListServesResponse(serves=[serve_to_pb(s) for s in serves])


def _vnets(vnets: Iterable[tuple[Vnet, int]]) -> pb.ListVnetsResponse:
    return pb.ListVnetsResponse(vnets=[vnet_to_pb(v, n) for v, n in vnets])


def _pong(answer: Pong) -> pb.PingResponse:
    return pb.PingResponse(nonce=answer.nonce, boot_id=answer.boot_id, via_echoed=answer.echoed)


def _unserved(serve: Serve) -> pb.UnserveResponse:
    return pb.UnserveResponse(serve=serve_to_pb(serve))


# --- control events, encoded -------------------------------------------------------


def _event(event: pb.ControlEvent) -> bytes:
    return event.SerializeToString()


def snapshot_event(serves: Sequence[Serve]) -> bytes:
    return _event(
        pb.ControlEvent(snapshot=pb.ServeSnapshot(serves=[serve_to_pb(s) for s in serves]))
    )


def serve_added_event(serve: Serve) -> bytes:
    return _event(pb.ControlEvent(serve_added=serve_to_pb(serve)))


def serve_changes_event(added: Sequence[Serve], removed: Sequence[tuple[int, str]]) -> bytes:
    """Several changes as one message (vnet.core.feed.Batch): removed first, then added."""
    return _event(
        pb.ControlEvent(
            serve_changes=pb.ServeChanges(
                removed=[pb.ServeRemoved(serveid=s, vnetid=v) for s, v in removed],
                added=[serve_to_pb(s) for s in added],
            )
        )
    )


def id_conflict_event(conflict: Conflict) -> bytes:
    return _event(
        pb.ControlEvent(
            id_conflict=pb.IdConflict(
                kind=conflict.kind,
                id=conflict.ident,
                kept_by=conflict.kept_by,
                lost_by=conflict.lost_by,
                detail=conflict.words(),
            )
        )
    )


def serve_removed_event(serve: Serve) -> bytes:
    return _event(
        pb.ControlEvent(serve_removed=pb.ServeRemoved(serveid=serve.serveid, vnetid=serve.vnetid))
    )


def open_tunnel_event(tunnel_id: str, serveid: int, from_vnetid: str) -> bytes:
    return _event(
        pb.ControlEvent(
            open_tunnel=pb.OpenTunnel(tunnel_id=tunnel_id, serveid=serveid, from_vnetid=from_vnetid)
        )
    )


def unserve_asked_event(
    request_id: str, from_vnetid: str, ip: str, port: int, type: str = "tcp"
) -> bytes:
    return _event(
        pb.ControlEvent(
            unserve_asked=pb.UnserveAsked(
                request_id=request_id, from_vnetid=from_vnetid, ip=ip, port=port, type=type
            )
        )
    )


def echo_asked_event(probe: int) -> bytes:
    return _event(pb.ControlEvent(echo_asked=pb.EchoAsked(probe=probe)))


def going_away_event(reason: str, grace_ms: int) -> bytes:
    return _event(pb.ControlEvent(going_away=pb.GoingAway(reason=reason, grace_ms=grace_ms)))


# --- the method table -----------------------------------------------------------

Handler = Callable[..., Coroutine[Any, Any, Any]]


def _parse(kind: Any, convert: Callable[[Any], Any] | None = None) -> Callable[[bytes], Any]:
    """Parse the request message; convert it, or drop it when it carries nothing."""

    def parse(data: bytes) -> Any:
        msg = kind.FromString(data)
        return convert(msg) if convert is not None else None

    return parse


def _build(convert: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    # An answer already encoded (a handler's cached list) goes out as it is.
    return lambda answer: (
        answer if isinstance(answer, bytes) else convert(answer).SerializeToString()
    )


def list_serves_answer(serves: Sequence[Serve]) -> bytes:
    """A ListServes answer, encoded (for a handler that keeps it)."""
    return _serves(serves).SerializeToString()


def list_vnets_answer(vnets: Iterable[tuple[Vnet, int]]) -> bytes:
    """A ListVnets answer, encoded (for a handler that keeps it)."""
    return _vnets(vnets).SerializeToString()


def _empty(kind: Any) -> Callable[[Any], bytes]:
    data = kind().SerializeToString()
    return lambda _: data


# name -> (request parser, answer builder) of the unary methods.
UNARY_CODECS: Mapping[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]] = {
    "Join": (_parse(pb.JoinRequest, _join), _build(_joined)),
    "RegisterServe": (_parse(pb.RegisterServeRequest, _register), _build(_registered)),
    "UnregisterServe": (
        _parse(pb.UnregisterServeRequest, lambda m: m.serveid),
        _empty(pb.UnregisterServeResponse),
    ),
    "ListServes": (_parse(pb.ListServesRequest), _build(_serves)),
    "ListVnets": (_parse(pb.ListVnetsRequest), _build(_vnets)),
    "Ping": (_parse(pb.PingRequest, lambda m: PingAsk(m.nonce, m.via_vnetid)), _build(_pong)),
    "Echo": (_parse(pb.EchoRequest, lambda m: m.probe), _empty(pb.EchoResponse)),
    "Leave": (_parse(pb.LeaveRequest), _empty(pb.LeaveResponse)),
    "Unserve": (_parse(pb.UnserveRequest, _unserve), _build(_unserved)),
    "AnswerUnserve": (
        _parse(pb.AnswerUnserveRequest, _answer_unserve),
        _empty(pb.AnswerUnserveResponse),
    ),
}
UNARY_METHODS = tuple(UNARY_CODECS)


def route_method_table(
    unary: Mapping[str, Handler],
    control: Callable[..., Any],
    dial: Handler,
    accept: Handler,
) -> dict[str, grpc.RpcMethodHandler]:
    """RouteService's method table around the route's handlers, by method name.

    unary has a handler for each of UNARY_METHODS, taking the request's
    dataclass (or value, or None) and returning its answer's; control yields
    encoded events (bytes); dial and accept get and write raw tunnel frames.
    """
    table: dict[str, grpc.RpcMethodHandler] = {
        name: grpc.unary_unary_rpc_method_handler(
            unary[name], request_deserializer=parse, response_serializer=build
        )
        for name, (parse, build) in UNARY_CODECS.items()
    }
    # The events are bytes already (see above): no serializer.
    # The handler gets ControlRequest.serve_changes: whether the node takes batches.
    table["Control"] = grpc.unary_stream_rpc_method_handler(
        control, request_deserializer=_parse(pb.ControlRequest, lambda m: m.serve_changes)
    )
    # No (de)serializers: frames go through as the bytes they came as.
    table["Dial"] = grpc.stream_stream_rpc_method_handler(dial)
    table["Accept"] = grpc.stream_stream_rpc_method_handler(accept)
    return table


def route_handlers(
    unary: Mapping[str, Handler],
    control: Callable[..., Any],
    dial: Handler,
    accept: Handler,
) -> grpc.GenericRpcHandler:
    """The same table as one generic handler (route_method_table)."""
    return grpc.method_handlers_generic_handler(
        SERVICE, route_method_table(unary, control, dial, accept)
    )
