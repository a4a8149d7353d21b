"""PeerService on the wire (protos/vnetrpc/v1/peer.proto): its names, metadata
keys and method table.

Tunnel frames pass through as raw bytes, as on RouteService.Dial and Accept:
no (de)serializers, so neither route parses or re-encodes a frame.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from vnetrpc.v1 import peer_pb2

PEER_SERVICE = peer_pb2.DESCRIPTOR.services_by_name["PeerService"].full_name
PEER_DIAL_METHOD = f"/{PEER_SERVICE}/Dial"

# Metadata of a PeerService.Dial call (peer.proto); "vnet-serveid" and
# "vnet-tunnel" are RouteService's keys (wire.MD_SERVEID, wire.MD_TUNNEL).
MD_GROUP = "vnet-group"
MD_VNETID = "vnet-vnetid"
MD_ROUTE = "vnet-route"
# In the serving route's response headers: the serve is here (its node's vnetid).
MD_HERE = "vnet-here"
# In the trailers of a NOT_FOUND: the serve is not on this route, nothing was sent.
MD_NOT_HERE = "vnet-not-here"

Handler = Callable[..., Coroutine[Any, Any, None]]


def peer_handlers(dial: Handler) -> grpc.GenericRpcHandler:
    """PeerService's method table around the route's Dial handler (raw frames)."""
    return grpc.method_handlers_generic_handler(
        PEER_SERVICE, {"Dial": grpc.stream_stream_rpc_method_handler(dial)}
    )


def not_here(metadata: object) -> bool:
    """Whether trailing metadata carries the serving route's "not here" marker."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == MD_NOT_HERE:
            return value in ("1", b"1")
    return False
