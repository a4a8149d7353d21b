"""UDP serves and uses: real datagrams through an in-process route and two nodes."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import urllib.request
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.message
import dns.rrset
import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, use_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.services import echo_ok, echo_server
from tests.udp_services import UdpServer, _Collect, udp_client, udp_server
from vnet.core.config import ServeConfig, UseConfig, VnetConfig
from vnet.core.udp import MAX_DATAGRAM, Drop
from vnet.node.node import Node


async def _pair(
    make_node: MakeNode,
    target_port: int,
    *,
    serve_idle: int = 60,
    use_idle: int = 60,
    udp_flows: int = 256,
    serveid: int = 753,
) -> tuple[Node, Node, int]:
    home = await make_node(
        "home",
        serves=[
            ServeConfig(
                key="svc", port=target_port, serveid=serveid, type="udp", udp_idle=serve_idle
            )
        ],
    )
    office = await make_node(
        "office",
        uses=[
            UseConfig(
                key="svc",
                serveid=serveid,
                port=0,
                type="udp",
                udp_idle=use_idle,
                udp_flows=udp_flows,
            )
        ],
    )
    return home, office, await use_port(office, "svc")


@pytest.mark.parametrize(("size", "count"), [(1, 50), (1000, 50), (MAX_DATAGRAM, 3)])
async def test_echo_keeps_boundaries_contents_and_order(
    make_node: MakeNode, size: int, count: int
) -> None:
    echo = await udp_server()
    _, office, port = await _pair(make_node, echo.port)
    client = await udp_client(port)
    # Distinct contents per datagram, so a merge, split, truncation or
    # reordering shows.
    sent = [
        bytes([(i * 7 + j) & 0xFF for j in range(min(size, 256))]) * (size // 256 + 1)
        for i in range(count)
    ]
    sent = [d[:size] for d in sent]
    assert await client.round_trip(sent[0]) == sent[0]
    for datagram in sent[1:]:
        client.send(datagram)
    got = await client.wait_for(count)
    assert [len(d) for d in got] == [size] * count
    assert got == sent
    counters = office.uses["svc"].udp_counters
    assert counters.datagrams_out == count
    assert counters.bytes_out == size * count
    assert counters.datagrams_in == count
    assert all(n == 0 for n in counters.drops.values())
    client.close()
    echo.close()


async def test_an_empty_datagram_passes(make_node: MakeNode) -> None:
    echo = await udp_server()
    _, _, port = await _pair(make_node, echo.port)
    # asyncio's sendto sends nothing for b"": a plain socket does.
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        for datagram in (b"", b"x", b""):
            sock.send(datagram)
            async with asyncio.timeout(TIMEOUT):
                assert await loop.sock_recv(sock, 70_000) == datagram
    assert [d for d, _ in echo.received] == [b"", b"x", b""]
    echo.close()


async def test_200_flows_each_get_only_their_own_replies(make_node: MakeNode) -> None:
    echo = await udp_server()
    home, office, port = await _pair(make_node, echo.port)
    clients = [await udp_client(port) for _ in range(200)]
    per_flow = 5
    # A round is one datagram in flight per flow: all 200 at once, which a
    # node's socket buffers hold (more at once would be lost to the kernel
    # on a machine with small net.core.rmem_max, not to vnet).
    for round_ in range(per_flow):
        for i, client in enumerate(clients):
            client.send(b"flow %d datagram %d" % (i, round_))
        for client in clients:
            await client.wait_for(round_ + 1)
    for i, client in enumerate(clients):
        assert client.received == [b"flow %d datagram %d" % (i, r) for r in range(per_flow)]
    # One flow per client at the serving node too: 200 distinct sources at the target.
    assert len({addr for _, addr in echo.received}) == 200
    assert office.uses["svc"].udp_counters.flows_open == 200
    await wait_until(lambda: home.serves["svc"].udp.flows_open == 200, "200 flows at home")
    for client in clients:
        client.close()
    echo.close()


async def test_a_flow_is_counted_open_or_ended_at_every_turn_of_the_loop(
    make_node: MakeNode,
) -> None:
    # An observer (the metrics, a test's wait) must never see a flow that is
    # neither open nor counted closed or reset.
    echo = await udp_server()
    home, office, port = await _pair(make_node, echo.port, use_idle=1)
    client = await udp_client(port)
    assert await client.round_trip(b"hello") == b"hello"
    sides = (office.uses["svc"].udp_counters, home.serves["svc"].udp)
    gaps: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            ended = [s.flows_closed + s.flows_reset for s in sides]
            gaps += [str(s) for s, e in zip(sides, ended, strict=True) if s.flows_open + e != 1]
            if ended == [1, 1]:
                break
            await asyncio.sleep(0)  # look at every turn of the loop: the gap lasts one
    assert not gaps
    assert [s.flows_closed for s in sides] == [1, 1]
    client.close()
    echo.close()


@pytest.mark.parametrize("short", ["use", "serve"])
async def test_idle_ends_the_flow_on_both_sides(make_node: MakeNode, short: str) -> None:
    echo = await udp_server()
    home, office, port = await _pair(
        make_node,
        echo.port,
        use_idle=1 if short == "use" else 60,
        serve_idle=1 if short == "serve" else 60,
    )
    client = await udp_client(port)
    assert await client.round_trip(b"hello") == b"hello"
    use_side = office.uses["svc"].udp_counters
    serve_side = home.serves["svc"].udp
    assert use_side.flows_open == serve_side.flows_open == 1
    # The shorter udp_idle wins, at both ends, and the flow ends cleanly (fins).
    await wait_until(
        lambda: use_side.flows_open == 0 and serve_side.flows_open == 0,
        "the idle flow to end on both nodes",
    )
    assert use_side.flows_closed == serve_side.flows_closed == 1
    assert use_side.flows_reset == serve_side.flows_reset == 0
    udp = office.uses["svc"].udp
    assert udp is not None
    assert not udp.flows
    # The same client again: a new flow, from a new socket at the target.
    assert await client.round_trip(b"again") == b"again"
    assert use_side.flows_opened == 2
    assert len({addr for _, addr in echo.received}) == 2
    client.close()
    echo.close()


async def test_flow_cap_drops_and_counts(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    echo = await udp_server()
    _, office, port = await _pair(make_node, echo.port, udp_flows=2)
    clients = [await udp_client(port) for _ in range(3)]
    assert await clients[0].round_trip(b"a") == b"a"
    assert await clients[1].round_trip(b"b") == b"b"
    counters = office.uses["svc"].udp_counters
    clients[2].send(b"c")
    await wait_until(lambda: counters.drops[Drop.FLOW_LIMIT] == 1, "the third flow refused")
    assert counters.flows_open == 2
    refusals = [r.getMessage() for r in caplog.records if "no new flow" in r.getMessage()]
    local = clients[2].transport.get_extra_info("sockname")
    assert refusals == [
        f"[use.svc] no new flow for 127.0.0.1:{local[1]}: 2 flows open, "
        "the cap of [use.svc] udp_flows=2"
    ]
    # Throttled: more refusals within LOG_EVERY make no new line, only a count.
    clients[2].send(b"c")
    clients[2].send(b"c")
    await wait_until(lambda: counters.drops[Drop.FLOW_LIMIT] == 3, "two more refused")
    assert sum("no new flow" in r.getMessage() for r in caplog.records) == 1
    for client in clients:
        client.close()
    echo.close()


async def test_node_flow_cap_is_shared_by_the_uses(make_node: MakeNode) -> None:
    echo = await udp_server()
    await make_node(
        "home", serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")]
    )
    office = await make_node(
        "office",
        uses=[
            UseConfig(key="a", serveid=753, port=0, type="udp"),
            UseConfig(key="b", serveid=753, port=0, type="udp"),
        ],
        vnet=VnetConfig(name="office", group="g", udp_flows=1),
    )
    a = await udp_client(await use_port(office, "a"))
    b = await udp_client(await use_port(office, "b"))
    assert await a.round_trip(b"a") == b"a"
    b.send(b"b")
    counters = office.uses["b"].udp_counters
    await wait_until(lambda: counters.drops[Drop.FLOW_LIMIT] == 1, "b's flow refused")
    a.close()
    b.close()
    echo.close()


async def test_the_serving_nodes_cap_refuses_a_flow(make_node: MakeNode) -> None:
    echo = await udp_server()
    home = await make_node(
        "home",
        serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")],
        vnet=VnetConfig(name="home", group="g", udp_flows=1),
    )
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=753, port=0, type="udp")])
    port = await use_port(office, "svc")
    first, second = await udp_client(port), await udp_client(port)
    assert await first.round_trip(b"1") == b"1"
    second.send(b"2")
    at_home = home.serves["svc"].udp
    await wait_until(lambda: at_home.drops[Drop.FLOW_LIMIT] == 1, "home to refuse the flow")
    # The refused flow is reset at the office too; the first one carries on.
    at_office = office.uses["svc"].udp_counters
    await wait_until(lambda: at_office.flows_reset == 1, "the office to hear of it")
    assert await first.round_trip(b"1 again") == b"1 again"
    assert at_home.flows_open == 1
    first.close()
    second.close()
    echo.close()


async def test_a_use_of_the_wrong_type_does_not_listen(make_node: MakeNode) -> None:
    echo = await udp_server()
    await make_node(
        "home", serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")]
    )
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=753, port=0)])
    state = office.uses["svc"]
    await wait_until(lambda: "udp" in state.error, "the type mismatch reported")
    assert state.error == ("type=tcp but serveid 753 (svc on vnet 01) is udp: set type=udp")
    assert not state.listening
    echo.close()


async def test_udp_and_tcp_serves_share_a_port_number(make_node: MakeNode) -> None:
    """As a DNS server listens on 53/udp and 53/tcp: both served, and used on one port."""
    tcp_echo = await echo_server()
    loop = asyncio.get_running_loop()
    holder: list[_Collect] = []
    # The UDP echo on the TCP echo's port number.
    _, proto = await loop.create_datagram_endpoint(
        lambda: _Collect(lambda d, a: holder[0].sendto(d, a)),
        local_addr=("127.0.0.1", tcp_echo.port),
    )
    holder.append(proto)
    udp_echo = UdpServer(proto)
    await make_node(
        "home",
        serves=[
            ServeConfig(key="t", port=tcp_echo.port, serveid=760),
            ServeConfig(key="u", port=tcp_echo.port, serveid=761, type="udp"),
        ],
    )
    port = free_port()
    office = await make_node(
        "office",
        uses=[
            UseConfig(key="t", serveid=760, port=port),
            UseConfig(key="u", serveid=761, port=port, type="udp"),
        ],
    )
    assert await use_port(office, "t") == await use_port(office, "u") == port
    assert await echo_ok(port, 10_000)
    client = await udp_client(port)
    assert await client.round_trip(b"over udp") == b"over udp"
    client.close()
    udp_echo.close()
    await tcp_echo.close()


async def _dns_server() -> tuple[asyncio.DatagramTransport, int]:
    """A small authoritative server: every A query for *.vnet.test gets 192.0.2.N."""

    class Dns(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            name = query.question[0].name
            label = name.labels[0].decode()
            answer.answer.append(dns.rrset.from_text(name, 60, "IN", "A", f"192.0.2.{len(label)}"))
            self.transport.sendto(answer.to_wire(), addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Dns, local_addr=("127.0.0.1", 0)
    )
    return transport, int(transport.get_extra_info("sockname")[1])


async def test_a_dns_query_through_the_tunnel(make_node: MakeNode) -> None:
    server, dns_port = await _dns_server()
    _, _, port = await _pair(make_node, dns_port)
    query = dns.message.make_query("abcd.vnet.test", "A")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=TIMEOUT)
    assert answer.id == query.id
    assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.4"]
    dig = shutil.which("dig")
    if dig is not None:
        proc = await asyncio.create_subprocess_exec(
            dig,
            "@127.0.0.1",
            "-p",
            str(port),
            "+short",
            "+tries=1",
            "+time=10",
            "ab.vnet.test",
            "A",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 2 * TIMEOUT)
        assert proc.returncode == 0, err
        assert out.decode().split() == ["192.0.2.2"]
    server.close()


async def test_drops_are_counted_when_the_far_end_stops_reading(
    make_route: MakeRoute, make_node: MakeNode, procs: Procs, tmp_path: Path
) -> None:
    """The serving node frozen (SIGSTOP): nothing reads the flow's stream, its
    windows fill, the use's queue for it fills and drops its oldest datagrams,
    counted in `show use` and the metrics. Then it carries on.

    A target that merely stops reading its socket is not this case: the
    kernel drops what overflows its receive buffer, and on loopback the
    sender never learns of it (`netstat -su`, RcvbufErrors, counts those)."""
    from vnet.console.executor import use_views
    from vnet.core.tables import local_uses_table
    from vnet.metrics import serve_node_metrics

    sink = await udp_server(echo=False)
    route = await make_route()
    (tmp_path / "home.ini").write_text(
        node_ini(
            route.port,
            f"[vnet]\nname=home\ngroup=g\n[serve.sink]\nserveid=754\ntype=udp\nport={sink.port}\n",
        )
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    await home.wait_for_line("registered as serveid 754")
    office = await make_node(
        "office", uses=[UseConfig(key="sink", serveid=754, port=0, type="udp")]
    )
    endpoint = serve_node_metrics(office, "127.0.0.1", 0)
    client = await udp_client(await use_port(office, "sink"))
    client.send(b"first")
    await wait_until(lambda: len(sink.received) == 1, "the first datagram at the target")
    counters = office.uses["sink"].udp_counters
    big = 60_000
    home.send(signal.SIGSTOP)
    try:
        sent = 0
        deadline = asyncio.get_running_loop().time() + 3 * TIMEOUT
        while counters.drops[Drop.QUEUE_FULL] == 0:
            assert asyncio.get_running_loop().time() < deadline, (
                f"no queue drop after {sent} datagrams: {counters.summary()}"
            )
            # Paced, so the use's node reads its socket (else the kernel
            # would drop them first, where vnet cannot count them).
            for _ in range(8):
                client.send(sent.to_bytes(4, "big") * (big // 4))
                sent += 1
            await asyncio.sleep(0.001)
        dropped = counters.drops[Drop.QUEUE_FULL]
        assert counters.datagrams_out + dropped <= sent + 1
        line = [ln for ln in local_uses_table(use_views(office)) if "[use.sink] udp" in ln]
        assert f"queue_full {dropped}" in line[0]
        m = await asyncio.to_thread(_scrape, endpoint.port)
        key = (("kind", "use"), ("name", "sink"), ("reason", "queue_full"))
        assert m[("vnet_udp_drops_total", key)] >= dropped
        assert m[("vnet_udp_flows_open", (("kind", "use"), ("name", "sink")))] == 1
    finally:
        home.send(signal.SIGCONT)
    # The flow itself survived: a marked datagram still reaches the target.
    await wait_until(
        lambda: (client.send(b"marker"), any(d == b"marker" for d, _ in sink.received))[1],
        "a datagram through the same flow after SIGCONT",
        3 * TIMEOUT,
        0.2,
    )
    assert counters.flows_opened == 1
    await asyncio.to_thread(endpoint.close)
    client.close()
    sink.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_oversize_datagram_is_dropped_and_counted(make_node: MakeNode) -> None:
    """Over IPv6 a datagram may hold 65,527 bytes; past 65,507 it could not go
    on to an IPv4 target, so the use drops it, counted, and passes the rest."""
    echo = await udp_server()
    await make_node(
        "home", serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")]
    )
    office = await make_node(
        "office", uses=[UseConfig(key="svc", serveid=753, ip="::1", port=0, type="udp")]
    )
    port = await use_port(office, "svc")
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("::1", port))
        sock.send(b"o" * (MAX_DATAGRAM + 1))
        sock.send(b"fits" * (MAX_DATAGRAM // 4))
        async with asyncio.timeout(TIMEOUT):
            got = await loop.sock_recv(sock, 70_000)
    assert got == b"fits" * (MAX_DATAGRAM // 4)
    assert office.uses["svc"].udp_counters.drops[Drop.OVERSIZE] == 1
    echo.close()


async def test_unserve_of_a_udp_service(make_node: MakeNode) -> None:
    """A UDP service the home node never registered, asked for and mapped here."""
    echo = await udp_server()
    home = await make_node("home", vnet=VnetConfig(name="home", group="g", allow_unserve=True))
    office = await make_node("office")
    serve = await office.unserve(home.vnetid, "127.0.0.1", echo.port, "udp")
    assert serve.type == "udp"
    assert serve.unserve
    state = await office.map_unserve(serve, "127.0.0.1", 0)
    assert state.config.type == "udp"
    assert state.port is not None
    client = await udp_client(state.port)
    assert await client.round_trip(b"unserved datagram") == b"unserved datagram"
    offer = home.unserves.offers[serve.serveid]
    assert offer.open == 1  # the flow counts as a connection: the offer does not lapse
    client.close()
    echo.close()


async def test_a_udp_use_keeps_its_port_through_a_route_restart(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.node.node import NodeTimeouts

    fast = NodeTimeouts(connect=TIMEOUT, reconnect_min=0.05, reconnect_max=0.2)
    echo = await udp_server()
    route = await make_route(stop_grace=0.2)
    home = await make_node(
        "home",
        route=route,
        timeouts=fast,
        serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")],
    )
    office = await make_node(
        "office",
        route=route,
        timeouts=fast,
        uses=[UseConfig(key="svc", serveid=753, port=0, type="udp")],
    )
    port = await use_port(office, "svc")
    client = await udp_client(port)
    assert await client.round_trip(b"before") == b"before"
    # As if killed: connections drop, nobody is told (a route that stops cleanly
    # withdraws the serve first, and the use closes its port with it, as a tcp use does).
    await route.server.stop(None)
    await wait_until(lambda: not office.connected, "the office node to notice")
    counters = office.uses["svc"].udp_counters
    # The flow was reset with the route; the socket stays.
    await wait_until(lambda: counters.flows_open == 0, "the flow to be reset")
    assert counters.flows_reset == 1
    assert office.uses["svc"].port == port
    await make_route(route.port, stop_grace=0.2)
    await wait_until(lambda: home.connected and office.connected, "both to reconnect")

    async def answered() -> bool:
        before = len(client.received)
        client.send(b"after")
        try:
            await client.wait_for(before + 1, timeout=0.5)
        except TimeoutError:
            return False
        return client.received[-1] == b"after"

    await wait_until(answered, "a datagram through the same port after the restart")
    client.close()
    echo.close()
