"""Resilience with the real commands: route restarts, memory under a stalled reader."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, free_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.services import (
    echo_ok,
    echo_server,
    endless_source_server,
    exchange,
    exchange_server,
)
from vnet.node.client import RouteClient

pytestmark = pytest.mark.e2e

# Restarted routes are reached again within this (the nodes' backoff tops at 15 s).
RECOVERY = 30.0


async def _until_echo_works(port: int, within: float) -> float:
    """Seconds until an echo through 127.0.0.1:port works (for the log)."""
    start = time.monotonic()
    await wait_until(lambda: echo_ok(port, 50_000), f"127.0.0.1:{port} to work again", within, 0.1)
    return time.monotonic() - start


async def _serves(route_port: int) -> list[tuple[int, str]]:
    client = RouteClient(f"127.0.0.1:{route_port}")
    try:
        await client.connect(TIMEOUT)
        await client.join("watcher", "team")
        return [(s.serveid, s.name) for s in await client.list_serves()]
    finally:
        await client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful"])
async def test_route_restart_with_several_nodes(
    procs: Procs, tmp_path: Path, how: signal.Signals
) -> None:
    echo = await echo_server()
    port = free_port()
    route = await procs.route(port)
    (tmp_path / "home.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=home\ngroup=team\n[serve.ssh]\nserveid=700\nport={echo.port}\n"
            f"[serve.web]\nport={echo.port}\n",
        )
    )
    uses = {}
    for name in ("office", "laptop"):
        uses[name] = free_port()
        (tmp_path / f"{name}.ini").write_text(
            node_ini(
                port,
                f"[vnet]\nname={name}\ngroup=team\n[use.ssh]\nserveid=700\nport={uses[name]}\n",
            )
        )
    nodes = [await procs.start("home", command("vnet"), "home.ini")]
    for name in uses:
        nodes.append(await procs.start(name, command("vnet"), f"{name}.ini"))
    for use in uses.values():
        await _until_echo_works(use, TIMEOUT)
    before = await _serves(port)
    assert sorted(before) == [(1, "web"), (700, "ssh")]

    if how == signal.SIGKILL:
        await route.stop(signal.SIGKILL)
    else:
        assert await route.stop(signal.SIGTERM) == 0
    await nodes[1].wait_for_line("lost the route")
    route = await procs.route(port)
    took = max([await _until_echo_works(use, RECOVERY) for use in uses.values()])
    # Every node re-registered once: the same serveids, no duplicates.
    assert sorted(await _serves(port)) == sorted(before)
    for node in nodes:
        assert "reconnected after" in node.output()
        assert node.proc.returncode is None
    print(f"recovered within {took:.1f}s")
    await echo.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
async def test_a_stalled_reader_holds_bounded_memory_and_others_go_on(
    procs: Procs, tmp_path: Path
) -> None:
    # The stalled tunnel's service pushes as fast as it can, 256 MiB worth;
    # flow control must stop it early, so the route holds a bounded amount
    # whatever the service offers. Meanwhile another tunnel moves 64 MiB
    # each way byte-exact and ping answers. (Rates and latencies are measured
    # by `make bench`, not asserted here: this machine is shared.)
    source = await endless_source_server()
    xchg = await exchange_server()
    port = free_port()
    route = await procs.route(port)
    stall_use, xchg_use = free_port(), free_port()
    (tmp_path / "home.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=home\n[serve.src]\nserveid=701\nport={source.port}\n"
            f"[serve.x]\nserveid=702\nport={xchg.port}\n",
        )
    )
    (tmp_path / "office.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=office\n[use.src]\nserveid=701\nport={stall_use}\n"
            f"[use.x]\nserveid=702\nport={xchg_use}\n",
        )
    )
    await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{xchg_use}")
    await office.wait_for_line(f"listening on 127.0.0.1:{stall_use}")
    baseline = _rss_kib(route.proc.pid)
    async with asyncio.timeout(120):
        reader, writer = await asyncio.open_connection("127.0.0.1", stall_use)
        await reader.readexactly(1 << 20)
        # Now nobody reads it; give the pipeline time to fill, sampling memory.
        peak = baseline
        for _ in range(20):
            await exchange(xchg_use, 4 << 20, 4 << 20)
            peak = max(peak, _rss_kib(route.proc.pid))
        await exchange(xchg_use, 64 << 20, 64 << 20)
        peak = max(peak, _rss_kib(route.proc.pid))
        watcher = RouteClient(f"127.0.0.1:{port}")
        await watcher.connect(TIMEOUT)
        await watcher.join("w", "default")
        assert await watcher.ping() < TIMEOUT
        await watcher.close()
        # The stalled tunnel is intact: it reads on where it stopped.
        await reader.readexactly(32 << 20)
        writer.close()
    grown_mib = (peak - baseline) / 1024
    print(f"route RSS {baseline / 1024:.0f} MiB -> peak {peak / 1024:.0f} MiB")
    assert grown_mib < 96, f"route memory grew {grown_mib:.0f} MiB with one stalled reader"
    await source.close()
    await xchg.close()
