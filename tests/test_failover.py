"""A node given several routes ([route] routes=) fails over between them.

Two independent routes A and B (no cluster store): nodes join the first that
answers, move to the next when theirs dies (kill -9 of a real vnet-route) or
says it is going away, and skip one that answers but refuses. Bytes are
compared exactly; a tunnel cut by a dead route must end in a reset.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, use_port, wait_until
from tests.procs import Procs
from tests.services import echo_ok, echo_round_trip, echo_server, pattern, read_until_reset
from vnet.console.executor import vnet_pairs
from vnet.core.config import NodeConfig, RouteEndpoint, ServeConfig, UseConfig, VnetConfig
from vnet.core.errors import RouteUnavailable
from vnet.metrics import NodeCollector
from vnet.node.client import ClientTls, NodeCredentials, RouteClient
from vnet.node.node import Node, NodeTimeouts
from vnet.route.admin import DRAINING

# Quick retries: a dead route on loopback is noticed at once (the socket closes).
FAST = NodeTimeouts(connect=TIMEOUT, target_connect=TIMEOUT, reconnect_min=0.1, reconnect_max=1.0)
# A backoff far past the tests' deadlines: only a move "at once" can pass.
SLOW = NodeTimeouts(
    connect=TIMEOUT, target_connect=TIMEOUT, reconnect_min=120.0, reconnect_max=240.0
)


def _config(
    name: str,
    ports: Sequence[int],
    serves: Sequence[ServeConfig] = (),
    uses: Sequence[UseConfig] = (),
) -> NodeConfig:
    routes = tuple(RouteEndpoint("127.0.0.1", p) for p in ports)
    return NodeConfig(
        path="(test)",
        # ip/port: what a route sharing the file would listen on; the node uses routes.
        route=RouteEndpoint("127.0.0.1", free_port()),
        vnet=VnetConfig(name=name, group="team"),
        serves=tuple(serves),
        uses=tuple(uses),
        routes=routes,
    )


async def _serves_on(port: int) -> list[tuple[int, str]]:
    """The group's serves as route 127.0.0.1:port lists them."""
    client = RouteClient(f"127.0.0.1:{port}")
    try:
        await client.connect(TIMEOUT)
        await client.join("watcher", "team")
        return sorted((s.serveid, s.name) for s in await client.list_serves())
    finally:
        await client.close()


def _on(node: Node, port: int) -> bool:
    return node.connected and node.route_address == f"127.0.0.1:{port}"


async def _pair(
    make_node: MakeNode, ports: Sequence[int], echo_port: int, timeouts: NodeTimeouts
) -> tuple[Node, Node, int]:
    """home serving an echo as static serveid 700, office using it; office's use port."""
    home = await make_node(
        config=_config("home", ports, serves=[ServeConfig("echo", echo_port, serveid=700)]),
        timeouts=timeouts,
    )
    office = await make_node(
        config=_config("office", ports, uses=[UseConfig("echo", 700, port=0)]),
        timeouts=timeouts,
    )
    return home, office, await use_port(office, "echo")


@pytest.mark.timeout(90)
async def test_kill_9_of_route_a_moves_both_nodes_to_b(
    procs: Procs, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vnet.node.node")
    echo = await echo_server()
    a, b = free_port(), free_port()
    route_a = await procs.route(a, "route-a")
    await procs.route(b, "route-b")
    home, office, port = await _pair(make_node, (a, b), echo.port, FAST)
    assert _on(home, a)
    assert _on(office, a)
    assert await _serves_on(a) == [(700, "echo")]
    assert await _serves_on(b) == []
    # A tunnel open through A when it dies.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(pattern(100_000))
    assert await asyncio.wait_for(reader.readexactly(100_000), TIMEOUT) == pattern(100_000)

    await route_a.stop(signal.SIGKILL)
    async with asyncio.timeout(TIMEOUT):
        await read_until_reset(reader)
    writer.close()
    await wait_until(lambda: _on(home, b) and 700 in home.serving, "home to serve 700 on B")
    await wait_until(lambda: _on(office, b), "office to join B")
    assert await _serves_on(b) == [(700, "echo")]
    port = await use_port(office, "echo")
    await wait_until(lambda: echo_ok(port, 1000), "the use to work through B", interval=0.05)
    body = pattern(1_000_000, seed=7)
    assert await echo_round_trip(port, body) == body
    assert home.route_moves == office.route_moves == 1
    assert f"joined route 127.0.0.1:{b} as vnet" in caplog.text
    assert f"(moved from route 127.0.0.1:{a})" in caplog.text
    assert f"lost route 127.0.0.1:{a}" in caplog.text
    await echo.close()


async def test_a_route_down_at_start_is_skipped(
    make_route: MakeRoute, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    route_b = await make_route()
    dead = free_port()
    node = await make_node(config=_config("n", (dead, route_b.port)), timeouts=FAST)
    assert _on(node, route_b.port)
    assert (
        f"route 127.0.0.1:{dead} would not do: cannot reach the route at 127.0.0.1:{dead}: "
        "connection refused (is vnet-route running there? check [route] routes)"
    ) in caplog.text
    # None answering: one error naming each route and its reason.
    other = free_port()
    lonely = Node(_config("m", (dead, other)), FAST)
    with pytest.raises(RouteUnavailable) as raised:
        await lonely.start()
    await lonely.stop()
    said = str(raised.value)
    assert said.startswith("no route of [route] routes would do: ")
    assert f"127.0.0.1:{dead}: cannot reach" in said
    assert f"127.0.0.1:{other}: cannot reach" in said


async def test_a_draining_route_is_skipped_at_start(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route_a, route_b = await make_route(), await make_route()
    # What the admin's drain does to joins (a fenced clustered route says UNAVAILABLE too).
    route_a.servicer.refusing = DRAINING
    node = await make_node(config=_config("n", (route_a.port, route_b.port)), timeouts=FAST)
    assert _on(node, route_b.port)


@pytest.mark.timeout(60)
async def test_going_away_moves_at_once_and_old_tunnels_finish(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    echo = await echo_server()
    # A's grace outlasts the test: the nodes must move while it runs.
    route_a = await make_route(stop_grace=10 * TIMEOUT)
    route_b = await make_route()
    home, office, port = await _pair(make_node, (route_a.port, route_b.port), echo.port, SLOW)
    assert _on(home, route_a.port)
    assert _on(office, route_a.port)
    # A node that knows only A: it stays there through A's grace.
    late = await make_node(
        config=_config("late", (route_a.port,), uses=[UseConfig("echo", 700, port=0)]),
        timeouts=SLOW,
    )
    late_port = await use_port(late, "echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"before")
    assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"before"

    stopping = asyncio.create_task(route_a.stop())
    try:
        await wait_until(
            lambda: _on(home, route_b.port) and 700 in home.serving, "home to serve on B"
        )
        await wait_until(lambda: _on(office, route_b.port), "office to join B")
        assert not stopping.done()
        # The tunnel opened through A still carries bytes in A's grace.
        body = pattern(200_000, seed=3)
        writer.write(body)
        assert await asyncio.wait_for(reader.readexactly(len(body)), TIMEOUT) == body
        # New connections go through B.
        port = await use_port(office, "echo")
        await wait_until(lambda: echo_ok(port, 1000), "the use to work through B", interval=0.05)
        fresh = pattern(300_000, seed=4)
        assert await echo_round_trip(port, fresh) == fresh
        assert await _serves_on(route_b.port) == [(700, "echo")]
        # A, in its grace, still has home's serve and asks home (on B now) for
        # a new tunnel on its old control stream: home takes it.
        late_body = pattern(100_000, seed=5)
        assert await echo_round_trip(late_port, late_body) == late_body
    finally:
        writer.close()
        # The last tunnel through A ended: its stop goes on and finishes.
        await asyncio.wait_for(stopping, TIMEOUT)
    await echo.close()


async def test_a_refusing_route_is_passed_at_once_when_failing_over(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    """A stops (going away), B refuses (draining): the node goes on to C
    without its backoff (SLOW would take minutes)."""
    route_a, route_b, route_c = await make_route(), await make_route(), await make_route()
    node = await make_node(
        config=_config("n", (route_a.port, route_b.port, route_c.port)), timeouts=SLOW
    )
    assert _on(node, route_a.port)
    route_b.servicer.refusing = DRAINING
    await route_a.stop()
    await wait_until(lambda: _on(node, route_c.port), "the node to join C")
    assert node.route_moves == 1
    # `show vnet` and the metrics name the route it is on now.
    c = f"127.0.0.1:{route_c.port}"
    shown = dict(vnet_pairs(node))
    assert shown["route"] == f"{c} (connected)"
    assert shown["routes"] == ", ".join(f"127.0.0.1:{r.port}" for r in (route_a, route_b, route_c))
    families = {f.name: f for f in NodeCollector(node).collect()}
    assert [(s.labels, s.value) for s in families["vnet_node_route"].samples] == [({"route": c}, 1)]
    assert families["vnet_node_route_moves"].samples[0].value == 1


async def test_a_single_route_keeps_its_reconnecting(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    """routes= with one entry, like ip/port: the same route, again."""
    route = await make_route()
    port = route.port
    node = await make_node(config=_config("n", (port,)), timeouts=FAST)
    await route.stop()
    await make_route(port)
    await wait_until(lambda: _on(node, port) and node.lost, "the node to rejoin its route")
    assert node.route_moves == 0


@pytest.mark.timeout(60)
async def test_tls_checks_each_route_for_the_host_its_entry_names(
    procs: Procs, make_node: MakeNode, tmp_path: Path
) -> None:
    """A's certificate is for 127.0.0.1 only, B's for localhost only: one CA,
    and each entry's own host as the name to verify."""
    import trustme

    ca = trustme.CA()
    a, b = free_port(), free_port()
    routes = {}
    for name, port, host in (("route-a", a, "127.0.0.1"), ("route-b", b, "localhost")):
        cert = ca.issue_cert(host)
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        extra = f"tls_cert={name}.pem\ntls_key={name}.key\n"
        routes[name] = await procs.route(port, name, extra)
    config = dataclasses.replace(
        _config("n", (a,)),
        vnet=VnetConfig(name="n", group="team", tls=True, tls_ca="ca.pem"),
        routes=(RouteEndpoint("127.0.0.1", a), RouteEndpoint("localhost", b)),
    )
    credentials = NodeCredentials(tls=ClientTls(root_ca=ca.cert_pem.bytes()))
    node = await make_node(config=config, timeouts=FAST, credentials=credentials)
    assert _on(node, a)
    await routes["route-a"].stop(signal.SIGKILL)
    await wait_until(lambda: node.connected and node.route_address == f"localhost:{b}", "B")
    assert node.route_moves == 1


@pytest.mark.timeout(60)
async def test_a_route_left_in_its_grace_still_reaches_the_serves_it_had(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    """home moves from A to B, where its static serveid is someone else's:
    A, in its grace, still sends home tunnels for 700, as A knows it."""
    echo = await echo_server()
    route_a = await make_route(stop_grace=10 * TIMEOUT)
    route_b = await make_route()
    await make_node(
        config=_config("squatter", (route_b.port,), serves=[ServeConfig("x", 1, serveid=700)]),
        timeouts=SLOW,
    )
    home = await make_node(
        config=_config(
            "home", (route_a.port, route_b.port), serves=[ServeConfig("echo", echo.port, 700)]
        ),
        timeouts=SLOW,
    )
    late = await make_node(
        config=_config("late", (route_a.port,), uses=[UseConfig("echo", 700, port=0)]),
        timeouts=SLOW,
    )
    port = await use_port(late, "echo")
    # Open through A when it starts going away: A waits for it in its grace.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"held")
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"held"
    stopping = asyncio.create_task(route_a.stop())
    try:
        await wait_until(lambda: _on(home, route_b.port), "home to join B")
        await wait_until(lambda: "echo" in home.serve_errors, "B to refuse home's 700")
        assert 700 not in home.serving
        body = pattern(100_000, seed=6)
        assert await echo_round_trip(port, body) == body
    finally:
        writer.close()
        await asyncio.wait_for(stopping, TIMEOUT)
    await echo.close()
