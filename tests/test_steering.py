"""Governed connections leave BBR (vnet/core/steering.py): the rule on an injected clock, the
switch on real sockets, and a governed transfer through a real route and real nodes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, home_and_office, wait_until
from tests.services import echo_server, exchange, exchange_server, ping_until
from vnet import congestion
from vnet.core.queueing import Phase
from vnet.core.steering import GOVERNED, PROBING, Holds, LossWatch, Lossy, switch_to
from vnet.route.server import RunningRoute

# --- the rule ---------------------------------------------------------------


def test_only_a_probing_congestion_control_is_switched() -> None:
    assert switch_to(PROBING)
    for name in (*GOVERNED, "", "vegas"):
        assert not switch_to(name)


def test_a_connection_is_held_until_the_hold_after_its_last_probe() -> None:
    holds: Holds[str] = Holds(hold=3.0, paired=0.5)
    assert not holds.mark("a", 0.0)  # one probe alone: not yet
    assert holds.mark("a", 0.1)  # a second one soon after: the caller switches it
    assert not holds.mark("a", 0.5)  # held already: nothing to do, but held on
    assert not holds.mark("b", 1.9)
    assert holds.mark("b", 2.0)
    assert holds.next_due() == 3.5
    assert holds.due(3.4) == []
    assert holds.due(3.5) == ["a"]  # 3 s after its last probe, not its first
    assert "a" not in holds
    assert "b" in holds
    assert holds.due(100.0) == ["b"]
    assert holds.next_due() == float("inf")
    # Switched again by the next pair of probes after it was restored.
    assert not holds.mark("a", 101.0)
    assert holds.mark("a", 101.2)


def test_probes_a_second_apart_do_not_switch() -> None:
    """A path too short to govern is probed once a second: its connection is left alone."""
    holds: Holds[str] = Holds(paired=0.9)
    assert not any(holds.mark("lan", float(t)) for t in range(10))
    assert "lan" not in holds
    assert holds.due(20.0) == []


def test_a_drain_then_probes_a_second_apart_let_the_hold_run_out() -> None:
    """On a local path the drain probes quickly, then the governor probes once a second:
    the connection is switched by the drain's pair, and back 3 s after it."""
    holds: Holds[str] = Holds(hold=3.0, paired=0.9)
    assert not holds.mark("lan", 0.0)
    assert holds.mark("lan", 0.02)
    for t in range(1, 10):
        holds.mark("lan", 0.02 + t)
    assert holds.due(3.0) == []
    assert holds.due(3.02) == ["lan"]


def test_a_connection_gone_is_not_restored() -> None:
    holds: Holds[str] = Holds(hold=1.0, paired=0.5)
    holds.mark("a", 0.0)
    holds.mark("a", 0.1)
    holds.drop("a")
    assert holds.due(10.0) == []


def test_retransmissions_second_after_second_are_random_loss() -> None:
    watch = LossWatch(interval=1.0)
    assert not watch.seen(0.0, 100)
    assert not watch.seen(0.5, 105)
    assert not watch.seen(1.2, 105)  # one interval with losses: an overflow, perhaps
    assert watch.seen(2.1, 110)  # two of the last three: random loss


def test_one_burst_of_losses_is_not_random_loss() -> None:
    """A queue that overflowed once loses many segments at once, in one interval."""
    watch = LossWatch(interval=1.0)
    watch.seen(0.0, 0)
    assert not watch.seen(0.3, 100)
    assert not any(watch.seen(1.0 + t / 10, 100) for t in range(60))
    # Readings with gaps between them: the intervals skipped saw nothing.
    watch = LossWatch(interval=1.0)
    watch.seen(0.0, 0)
    assert not watch.seen(0.9, 3)
    assert not watch.seen(5.0, 6)  # the intervals 1-4 saw nothing: 0.9 s is long past
    assert not watch.seen(6.1, 6)
    assert watch.seen(7.2, 9)  # 5-6 and 7-8 retransmitted


def test_a_connection_found_lossy_is_left_alone_a_while() -> None:
    lossy: Lossy[str] = Lossy(memory=120.0)
    assert not lossy.spares("route", 0.0)
    lossy.found("route", 10.0)
    assert lossy.spares("route", 10.5)
    assert lossy.spares("route", 129.0)
    assert not lossy.spares("other", 11.0)
    assert not lossy.spares("route", 130.0)


# --- the switch on real sockets ----------------------------------------------


def _cc(sock: socket.socket) -> str:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return raw.split(b"\0", 1)[0].decode()


def _can_use_bbr() -> bool:
    if not hasattr(socket, "TCP_CONGESTION") or not os.path.isdir("/proc/self/fd"):
        return False
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, PROBING.encode())
        except OSError:
            return False
    return True


needs_bbr = pytest.mark.skipif(
    not _can_use_bbr(), reason="needs Linux with BBR allowed (tcp_allowed_congestion_control)"
)


@contextlib.contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket, tuple[str, int]]]:
    """A connected TCP pair on loopback, the client on BBR; and the server's address."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()
        client = socket.socket()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, PROBING.encode())
        client.connect(address)
        client.setblocking(False)
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted, (address[0], address[1])


@needs_bbr
def test_the_connection_to_a_peer_leaves_bbr_and_gets_it_back() -> None:
    with _pair() as (client, _, address), _pair() as (other, _, _):
        switched = congestion.govern({address})
        assert [(one.far, one.was) for one in switched] == [(address, PROBING)]
        assert _cc(client) in GOVERNED
        # A connection to another address is not touched.
        assert _cc(other) == PROBING
        assert congestion.total_retrans(switched[0].sock) == 0
        congestion.restore(switched)
        # Non-blocking as it was: the file's flags are shared with gRPC's descriptor.
        assert not client.getblocking()
        assert os.get_blocking(client.fileno()) is False
        assert _cc(client) == PROBING
        # The duplicate is closed, the connection is not: it still carries bytes.
        assert client.send(b"x") == 1


@needs_bbr
def test_a_connection_on_another_algorithm_is_left_alone() -> None:
    with _pair() as (client, _, address):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
        assert congestion.govern({address}) == []
        assert _cc(client) == "reno"


def test_grpc_peer_strings() -> None:
    assert congestion.peer_of("ipv4:10.0.0.2:4711") == ("10.0.0.2", 4711)
    assert congestion.peer_of("ipv6:[::1]:4711") == ("::1", 4711)
    assert congestion.peer_of("ipv6:%5B::1%5D:4711") is None
    assert congestion.peer_of("unix:/tmp/sock") is None
    assert congestion.peer_of("ipv4:10.0.0.2") is None


# --- a governed transfer through a real route and real nodes ----------------------


def _cc_of(local_port: int | None = None, far: tuple[str, int] | None = None) -> set[str]:
    """Congestion controls of this process's TCP connections on local_port or to far."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.type != socket.SOCK_STREAM:
                    continue
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                here, there = sock.getsockname(), sock.getpeername()
                # The route listens on both families: "::ffff:127.0.0.1" is 127.0.0.1.
                there = (there[0].removeprefix("::ffff:"), there[1])
                if (local_port is None or here[1] == local_port) and (far in (None, there)):
                    found.add(_cc(sock))
    return found


@needs_bbr
async def test_governed_bulk_takes_its_connections_off_bbr_until_it_ends(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await make_route()
    route.servicer.between.steering.holds.hold = 0.5
    sink, echo = await exchange_server(), await echo_server()
    try:
        await _governed_and_back(route, make_node, sink.port, echo.port)
    finally:
        await sink.close()
        await echo.close()


async def _governed_and_back(
    route: RunningRoute, make_node: MakeNode, sink: int, echo: int
) -> None:
    office, ports = await home_and_office(make_node, [("sink", sink, 703), ("echo", echo, 704)])
    links = {link.vnet.name: link for link in route.servicer.sessions.values()}
    office_at = congestion.peer_of(links["office"].peer)
    home_at = congestion.peer_of(links["home"].peer)
    assert office_at is not None
    assert home_at is not None
    # The office node's socket to the route, and the route's toward home (bulk goes there).
    office_side = lambda: _cc_of(local_port=office_at[1])  # noqa: E731
    route_side = lambda: _cc_of(far=home_at)  # noqa: E731
    if office_side() != {PROBING} or route_side() != {PROBING}:
        pytest.skip("this host's default congestion control is not BBR")
    governor = office.governor
    assert governor is not None
    # Loopback is a local path (not paced past the drain): pace it as a WAN one here.
    governor.local_rtt = 0.0
    rounds, stop = [0], asyncio.Event()
    pinging = asyncio.create_task(ping_until(ports["echo"], rounds, stop))
    transfer = asyncio.create_task(exchange(ports["sink"], 64 * 1024 * 1024, 1024, TIMEOUT * 6))
    try:
        await wait_until(lambda: rounds[0] >= 5 or pinging.done(), "pings through the tunnel")
        await wait_until(
            lambda: (
                (governor.phase is Phase.TRACK and office_side() <= set(GOVERNED))
                or transfer.done()
            ),
            "the office node's connection to leave BBR while paced",
        )
        assert office_side() <= set(GOVERNED), "the transfer ended before it was governed"
        await wait_until(
            lambda: route_side() <= set(GOVERNED) or transfer.done(),
            "the route's connection toward home to leave BBR",
        )
        assert route_side() <= set(GOVERNED)
    finally:
        stop.set()
        await asyncio.wait_for(pinging, TIMEOUT)
    await asyncio.wait_for(transfer, TIMEOUT * 6)  # exchange checks every byte
    # Nobody types any more: both connections get the host's algorithm back.
    await wait_until(lambda: office_side() == {PROBING}, "the office node's connection on BBR")
    await wait_until(lambda: route_side() == {PROBING}, "the route's connection on BBR")
