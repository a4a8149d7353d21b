"""Tunnel frames: encoded and decoded by hand where it matters, checked against protobuf.

Data frames are by far the most frequent message, so the frames our nodes
write are made and read without protobuf objects; anything unusual goes
through protobuf's own parser. The route never parses a frame: it asks only
how the last one ended its direction.
"""

from __future__ import annotations

import enum

from google.protobuf.message import DecodeError

from vnet.core.errors import (
    MalformedFrame,
)
from vnetrpc.v1 import route_pb2 as pb

# Data frames are by far the most frequent message, so they are written and
# read by hand: field 1 (bytes), wire type 2. The tests check that this is
# the same encoding protobuf produces.
_DATA_TAG = 0x0A
# The first byte of every data frame our nodes write.
DATA_TAG = bytes([_DATA_TAG])
_FIN_TAG = 0x12
_RESET_TAG = 0x1A
FIN_FRAME = pb.TunnelFrame(fin=pb.Fin()).SerializeToString()
# A UDP flow's empty datagram: a data frame with no bytes (a TCP tunnel never sends one).
EMPTY_DATA = bytes([_DATA_TAG, 0])


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


def encode_opened(tunnel_id: str, from_vnetid: str) -> bytes:
    """The first frame on a spare Accept stream: the tunnel it was given to."""
    opened = pb.Opened(tunnel_id=tunnel_id, from_vnetid=from_vnetid)
    return pb.TunnelFrame(opened=opened).SerializeToString()


def decode_opened(raw: bytes) -> tuple[str, str]:
    """(tunnel_id, from_vnetid) of an opened frame; MalformedFrame for anything else."""
    try:
        frame = pb.TunnelFrame.FromString(raw)
    except DecodeError:
        raise MalformedFrame("malformed tunnel frame") from None
    if frame.WhichOneof("kind") != "opened":
        raise MalformedFrame("a spare's first frame is not an opened frame")
    return frame.opened.tunnel_id, frame.opened.from_vnetid


# A node's answer on a spare, at once after the route's opened frame.
ACCEPTED = pb.TunnelFrame(accepted=pb.Accepted()).SerializeToString()


def is_accepted(raw: bytes) -> bool:
    """Whether raw is an accepted frame (the node took the tunnel a spare was given)."""
    try:
        frame = pb.TunnelFrame.FromString(raw)
    except DecodeError:
        return False
    return frame.WhichOneof("kind") == "accepted"


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


def decode_datagram(raw: bytes) -> tuple[FrameKind, bytes | memoryview | str]:
    """decode_frame for a UDP flow's tunnel, where a data frame may be empty."""
    if raw == EMPTY_DATA:
        return FrameKind.DATA, b""
    return decode_frame(raw)


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
