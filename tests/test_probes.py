"""Round trips through another node (Ping with via_vnetid, answered by Echo), and the
governor they feed, through a real route and real nodes on loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, home_and_office, wait_until
from tests.rawclient import Raw, status_of
from tests.services import echo_server, exchange, exchange_server, ping_until
from vnet.core.errors import LimitExceeded, NotFound
from vnet.core.queueing import Phase
from vnet.route.probes import BURST, RATE, Probes
from vnetrpc.v1 import route_pb2 as pb


async def test_a_ping_via_a_node_goes_through_it_and_back(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await make_route()
    home = await make_node("home")
    office = await make_node("office")
    assert await office.client.ping_via(home.vnetid)
    assert await home.client.ping_via(office.vnetid)
    assert route.servicer.between.probes.echoed == 2


async def test_via_a_node_of_another_group_or_none_is_not_found(make_node: MakeNode) -> None:
    other = await make_node("other", group="elsewhere")
    office = await make_node("office")
    for via in (other.vnetid, "99"):
        with pytest.raises(NotFound, match="in this group"):
            await office.client.ping_via(via)


async def test_a_node_that_does_not_echo_is_answered_for_after_one_timeout(
    make_route: MakeRoute,
) -> None:
    route = await make_route(echo=0.3)
    raw = Raw(route.port)
    try:
        # Joined with its control stream open, like a node from before Echo:
        # it reads nothing and so never answers an echo_asked.
        joined = await raw.join(None, group="g", name="old")
        control = raw.stub.Control(pb.ControlRequest(), metadata=raw.md(None, joined.session))
        await control.read()
        asker = Raw(route.port)
        try:
            me = await asker.join(None, group="g", name="asker")
            md = asker.md(None, me.session)
            ask = pb.PingRequest(nonce=7, via_vnetid=joined.vnetid)
            first = await asker.stub.Ping(ask, metadata=md, timeout=TIMEOUT)
            assert (first.nonce, first.via_echoed) == (7, False)
            assert route.servicer.between.probes.unanswered == 1
            # Known silent now: answered at once, without another wait.
            second = await asker.stub.Ping(ask, metadata=md, timeout=TIMEOUT)
            assert not second.via_echoed
            assert route.servicer.between.probes.unanswered == 1
            assert len(route.servicer.between.probes) == 0
            # An Echo nobody waits for (late, or made up) is refused.
            code, details = await status_of(
                raw.stub.Echo(
                    pb.EchoRequest(probe=12345),
                    metadata=raw.md(None, joined.session),
                    timeout=TIMEOUT,
                )
            )
            assert code is grpc.StatusCode.NOT_FOUND, details
        finally:
            await asker.close()
        control.cancel()
    finally:
        await raw.close()


async def test_a_raw_client_that_echoes_is_timed_through(make_route: MakeRoute) -> None:
    route = await make_route()
    raw, asker = Raw(route.port), Raw(route.port)
    try:
        joined = await raw.join(None, group="g", name="echoer")
        md = raw.md(None, joined.session)
        control = raw.stub.Control(pb.ControlRequest(), metadata=md)
        await control.read()  # the snapshot
        me = await asker.join(None, group="g", name="asker")
        ping = asyncio.ensure_future(
            asker.stub.Ping(
                pb.PingRequest(nonce=1, via_vnetid=joined.vnetid),
                metadata=asker.md(None, me.session),
                timeout=TIMEOUT,
            )
        )
        event = await asyncio.wait_for(control.read(), TIMEOUT)
        assert event.WhichOneof("event") == "echo_asked"
        assert not ping.done()  # the route waits for the echo
        await raw.stub.Echo(pb.EchoRequest(probe=event.echo_asked.probe), metadata=md, timeout=5)
        answer = await asyncio.wait_for(ping, TIMEOUT)
        assert answer.via_echoed
        assert route.servicer.between.probes.echoed == 1
        control.cancel()
    finally:
        await raw.close()
        await asker.close()


async def test_bulk_is_held_back_while_an_interactive_tunnel_keeps_going(
    make_node: MakeNode,
) -> None:
    """The governor engages for real: probes go through the home node, bulk frames
    wait at the office node while the ping's frames pass, and every byte arrives."""
    sink, echo = await exchange_server(), await echo_server()
    office, ports = await home_and_office(
        make_node, [("sink", sink.port, 701), ("echo", echo.port, 702)]
    )
    governor = office.governor
    assert governor is not None
    # Loopback is a local path (not paced past the drain): pace it as a WAN one here.
    governor.local_rtt = 0.0
    rounds, stop = [0], asyncio.Event()

    task = asyncio.create_task(ping_until(ports["echo"], rounds, stop))
    try:
        await wait_until(lambda: rounds[0] >= 5 or task.done(), "pings through the tunnel")
        transfer = asyncio.create_task(exchange(ports["sink"], 32 * 1024 * 1024, 1024))
        await wait_until(
            lambda: governor.phase is not Phase.OFF or transfer.done(), "the governor to engage"
        )
        held, pinged = governor.held_s, rounds[0]
        # While the transfer is held back, the ping-pong goes on.
        await wait_until(
            lambda: (governor.held_s > held and rounds[0] > pinged + 5) or transfer.done(),
            "pings to pass bulk frames held at the node",
        )
        await asyncio.wait_for(transfer, TIMEOUT * 4)  # exchange checks every byte
        assert governor.probes > 0
        assert governor.base > 0
        assert governor.held_s > 0
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        await sink.close()
        await echo.close()


async def test_a_node_cannot_start_probes_faster_than_the_rate() -> None:
    class Peer:
        def push(self, event: bytes) -> None:
            pass

    probes, asker, via = Probes(), Peer(), Peer()
    for _ in range(int(BURST)):
        asked = probes.ask(asker, via, now=0.0)
        assert asked is not None
        probes.answered(via, asked[0])
        assert await probes.wait(asker, via, *asked)
    with pytest.raises(LimitExceeded, match="a second"):
        probes.ask(asker, via, now=0.0)
    # Tokens come back with time, at RATE a second.
    assert probes.ask(asker, via, now=1 / RATE) is not None
    # Another node has its own allowance.
    assert probes.ask(Peer(), via, now=0.0) is not None
