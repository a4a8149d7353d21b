"""Nodes survive route restarts and dead links: reconnect, re-register, map again."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import TIMEOUT, free_port, use_port, wait_until
from tests.services import echo_round_trip, echo_server, tcp_relay
from vnet.core.config import NodeConfig, RouteConfig, ServeConfig, UseConfig, VnetConfig
from vnet.node.node import Node, NodeTimeouts
from vnet.route.server import RouteTimeouts, RunningRoute, start_route

FAST = NodeTimeouts(
    connect=TIMEOUT,
    target_connect=TIMEOUT,
    keepalive=0.5,
    keepalive_timeout=0.5,
    reconnect_min=0.05,
    reconnect_max=0.5,
)


async def _route(port: int = 0, **timeouts: float) -> RunningRoute:
    values = {"join": TIMEOUT, "accept": TIMEOUT, "stop_grace": 0.2}
    values.update(timeouts)
    return await start_route(RouteConfig("127.0.0.1", port), RouteTimeouts(**values))


async def _node(port: int, name: str, **kw: object) -> Node:
    node = Node(
        NodeConfig("(t)", RouteConfig("127.0.0.1", port), VnetConfig(name=name, group="g"), **kw),  # type: ignore[arg-type]
        FAST,
    )
    await node.start()
    return node


def _serves(route: RunningRoute) -> list[tuple[int, str, str]]:
    return [(s.serveid, s.vnetid, s.name) for s in route.servicer.registry.serves("g")]


@pytest.mark.parametrize("how", ["graceful", "abrupt"])
async def test_nodes_come_back_after_a_route_restart(how: str) -> None:
    service = await echo_server()
    route = await _route()
    port = route.port
    home = await _node(
        port,
        "home",
        serves=(
            ServeConfig(key="ssh", port=service.port, serveid=700),
            ServeConfig(key="web", port=service.port, serveid=0),
        ),
    )
    office = await _node(port, "office", uses=(UseConfig(key="ssh", serveid=700, port=0),))
    third = await _node(port, "third", uses=(UseConfig(key="ssh", serveid=700, port=0),))
    use = await use_port(office, "ssh")
    assert await echo_round_trip(use, b"before") == b"before"
    before = _serves(route)
    vnetids = (home.vnetid, office.vnetid, third.vnetid)
    if how == "graceful":
        await route.stop()
    else:
        # As if killed: connections drop, nobody is told.
        await route.server.stop(None)
    await wait_until(lambda: not office.connected, "the office node to notice")
    # During the outage the use keeps its port and resets clients at once.
    assert office.uses["ssh"].port == use
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", use)
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        writer.close()
    route = await _route(port)
    await wait_until(
        lambda: home.connected and office.connected and third.connected, "all to reconnect"
    )
    await wait_until(lambda: len(_serves(route)) == 2, "the serves to be registered again")
    # Same serveids (the dynamic one asked for again), same vnetids, no duplicates.
    assert _serves(route) == before
    assert (home.vnetid, office.vnetid, third.vnetid) == vnetids
    assert await use_port(office, "ssh") == use
    # The route has it; the office hears so on its control stream.
    await wait_until(lambda: 700 in office.remote, "the office to see serveid 700 again")
    assert await echo_round_trip(use, b"after") == b"after"
    for node in (third, office, home):
        await node.stop()
    await route.stop()
    await service.close()


async def test_a_black_holed_link_is_detected_and_the_node_takes_its_session_back() -> None:
    # The route's keepalive is slow, the node's fast: the node rejoins while
    # the route still holds its old session and static serveid, so only the
    # resume token lets it have serveid 700 back.
    service = await echo_server()
    route = await _route(keepalive=60, keepalive_timeout=60)
    relay, kill = await tcp_relay(route.port)
    home = await _node(
        relay.port, "home", serves=(ServeConfig(key="ssh", port=service.port, serveid=700),)
    )
    # A fixed port: the office stays connected, so its listener follows the
    # serve (closes while it is gone) and must come back on the same port.
    office = await _node(
        route.port, "office", uses=(UseConfig(key="ssh", serveid=700, port=free_port()),)
    )
    use = await use_port(office, "ssh")
    vnetid = home.vnetid
    kill()
    await wait_until(lambda: not home.connected, "the node to notice the dead link")
    await wait_until(lambda: home.connected and home.serving.keys() == {700}, "it to come back")
    assert home.vnetid == vnetid
    assert _serves(route) == [(700, vnetid, "ssh")]
    await wait_until(lambda: office.uses["ssh"].port == use, "the use to listen again")
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                assert await echo_round_trip(use, b"back") == b"back"
                break
            except ConnectionResetError:
                await asyncio.sleep(0.05)  # the serve reappearing is racing us
    for node in (office, home):
        await node.stop()
    await relay.close()
    await route.stop()
    await service.close()
