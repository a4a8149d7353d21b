"""Bytes through real sockets, an in-process route and two nodes."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import TIMEOUT, MakeNode, home_and_office, use_port, wait_until
from tests.services import (
    HEADER,
    digest,
    echo_round_trip,
    echo_server,
    exchange,
    exchange_server,
    first_fin_server,
    pattern,
    read_exactly_or_eof,
)
from vnet import wire
from vnet.core.config import ServeConfig, UseConfig
from vnet.node.client import TunnelBroken

MIB = 1 << 20


async def _pair(make_node: MakeNode, target_port: int, serveid: int = 701) -> int:
    """A home node serving target_port and an office node using it; the use's port."""
    await make_node("home", serves=[ServeConfig(key="svc", port=target_port, serveid=serveid)])
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=serveid, port=0)])
    return await use_port(office, "svc")


@pytest.mark.parametrize(
    ("up", "down"),
    [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (64 * MIB, 0),
        (0, 64 * MIB),
        (64 * MIB, 64 * MIB),
    ],
    ids=["0B", "1B-up", "1B-down", "1B-both", "64MiB-up", "64MiB-down", "64MiB-both"],
)
async def test_byte_exact_transfer(make_node: MakeNode, up: int, down: int) -> None:
    service = await exchange_server()
    port = await _pair(make_node, service.port)
    await exchange(port, up, down, timeout=120)
    await service.close()


async def test_200_concurrent_connections_each_byte_exact(make_node: MakeNode) -> None:
    service = await exchange_server()
    port = await _pair(make_node, service.port)
    await asyncio.gather(*(exchange(port, MIB, MIB, timeout=120) for _ in range(200)))
    assert service.connections == 200
    await service.close()


async def test_half_close_client_first(make_node: MakeNode) -> None:
    # exchange_server answers only after it has read the client's EOF.
    service = await exchange_server()
    port = await _pair(make_node, service.port)
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = pattern(100_000, seed=1)
        writer.write(HEADER.pack(len(body), 0) + body)
        writer.write_eof()
        answer = await read_exactly_or_eof(reader)
        writer.close()
    assert answer == digest(body)
    await service.close()


async def test_half_close_service_first(make_node: MakeNode) -> None:
    # The service says its piece and shuts down its side; the client keeps
    # sending after it saw EOF, and every byte still arrives.
    service = await first_fin_server()
    port = await _pair(make_node, service.port)
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await read_exactly_or_eof(reader)
        assert greeting == b"hello, then silence"
        body = pattern(MIB, seed=2)
        writer.write(body)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
    await wait_until(lambda: service.received, "the service to record what it read")
    assert service.received == [body]
    await service.close()


async def test_echo_both_ways(make_node: MakeNode) -> None:
    service = await echo_server()
    port = await _pair(make_node, service.port)
    payload = pattern(300_000, seed=3)
    assert await echo_round_trip(port, payload) == payload
    await service.close()


async def test_a_stalled_reader_does_not_stall_other_tunnels(make_node: MakeNode) -> None:
    # The original shared one link between all tunnels, so one reader that
    # stopped reading (a paused video) stalled everything. Here tunnel A's
    # reader stops while its service keeps pushing; tunnel B, the control
    # RPCs and a third connection must carry on regardless.
    from tests.services import endless_source_server

    source = await endless_source_server()
    service = await exchange_server()
    office, ports = await home_and_office(
        make_node, [("src", source.port, 710), ("xchg", service.port, 711)]
    )
    src_port, xchg_port = ports["src"], ports["xchg"]
    async with asyncio.timeout(60):
        stalled_reader, stalled_writer = await asyncio.open_connection("127.0.0.1", src_port)
        await stalled_reader.readexactly(1 << 20)
        # From here on nobody reads tunnel A: its buffers fill and stay full.
        for _ in range(3):
            await exchange(xchg_port, 16 * MIB, 16 * MIB)
            assert await office.client.ping() >= 0
            assert [s.serveid for s in await office.client.list_serves()] == [710, 711]
        # Tunnel A still works once its reader resumes.
        await stalled_reader.readexactly(8 << 20)
        stalled_writer.close()
    await source.close()
    await service.close()


async def test_a_tunnel_call_speaks_bytes_and_vnet_errors(make_node: MakeNode) -> None:
    # The client's TunnelCall, driven by hand: frames as bytes, the stream's
    # clean end as None, and a write after it as TunnelBroken, not grpc's own.
    service = await echo_server()
    await make_node("home", serves=[ServeConfig(key="svc", port=service.port, serveid=701)])
    office = await make_node("office")
    call = office.client.dial(701)
    await call.write(wire.encode_data(b"through by hand"))
    await call.write(wire.FIN_FRAME)
    echoed, kinds = b"", []
    while (raw := await asyncio.wait_for(call.read(), TIMEOUT)) is not None:
        kind, payload = wire.decode_frame(raw)
        kinds.append(kind)
        if kind is wire.FrameKind.DATA:
            echoed += bytes(payload)  # type: ignore[arg-type]
    assert echoed == b"through by hand"
    assert kinds[-1] is wire.FrameKind.FIN
    with pytest.raises(TunnelBroken) as info:
        await call.write(wire.encode_data(b"too late"))
    assert info.value.finished
    call.cancel()
    await service.close()
