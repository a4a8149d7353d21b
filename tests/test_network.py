"""Registry rules, groups and error paths through a real route and real nodes."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tests.conftest import TIMEOUT, MakeNode, free_port, refused, use_port, wait_until
from tests.services import echo_round_trip, echo_server, read_until_reset
from vnet.core.config import ServeConfig, UseConfig
from vnet.core.errors import NotFound
from vnet.node.client import TunnelBroken
from vnet.route.server import RunningRoute


async def test_groups_see_and_reach_only_their_own(make_node: MakeNode) -> None:
    service = await echo_server()
    a = await make_node(
        "a", group="g1", serves=[ServeConfig(key="s", port=service.port, serveid=701)]
    )
    b = await make_node("b", group="g2", uses=[UseConfig(key="s", serveid=701, port=0)])
    c = await make_node("c", group="g1", uses=[UseConfig(key="s", serveid=701, port=0)])
    # Same group: mapped and working.
    port = await use_port(c, "s")
    assert await echo_round_trip(port, b"same group") == b"same group"
    # Other group: sees nothing, cannot dial, never listens.
    assert await b.client.list_serves() == []
    assert [v.vnetid for v in await b.client.list_vnets()] == [b.vnetid]
    assert sorted(v.vnetid for v in await a.client.list_vnets()) == sorted([a.vnetid, c.vnetid])
    call = b.client.dial(701)
    with pytest.raises(TunnelBroken) as info:
        await call.read()
    assert info.value.code == "NOT_FOUND"
    assert b.uses["s"].port is None
    # And g2 may use the same number for its own serve.
    d = await make_node(
        "d", group="g2", serves=[ServeConfig(key="s", port=service.port, serveid=701)]
    )
    assert d.serving.keys() == {701}
    b_port = await use_port(b, "s")
    assert await echo_round_trip(b_port, b"other group") == b"other group"
    await service.close()


async def test_static_serveid_conflict_refused_first_keeps_serving(make_node: MakeNode) -> None:
    service = await echo_server()
    first = await make_node(
        "first", serves=[ServeConfig(key="ssh", port=service.port, serveid=700)]
    )
    second = await make_node("second", serves=[ServeConfig(key="ssh", port=1, serveid=700)])
    assert first.serving.keys() == {700}
    assert second.serving == {}
    assert second.serve_errors["ssh"] == (
        f"static serveid 700 is already registered by vnet {first.vnetid} (ssh) in this group"
    )
    office = await make_node("office", uses=[UseConfig(key="ssh", serveid=700, port=0)])
    port = await use_port(office, "ssh")
    assert await echo_round_trip(port, b"still the first") == b"still the first"
    await service.close()


async def test_dynamic_serveid_conflict_reassigned(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vnet.node.node")
    first = await make_node("first", serves=[ServeConfig(key="a", port=1000, serveid=5)])
    second = await make_node("second", serves=[ServeConfig(key="b", port=1001, serveid=5)])
    assert first.serving.keys() == {5}
    (assigned,) = second.serving.keys()
    assert assigned != 5
    assert f"[serve.b] serveid 5 was taken; the route assigned {assigned}" in caplog.text
    auto = await make_node("auto", serves=[ServeConfig(key="c", port=1002, serveid=0)])
    (auto_id,) = auto.serving.keys()
    assert 1 <= auto_id < 500
    assert auto_id not in (5, assigned)
    ids = sorted(s.serveid for s in await auto.client.list_serves())
    assert ids == sorted([5, assigned, auto_id])


async def test_use_waits_for_its_serve_then_follows_it(make_node: MakeNode) -> None:
    service = await echo_server()
    port = free_port()
    office = await make_node("office", uses=[UseConfig(key="web", serveid=702, port=port)])
    assert office.uses["web"].port is None
    assert await refused(port), "a use must not listen before its serve exists"
    home = await make_node("home", serves=[ServeConfig(key="web", port=service.port, serveid=702)])
    assert await use_port(office, "web") == port
    assert await echo_round_trip(port, b"appeared") == b"appeared"
    # The serve leaves: the use stops listening, so clients are refused at once.
    await home.stop()
    await wait_until(lambda: office.uses["web"].port is None, "the use to stop listening")
    assert await refused(port)
    await service.close()


async def test_use_port_defaults_to_the_serves_port(make_node: MakeNode) -> None:
    service = await echo_server()
    serve_port = free_port()  # the serve's port as registered: also the use's default
    await make_node(
        "home", serves=[ServeConfig(key="s", ip="127.0.0.2", port=serve_port, serveid=703)]
    )
    office = await make_node("office", uses=[UseConfig(key="s", serveid=703)])
    assert await use_port(office, "s") == serve_port
    await service.close()


async def test_target_down_closes_client_promptly(make_node: MakeNode) -> None:
    dead = free_port()
    await make_node("home", serves=[ServeConfig(key="s", port=dead, serveid=704)])
    office = await make_node("office", uses=[UseConfig(key="s", serveid=704, port=0)])
    port = await use_port(office, "s")
    async with asyncio.timeout(TIMEOUT / 2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        writer.close()


async def test_use_port_in_use_reports_and_others_run(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    service = await echo_server()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        await make_node("home", serves=[ServeConfig(key="s", port=service.port, serveid=705)])
        office = await make_node(
            "office",
            uses=[
                UseConfig(key="busy", serveid=705, port=taken),
                UseConfig(key="fine", serveid=705, port=0),
            ],
        )
        port = await use_port(office, "fine")
        await wait_until(lambda: office.uses["busy"].error, "the busy use to report")
        assert office.uses["busy"].error == "address already in use"
        assert f"[use.busy] cannot listen on 127.0.0.1:{taken}: address already in use" in (
            caplog.text
        )
        assert await echo_round_trip(port, b"the other use works") == b"the other use works"
    await service.close()


async def test_node_leaving_withdraws_serves_and_resets_tunnels(
    make_node: MakeNode, route: RunningRoute
) -> None:
    from tests.services import endless_source_server

    source = await endless_source_server()
    home = await make_node("home", serves=[ServeConfig(key="s", port=source.port, serveid=706)])
    office = await make_node("office", uses=[UseConfig(key="s", serveid=706, port=0)])
    port = await use_port(office, "s")
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert len(await reader.readexactly(100_000)) == 100_000
        await home.stop()
        await read_until_reset(reader)
        writer.close()
    await wait_until(lambda: office.uses["s"].port is None, "the use to close")
    assert await office.client.list_serves() == []
    with pytest.raises(NotFound):
        route.servicer.registry.find("g", 706)
    await source.close()


async def test_a_stopping_node_closes_its_listeners_and_resets_its_tunnels(
    make_node: MakeNode, route: RunningRoute
) -> None:
    from tests.services import endless_source_server

    source = await endless_source_server()
    await make_node("home", serves=[ServeConfig(key="s", port=source.port, serveid=707)])
    office = await make_node("office", uses=[UseConfig(key="s", serveid=707, port=0)])
    port = await use_port(office, "s")
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(100_000)
        await office.stop()
        await read_until_reset(reader)
        writer.close()
    assert await refused(port)
    await wait_until(lambda: not route.servicer.splices, "the route to drop the tunnel")
    assert [v.name for v in route.servicer.registry.vnets("g")] == ["home"]
    await source.close()
