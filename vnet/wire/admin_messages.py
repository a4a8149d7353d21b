"""vnetrpc.v1.Admin on the wire: its method table for the route, its stub for clients.

Both sides see the records of vnet.core.admin: the route's handlers take a
request's values and return records, which the table here turns into
protobuf as gRPC serializes; a client's calls return the same records.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc

from vnet.core.admin import DrainReport, KickReport, NodeRow, ReloadReport, ServeRow, TunnelRow
from vnet.wire.messages import serve_from_pb, serve_to_pb
from vnetrpc.v1 import admin_pb2 as pb

ADMIN_SERVICE = "vnetrpc.v1.Admin"

Handler = Callable[..., Coroutine[Any, Any, Any]]


def _node_to_pb(r: NodeRow) -> pb.AdminNode:
    return pb.AdminNode(
        vnetid=r.vnetid,
        name=r.name,
        group=r.group,
        peer=r.peer,
        tls_identity=r.tls_identity,
        joined_at_unix_ms=r.joined_at_ms,
        serves=r.serves,
        tunnels=r.tunnels,
        bytes_from_node=r.bytes_from_node,
        bytes_to_node=r.bytes_to_node,
    )


def _node_from_pb(m: pb.AdminNode) -> NodeRow:
    return NodeRow(
        vnetid=m.vnetid,
        name=m.name,
        group=m.group,
        peer=m.peer,
        tls_identity=m.tls_identity,
        joined_at_ms=m.joined_at_unix_ms,
        serves=m.serves,
        tunnels=m.tunnels,
        bytes_from_node=m.bytes_from_node,
        bytes_to_node=m.bytes_to_node,
    )


def _serve_to_pb(r: ServeRow) -> pb.AdminServe:
    return pb.AdminServe(group=r.group, serve=serve_to_pb(r.serve))


def _serve_from_pb(m: pb.AdminServe) -> ServeRow:
    return ServeRow(group=m.group, serve=serve_from_pb(m.serve))


def _tunnel_to_pb(r: TunnelRow) -> pb.AdminTunnel:
    return pb.AdminTunnel(
        tunnel_id=r.tunnel_id,
        group=r.group,
        serveid=r.serveid,
        dial_vnetid=r.dial_vnetid,
        serve_vnetid=r.serve_vnetid,
        bytes_to_serve=r.bytes_to_serve,
        bytes_to_dialer=r.bytes_to_dialer,
        age_ms=r.age_ms,
        state=r.state,
    )


def _tunnel_from_pb(m: pb.AdminTunnel) -> TunnelRow:
    return TunnelRow(
        tunnel_id=m.tunnel_id,
        group=m.group,
        serveid=m.serveid,
        dial_vnetid=m.dial_vnetid,
        serve_vnetid=m.serve_vnetid,
        bytes_to_serve=m.bytes_to_serve,
        bytes_to_dialer=m.bytes_to_dialer,
        age_ms=m.age_ms,
        state=m.state,
    )


def _kick_to_pb(r: KickReport) -> pb.KickResponse:
    return pb.KickResponse(
        name=r.name,
        group=r.group,
        tunnels_reset=r.tunnels_reset,
        serves_withdrawn=r.serves_withdrawn,
    )


def _drain_to_pb(r: DrainReport) -> pb.DrainResponse:
    return pb.DrainResponse(
        draining=r.draining,
        tunnels_at_start=r.tunnels_at_start,
        tunnels_reset=r.tunnels_reset,
        empty=r.empty,
        waited_ms=r.waited_ms,
    )


def _reload_to_pb(r: ReloadReport) -> pb.ReloadResponse:
    return pb.ReloadResponse(
        changes=list(r.changes), ended=list(r.ended), needs_restart=list(r.needs_restart)
    )


# name -> (request type, request -> handler argument, answer -> response message)
_CODECS: Mapping[str, tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "ListNodes": (
        pb.ListNodesRequest,
        lambda m: None,
        lambda rows: pb.ListNodesResponse(nodes=[_node_to_pb(r) for r in rows]),
    ),
    "ListServes": (
        pb.AdminListServesRequest,
        lambda m: None,
        lambda rows: pb.AdminListServesResponse(serves=[_serve_to_pb(r) for r in rows]),
    ),
    "ListTunnels": (
        pb.ListTunnelsRequest,
        lambda m: None,
        lambda rows: pb.ListTunnelsResponse(tunnels=[_tunnel_to_pb(r) for r in rows]),
    ),
    "ListUnserves": (
        pb.ListUnservesRequest,
        lambda m: None,
        lambda rows: pb.ListUnservesResponse(serves=[_serve_to_pb(r) for r in rows]),
    ),
    "Kick": (pb.KickRequest, lambda m: m.vnetid, _kick_to_pb),
    "CloseTunnel": (
        pb.CloseTunnelRequest,
        lambda m: m.tunnel_id,
        lambda _: pb.CloseTunnelResponse(),
    ),
    "Drain": (pb.DrainRequest, lambda m: (m.grace_ms / 1000, m.undo), _drain_to_pb),
    "Reload": (pb.ReloadRequest, lambda m: None, _reload_to_pb),
}
ADMIN_METHODS = tuple(_CODECS)


def admin_handlers(handlers: Mapping[str, Handler]) -> grpc.GenericRpcHandler:
    """The Admin service's method table around handlers (one per ADMIN_METHODS name)."""

    def parse(kind: Any, convert: Callable[[Any], Any]) -> Callable[[bytes], Any]:
        return lambda data: convert(kind.FromString(data))

    def build(convert: Callable[[Any], Any]) -> Callable[[Any], bytes]:
        return lambda answer: convert(answer).SerializeToString()

    table = {
        name: grpc.unary_unary_rpc_method_handler(
            handlers[name], request_deserializer=parse(kind, arg), response_serializer=build(out)
        )
        for name, (kind, arg, out) in _CODECS.items()
    }
    return grpc.method_handlers_generic_handler(ADMIN_SERVICE, table)


# --- the client's side -------------------------------------------------------------


class AdminStub:
    """Calls to a route's Admin service on a channel; answers are vnet.core.admin records."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)
        self._channel = channel

    async def _call(self, name: str, request: Any, kind: Any, timeout: float) -> Any:
        method = self._channel.unary_unary(
            f"/{ADMIN_SERVICE}/{name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=kind.FromString,
        )
        return await method(request, metadata=self._metadata, timeout=timeout)

    async def nodes(self, timeout: float = 10.0) -> list[NodeRow]:
        got = await self._call("ListNodes", pb.ListNodesRequest(), pb.ListNodesResponse, timeout)
        return [_node_from_pb(m) for m in got.nodes]

    async def serves(self, timeout: float = 10.0) -> list[ServeRow]:
        got = await self._call(
            "ListServes", pb.AdminListServesRequest(), pb.AdminListServesResponse, timeout
        )
        return [_serve_from_pb(m) for m in got.serves]

    async def unserves(self, timeout: float = 10.0) -> list[ServeRow]:
        got = await self._call(
            "ListUnserves", pb.ListUnservesRequest(), pb.ListUnservesResponse, timeout
        )
        return [_serve_from_pb(m) for m in got.serves]

    async def tunnels(self, timeout: float = 10.0) -> list[TunnelRow]:
        got = await self._call(
            "ListTunnels", pb.ListTunnelsRequest(), pb.ListTunnelsResponse, timeout
        )
        return [_tunnel_from_pb(m) for m in got.tunnels]

    async def kick(self, vnetid: str, timeout: float = 10.0) -> KickReport:
        got = await self._call("Kick", pb.KickRequest(vnetid=vnetid), pb.KickResponse, timeout)
        return KickReport(got.name, got.group, got.tunnels_reset, got.serves_withdrawn)

    async def close_tunnel(self, tunnel_id: str, timeout: float = 10.0) -> None:
        await self._call(
            "CloseTunnel",
            pb.CloseTunnelRequest(tunnel_id=tunnel_id),
            pb.CloseTunnelResponse,
            timeout,
        )

    async def drain(self, grace: float, undo: bool = False) -> DrainReport:
        request = pb.DrainRequest(grace_ms=int(grace * 1000), undo=undo)
        # The answer comes when the route is empty: allow the grace and then some.
        got = await self._call("Drain", request, pb.DrainResponse, (grace or 30.0) + 30.0)
        return DrainReport(
            got.draining, got.tunnels_at_start, got.tunnels_reset, got.empty, got.waited_ms
        )

    async def reload(self, timeout: float = 30.0) -> ReloadReport:
        got = await self._call("Reload", pb.ReloadRequest(), pb.ReloadResponse, timeout)
        return ReloadReport(tuple(got.changes), tuple(got.ended), tuple(got.needs_restart))


def raw_request(name: str) -> bytes:
    """An empty request of method name, serialized (for tests that call every method)."""
    kind = _CODECS[name][0]
    data: bytes = kind().SerializeToString()
    return data
