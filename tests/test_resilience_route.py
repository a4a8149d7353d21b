"""The route's side of resilience: graceful stop, dead peers, stale sessions."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, use_port, wait_until
from tests.rawclient import Raw, status_of
from tests.services import (
    Server,
    exchange,
    exchange_server,
    read_until_reset,
    tcp_relay,
)
from vnet.core.config import ServeConfig, UseConfig
from vnetrpc.v1 import route_pb2 as pb


async def silent_server() -> Server:
    """Reads until EOF, then neither writes nor closes: a peer gone quiet."""
    server = Server(None)  # type: ignore[arg-type]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server.server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server


async def test_graceful_stop_tells_nodes_lets_tunnels_finish_then_resets(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await make_route(stop_grace=1.0)
    service = await exchange_server()
    quiet = await silent_server()
    await make_node(
        "n",
        route=route,
        serves=(
            ServeConfig(key="x", port=service.port, serveid=701),
            ServeConfig(key="q", port=quiet.port, serveid=702),
        ),
    )
    office = await make_node(
        "n",
        route=route,
        uses=(UseConfig(key="x", serveid=701, port=0), UseConfig(key="q", serveid=702, port=0)),
    )
    x_port = await use_port(office, "x")
    q_port = await use_port(office, "q")
    watcher = Raw(route.port)
    joined = await watcher.join(None, group="g")
    control = watcher.stub.Control(pb.ControlRequest(), metadata=watcher.md(None, joined.session))
    await control.read()
    health = health_pb2_grpc.HealthStub(watcher.channel)
    # One tunnel that is idle and will outlive the grace, one transfer that finishes in it.
    reader, writer = await asyncio.open_connection("127.0.0.1", q_port)
    writer.write(b"hello")
    await writer.drain()
    await wait_until(lambda: len(route.servicer.splices) == 1, "the quiet tunnel")
    transfer = asyncio.create_task(exchange(x_port, 4 << 20, 4 << 20))
    await wait_until(lambda: len(route.servicer.splices) == 2, "the transfer's tunnel")
    stopping = asyncio.create_task(route.stop("test says stop"))
    async with asyncio.timeout(TIMEOUT):
        event = await control.read()
    assert event.WhichOneof("event") == "going_away"
    assert event.going_away.reason == "test says stop"
    assert event.going_away.grace_ms == 1000
    status = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert route.servicer.stopping
    await transfer  # finished within the grace, byte-exact
    async with asyncio.timeout(TIMEOUT):
        await read_until_reset(reader)  # the idle one was reset, not closed cleanly
        await stopping
    writer.close()
    control.cancel()
    await watcher.close()
    await service.close()
    await quiet.close()


async def test_half_closed_idle_tunnels_are_reset(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await make_route(half_close_idle=0.3)
    quiet = await silent_server()
    await make_node("n", route=route, serves=(ServeConfig(key="q", port=quiet.port, serveid=702),))
    office = await make_node("n", route=route, uses=(UseConfig(key="q", serveid=702, port=0),))
    port = await use_port(office, "q")
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"request")
        writer.write_eof()  # half-closed; the service never answers
        await read_until_reset(reader)
    writer.close()
    await wait_until(lambda: not route.servicer.splices, "the route to forget the tunnel")
    await quiet.close()


async def test_resume_replaces_only_its_own_stale_session(make_route: MakeRoute) -> None:
    route = await make_route()
    old = Raw(route.port)
    first, md, control = await old.join_and_serve(None, 700, group="g")
    # Someone else naming that vnetid, without its resume token, gets a new one
    # and cannot take the static serveid.
    other = Raw(route.port)
    stranger = await other.stub.Join(
        pb.JoinRequest(group="g", resume_vnetid=first.vnetid, resume_token="guess"), timeout=5
    )
    assert stranger.vnetid != first.vnetid
    smd = other.md(None, stranger.session)
    taken = await status_of(
        other.stub.RegisterServe(
            pb.RegisterServeRequest(serveid=700, name="x", ip="127.0.0.1", port=22), metadata=smd
        )
    )
    assert taken[0] == grpc.StatusCode.ALREADY_EXISTS
    # The node itself, on a new connection while the old one is not yet noticed dead.
    new = Raw(route.port)
    again = await new.stub.Join(
        pb.JoinRequest(group="g", resume_vnetid=first.vnetid, resume_token=first.resume_token),
        timeout=5,
    )
    assert again.vnetid == first.vnetid
    nmd = new.md(None, again.session)
    registered = await new.stub.RegisterServe(
        pb.RegisterServeRequest(serveid=700, name="ssh", ip="127.0.0.1", port=22),
        metadata=nmd,
        timeout=5,
    )
    assert registered.serve.serveid == 700
    # The stale session is gone: its credentials no longer work.
    assert (await status_of(old.stub.Ping(pb.PingRequest(), metadata=md)))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    control.cancel()
    for raw in (old, other, new):
        await raw.close()


async def test_a_free_vnetid_is_given_back_after_a_route_restart(make_route: MakeRoute) -> None:
    route = await make_route()
    raw = Raw(route.port)
    for _ in range(3):
        await raw.join(None, group="g")
    joined = await raw.stub.Join(pb.JoinRequest(group="g", resume_vnetid="07"), timeout=5)
    assert joined.vnetid == "07"
    assert (await raw.join(None, group="g")).vnetid == "04"
    await raw.close()


@pytest.mark.timeout(60)
async def test_a_black_holed_node_is_dropped_by_keepalive(make_route: MakeRoute) -> None:
    route = await make_route(keepalive=0.5, keepalive_timeout=0.5)
    relay, kill = await tcp_relay(route.port)
    victim = Raw(relay.port)
    _, _, control = await victim.join_and_serve(None, 700, group="g")
    assert route.servicer.registry.serves("g")
    kill()
    await wait_until(
        lambda: not route.servicer.registry.serves("g"), "the route to drop the node", TIMEOUT
    )
    control.cancel()
    await victim.close()
    await relay.close()


async def test_tunnels_are_forgotten_when_both_ends_go_at_once(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # Found by `make soak`: when the serving node died, both handlers of a
    # tunnel could be cancelled, and nobody removed it from the route's books.
    from tests.services import endless_source_server

    route = await make_route()
    source = await endless_source_server()
    home = await make_node(
        "n", route=route, serves=(ServeConfig(key="s", port=source.port, serveid=701),)
    )
    office = await make_node("n", route=route, uses=(UseConfig(key="s", serveid=701, port=0),))
    port = await use_port(office, "s")
    clients = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(65536)
        clients.append((reader, writer))
    assert len(route.servicer.splices) == 20
    # As if killed: its connection drops, no goodbye.
    await home.client.channel.close(None)
    async with asyncio.timeout(TIMEOUT):
        for reader, _ in clients:
            await read_until_reset(reader)
    await wait_until(lambda: not route.servicer.splices, "the route to forget every tunnel")
    for session in route.servicer.sessions.values():
        assert not session.splices
    assert route.servicer.stats.opened == route.servicer.stats.closed == 20
    for _, writer in clients:
        writer.close()
    await source.close()
