"""The route cluster's store against a real etcd (harness/etcd.py, started per test
on free loopback ports with its own data dir): allocation races, a dead
route's lease, watches, etcd stopped and back, fencing, resume."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from harness.etcd import EtcdServer, EtcdTlsFiles, etcd_binary
from harness.procs import spawn, unbuffered_env
from tests.conftest import TIMEOUT, wait_until
from vnet.cluster.etcd import Etcd, EtcdAccess, EtcdEndpoint
from vnet.cluster.store import ClusterStore, RouteIdTaken, ServeEvent
from vnet.core.cluster_keys import SessionRecord
from vnet.core.errors import Fenced, InvalidRequest, NotFound, ServeIdTaken, StoreUnavailable

MakeStore = Callable[..., Awaitable[ClusterStore]]


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


def access(etcd: EtcdServer, call_timeout: float = 3) -> EtcdAccess:
    return EtcdAccess((EtcdEndpoint(*etcd.endpoint),), call_timeout=call_timeout)


@pytest.fixture
async def make_store(etcd: EtcdServer) -> AsyncIterator[MakeStore]:
    """Started stores, one per route id; all closed (leases revoked) at the end."""
    started: list[ClusterStore] = []

    async def make(route_id: str, lease_ttl: int = 10, resume_ttl: int = 60) -> ClusterStore:
        store = ClusterStore(
            access(etcd),
            route_id,
            f"127.0.0.1:{7000 + len(started)}",
            lease_ttl=lease_ttl,
            resume_ttl=resume_ttl,
        )
        await store.start()
        started.append(store)
        return store

    yield make
    for store in started:
        await store.close()


class Events:
    """A store's serve events, collected by a task from a snapshot's revision on."""

    def __init__(self) -> None:
        self.seen: list[ServeEvent] = []
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self, store: ClusterStore) -> None:
        _, revision = await store.serves_snapshot()

        async def run() -> None:
            async for event in store.serve_events(revision + 1):
                self.seen.append(event)

        self.task = asyncio.create_task(run())

    def ended(self) -> bool:
        # Read, so that an ended watch's error is retrieved (asyncio warns otherwise).
        if self.task is None or not self.task.done():
            return False
        self.error = self.task.exception()
        return True

    def has(self, kind: str, serveid: int) -> bool:
        return any(e.kind == kind and e.record.serve.serveid == serveid for e in self.seen)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, Fenced):
                await self.task


async def test_two_routes_racing_for_a_static_serveid_exactly_one_wins(
    make_store: MakeStore,
) -> None:
    a, b = await make_store("a"), await make_store("b")
    va, vb = await a.add_vnet("office", "g"), await b.add_vnet("home", "g")
    # Twenty races at once on twenty serveids: each has exactly one winner.
    serveids = range(600, 620)
    results = await asyncio.gather(
        *(
            store.register(vnet, sid, f"s{sid}", "127.0.0.1", 22)
            for sid in serveids
            for store, vnet in ((a, va), (b, vb))
        ),
        return_exceptions=True,
    )
    for i, sid in enumerate(serveids):
        pair = results[2 * i : 2 * i + 2]
        wins = [r for r in pair if not isinstance(r, BaseException)]
        losses = [r for r in pair if isinstance(r, BaseException)]
        assert len(wins) == 1, (sid, pair)
        assert len(losses) == 1, (sid, pair)
        assert isinstance(losses[0], ServeIdTaken), (sid, pair)
        assert f"static serveid {sid} is already registered" in str(losses[0])
        winner = wins[0].serve.vnetid
        # The first keeps it: the store, as seen from either route, agrees.
        assert (await a.find("g", sid)).serve.vnetid == winner
        assert (await b.find("g", sid)).serve.vnetid == winner
    # A static serveid is per group: another group takes 600 freely.
    other = await b.add_vnet("lab", "h")
    assert (await b.register(other, 600, "ssh", "127.0.0.1", 22)).serve.serveid == 600


async def test_a_dynamic_serveid_taken_elsewhere_is_reassigned(make_store: MakeStore) -> None:
    a, b = await make_store("a"), await make_store("b")
    va, vb = await a.add_vnet("office", "g"), await b.add_vnet("home", "g")
    first, second = await asyncio.gather(
        a.register(va, 7, "web", "127.0.0.1", 80), b.register(vb, 7, "web", "127.0.0.1", 80)
    )
    ids = {first.serve.serveid, second.serve.serveid}
    assert 7 in ids
    assert len(ids) == 2
    assert [first.reassigned, second.reassigned].count(True) == 1
    # Its own serve again under the same serveid replaces it (a re-registration).
    again = await a.register(va, first.serve.serveid, "web2", "127.0.0.1", 81)
    assert again.replaced == first.serve
    assert not again.reassigned
    # 0 asks for any free dynamic one.
    assert (await a.register(va, 0, "x", "127.0.0.1", 1)).serve.serveid not in ids


async def test_vnetids_are_unique_across_routes(make_store: MakeStore) -> None:
    a, b = await make_store("a"), await make_store("b")
    vnets = await asyncio.gather(
        *(store.add_vnet(f"n{i}", "g") for i in range(10) for store in (a, b))
    )
    assert len({v.vnetid for v in vnets}) == 20
    assert {(await a.node(v.vnetid)).route_id for v in vnets} == {"a", "b"}
    with pytest.raises(InvalidRequest, match="name"):
        await a.add_vnet("x" * 65, "g")
    with pytest.raises(InvalidRequest, match="port"):
        await a.register(vnets[0], 0, "web", "127.0.0.1", 0)
    # A node's old vnetid is given back when free, and not when another holds it.
    assert (await b.add_vnet("back", "g", wanted="77")).vnetid == "77"
    assert (await a.add_vnet("thief", "g", wanted="77")).vnetid != "77"


async def test_a_join_storm_on_two_routes_gets_unique_vnetids_without_losing_races(
    make_store: MakeStore,
) -> None:
    # 200 at once: with one counter write per join, most would lose every round.
    a, b = await make_store("a"), await make_store("b")
    vnets = await asyncio.gather(
        *(store.add_vnet(f"n{i}", "g") for i in range(100) for store in (a, b))
    )
    assert len({v.vnetid for v in vnets}) == 200


async def test_a_route_id_is_held_by_one_live_route(
    make_store: MakeStore, etcd: EtcdServer
) -> None:
    first = await make_store("a")
    twin = ClusterStore(access(etcd), "a", "127.0.0.1:9")
    with pytest.raises(RouteIdTaken, match="route_id a is held by a live route"):
        await twin.start()
    await twin.close()
    assert [r.route_id for r in await first.routes()] == ["a"]
    await first.close()  # revokes: the id is free at once
    again = await make_store("a")
    assert [r.route_id for r in await again.routes()] == ["a"]


async def test_watches_deliver_the_other_routes_adds_and_removes(make_store: MakeStore) -> None:
    a, b = await make_store("a"), await make_store("b")
    events = Events()
    await events.start(b)
    try:
        va = await a.add_vnet("office", "g")
        web = await a.register(va, 0, "web", "127.0.0.1", 80)
        ssh = await a.register(va, 522, "ssh", "127.0.0.1", 22)
        await wait_until(lambda: events.has("added", 522), "b to see a's serve 522 added")
        await a.unregister(va, web.serve.serveid)
        await wait_until(lambda: events.has("removed", web.serve.serveid), "b to see web go")
        # A node leaving takes its serves with it, and the watch says so.
        assert [s.serveid for s in await a.remove_vnet(va.vnetid)] == [ssh.serve.serveid]
        await wait_until(lambda: events.has("removed", 522), "b to see ssh go with its node")
        with pytest.raises(NotFound):
            await b.node(va.vnetid)
        # b's own changes are not echoed back to b.
        vb = await b.add_vnet("home", "g")
        await b.register(vb, 600, "own", "127.0.0.1", 1)
        await a.register(await a.add_vnet("late", "g"), 601, "marker", "127.0.0.1", 1)
        await wait_until(lambda: events.has("added", 601), "b to see a's marker")
        assert not events.has("added", 600)
        added = [e for e in events.seen if e.record.serve.serveid == 522]
        assert [e.kind for e in added] == ["added", "removed"]
        assert all(e.record.route_id == "a" for e in events.seen)
    finally:
        await events.stop()


async def test_a_killed_route_leaves_the_store_within_its_ttl(
    make_store: MakeStore, etcd: EtcdServer, tmp_path: Path
) -> None:
    ttl = 2
    b = await make_store("b")
    events = Events()
    await events.start(b)
    holder = spawn(
        "holder",
        [
            sys.executable,
            "-m",
            "tests.cluster_holder",
            f"{etcd.endpoint[0]}:{etcd.endpoint[1]}",
            "a",
            str(ttl),
            "60",
        ],
        tmp_path / "holder.log",
        Path.cwd(),
        env=unbuffered_env(),
    )
    try:
        await holder.wait_for_line("ready", TIMEOUT)
        line = next(x for x in holder.output().splitlines() if x.startswith("ready"))
        fields = dict(kv.split("=") for kv in line.split()[1:])
        vnetid, serveid = fields["vnetid"], int(fields["serveid"])
        await wait_until(lambda: events.has("added", serveid), "b to see a's serve")
        assert (await b.node(vnetid)).route_id == "a"
        holder.send(signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: events.has("removed", serveid), "a's serve to expire", ttl * 5)
        gone_after = time.monotonic() - killed
        with pytest.raises(NotFound):
            await b.node(vnetid)
        assert await b.routes() == [r for r in await b.routes() if r.route_id == "b"]
        print(f"a's entries vanished {gone_after:.2f} s after SIGKILL (lease ttl {ttl} s)")
        # The session outlives the route (its lease is the long one): the node
        # resumes on b with its vnetid and its dynamic serveid.
        session = await b.load_session("resume-secret")
        assert session is not None
        assert session.vnet.vnetid == vnetid
        await b.take_over_vnet(session.vnet)
        assert (await b.node(vnetid)).route_id == "b"
        back = await b.register(session.vnet, session.serveids[0], "ssh", "127.0.0.1", 22)
        assert back.serve.serveid == serveid
        assert not back.reassigned
    finally:
        await holder.stop(signal.SIGKILL)
        await events.stop()


async def test_resume_takes_a_node_over_before_the_old_route_expires(
    make_store: MakeStore,
) -> None:
    a, b = await make_store("a"), await make_store("b")
    vnet = await a.add_vnet("office", "g")
    reg = await a.register(vnet, 9, "web", "127.0.0.1", 80)
    await a.save_session("secret", SessionRecord(vnet, (9,)))
    session = await b.load_session("secret")
    assert session == SessionRecord(vnet, (9,))
    assert await b.load_session("another") is None
    await b.take_over_vnet(vnet)
    # Its own serveid comes back at once: same vnetid, so it replaces a's entry.
    moved = await b.register(vnet, 9, "web", "127.0.0.1", 80)
    assert moved.serve.serveid == 9
    assert moved.replaced == reg.serve
    assert (await a.find("g", 9)).route_id == "b"
    # a, seeing the node leave late, removes nothing: the node is b's now.
    assert await a.remove_vnet(vnet.vnetid) == []
    assert (await b.node(vnet.vnetid)).route_id == "b"
    await b.drop_session("secret")
    assert await b.load_session("secret") is None


async def test_etcd_stopped_fails_clearly_then_recovers(
    make_store: MakeStore, etcd: EtcdServer
) -> None:
    # A long lease: this test is about etcd's absence, not about fencing.
    a = await make_store("a", lease_ttl=60)
    vnet = await a.add_vnet("office", "g")
    events = Events()
    await events.start(a)
    await etcd.stop()
    down = r"the cluster store is unavailable: etcd at http://127\.0\.0\.1:\d+ cannot be reached"
    with pytest.raises(StoreUnavailable, match=down):
        await a.add_vnet("home", "g")
    with pytest.raises(StoreUnavailable, match=down):
        await a.register(vnet, 600, "ssh", "127.0.0.1", 22)
    # The watch ends with the same clear error, so the route can resume it.
    await wait_until(events.ended, "the watch to end")
    assert isinstance(events.error, StoreUnavailable)
    assert not a.fenced.is_set()

    await etcd.start()

    async def works() -> bool:
        try:
            await a.register(vnet, 600, "ssh", "127.0.0.1", 22)
        except StoreUnavailable:
            return False
        return True

    await wait_until(works, "the store to work again", TIMEOUT * 3, interval=0.1)
    assert (await a.find("g", 600)).serve.vnetid == vnet.vnetid
    assert (await a.add_vnet("home", "g")).vnetid != vnet.vnetid
    assert not a.fenced.is_set()


async def test_a_call_whose_connection_is_closed_under_it_fails_as_unavailable() -> None:
    # A member that takes the connection and never answers: the call stays in flight.
    held: list[asyncio.StreamWriter] = []
    hole = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", 0)
    port = int(hole.sockets[0].getsockname()[1])
    etcd = Etcd(EtcdAccess((EtcdEndpoint("127.0.0.1", port),), call_timeout=TIMEOUT * 3))
    try:
        call = asyncio.create_task(etcd.call("read a key", "get", b"key"))
        await wait_until(lambda: held, "the call to reach the member")
        # What another call does when it finds the member unavailable (_next_member):
        # grpc.aio cancels the calls in flight on the closed channel. The route's
        # handler of this one must get a store error, not a cancel (which gRPC takes
        # for its own client going away: that client was never answered).
        await etcd.close()
        with pytest.raises(StoreUnavailable, match="to read a key"):
            await asyncio.wait_for(call, TIMEOUT)
    finally:
        for writer in held:
            writer.close()
        hole.close()


async def test_a_cancelled_caller_is_still_cancelled() -> None:
    held: list[asyncio.StreamWriter] = []
    hole = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", 0)
    port = int(hole.sockets[0].getsockname()[1])
    etcd = Etcd(EtcdAccess((EtcdEndpoint("127.0.0.1", port),), call_timeout=TIMEOUT * 3))
    try:
        call = asyncio.create_task(etcd.call("read a key", "get", b"key"))
        await wait_until(lambda: held, "the call to reach the member")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, TIMEOUT)
    finally:
        await etcd.close()
        for writer in held:
            writer.close()
        hole.close()


async def test_a_route_cut_off_past_its_lease_is_fenced(
    make_store: MakeStore, etcd: EtcdServer
) -> None:
    a = await make_store("a", lease_ttl=2)
    vnet = await a.add_vnet("office", "g")
    await etcd.stop()
    await wait_until(a.fenced.is_set, "a to fence itself", TIMEOUT * 2)
    await etcd.start()
    # Fenced for good: etcd back does not make it admit again.
    with pytest.raises(Fenced, match="route a lost its lease"):
        await a.add_vnet("home", "g")
    with pytest.raises(Fenced):
        await a.register(vnet, 600, "ssh", "127.0.0.1", 22)
    # Its entries expire in etcd too, and its id is free for a new start.
    b = await make_store("b")

    async def a_gone() -> bool:
        try:
            await b.node(vnet.vnetid)
        except (NotFound, StoreUnavailable):
            return True
        return False

    await wait_until(a_gone, "a's node to expire", TIMEOUT * 3, interval=0.1)
    assert [r.route_id for r in await b.routes()] == ["b"]


async def test_the_store_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("route-a")
    files = {}
    for name, blob in (
        ("ca", ca.cert_pem),
        ("server-cert", server.cert_chain_pems[0]),
        ("server-key", server.private_key_pem),
        ("client-cert", client.cert_chain_pems[0]),
        ("client-key", client.private_key_pem),
    ):
        files[name] = tmp_path / f"{name}.pem"
        blob.write_to_path(str(files[name]))
    tls = EtcdTlsFiles(
        files["server-cert"],
        files["server-key"],
        files["ca"],
        files["client-cert"],
        files["client-key"],
    )
    etcd = EtcdServer(tmp_path, tls=tls)
    await etcd.start()
    endpoint = (EtcdEndpoint(*etcd.endpoint),)
    good = EtcdAccess(
        endpoint,
        tls=True,
        ca=files["ca"].read_bytes(),
        cert=files["client-cert"].read_bytes(),
        key=files["client-key"].read_bytes(),
        call_timeout=3,
    )
    store = ClusterStore(good, "a", "127.0.0.1:7750")
    try:
        await store.start()
        vnet = await store.add_vnet("office", "g")
        assert (await store.register(vnet, 600, "ssh", "127.0.0.1", 22)).serve.serveid == 600
        # No client certificate: etcd refuses the handshake, and the error says
        # which store and which URL.
        bare = ClusterStore(
            EtcdAccess(endpoint, tls=True, ca=good.ca, call_timeout=3), "b", "127.0.0.1:7751"
        )
        with pytest.raises(StoreUnavailable, match=r"etcd at https://127\.0\.0\.1:\d+"):
            await bare.start()
        await bare.close()
    finally:
        await store.close()
        await etcd.stop()


async def test_the_store_with_etcd_user_and_password(etcd: EtcdServer) -> None:
    etcdctl = str(Path(etcd_binary()).with_name("etcdctl"))
    for args in (
        ["user", "add", "root:root-pass"],
        ["user", "add", "vnet:vnet-pass"],
        ["user", "grant-role", "vnet", "root"],
        ["auth", "enable"],
    ):
        run = await asyncio.create_subprocess_exec(
            etcdctl,
            f"--endpoints={etcd.url}",
            *(["--user=root:root-pass"] if args[0] != "user" or args[1] != "add" else []),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(run.communicate(), TIMEOUT)
        assert run.returncode == 0, (args, out)
    endpoint = (EtcdEndpoint(*etcd.endpoint),)
    store = ClusterStore(
        EtcdAccess(endpoint, user="vnet", password="vnet-pass", call_timeout=3), "a", "h:1"
    )
    wrong = ClusterStore(
        EtcdAccess(endpoint, user="vnet", password="nope", call_timeout=3), "b", "h:2"
    )
    try:
        await store.start()
        vnet = await store.add_vnet("office", "g")
        assert (await store.register(vnet, 0, "web", "127.0.0.1", 80)).serve.serveid == 1
        with pytest.raises(
            StoreUnavailable, match="authentication failed, invalid user ID or password"
        ):
            await wrong.start()
    finally:
        await store.close()
        await wrong.close()
