"""The hand-written frame encoding agrees with protobuf's."""

from __future__ import annotations

import pytest

from vnet import wire
from vnet.errors import MalformedFrame
from vnetrpc.v1 import route_pb2 as pb


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 4 << 20])
def test_data_frame_is_protobufs_encoding(size: int) -> None:
    chunk = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encoded = wire.encode_data(chunk)
    assert encoded == pb.TunnelFrame(data=chunk).SerializeToString()
    kind, payload = wire.decode_frame(encoded)
    assert kind is wire.FrameKind.DATA
    assert bytes(payload) == chunk


def test_fin_and_reset_round_trip() -> None:
    assert wire.decode_frame(wire.FIN_FRAME) == (wire.FrameKind.FIN, b"")
    assert wire.decode_frame(wire.encode_reset("why")) == (wire.FrameKind.RESET, "why")
    assert wire.terminal_kind(wire.FIN_FRAME) is wire.FrameKind.FIN
    assert wire.terminal_kind(wire.encode_reset("")) is wire.FrameKind.RESET
    assert wire.terminal_kind(wire.encode_data(b"x")) is None
    assert wire.terminal_kind(b"") is None
    assert wire.terminal_kind(b"\xff\xff") is None


def test_other_valid_encodings_of_fin_count_as_fin() -> None:
    # An unknown field before the fin, as another language's encoder may write.
    assert wire.terminal_kind(b"\x78\x01" + wire.FIN_FRAME) is wire.FrameKind.FIN
    # A fin whose empty message carries an unknown field.
    assert wire.terminal_kind(b"\x12\x02\x78\x01") is wire.FrameKind.FIN


def test_protobuf_encodings_other_than_ours_still_decode() -> None:
    # A data frame followed by an unknown field: valid protobuf, not our fast path.
    raw = wire.encode_data(b"abc") + b"\x78\x01"
    assert wire.decode_frame(raw) == (wire.FrameKind.DATA, b"abc")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x0a\x05ab", b"\xff\xff\xff", b"\x0a\x00"],
    ids=["empty", "truncated", "garbage", "empty-data"],
)
def test_malformed_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedFrame):
        wire.decode_frame(raw)
