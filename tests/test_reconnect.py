"""Nodes survive route restarts and dead links: reconnect, re-register, map again."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, use_port, wait_until
from tests.services import echo_round_trip, echo_server, tcp_relay
from vnet.core.config import ServeConfig, UseConfig
from vnet.node.node import NodeTimeouts
from vnet.route.server import RunningRoute

FAST = NodeTimeouts(
    connect=TIMEOUT,
    target_connect=TIMEOUT,
    keepalive=0.5,
    keepalive_timeout=0.5,
    reconnect_min=0.05,
    reconnect_max=0.5,
)


def _serves(route: RunningRoute) -> list[tuple[int, str, str]]:
    return [(s.serveid, s.vnetid, s.name) for s in route.servicer.registry.serves("g")]


@pytest.mark.parametrize("how", ["graceful", "abrupt"])
async def test_nodes_come_back_after_a_route_restart(
    how: str, make_route: MakeRoute, make_node: MakeNode
) -> None:
    service = await echo_server()
    route = await make_route(stop_grace=0.2)
    port = route.port
    home = await make_node(
        "home",
        route=route,
        timeouts=FAST,
        serves=(
            ServeConfig(key="ssh", port=service.port, serveid=700),
            ServeConfig(key="web", port=service.port, serveid=0),
        ),
    )
    office = await make_node(
        "office", route=route, timeouts=FAST, uses=(UseConfig(key="ssh", serveid=700, port=0),)
    )
    third = await make_node(
        "third", route=route, timeouts=FAST, uses=(UseConfig(key="ssh", serveid=700, port=0),)
    )
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
    route = await make_route(port, stop_grace=0.2)
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
    await service.close()


async def test_a_black_holed_link_is_detected_and_the_node_takes_its_session_back(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # The route's keepalive is slow, the node's fast: the node rejoins while
    # the route still holds its old session and static serveid, so only the
    # resume token lets it have serveid 700 back.
    service = await echo_server()
    route = await make_route(stop_grace=0.2, keepalive=60, keepalive_timeout=60)
    relay, kill = await tcp_relay(route.port)
    home = await make_node(
        "home",
        route=relay.port,
        timeouts=FAST,
        serves=(ServeConfig(key="ssh", port=service.port, serveid=700),),
    )
    # A fixed port: the office stays connected, so its listener follows the
    # serve (closes while it is gone) and must come back on the same port.
    office = await make_node(
        "office",
        route=route,
        timeouts=FAST,
        uses=(UseConfig(key="ssh", serveid=700, port=free_port()),),
    )
    use = await use_port(office, "ssh")
    vnetid = home.vnetid
    heard = office.remote[700]
    kill()
    await wait_until(lambda: not home.connected, "the node to notice the dead link")
    await wait_until(lambda: home.connected and home.serving.keys() == {700}, "it to come back")
    assert home.vnetid == vnetid
    assert _serves(route) == [(700, vnetid, "ssh")]
    # The office hears the stale session's serve go and the new one come
    # (a new record, equal to the old): until it has, a connection to its
    # use finds no serve and is reset.
    await wait_until(
        lambda: 700 in office.remote and office.remote[700] is not heard,
        "the office to hear serveid 700 registered again",
    )
    await wait_until(lambda: office.uses["ssh"].port == use, "the use to listen again")
    assert await echo_round_trip(use, b"back") == b"back"
    await relay.close()
    await service.close()
