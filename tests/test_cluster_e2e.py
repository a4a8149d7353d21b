"""Route processes in a cluster, against a real etcd (harness/etcd.py): how they
start and refuse to start, as a user runs them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.etcd import EtcdServer
from tests.conftest import TIMEOUT, free_port, wait_until
from tests.procs import Proc, Procs, command
from tests.services import (
    Server,
    echo_ok,
    echo_round_trip,
    echo_server,
    endless_source_server,
    pattern,
    read_until_reset,
    tcp_relay,
)
from vnet.core.errors import ServeIdTaken
from vnet.node.client import RouteClient

TOKEN = "route-to-route-secret"
# The nodes' backoff starts at 0.5 s; a dead route's lease in these tests is 3 s.
RECOVERY = 30.0
TTL = 3


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    (tmp_path / "etcd").mkdir()
    server = EtcdServer(tmp_path / "etcd")
    await server.start()
    yield server
    await server.stop()


def cluster_lines(etcd_url: str, route_id: str, port: int, ttl: int = 10) -> str:
    return (
        f"[cluster]\netcd={etcd_url}\nroute_id={route_id}\n"
        f"advertise=127.0.0.1:{port}\ntoken={TOKEN}\nlease_ttl={ttl}\n"
    )


async def test_a_clustered_route_starts_and_a_second_with_its_id_is_refused(
    procs: Procs, etcd: EtcdServer
) -> None:
    port = free_port()
    route = await procs.route(port, "a", cluster_lines(etcd.url, "a", port, TTL))
    await route.wait_for_line("cluster: route a joined the store", TIMEOUT)
    # --check reads [cluster] (no warning that it is unused: it is used).
    code, out, err = await procs.run(command("vnet-route"), "--check", "a.ini")
    assert code == 0, err
    assert "not used yet" not in out + err
    twin = free_port()
    (procs.tmp / "twin.ini").write_text(
        # Its own lease_ttl bounds how long it waits for the id (a crashed run's lease).
        f"[route]\nip=127.0.0.1\nport={twin}\n" + cluster_lines(etcd.url, "a", twin, 2)
    )
    code, _, err = await procs.run(command("vnet-route"), "twin.ini")
    assert code != 0
    assert "cannot join the route cluster: route_id a is held by a live route" in err
    assert "Traceback" not in err
    # Killed, it starts again at once: it waits out its own old lease.
    route.send(signal.SIGKILL)
    await route.wait(TIMEOUT)
    again = await procs.route(port, "a", cluster_lines(etcd.url, "a", port, TTL))
    await again.wait_for_line("cluster: route a joined the store", TIMEOUT * 2)
    assert "is still held (a crashed run's lease?)" in again.output()


async def test_a_route_whose_store_is_down_does_not_start(procs: Procs, tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    (tmp_path / "r.ini").write_text(
        f"[route]\nip=127.0.0.1\nport={port}\n"
        + cluster_lines(f"http://127.0.0.1:{dead}", "a", port)
    )
    code, _, err = await procs.run(command("vnet-route"), "r.ini", timeout=60)
    assert code != 0
    assert "cannot join the route cluster: the cluster store is unavailable" in err
    assert f"127.0.0.1:{dead}" in err
    assert "Traceback" not in err


# --- failures, with real route and node processes -------------------------------


async def cluster_of(
    procs: Procs,
    etcd_url: str,
    *route_ids: str,
    via: dict[str, str] | None = None,
    ttl: int = TTL,
) -> dict[str, tuple[int, Proc]]:
    """Routes as processes, each with [cluster]; via: route_id -> another etcd URL for it."""
    started = {}
    for route_id in route_ids:
        port = free_port()
        url = (via or {}).get(route_id, etcd_url)
        proc = await procs.route(port, f"route-{route_id}", cluster_lines(url, route_id, port, ttl))
        await proc.wait_for_line(f"cluster: route {route_id} joined the store", TIMEOUT)
        started[route_id] = (port, proc)
    return started


def routes_line(*ports: int) -> str:
    return "[route]\nroutes=" + ", ".join(f"127.0.0.1:{p}" for p in ports) + "\n"


async def serves_seen(port: int) -> dict[int, str]:
    """serveid -> vnetid, as a fresh session on the route at port lists the group's serves."""
    client = RouteClient(f"127.0.0.1:{port}")
    try:
        await client.join("observer", "team", timeout=TIMEOUT)
        return {s.serveid: s.vnetid for s in await client.list_serves(timeout=TIMEOUT)}
    finally:
        with contextlib.suppress(Exception):
            await client.leave()
        await client.channel.close()


@pytest.mark.timeout(120)
async def test_route_killed_its_nodes_rejoin_another_with_the_same_ids(
    procs: Procs, etcd: EtcdServer, tmp_path: Path
) -> None:
    """kill -9 of route a: home moves to b with its vnetid and serveids, office (on c)
    reaches it again through b; a tunnel that ran through a was reset, not truncated."""
    echo, source = await echo_server(), await endless_source_server()
    routes = await cluster_of(procs, etcd.url, "a", "b", "c")
    (a, route_a), (b, _), (c, _) = routes["a"], routes["b"], routes["c"]
    use, stream = free_port(), free_port()
    (tmp_path / "home.ini").write_text(
        routes_line(a, b) + "[vnet]\nname=home\ngroup=team\n"
        f"[serve.echo]\nserveid=700\nport={echo.port}\n[serve.web]\nport={echo.port}\n"
        f"[serve.stream]\nserveid=710\nport={source.port}\n"
    )
    (tmp_path / "office.ini").write_text(
        routes_line(c, b) + "[vnet]\nname=office\ngroup=team\n"
        f"[use.echo]\nserveid=700\nport={use}\n[use.stream]\nserveid=710\nport={stream}\n"
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await home.wait_for_line(f"joined route 127.0.0.1:{a} as vnet", TIMEOUT)
    await wait_until(lambda: echo_ok(use, 50_000), "office's use across c and a", interval=0.1)
    before = await serves_seen(c)
    home_vnetid = before[700]
    dynamic = [s for s, v in before.items() if v == home_vnetid and s < 500]
    assert len(dynamic) == 1
    # A tunnel open through a at the kill: an endless download, read until it breaks.
    reader, writer = await asyncio.open_connection("127.0.0.1", stream)
    assert await reader.read(1)

    route_a.send(signal.SIGKILL)
    killed = time.monotonic()
    async with asyncio.timeout(RECOVERY):
        await read_until_reset(reader)
    writer.close()
    await wait_until(lambda: echo_ok(use, 50_000), "office's use through b", RECOVERY, 0.1)
    took = time.monotonic() - killed
    body = pattern(2_000_000, seed=5)
    assert await echo_round_trip(use, body) == body
    after = await serves_seen(c)
    # Same vnetid, same static and dynamic serveids, now served from b.
    assert after[700] == home_vnetid
    assert after[710] == home_vnetid
    assert after[dynamic[0]] == home_vnetid
    assert f"joined route 127.0.0.1:{b}" in home.output()
    assert office.returncode is None
    print(f"office's use worked again {took:.1f} s after route a was killed")
    await echo.close()
    await source.close()


async def pair_across(
    procs: Procs, tmp_path: Path, home_routes: tuple[int, ...], office_routes: tuple[int, ...]
) -> tuple[int, Server, Proc, Proc]:
    """home serving an echo as serveid 700, office using it; (use port, echo, home, office)."""
    echo = await echo_server()
    use = free_port()
    (tmp_path / "home.ini").write_text(
        routes_line(*home_routes) + "[vnet]\nname=home\ngroup=team\n"
        f"[serve.echo]\nserveid=700\nport={echo.port}\n"
    )
    (tmp_path / "office.ini").write_text(
        routes_line(*office_routes) + "[vnet]\nname=office\ngroup=team\n"
        f"[use.echo]\nserveid=700\nport={use}\n"
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await wait_until(lambda: echo_ok(use, 50_000), "office's use to work", interval=0.1)
    return use, echo, home, office


@pytest.mark.timeout(120)
async def test_etcd_stopped_tunnels_flow_joins_fail_clearly_then_recover(
    procs: Procs, etcd: EtcdServer, tmp_path: Path
) -> None:
    # A lease longer than the outage: the routes are not fenced by it.
    routes = await cluster_of(procs, etcd.url, "a", "b", ttl=30)
    (a, route_a), (b, route_b) = routes["a"], routes["b"]
    use, echo, _, _ = await pair_across(procs, tmp_path, (a,), (b,))
    await etcd.stop()
    # Open tunnels and new ones keep working: the data path never asks the store.
    body = pattern(1_000_000, seed=9)
    assert await echo_round_trip(use, body) == body
    assert await echo_ok(use, 10_000)
    # A join fails with UNAVAILABLE naming the store, and nothing crashes.
    (tmp_path / "late.ini").write_text(routes_line(b) + "[vnet]\nname=late\ngroup=team\n")
    code, out, err = await procs.run(
        command("vnet"), "late.ini", "-c", "show serves", "--timeout", "5"
    )
    assert code != 0, out + err
    assert "the cluster store is unavailable" in out + err, out + err
    assert "Traceback" not in out + err
    await etcd.start()
    back = time.monotonic()

    async def joins() -> bool:
        code, _, _ = await procs.run(command("vnet"), "late.ini", "-c", "show serves")
        return code == 0

    await wait_until(joins, "joins to work again", RECOVERY, 0.5)
    print(f"a node joined again {time.monotonic() - back:.1f} s after etcd was back")
    assert route_a.returncode is None
    assert route_b.returncode is None
    await echo.close()


@pytest.mark.timeout(120)
async def test_a_route_cut_off_from_etcd_is_fenced_and_its_nodes_move(
    procs: Procs, etcd: EtcdServer, tmp_path: Path
) -> None:
    # Route a reaches etcd through a relay this test can cut; b reaches it directly.
    relay, black_hole = await tcp_relay(etcd.endpoint[1])
    routes = await cluster_of(
        procs, etcd.url, "a", "b", via={"a": f"http://127.0.0.1:{relay.port}"}
    )
    (a, route_a), (b, _) = routes["a"], routes["b"]
    use, echo, home, _ = await pair_across(procs, tmp_path, (a, b), (b,))
    await home.wait_for_line(f"joined route 127.0.0.1:{a} as vnet", TIMEOUT)
    before = await serves_seen(b)
    # The partition: what is open is black-holed, nothing new gets through.
    relay.server.close()
    black_hole()
    cut = time.monotonic()
    await route_a.wait_for_line("cluster: route a is fenced", TIMEOUT * 2)
    await home.wait_for_line(f"joined route 127.0.0.1:{b}", RECOVERY)
    await wait_until(lambda: echo_ok(use, 50_000), "the use through b alone", RECOVERY, 0.1)
    took = time.monotonic() - cut
    assert (await serves_seen(b))[700] == before[700]
    # The fenced route refuses new nodes, with the reason.
    (tmp_path / "late.ini").write_text(routes_line(a) + "[vnet]\nname=late\ngroup=team\n")
    code, out, err = await procs.run(
        command("vnet"), "late.ini", "-c", "show serves", "--timeout", "5"
    )
    assert code != 0
    assert "lost its lease in the cluster store" in out + err
    print(f"route a fenced and home back through b {took:.1f} s after the partition")
    await echo.close()
    await relay.close()


async def test_two_nodes_racing_for_one_static_serveid_on_two_routes_one_wins(
    procs: Procs, etcd: EtcdServer
) -> None:
    routes = await cluster_of(procs, etcd.url, "a", "b", ttl=30)
    clients = [RouteClient(f"127.0.0.1:{routes[r][0]}") for r in ("a", "b")]
    try:
        for i, client in enumerate(clients):
            await client.join(f"racer{i}", "team", timeout=TIMEOUT)
        for serveid in range(800, 820):
            results = await asyncio.gather(
                *(c.register(serveid, "race", "127.0.0.1", 1000 + serveid, "") for c in clients),
                return_exceptions=True,
            )
            won = [r for r in results if not isinstance(r, BaseException)]
            lost = [r for r in results if isinstance(r, ServeIdTaken)]
            assert len(won) == 1, results
            assert len(lost) == 1, results
            assert "is already registered by vnet" in str(lost[0])
    finally:
        for client in clients:
            await client.channel.close()
