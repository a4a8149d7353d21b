"""Tunnels across routes: a node on route A dials a serve of a node on route B.

Two in-process routes on 127.0.0.1, real nodes, real sockets, bytes compared
exactly. No etcd: each test sets route A's `locate` (where the cluster's
registry would say the serve is) and both routes' PeerAccess itself, and
mirrors B's serve into A's registry as the cluster's watch would, so that
A's node sees it and listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, use_port, wait_until
from tests.services import (
    HEADER,
    Server,
    endless_source_server,
    exchange,
    exchange_server,
    first_fin_server,
    pattern,
    read_exactly_or_eof,
    read_until_reset,
    resetting_server,
    send_until_reset,
    tcp_relay,
)
from vnet.core.config import ServeConfig, UseConfig, VnetConfig
from vnet.core.errors import LocalProtocolError, NotFound, Refused
from vnet.core.registry import Serve
from vnet.metrics import RouteCollector
from vnet.node.client import TunnelBroken
from vnet.node.node import Node
from vnet.route.peer import PeerAccess
from vnet.route.server import RunningRoute

MIB = 1 << 20
TOKEN = "the-routes-own-token"
SID = 701


def mirror(route: RunningRoute, serve: Serve, group: str = "g") -> None:
    """Show a serve of another route's node on route, as the cluster's registry will."""
    registry = route.servicer.registry
    registry.add_vnet("(elsewhere)", group, wanted=serve.vnetid)
    reg = registry.register(
        serve.vnetid, serve.serveid, serve.name, serve.ip, serve.port, serve.info, serve.type
    )
    route.servicer.fanout.added(reg.serve, group)


def point(route: RunningRoute, where: dict[tuple[str, int], str]) -> list[tuple[str, int]]:
    """route.locate answers from where; the list records every question."""
    asked: list[tuple[str, int]] = []

    def locate(group: str, serveid: int) -> str | None:
        asked.append((group, serveid))
        return where.get((group, serveid))

    route.servicer.locate = locate
    return asked


class Cluster:
    """Route A (the office node's) and route B (the home node's, with the service)."""

    def __init__(self, a: RunningRoute, b: RunningRoute, home: Node, office: Node) -> None:
        self.a, self.b, self.home, self.office = a, b, home, office
        self.asked: list[tuple[str, int]] = []

    async def port(self) -> int:
        return await use_port(self.office, "svc")


async def two_routes(
    make_route: MakeRoute,
    make_node: MakeNode,
    service_port: int,
    *,
    b_token: str = TOKEN,
    address: Callable[[RunningRoute], str] = lambda b: f"127.0.0.1:{b.port}",
    home: VnetConfig | None = None,
) -> Cluster:
    a = await make_route()
    b = await make_route()
    a.servicer.peers.access = PeerAccess(TOKEN, route_id="route-a")
    b.servicer.peers.access = PeerAccess(b_token, route_id="route-b")
    serves = [ServeConfig(key="svc", port=service_port, serveid=SID)]
    at_b = await make_node("home", serves=serves, vnet=home, route=b)
    serve = b.servicer.registry.find("g", SID)
    mirror(a, serve)
    cluster = Cluster(a, b, at_b, office=None)  # type: ignore[arg-type]
    cluster.asked = point(a, {("g", SID): address(b)})
    cluster.office = await make_node(
        "office", uses=[UseConfig(key="svc", serveid=SID, port=0)], route=a
    )
    return cluster


async def no_tunnels_left(*routes: RunningRoute) -> None:
    """Nothing of any tunnel is left on the routes: no splice, nothing pending."""

    def empty() -> bool:
        return all(
            not r.servicer.splices
            and not len(r.servicer.pending)
            and not r.servicer.remote
            and all(link.core.tunnels == 0 for link in r.servicer.sessions.values())
            for r in routes
        )

    await wait_until(empty, "no tunnel left on the routes")


@pytest.mark.parametrize(("up", "down"), [(0, 0), (1, 1), (3 * MIB, 3 * MIB)])
async def test_bytes_cross_two_routes_exactly_both_ways(
    make_route: MakeRoute, make_node: MakeNode, up: int, down: int
) -> None:
    # The service answers only after the client's EOF: the client's
    # half-close crosses both routes, and the reply still comes back.
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    await exchange(await c.port(), up, down)
    assert service.connections == 1
    assert c.a.servicer.peers.tunnels == {"out": 1}
    assert c.b.servicer.peers.tunnels == {"in": 1}
    await no_tunnels_left(c.a, c.b)
    # Frame bytes: at least the payload each way, seen alike from both routes.
    a, b = c.a.servicer.peers, c.b.servicer.peers
    assert a.bytes("sent") >= up
    assert a.bytes("received") >= down
    assert (a.bytes("sent"), a.bytes("received")) == (b.bytes("received"), b.bytes("sent"))
    await service.close()


async def test_service_first_half_close_and_the_metrics(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # The service says its piece and shuts its side first; the client keeps
    # sending after it saw EOF, and every byte still arrives.
    service = await first_fin_server()
    c = await two_routes(make_route, make_node, service.port)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", await c.port())
        assert await read_exactly_or_eof(reader) == b"hello, then silence"
        body = pattern(MIB, seed=2)
        writer.write(body)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
    await wait_until(lambda: service.received, "the service to record what it read")
    assert service.received == [body]
    await no_tunnels_left(c.a, c.b)
    families = {f.name: f for f in RouteCollector(c.a.servicer).collect()}
    tunnels = {s.labels["side"]: s.value for s in families["vnet_peer_tunnels"].samples}
    assert tunnels == {"out": 1.0, "in": 0.0}
    sent = {s.labels["direction"]: s.value for s in families["vnet_peer_bytes"].samples}
    assert sent["sent"] >= len(body)
    await service.close()


async def test_many_tunnels_across_at_once(make_route: MakeRoute, make_node: MakeNode) -> None:
    # One channel per peer route, shared by every tunnel to it.
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    port = await c.port()
    await asyncio.gather(*(exchange(port, 64 * 1024, 64 * 1024) for _ in range(20)))
    assert service.connections == 20
    assert len(c.a.servicer.peers._channels) == 1
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_the_serving_side_resetting_resets_the_client(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    service = await resetting_server(read=1000, send=50_000)
    c = await two_routes(make_route, make_node, service.port)
    await send_until_reset(await c.port())
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_the_client_resetting_resets_the_service(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.node.tunnel import reset_socket

    resets: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_until_reset(reader)
            resets.append(True)
        except AssertionError:
            resets.append(False)
        writer.close()

    service = Server(await asyncio.start_server(handle, "127.0.0.1", 0))
    c = await two_routes(make_route, make_node, service.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", await c.port())
    writer.write(pattern(100_000))
    await writer.drain()
    await wait_until(lambda: c.b.servicer.splices, "the tunnel to reach route B")
    reset_socket(writer)
    await wait_until(lambda: resets, "the service to see the connection end")
    assert resets == [True], "the service saw a clean EOF where the client had reset"
    await no_tunnels_left(c.a, c.b)
    await service.close()


@pytest.mark.parametrize("how", ["peer-stream-cut", "route-b-stopped"])
async def test_losing_route_b_mid_transfer_is_a_reset_never_a_clean_eof(
    make_route: MakeRoute, make_node: MakeNode, how: str
) -> None:
    source = await endless_source_server()
    c = await two_routes(make_route, make_node, source.port)
    # Route A reaches B through a TCP relay that the test can close.
    relay, _ = await tcp_relay(c.b.port)
    c.a.servicer.locate = lambda g, s: f"127.0.0.1:{relay.port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", await c.port())
    async with asyncio.timeout(TIMEOUT):
        await reader.readexactly(4 * MIB)
        if how == "peer-stream-cut":
            await relay.close()  # the connection between the routes closes under the stream
        else:
            await c.b.server.stop(None)  # every call of route B ends at once
        await read_until_reset(reader)
    writer.close()
    await wait_until(lambda: not c.a.servicer.splices, "route A to let the tunnel go")
    assert c.a.servicer.stats.resets == 1
    await relay.close()
    await source.close()


async def test_not_here_is_not_found_for_the_node(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # A's view is stale: B has no such serve any more. B says "not here",
    # nothing is tried elsewhere (locate has nowhere else), and the node
    # hears what it would from its own route.
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    await c.port()
    await c.home.stop()  # it leaves B; A's mirror of its serve stays (stale)
    await wait_until(lambda: not c.b.servicer.sessions, "route B to forget the home node")
    call = c.office.client.dial(SID)
    with pytest.raises(TunnelBroken) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    assert info.value.code == "NOT_FOUND"
    assert info.value.details == f"no serveid {SID} in this group"
    assert c.b.servicer.peers.refused == {"not_here": 1}
    assert c.a.servicer.peers.answers == {"not_here": 1}
    # Asked once by the Dial, once more after the answer: nowhere else to go.
    assert c.asked == [("g", SID), ("g", SID)]
    assert service.connections == 0
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_not_here_tries_where_the_serve_is_now(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # A's first answer names a route that does not hold the serve (stale);
    # after its "not here", locate names B, and the tunnel runs there.
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    stale = await make_route()
    stale.servicer.peers.access = PeerAccess(TOKEN, route_id="stale")
    answers = [f"127.0.0.1:{stale.port}", f"127.0.0.1:{c.b.port}"]
    c.a.servicer.locate = lambda g, s: answers.pop(0) if answers else None
    await exchange(await c.port(), 100_000, 100_000)
    assert answers == []
    assert stale.servicer.peers.refused == {"not_here": 1}
    assert c.b.servicer.peers.tunnels == {"in": 1}
    assert service.connections == 1
    await no_tunnels_left(c.a, c.b, stale)
    await service.close()


@pytest.mark.parametrize("b_token", ["not-the-cluster-token", ""])
async def test_a_wrong_cluster_token_is_refused_and_nothing_is_half_open(
    make_route: MakeRoute, make_node: MakeNode, b_token: str
) -> None:
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port, b_token=b_token)
    failures = c.b.servicer.auth_failures
    call = c.office.client.dial(SID)
    with pytest.raises(TunnelBroken) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    # The node's own credentials are fine: it is not told UNAUTHENTICATED.
    assert info.value.code == "UNAVAILABLE"
    assert "refused this route's cluster credentials" in info.value.details
    assert c.b.servicer.peers.refused == {"unauthenticated": 1}
    assert c.b.servicer.auth_failures == failures + 1
    assert c.b.servicer.rejected["UNAUTHENTICATED"] == 1
    assert c.a.servicer.peers.answers == {"UNAUTHENTICATED": 1}
    # Not retried: the refusal was not "not here".
    assert c.asked == [("g", SID)]
    # Through the use, the client's connection is reset, never a clean EOF.
    reader, writer = await asyncio.open_connection("127.0.0.1", await c.port())
    writer.write(HEADER.pack(10, 10) + pattern(10))
    async with asyncio.timeout(TIMEOUT):
        await read_until_reset(reader)
    writer.close()
    assert service.connections == 0
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_an_unreachable_peer_route_is_unavailable_for_the_node(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    nowhere = free_port()
    c.a.servicer.locate = lambda g, s: f"127.0.0.1:{nowhere}"
    call = c.office.client.dial(SID)
    with pytest.raises(TunnelBroken) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    assert info.value.code == "UNAVAILABLE"
    assert info.value.details.startswith(f"the route at 127.0.0.1:{nowhere}: ")
    assert c.a.servicer.peers.answers == {"UNAVAILABLE": 1}
    await no_tunnels_left(c.a, c.b)
    await service.close()


async def test_a_route_without_cluster_credentials_does_not_relay(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    service = await exchange_server()
    c = await two_routes(make_route, make_node, service.port)
    c.a.servicer.peers.access = None
    call = c.office.client.dial(SID)
    with pytest.raises(TunnelBroken) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    assert info.value.code == "UNAVAILABLE"
    assert "no cluster credentials" in info.value.details
    assert service.connections == 0
    await service.close()


def test_peer_access_from_the_cluster_credentials() -> None:
    from vnet.cluster.credentials import ClusterCredentials, PeerTls
    from vnet.cluster.etcd import EtcdAccess
    from vnet.core.cluster_config import ClusterSettings
    from vnet.route.security import RouteSecurity, ServerTls

    tls = PeerTls(b"cert", b"key", b"ca")
    creds = ClusterCredentials(ClusterSettings(route_id="r1"), EtcdAccess(()), "tok", tls)
    assert PeerAccess.of(creds, RouteSecurity()) == PeerAccess("tok", tls, False, "r1")
    secure = RouteSecurity(tls=ServerTls(b"c", b"k"))
    assert PeerAccess.of(creds, secure).secure


async def test_unserve_across_routes(make_route: MakeRoute, make_node: MakeNode) -> None:
    # office (on A) asks home (on B) to offer a service: B asks its node and
    # A hands back the serve it registered, as one route would.
    service = await exchange_server()
    home = VnetConfig(name="home", group="g", allow_unserve=True, unserve_num=2)
    c = await two_routes(make_route, make_node, service.port, home=home)
    asked: list[tuple[str, str]] = []

    def locate_vnet(group: str, vnetid: str) -> str | None:
        asked.append((group, vnetid))
        return f"127.0.0.1:{c.b.port}" if vnetid == c.home.vnetid else None

    c.a.servicer.locate_vnet = locate_vnet
    assert c.office.vnetid != c.home.vnetid
    serve = await c.office.client.unserve(c.home.vnetid, "127.0.0.1", service.port)
    assert asked == [("g", c.home.vnetid)]
    assert serve.unserve
    assert (serve.vnetid, serve.port) == (c.home.vnetid, service.port)
    assert c.b.servicer.registry.find("g", serve.serveid) == serve
    # The asked node's refusal, a malformed request, and a node that is not
    # on B: each as from one route.
    with pytest.raises(Refused, match="refused"):
        await c.office.client.unserve(c.home.vnetid, "192.0.2.1", service.port)
    with pytest.raises(LocalProtocolError, match="type 'bogus' is not supported"):
        await c.office.client.unserve(c.home.vnetid, "127.0.0.1", 1, type="bogus")
    c.a.servicer.locate_vnet = lambda g, v: f"127.0.0.1:{c.b.port}"
    with pytest.raises(NotFound, match="no vnet '77' in this group"):
        await c.office.client.unserve("77", "127.0.0.1", service.port)
    assert c.b.servicer.peers.refused["not_here"] == 1
    await service.close()


async def test_peer_calls_over_mutual_tls(make_route: MakeRoute, make_node: MakeNode) -> None:
    # Route B serves TLS and requires client certificates (of its nodes and
    # of its peers alike); route A calls it with its peer certificate.
    import trustme

    from vnet.cluster.credentials import PeerTls
    from vnet.node.client import ClientTls, NodeCredentials
    from vnet.route.security import RouteSecurity, ServerTls

    ca = trustme.CA()

    def pems(cert: trustme.LeafCert) -> tuple[bytes, bytes]:
        return b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes()

    chain, key = pems(ca.issue_cert("127.0.0.1"))
    b = await make_route(
        security=RouteSecurity(tls=ServerTls(chain, key, client_ca=ca.cert_pem.bytes()))
    )
    b.servicer.peers.access = PeerAccess(TOKEN, secure=True)
    a = await make_route()
    peer_chain, peer_key = pems(ca.issue_cert("route-a.test"))
    service = await exchange_server()
    node_chain, node_key = pems(ca.issue_cert("home.test"))
    tls = ClientTls(root_ca=ca.cert_pem.bytes(), cert_chain=node_chain, private_key=node_key)
    await make_node(
        "home",
        serves=[ServeConfig(key="svc", port=service.port, serveid=SID)],
        route=b,
        credentials=NodeCredentials(tls=tls),
    )
    mirror(a, b.servicer.registry.find("g", SID))
    a.servicer.locate = lambda g, s: f"127.0.0.1:{b.port}"
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=SID, port=0)], route=a)
    # Without peer TLS, A's plaintext call cannot reach B at all.
    a.servicer.peers.access = PeerAccess(TOKEN)
    call = office.client.dial(SID)
    with pytest.raises(TunnelBroken) as info:
        await asyncio.wait_for(call.read(), TIMEOUT)
    assert info.value.code == "UNAVAILABLE"
    # With it (on a new channel: the old one was made without), the tunnel runs.
    a.servicer.peers.access = PeerAccess(TOKEN, PeerTls(peer_chain, peer_key, ca.cert_pem.bytes()))
    await a.servicer.peers.close()
    await exchange(await use_port(office, "svc"), MIB, MIB)
    assert b.servicer.peers.tunnels == {"in": 1}
    await service.close()


async def test_losing_route_a_mid_transfer_resets_the_service(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    # The dialling route vanishes: the serving route sees its peer call end
    # without a fin, and the service gets a reset, never a clean EOF.
    ends: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_until_reset(reader)
            ends.append("reset")
        except AssertionError:
            ends.append("clean EOF")
        writer.close()

    service = Server(await asyncio.start_server(handle, "127.0.0.1", 0))
    c = await two_routes(make_route, make_node, service.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", await c.port())
    writer.write(pattern(MIB))
    await writer.drain()
    await wait_until(lambda: c.b.servicer.splices, "the tunnel to reach route B")
    await c.a.server.stop(None)
    await wait_until(lambda: ends, "the service to see the connection end")
    assert ends == ["reset"]
    await wait_until(lambda: not c.b.servicer.splices, "route B to let the tunnel go")
    writer.close()
    await service.close()
