"""The wire adapter: the one place that knows the protobuf messages.

Converts between vnet's dataclasses and vnetrpc.v1 messages, encodes and
decodes tunnel frames, and translates errors between vnet and gRPC status
codes. Everything else in vnet sees dataclasses, bytes and VnetError.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError

from vnet.errors import (
    LimitExceeded,
    LocalProtocolError,
    MalformedFrame,
    NotFound,
    ProtocolError,
    Refused,
    RouteUnavailable,
    ServeIdTaken,
    Unauthenticated,
    VnetError,
)
from vnet.registry import Serve, Vnet
from vnetrpc.v1 import route_pb2 as pb

SERVICE = "vnetrpc.v1.RouteService"
DIAL_METHOD = f"/{SERVICE}/Dial"
ACCEPT_METHOD = f"/{SERVICE}/Accept"

# Metadata keys; gRPC requires them lower-case.
MD_SESSION = "vnet-session"
MD_SERVEID = "vnet-serveid"
MD_TUNNEL = "vnet-tunnel"
# The credential, as "Bearer TOKEN" (so grpcurl -H works as for any API).
MD_AUTH = "authorization"

# Data frames are by far the most frequent message, so they are written and
# read by hand: field 1 (bytes), wire type 2. The tests check that this is
# the same encoding protobuf produces.
_DATA_TAG = 0x0A
# The first byte of every data frame our nodes write.
DATA_TAG = bytes([_DATA_TAG])
_FIN_TAG = 0x12
_RESET_TAG = 0x1A
FIN_FRAME = pb.TunnelFrame(fin=pb.Fin()).SerializeToString()


class FrameKind(enum.Enum):
    DATA = 1
    FIN = 2
    RESET = 3


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_data(chunk: bytes) -> bytes:
    """A data frame carrying chunk (which must not be empty)."""
    return b"%c%s%s" % (_DATA_TAG, _varint(len(chunk)), chunk)


def encode_reset(reason: str) -> bytes:
    return pb.TunnelFrame(reset=pb.Reset(reason=reason[:200])).SerializeToString()


def _plain_data_start(raw: bytes) -> int:
    """Where the payload starts, for a data frame exactly as our nodes write
    it (tag, length, payload, nothing else); -1 for anything else."""
    if not raw or raw[0] != _DATA_TAG:
        return -1
    length, shift, pos = 0, 0, 1
    while pos < len(raw) and pos < 11:
        byte = raw[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return pos if pos + length == len(raw) and length > 0 else -1
        shift += 7
    return -1


def terminal_kind(frame: bytes) -> FrameKind | None:
    """FIN or RESET if this raw frame ends its direction, else None.

    The route asks this of the last frame of a stream only, so it tells a
    clean end from a stream that stopped short without parsing every frame
    it forwards. Any valid encoding counts, not only our own.
    """
    if not frame or _plain_data_start(frame) > 0:
        return None
    try:
        kind, _ = decode_frame(frame)
    except MalformedFrame:
        return None
    return kind if kind is not FrameKind.DATA else None


def decode_frame(raw: bytes) -> tuple[FrameKind, bytes | memoryview | str]:
    """Parse one frame: (DATA, payload), (FIN, b"") or (RESET, reason).

    Raises MalformedFrame for a frame that is not a valid TunnelFrame.
    """
    start = _plain_data_start(raw)
    if start > 0:
        # The frames our own nodes write need no parser; anything unusual
        # falls through to the real one.
        return FrameKind.DATA, memoryview(raw)[start:]
    try:
        frame = pb.TunnelFrame.FromString(raw)
    except DecodeError:
        raise MalformedFrame("malformed tunnel frame") from None
    kind = frame.WhichOneof("kind")
    if kind == "data" and frame.data:
        return FrameKind.DATA, frame.data
    if kind == "fin":
        return FrameKind.FIN, b""
    if kind == "reset":
        return FrameKind.RESET, frame.reset.reason
    raise MalformedFrame("tunnel frame with no data, fin or reset")


# --- messages <-> dataclasses ------------------------------------------------


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


# --- errors ------------------------------------------------------------------

# Each error family to its status code, used by the route's servicer; a
# subclass goes out as its family's code.
STATUS_OF: dict[type[VnetError], grpc.StatusCode] = {
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    ServeIdTaken: grpc.StatusCode.ALREADY_EXISTS,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Refused: grpc.StatusCode.FAILED_PRECONDITION,
    RouteUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# And back again, used by the node: the same table inverted, except that
# INVALID_ARGUMENT, seen by the node, means its own request was malformed.
ERROR_OF: dict[grpc.StatusCode, type[VnetError]] = {
    code: LocalProtocolError if family is ProtocolError else family
    for family, code in STATUS_OF.items()
}


def status_of(exc: VnetError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def error_of(exc: grpc.aio.AioRpcError) -> VnetError:
    """The vnet error for a failed call; unknown codes mean the route is unwell."""
    kind = ERROR_OF.get(exc.code(), RouteUnavailable)
    details = exc.details() or exc.code().name
    return kind(details)
