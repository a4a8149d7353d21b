"""Route processes in a cluster, against a real etcd (harness/etcd.py): how they
start and refuse to start, as a user runs them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.etcd import EtcdServer
from tests.conftest import TIMEOUT, free_port
from tests.procs import Procs, command

TOKEN = "route-to-route-secret"


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
    route = await procs.route(port, "a", cluster_lines(etcd.url, "a", port))
    await route.wait_for_line("cluster: route a joined the store", TIMEOUT)
    # --check reads [cluster] (no warning that it is unused: it is used).
    code, out, err = await procs.run(command("vnet-route"), "--check", "a.ini")
    assert code == 0, err
    assert "not used yet" not in out + err
    twin = free_port()
    (procs.tmp / "twin.ini").write_text(
        f"[route]\nip=127.0.0.1\nport={twin}\n" + cluster_lines(etcd.url, "a", twin)
    )
    code, _, err = await procs.run(command("vnet-route"), "twin.ini")
    assert code != 0
    assert "cannot join the route cluster: route_id a is held by a live route" in err
    assert "Traceback" not in err


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
