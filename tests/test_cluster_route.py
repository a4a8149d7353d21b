"""Routes wired to the cluster store (a real etcd, in-process routes on loopback):
ids decided across the cluster, the other routes' serves mirrored into each
route's control streams and List answers, resume on another route with the
same vnetid and serveids, a fenced route refusing, a stopped route's serves
gone at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from harness.etcd import EtcdServer
from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, wait_until
from tests.services import echo_ok, echo_round_trip, echo_server, pattern
from vnet.cluster.credentials import ClusterCredentials
from vnet.cluster.etcd import EtcdAccess, EtcdEndpoint
from vnet.core.cluster_config import ClusterSettings
from vnet.core.config import NodeConfig, RouteEndpoint, ServeConfig, UseConfig, VnetConfig
from vnet.core.errors import RouteUnavailable, ServeIdTaken
from vnet.node.client import RouteClient
from vnet.route.server import RouteSecurity, RunningRoute

CLUSTER_TOKEN = "cluster-secret-for-tests"


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


def cluster_security(
    etcd: EtcdServer, route_id: str, port: int, lease_ttl: int = 10
) -> RouteSecurity:
    settings = ClusterSettings(
        etcd=(etcd.url,),
        route_id=route_id,
        advertise=("127.0.0.1", port),
        token=CLUSTER_TOKEN,
        lease_ttl=lease_ttl,
        resume_ttl=max(60, lease_ttl),
    )
    access = EtcdAccess((EtcdEndpoint(*etcd.endpoint),), call_timeout=3)
    return RouteSecurity(cluster=ClusterCredentials(settings, access, CLUSTER_TOKEN, None))


MakeClustered = Callable[..., Awaitable[RunningRoute]]


@pytest.fixture
async def clustered(make_route: MakeRoute, etcd: EtcdServer) -> MakeClustered:
    async def make(route_id: str, lease_ttl: int = 10) -> RunningRoute:
        port = free_port()
        return await make_route(port, security=cluster_security(etcd, route_id, port, lease_ttl))

    return make


class Client:
    """A raw session (the node's own client): join, a control stream kept read."""

    def __init__(self, route: RunningRoute) -> None:
        self.rpc = RouteClient(f"127.0.0.1:{route.port}")
        self.events: list[object] = []
        self._reader: asyncio.Task[None] | None = None
        self.joined: object = None

    async def join(self, name: str, group: str = "g", **kw: object) -> str:
        joined = await self.rpc.join(name, group, timeout=TIMEOUT, **kw)  # type: ignore[arg-type]
        self.joined = joined
        self._reader = asyncio.create_task(self._read())
        return joined.vnetid

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for event in self.rpc.control():
                self.events.append(event)

    async def serveids(self) -> set[int]:
        return {s.serveid for s in await self.rpc.list_serves(timeout=TIMEOUT)}

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.rpc.channel.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[RunningRoute], Client]]:
    made: list[Client] = []

    def make(route: RunningRoute) -> Client:
        made.append(Client(route))
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def test_serves_and_ids_are_shared_across_routes(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client]
) -> None:
    a, b = await clustered("a"), await clustered("b")
    home, office, rival = clients(a), clients(b), clients(b)
    home_id = await home.join("home")
    office_id = await office.join("office")
    rival_id = await rival.join("rival")
    # vnetids are unique across the cluster, not per route.
    assert len({home_id, office_id, rival_id}) == 3
    static = await home.rpc.register(700, "ssh", "127.0.0.1", 22, "")
    dynamic = await home.rpc.register(0, "web", "127.0.0.1", 80, "")
    assert static.serve.serveid == 700
    # The other route lists them, and its nodes hear of them on their control streams.
    want = {700, dynamic.serve.serveid}
    await wait_until(lambda: b.servicer.registry.mirrored("g", 700) == "a", "b to mirror a's serve")
    assert await office.serveids() == want
    # The static rule holds across routes: the first keeps it.
    with pytest.raises(ServeIdTaken, match="static serveid 700 is already registered"):
        await rival.rpc.register(700, "other", "127.0.0.1", 2222, "")
    # A dynamic serveid taken on another route is reassigned, never shared.
    moved = await rival.rpc.register(dynamic.serve.serveid, "mine", "127.0.0.1", 81, "")
    assert moved.reassigned
    assert moved.serve.serveid not in want
    await wait_until(
        lambda: a.servicer.registry.mirrored("g", moved.serve.serveid) == "b", "a to mirror b's"
    )
    assert await home.serveids() == want | {moved.serve.serveid}
    # Withdrawn on one route, gone on the other.
    await home.rpc.unregister(700)
    await wait_until(lambda: not b.servicer.registry.mirrored("g", 700), "b to drop 700")
    assert 700 not in await office.serveids()
    # show vnets lists the group's nodes on every route, with their serve counts.
    listed = {v.vnetid: v for v in await office.rpc.list_vnets(timeout=TIMEOUT)}
    assert set(listed) == {home_id, office_id, rival_id}
    assert listed[home_id].serves == 1
    # Another group sees nothing of it.
    stranger = clients(b)
    await stranger.join("stranger", group="other")
    assert await stranger.serveids() == set()


async def test_a_node_resumes_on_another_route_with_its_vnetid_and_serveids(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client]
) -> None:
    a, b = await clustered("a"), await clustered("b")
    first = clients(a)
    vnetid = await first.join("home")
    static = (await first.rpc.register(750, "ssh", "127.0.0.1", 22, "")).serve.serveid
    dynamic = (await first.rpc.register(0, "web", "127.0.0.1", 80, "")).serve.serveid
    joined = first.joined
    resume = (vnetid, joined.resume_token)  # type: ignore[attr-defined]
    # Route a stops: its serves go from the store at once (the lease is revoked),
    # its sessions stay, so its nodes can resume elsewhere.
    await first.close()
    await a.stop()
    await wait_until(lambda: not b.servicer.registry.mirrored("g", static), "a's serves to go")
    again = clients(b)
    assert await again.join("home", resume=resume) == vnetid
    assert (await again.rpc.register(static, "ssh", "127.0.0.1", 22, "")).serve.serveid == static
    back = await again.rpc.register(dynamic, "web", "127.0.0.1", 80, "")
    assert back.serve.serveid == dynamic
    assert not back.reassigned
    # Someone else presenting a made-up resume token gets a fresh vnetid.
    other = clients(b)
    assert await other.join("home", resume=(vnetid, "not-the-secret")) != vnetid


async def test_a_route_that_cannot_reach_the_store_refuses_clearly_then_recovers(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client], etcd: EtcdServer
) -> None:
    a, b = await clustered("a", lease_ttl=30), await clustered("b", lease_ttl=30)
    held = clients(a)
    await held.join("held")
    await etcd.stop()
    with pytest.raises(RouteUnavailable, match="cluster store is unavailable"):
        await clients(a).join("late")
    # The route itself keeps running: the session it had still answers.
    await held.rpc.ping(timeout=TIMEOUT)
    await etcd.start()

    async def joins() -> bool:
        try:
            await clients(a).join("later")
        except RouteUnavailable:
            return False
        return True

    await wait_until(joins, "joins to work again once etcd is back", TIMEOUT * 2)
    # Each route's watch came back too: a serve registered on b now shows on a.
    there = clients(b)
    await there.join("there")
    serveid = (await there.rpc.register(0, "web", "127.0.0.1", 80, "")).serve.serveid
    await wait_until(
        lambda: a.servicer.registry.mirrored("g", serveid) == "b", "a to follow b again", TIMEOUT
    )


async def test_a_fenced_route_stops_admitting_and_sends_its_nodes_away(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client], etcd: EtcdServer
) -> None:
    a = await clustered("a", lease_ttl=2)
    held = clients(a)
    await held.join("held")
    await etcd.stop()
    assert a.member is not None
    await wait_until(a.member.store.fenced.is_set, "the route to be fenced", TIMEOUT)
    await wait_until(lambda: not a.servicer.sessions, "its sessions to end")
    with pytest.raises(RouteUnavailable, match="lost its lease in the cluster store"):
        await clients(a).join("late")
    # Back once etcd is, and the old lease has expired: a new lease, admitting again.
    await etcd.start()

    async def admits() -> bool:
        try:
            await clients(a).join("later")
        except RouteUnavailable:
            return False
        return True

    await wait_until(admits, "the route to rejoin the store", TIMEOUT * 2)
    assert not a.member.store.fenced.is_set()


async def test_a_session_left_behind_on_the_old_route_ends_when_the_node_resumes_elsewhere(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client]
) -> None:
    a, b = await clustered("a"), await clustered("b")
    first = clients(a)
    vnetid = await first.join("home")
    resume = (vnetid, first.joined.resume_token)  # type: ignore[attr-defined]
    # The node lost a without a itself noticing (its stream still open) and resumed on b.
    again = clients(b)
    assert await again.join("home", resume=resume) == vnetid
    await wait_until(lambda: a.servicer.table.of_vnet(vnetid) is None, "a to end the stale one")
    # a now knows the node is on b.
    assert a.member is not None
    assert a.member.locate_vnet("g", vnetid) == f"127.0.0.1:{b.port}"


async def test_a_drained_route_of_a_cluster_sends_its_nodes_to_another_with_its_grace(
    clustered: MakeClustered, make_node: MakeNode
) -> None:
    a, b = await clustered("a"), await clustered("b")
    echo = await echo_server()
    use = free_port()
    routes = (RouteEndpoint("127.0.0.1", a.port), RouteEndpoint("127.0.0.1", b.port))

    def config(name: str, **kw: object) -> NodeConfig:
        return NodeConfig(
            path="(test)",
            route=routes[0],
            routes=routes,
            vnet=VnetConfig(name=name, group="g"),
            **kw,  # type: ignore[arg-type]
        )

    home = await make_node(
        config=config("home", serves=(ServeConfig("echo", echo.port, serveid=700),))
    )
    await make_node(config=config("office", uses=(UseConfig("echo", 700, port=use),)))
    await wait_until(lambda: echo_ok(use, 10_000), "the use through a")
    # A tunnel open through a when it is drained: it keeps working in the grace.
    reader, writer = await asyncio.open_connection("127.0.0.1", use)
    writer.write(b"before")
    assert await reader.readexactly(6) == b"before"
    drained = asyncio.create_task(a.admin.drain(30.0, "test"))
    await wait_until(lambda: len(b.servicer.sessions) == 2, "both nodes to move to b")
    writer.write(b"after the move")
    assert await reader.readexactly(14) == b"after the move"
    # New tunnels go through b, and b holds home's serve under the same serveid.
    await wait_until(
        lambda: (
            b.servicer.table.of_vnet(home.vnetid) is not None
            and b.servicer.registry.owns(home.vnetid, 700)
        ),
        "home's 700 registered on b itself",
    )
    body = pattern(500_000, seed=3)
    assert await echo_round_trip(use, body) == body
    writer.close()
    report = await asyncio.wait_for(drained, TIMEOUT)
    assert report.tunnels_reset == 0
    await echo.close()


async def test_concurrent_registrations_on_two_routes_get_distinct_serveids(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client]
) -> None:
    a, b = await clustered("a"), await clustered("b")
    nodes = [clients(route) for route in (a, b) for _ in range(10)]
    for i, node in enumerate(nodes):
        await node.join(f"n{i}")
    got = await asyncio.gather(
        *(n.rpc.register(0, f"s{i}{j}", "127.0.0.1", 80, "") for i, n in enumerate(nodes)
          for j in range(3))
    )  # fmt: skip
    assert len({r.serve.serveid for r in got}) == 60


async def test_what_the_store_missed_in_an_outage_is_written_when_it_is_back(
    clustered: MakeClustered, clients: Callable[[RunningRoute], Client], etcd: EtcdServer
) -> None:
    a, b = await clustered("a", lease_ttl=30), await clustered("b", lease_ttl=30)
    gone, stays = clients(a), clients(a)
    await gone.join("gone")
    await stays.join("stays")
    await gone.rpc.register(750, "ssh", "127.0.0.1", 22, "")
    await stays.rpc.register(751, "web", "127.0.0.1", 80, "")
    await wait_until(lambda: b.servicer.registry.mirrored("g", 751) == "a", "b to see a's")
    await etcd.stop()
    # A node leaves and a serve is withdrawn while the store cannot be told.
    await gone.rpc.leave()
    await stays.rpc.unregister(751)
    await etcd.start()
    # Once it is back, neither holds its static serveid in the group any more.
    await wait_until(
        lambda: (
            not b.servicer.registry.mirrored("g", 750)
            and not b.servicer.registry.mirrored("g", 751)
        ),
        "a's missed writes to reach the store",
        TIMEOUT * 2,
    )
    late = clients(b)
    await late.join("late")
    for serveid in (750, 751):
        assert (await late.rpc.register(serveid, "x", "127.0.0.1", 1, "")).serve.serveid == serveid
