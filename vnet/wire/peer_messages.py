"""PeerService on the wire (protos/vnetrpc/v1/peer.proto): its names, metadata
keys and method table.

Tunnel frames pass through as raw bytes, as on RouteService.Dial and Accept:
no (de)serializers, so neither route parses or re-encodes a frame.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from vnet.core.registry import Serve
from vnet.wire.messages import serve_from_pb, serve_to_pb
from vnet.wire.route_messages import UnserveAsk
from vnetrpc.v1 import peer_pb2, route_pb2

PEER_SERVICE = peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name
PEER_DIAL_METHOD = f"/{PEER_SERVICE}/Dial"
PEER_UNSERVE_METHOD = f"/{PEER_SERVICE}/Unserve"

# Metadata of a PeerService.Dial call (peer.proto); "vnet-serveid" and
# "vnet-tunnel" are RouteService's keys (wire.MD_SERVEID, wire.MD_TUNNEL).
MD_GROUP = "vnet-group"
MD_VNETID = "vnet-vnetid"
MD_ROUTE = "vnet-route"
# In the serving route's response headers: the serve is here (its node's vnetid).
MD_HERE = "vnet-here"
# In the trailers of a NOT_FOUND: the serve is not on this route, nothing was sent.
MD_NOT_HERE = "vnet-not-here"

Handler = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class PeerUnserveAsk:
    """A PeerService.Unserve request: from_vnetid (on the calling route) asks."""

    group: str
    from_vnetid: str
    ask: UnserveAsk


def encode_unserve(group: str, from_vnetid: str, ask: UnserveAsk) -> bytes:
    """The calling route's PeerService.Unserve request, encoded."""
    request = route_pb2.UnserveRequest(vnetid=ask.vnetid, ip=ask.ip, port=ask.port, type=ask.type)
    return peer_pb2.PeerServiceUnserveRequest(
        group=group, from_vnetid=from_vnetid, request=request
    ).SerializeToString()


def _parse_unserve(data: bytes) -> PeerUnserveAsk:
    msg = peer_pb2.PeerServiceUnserveRequest.FromString(data)
    r = msg.request
    return PeerUnserveAsk(
        msg.group, msg.from_vnetid, UnserveAsk(r.vnetid, r.ip, r.port, r.type or "tcp")
    )


def _build_unserved(serve: Serve) -> bytes:
    return peer_pb2.PeerServiceUnserveResponse(serve=serve_to_pb(serve)).SerializeToString()


def decode_unserved(data: bytes) -> Serve:
    """The serving route's answer to PeerService.Unserve: the serve registered."""
    return serve_from_pb(peer_pb2.PeerServiceUnserveResponse.FromString(data).serve)


def peer_handlers(dial: Handler, unserve: Handler) -> grpc.GenericRpcHandler:
    """PeerService's method table: Dial passes raw frames; unserve takes a
    PeerUnserveAsk and returns the Serve."""
    return grpc.method_handlers_generic_handler(
        PEER_SERVICE,
        {
            "Dial": grpc.stream_stream_rpc_method_handler(dial),
            "Unserve": grpc.unary_unary_rpc_method_handler(
                unserve, request_deserializer=_parse_unserve, response_serializer=_build_unserved
            ),
        },
    )


def not_here(metadata: object) -> bool:
    """Whether trailing metadata carries the serving route's "not here" marker."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == MD_NOT_HERE:
            return value in ("1", b"1")
    return False
