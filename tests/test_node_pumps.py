"""A node's pumps against a route that breaks the rules: relay() on a real
socket and a real gRPC stream from an in-process server that sends scripted
frames. The real route never sends these (it stops reading a leg at its fin,
and ends both calls after the second fin), so only a fake one can check that
the node's state machine turns them into a reset, never a clean end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from vnet import wire
from vnet.node.client import TunnelCall
from vnet.node.tunnel import relay

WAIT = 10.0
DATA = wire.encode_data(b"abc")


async def _route(frames: list[bytes], wait_for_fin: bool) -> tuple[grpc.aio.Server, int]:
    """A Dial that sends `frames` (raw) and then ends the call with OK; first,
    if wait_for_fin, it reads the node's frames up to its fin."""

    async def dial(requests: AsyncIterator[bytes], _context: object) -> AsyncIterator[bytes]:
        if wait_for_fin:
            async for raw in requests:
                if wire.decode_frame(raw)[0] is wire.FrameKind.FIN:
                    break
        for frame in frames:
            yield frame

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "vnetrpc.v1.RouteService", {"Dial": grpc.stream_stream_rpc_method_handler(dial)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _tunnel(frames: list[bytes], *, client_fin: bool = False) -> tuple[bool, bytes, bool]:
    """relay() one connection over the fake route; what the local client got:
    (relay's result, the bytes, whether it ended in a reset rather than EOF)."""
    server, port = await _route(frames, wait_for_fin=client_fin)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    relays: list[asyncio.Task[bool]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        call = TunnelCall(channel.stream_stream("/vnetrpc.v1.RouteService/Dial")())
        relays.append(asyncio.create_task(relay(reader, writer, call, "tunnel 1")))

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.sockets[0].getsockname()[1]
        )
        if client_fin:
            writer.write(b"hi")
            writer.write_eof()
        got = bytearray()
        reset = False
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    reset = True
                    break
                if not chunk:
                    # A fin came; a reset may follow it.
                    with contextlib.suppress(ConnectionResetError):
                        while await reader.read(65536):
                            pass
                    break
                got += chunk
            clean = await relays[0]
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return clean, bytes(got), reset
    finally:
        listener.close()
        await listener.wait_closed()
        await channel.close()
        await server.stop(None)


async def test_a_clean_end_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "vnet.node.tunnel")
    clean, got, reset = await _tunnel([wire.encode_data(b"abc"), wire.FIN_FRAME], client_fin=True)
    assert (clean, got, reset) == (True, b"abc", False)
    assert "tunnel 1: closed" in caplog.text


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([DATA], "reset by the route: the stream ended without fin"),
        ([DATA, wire.FIN_FRAME, wire.encode_data(b"x")], "frame after fin"),
        ([DATA, wire.FIN_FRAME, wire.FIN_FRAME], "second fin"),
        ([DATA, b"\x0a"], "malformed tunnel frame"),
        ([DATA, wire.encode_reset("because")], "reset by the far end: because"),
    ],
    ids=["no-fin", "data-after-fin", "second-fin", "malformed", "reset-frame"],
)
async def test_a_broken_stream_resets_the_local_connection(
    caplog: pytest.LogCaptureFixture, frames: list[bytes], reason: str
) -> None:
    caplog.set_level(logging.INFO, "vnet.node.tunnel")
    clean, got, reset = await _tunnel(frames)
    assert not clean
    # Nothing after a fin reaches the client: at most the bytes before it.
    assert b"abc".startswith(got)
    if wire.FIN_FRAME not in frames:
        # Not a clean EOF: the client sees the reset.
        assert reset
    assert f"tunnel 1: {reason}" in caplog.text
