"""Spare Accept streams ([vnet] spares): real route, real nodes, bytes compared."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.conftest import MakeNode, MakeRoute, free_port, use_port, wait_until
from tests.rawclient import Raw, stream_status
from tests.services import (
    echo_round_trip,
    echo_server,
    exchange,
    exchange_server,
    pattern,
    read_until_reset,
)
from tests.test_metrics import _scrape
from vnet import wire
from vnet.core.config import ServeConfig, UseConfig, VnetConfig, parse_node_config
from vnet.core.errors import ConfigError
from vnet.core.limits import SPARES_MAX
from vnet.node.node import Node
from vnet.route.server import RunningRoute
from vnetrpc.v1 import route_pb2 as pb

SERVEID = 711


async def _pair(
    make_node: MakeNode, target_port: int, spares: int | None = None
) -> tuple[Node, Node, int]:
    """home serving target_port (with spares= when given), office using it; the use's port."""
    vnet = None if spares is None else VnetConfig(name="home", group="g", spares=spares)
    home = await make_node(
        "home", serves=[ServeConfig(key="svc", port=target_port, serveid=SERVEID)], vnet=vnet
    )
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=SERVEID, port=0)])
    return home, office, await use_port(office, "svc")


def _held(route: RunningRoute) -> int:
    return route.servicer.spares.held


async def test_tunnels_in_a_row_each_take_a_spare(route: RunningRoute, make_node: MakeNode) -> None:
    service = await echo_server()
    home, _, port = await _pair(make_node, service.port)
    for i in range(20):
        # Replenished after each use: the next Dial finds a spare again.
        await wait_until(lambda: _held(route) == 2, "home's two spares at the route")
        payload = pattern(10_000 + i, seed=i)
        assert await echo_round_trip(port, payload) == payload
    assert route.servicer.spares.used == 20
    assert home.serve_side.spares.used == 20
    # No open_tunnel went out: nothing waits for an answer, no tunnel counts.
    await wait_until(lambda: not route.servicer.splices, "the tunnels to close")
    link = next(lk for lk in route.servicer.sessions.values() if lk.vnet.name == "home")
    assert link.answers.waiting == 0
    assert link.core.tunnels == 0
    await service.close()


async def test_parallel_tunnels_byte_exact_and_the_pool_refills(
    route: RunningRoute, make_node: MakeNode
) -> None:
    service = await exchange_server()
    home, _, port = await _pair(make_node, service.port, spares=4)
    await wait_until(lambda: _held(route) == 4, "home's four spares at the route")
    # More than the spares: the rest take the open_tunnel path, all byte-exact.
    await asyncio.gather(*(exchange(port, 200_000, 300_000, timeout=60) for _ in range(30)))
    assert service.connections == 30
    assert 4 <= route.servicer.spares.used <= 30
    assert home.serve_side.spares.used == route.servicer.spares.used
    await wait_until(lambda: _held(route) == 4 and home.serve_side.spares.held == 4, "a refill")
    await service.close()


async def test_spares_off_takes_the_open_tunnel_path(
    route: RunningRoute, make_node: MakeNode
) -> None:
    service = await echo_server()
    home, _, port = await _pair(make_node, service.port, spares=0)
    for i in range(5):
        payload = pattern(5_000, seed=i)
        assert await echo_round_trip(port, payload) == payload
    assert _held(route) == 0
    assert route.servicer.spares.used == 0
    assert home.serve_side.spares.used == 0
    await service.close()


async def test_a_spare_to_a_dead_target_resets_the_dialler(
    route: RunningRoute, make_node: MakeNode
) -> None:
    _, _, port = await _pair(make_node, free_port())
    await wait_until(lambda: _held(route) == 2, "home's two spares at the route")
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await read_until_reset(reader)
        writer.close()
    assert route.servicer.spares.used == 1


async def test_withdrawing_a_serve_ends_its_spares(
    route: RunningRoute, make_node: MakeNode
) -> None:
    service = await echo_server()
    home, office, _ = await _pair(make_node, service.port)
    await wait_until(lambda: _held(route) == 2, "home's two spares at the route")
    await home.close_serve("svc")
    await wait_until(lambda: _held(route) == 0, "the route to let the spares go")
    assert home.serve_side.spares.held == 0
    # Open again: spares again, and tunnels through them.
    await home.open_serve("svc")
    await wait_until(lambda: _held(route) == 2, "new spares")
    await wait_until(lambda: SERVEID in office.remote, "office to see the serve again")
    port = await use_port(office, "svc")
    assert await echo_round_trip(port, b"again") == b"again"
    assert route.servicer.spares.used == 1
    await service.close()


async def _raw_serving(route: RunningRoute) -> tuple[Raw, tuple[tuple[str, str], ...], object]:
    raw = Raw(route.port)
    joined, md, control = await raw.join_and_serve(None, SERVEID, group="g", name="rawhome")
    del joined
    return raw, md, control


async def test_a_spare_carries_the_tunnel_after_an_opened_frame(
    route: RunningRoute, make_node: MakeNode
) -> None:
    """The wire as a client written from the .proto sees it: an opened frame first,
    then the dialler's bytes; with the one spare taken, the next Dial is announced
    with open_tunnel on the control stream."""
    raw, md, control = await _raw_serving(route)
    spare = raw.accept((*md, (wire.MD_SPARE, str(SERVEID))))
    await wait_until(lambda: _held(route) == 1, "the raw spare at the route")
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=SERVEID, port=0)])
    port = await use_port(office, "svc")
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        first = pb.TunnelFrame.FromString(await spare.read())
        assert first.WhichOneof("kind") == "opened"
        assert len(first.opened.tunnel_id) == 16
        assert first.opened.from_vnetid == office.vnetid
        await spare.write(wire.ACCEPTED)
        assert await spare.read() == wire.encode_data(b"ping")
        await spare.write(wire.encode_data(b"pong"))
        await spare.write(wire.FIN_FRAME)
        assert await reader.readexactly(4) == b"pong"
        # A second connection finds no spare: the route asks with open_tunnel.
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        while True:
            event = await control.read()  # type: ignore[attr-defined]
            if event.WhichOneof("event") == "open_tunnel":
                break
        assert event.open_tunnel.from_vnetid == office.vnetid
        writer.close()
        writer2.close()
    spare.cancel()
    control.cancel()  # type: ignore[attr-defined]
    await raw.close()


async def _dial_a_raw_spare(
    route: RunningRoute, make_node: MakeNode
) -> tuple[Raw, object, object, asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw node holding one spare, and a connection through office that took it."""
    raw, md, control = await _raw_serving(route)
    spare = raw.accept((*md, (wire.MD_SPARE, str(SERVEID))))
    await wait_until(lambda: _held(route) == 1, "the raw spare at the route")
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=SERVEID, port=0)])
    reader, writer = await asyncio.open_connection("127.0.0.1", await use_port(office, "svc"))
    writer.write(b"hello")
    async with asyncio.timeout(10):
        first = pb.TunnelFrame.FromString(await spare.read())  # type: ignore[attr-defined]
    assert first.WhichOneof("kind") == "opened"
    return raw, spare, control, reader, writer


async def _until_reset(reader: asyncio.StreamReader) -> bytes:
    """What the connection delivered before it was reset; fails on a clean end."""
    got = b""
    async with asyncio.timeout(10):
        try:
            while chunk := await reader.read(4096):
                got += chunk
        except ConnectionResetError:
            return got
    raise AssertionError(f"a clean end after {len(got)} bytes, not a reset")


async def test_a_spare_that_never_answers_is_unanswered_and_resets_its_dialler(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    """A node that takes no tunnel (frozen, say) is found out on a spare as on the
    open_tunnel path: the tunnel counts as unanswered, and without the node's
    accepted frame in the accept timeout the dialler is reset, not left hanging."""
    route = await make_route(accept=1.0)
    raw, spare, control, reader, writer = await _dial_a_raw_spare(route, make_node)
    owner = next(link for link in route.servicer.sessions.values() if link.vnet.name == "rawhome")
    await wait_until(lambda: owner.answers.waiting == 1, "the tunnel unanswered at the route")
    await _until_reset(reader)
    writer.close()
    spare.cancel()  # type: ignore[attr-defined]
    control.cancel()  # type: ignore[attr-defined]
    await raw.close()


async def test_a_spare_whose_first_frame_is_not_accepted_resets_its_dialler(
    route: RunningRoute, make_node: MakeNode
) -> None:
    raw, spare, control, reader, writer = await _dial_a_raw_spare(route, make_node)
    await spare.write(wire.encode_data(b"too soon"))  # type: ignore[attr-defined]
    # Refused, not passed on: nothing of it reached the dialler's client.
    assert await _until_reset(reader) == b""
    writer.close()
    spare.cancel()  # type: ignore[attr-defined]
    control.cancel()  # type: ignore[attr-defined]
    await raw.close()


async def test_the_route_bounds_and_checks_spares(route: RunningRoute) -> None:
    raw, md, control = await _raw_serving(route)
    held = [raw.accept((*md, (wire.MD_SPARE, str(SERVEID)))) for _ in range(SPARES_MAX)]
    await wait_until(lambda: _held(route) == SPARES_MAX, "the most spares a serve may hold")
    one_more = await stream_status(raw.accept((*md, (wire.MD_SPARE, str(SERVEID)))))
    assert one_more[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    not_mine = await stream_status(raw.accept((*md, (wire.MD_SPARE, "712"))))
    assert not_mine[0] == grpc.StatusCode.NOT_FOUND
    bad = await stream_status(raw.accept((*md, (wire.MD_SPARE, "x"))))
    assert bad[0] == grpc.StatusCode.INVALID_ARGUMENT
    # Withdrawn: every spare of the serve ends with a status, none cleanly.
    await raw.stub.UnregisterServe(pb.UnregisterServeRequest(serveid=SERVEID), metadata=md)
    ended = await asyncio.gather(*(stream_status(call) for call in held))
    assert {code for code, _ in ended} == {grpc.StatusCode.NOT_FOUND}
    assert _held(route) == 0
    control.cancel()  # type: ignore[attr-defined]
    await raw.close()


async def test_a_session_ending_ends_its_spares(route: RunningRoute) -> None:
    raw, md, control = await _raw_serving(route)
    spare = raw.accept((*md, (wire.MD_SPARE, str(SERVEID))))
    await wait_until(lambda: _held(route) == 1, "the raw spare at the route")
    await raw.stub.Leave(pb.LeaveRequest(), metadata=md, timeout=5)
    code, _ = await stream_status(spare)
    assert code == grpc.StatusCode.NOT_FOUND
    assert _held(route) == 0
    control.cancel()  # type: ignore[attr-defined]
    await raw.close()


def test_spares_key_defaults_to_2_and_is_bounded() -> None:
    route = "[route]\nip=a\nport=1\n"
    assert parse_node_config("c.ini", route).vnet.spares == 2
    assert parse_node_config("c.ini", route + "[vnet]\nspares=0\n").vnet.spares == 0
    with pytest.raises(ConfigError, match=r"\[vnet\].*spares: 17 is out of range \(0-16\)"):
        parse_node_config("c.ini", route + "[vnet]\nspares=17\n")


async def test_metrics_show_spares_held_and_used(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.metrics import serve_node_metrics

    route = await make_route(metrics=("127.0.0.1", 0))
    service = await echo_server()
    home, _, port = await _pair(make_node, service.port)
    endpoint = serve_node_metrics(home, "127.0.0.1", 0)
    await wait_until(lambda: _held(route) == 2, "home's two spares at the route")
    assert await echo_round_trip(port, b"counted") == b"counted"
    await wait_until(lambda: _held(route) == 2, "the spare used to be replaced")
    assert route.metrics is not None
    m = await asyncio.to_thread(_scrape, route.metrics.port)
    assert m[("vnet_tunnel_spares", ())] == 2
    assert m[("vnet_tunnel_spares_used_total", ())] == 1
    n = await asyncio.to_thread(_scrape, endpoint.port)
    assert n[("vnet_node_spares", ())] == 2
    assert n[("vnet_node_spares_used_total", ())] == 1
    await asyncio.to_thread(endpoint.close)
    await service.close()


async def test_a_dial_from_another_route_takes_a_spare(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from tests.test_peer import no_tunnels_left, two_routes

    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    await wait_until(lambda: _held(c.b) == 2, "home's spares at its route")
    await exchange(await c.port(), 100_000, 200_000)
    assert c.b.servicer.peers.tunnels == {"in": 1}
    assert c.b.servicer.spares.used == 1
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_a_route_without_spares_leaves_the_node_on_open_tunnel(
    route: RunningRoute, make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route older than spares takes an Accept without vnet-tunnel for an unknown
    tunnel (NOT_FOUND): the node stops asking, once per spare, and tunnels work."""
    from vnet.core.errors import NotFound
    from vnet.route import rpc as route_rpc
    from vnet.route import spares

    async def as_before(s: object, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        await route_rpc.refuse(
            context, NotFound("no such tunnel waiting for this vnet"), route.servicer.rejected
        )

    monkeypatch.setattr(spares, "hold", as_before)
    service = await echo_server()
    home, _, port = await _pair(make_node, service.port)
    await wait_until(lambda: route.servicer.rejected["NOT_FOUND"] >= 1, "a spare refused")
    await wait_until(lambda: home.serve_side.spares.held == 0, "home to give up its spares")
    for i in range(5):
        payload = pattern(3_000, seed=i)
        assert await echo_round_trip(port, payload) == payload
    # Its two spares asked for, never a third: the second may be refused too, or cancelled
    # by home (it gives up the serve's spares at the first refusal) before the route saw it.
    assert route.servicer.rejected["NOT_FOUND"] <= 2
    assert home.serve_side.spares.used == 0
    assert home.serve_side.spares.held == 0
    await service.close()
