"""The service's names and metadata keys, and protobuf messages <-> vnet's dataclasses."""

from __future__ import annotations

from collections.abc import Sequence

from vnet.core.registry import Serve, Vnet
from vnetrpc.v1 import route_pb2 as pb

SERVICE = "vnetrpc.v1.RouteService"
DIAL_METHOD = f"/{SERVICE}/Dial"
ACCEPT_METHOD = f"/{SERVICE}/Accept"

# Metadata keys; gRPC requires them lower-case.
MD_SESSION = "vnet-session"
MD_SERVEID = "vnet-serveid"
MD_TUNNEL = "vnet-tunnel"
# On an Accept instead of MD_TUNNEL: a spare held for the next Dial to this serveid.
MD_SPARE = "vnet-spare"
# The credential, as "Bearer TOKEN" (so grpcurl -H works as for any API).
MD_AUTH = "authorization"


def serve_to_pb(serve: Serve) -> pb.ServeInfo:
    return pb.ServeInfo(
        serveid=serve.serveid,
        vnetid=serve.vnetid,
        name=serve.name,
        type=serve.type,
        ip=serve.ip,
        port=serve.port,
        info=serve.info,
        unserve=serve.unserve,
    )


def serve_from_pb(msg: pb.ServeInfo) -> Serve:
    return Serve(
        serveid=msg.serveid,
        vnetid=msg.vnetid,
        name=msg.name,
        ip=msg.ip,
        port=msg.port,
        info=msg.info,
        type=msg.type or "tcp",
        unserve=msg.unserve,
    )


def vnet_to_pb(vnet: Vnet, serves: int) -> pb.VnetInfo:
    return pb.VnetInfo(vnetid=vnet.vnetid, name=vnet.name, group=vnet.group, serves=serves)


def serves_from_pb(msgs: Sequence[pb.ServeInfo]) -> list[Serve]:
    return [serve_from_pb(m) for m in msgs]
