"""The pacer: bulk tunnels read less while another tunnel of the node is interactive."""

from __future__ import annotations

import asyncio

from tests.conftest import TIMEOUT, MakeNode, home_and_office, wait_until
from tests.services import Server, echo_server, exchange, exchange_server, ping_until
from vnet.core.pacing import BULK_READ, HOLD_S, SHARED_READ, Lane, Pacer
from vnet.node.node import Node


def test_a_tunnel_alone_reads_in_bulk_whatever_its_reads_look_like() -> None:
    pacer, lane = Pacer(), Lane()
    for t in range(5):
        assert pacer.read_size(lane, t * 0.01) == BULK_READ
        pacer.note(lane, 1, t * 0.01)
    assert pacer.read_size(lane, 0.05) == BULK_READ


def test_bulk_yields_while_another_tunnel_is_interactive_and_recovers_after() -> None:
    pacer, bulk, ping = Pacer(), Lane(), Lane()
    pacer.note(bulk, BULK_READ, 0.0)
    pacer.note(ping, 1, 0.0)  # a first read: a request line, not yet interactive
    pacer.note(ping, 1, 0.001)  # one short read: the tail of a transfer, maybe
    assert pacer.read_size(bulk, 0.001) == BULK_READ
    pacer.note(ping, 1, 0.002)
    assert pacer.sharing(0.002)
    assert pacer.read_size(bulk, 0.003) == SHARED_READ
    # The interactive tunnel itself is never held back.
    assert pacer.read_size(ping, 0.003) == BULK_READ
    assert pacer.read_size(bulk, 0.002 + HOLD_S - 0.001) == SHARED_READ
    assert pacer.read_size(bulk, 0.002 + HOLD_S + 0.001) == BULK_READ
    assert not pacer.sharing(0.002 + HOLD_S + 0.001)


def _sharing(pacer: Pacer, now: float) -> Lane:
    """Make some lane interactive at now; returns it."""
    ping = Lane()
    for _ in range(3):
        pacer.note(ping, 1, now)
    assert pacer.sharing(now)
    return ping


def test_while_sharing_bulk_pauses_to_keep_under_the_rate() -> None:
    pacer, bulk = Pacer(shared_rate=1_000_000), Lane()
    ping = _sharing(pacer, 10.0)
    # 64 KiB at 1 MB/s is 65.5 ms, less the 2 ms of burst allowed.
    assert abs(pacer.pause(bulk, 65_536, 10.0) - (0.065536 - 0.002)) < 1e-9
    # The debt is the node's, not the lane's: another bulk tunnel waits longer.
    assert pacer.pause(Lane(), 65_536, 10.0) > 0.12
    # The interactive tunnel itself never waits.
    assert pacer.pause(ping, 65_536, 10.0) == 0.0


def test_no_pause_when_not_sharing_when_off_or_when_the_debt_is_small() -> None:
    pacer, bulk = Pacer(shared_rate=1_000_000), Lane()
    assert pacer.pause(bulk, 65_536, 1.0) == 0.0
    _sharing(pacer, 2.0)
    assert pacer.pause(bulk, 1_000, 2.0) == 0.0  # 1 ms of debt less 2 ms of burst
    off = Pacer(shared_rate=0)
    _sharing(off, 2.0)
    assert off.pause(bulk, 65_536, 2.0) == 0.0


def test_large_reads_are_not_interactive() -> None:
    pacer, a, b = Pacer(), Lane(), Lane()
    for t in range(3):
        pacer.note(a, SHARED_READ, t * 0.001)
    assert pacer.read_size(b, 0.003) == BULK_READ


# --- through a real route and nodes ------------------------------------------


async def _home_and_office(make_node: MakeNode) -> tuple[Node, int, int, list[Server]]:
    sink, echo = await exchange_server(), await echo_server()
    office, ports = await home_and_office(
        make_node, [("sink", sink.port, 701), ("echo", echo.port, 702)]
    )
    return office, ports["sink"], ports["echo"], [sink, echo]


async def test_a_transfer_next_to_an_interactive_tunnel_yields_and_arrives_intact(
    make_node: MakeNode,
) -> None:
    office, sink_port, echo_port, servers = await _home_and_office(make_node)
    rounds, stop = [0], asyncio.Event()
    pinger = asyncio.create_task(ping_until(echo_port, rounds, stop))
    try:
        await wait_until(lambda: rounds[0] >= 5 or pinger.done(), "pings through the tunnel")
        await exchange(sink_port, 16 * 1024 * 1024, 1024)
        assert office.pacer.yielded > 0
        assert not pinger.done()
    finally:
        stop.set()
        await asyncio.wait_for(pinger, TIMEOUT)
        for server in servers:
            await server.close()


async def test_a_transfer_alone_never_yields(make_node: MakeNode) -> None:
    office, sink_port, _, servers = await _home_and_office(make_node)
    await exchange(sink_port, 16 * 1024 * 1024, 1024)
    await exchange(sink_port, 1024, 16 * 1024 * 1024)
    assert office.pacer.yielded == 0
    for server in servers:
        await server.close()
