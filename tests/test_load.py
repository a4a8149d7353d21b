"""Many tunnels at once, and nothing left behind afterwards."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.conftest import MakeNode, use_port, wait_until
from tests.services import (
    HEADER,
    digest,
    exchange,
    exchange_server,
    pattern,
    read_exactly_or_eof,
)
from vnet.core.config import ServeConfig, UseConfig
from vnet.route.server import RunningRoute


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(240)
async def test_1000_concurrent_tunnels_then_back_to_baseline(
    make_node: MakeNode, route: RunningRoute
) -> None:
    service = await exchange_server()
    await make_node("home", serves=[ServeConfig(key="x", port=service.port, serveid=701)])
    office = await make_node("office", uses=[UseConfig(key="x", serveid=701, port=0)])
    port = await use_port(office, "x")
    await exchange(port, 1, 1)  # warm: the first tunnel sets up lazily-made state
    await wait_until(lambda: not route.servicer.splices, "the warm-up tunnel to close")
    fds, tasks = _fds(), len(asyncio.all_tasks())

    opened = route.servicer.stats.opened
    all_open = asyncio.Event()

    async def one(i: int) -> None:
        up, down = 16_384 + i, 32_768 - i
        body = pattern(up, seed=i)
        async with asyncio.timeout(180):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEADER.pack(up, down) + body)
            await writer.drain()
            # Hold every connection open until all 1000 are tunnels at once.
            await all_open.wait()
            writer.write_eof()
            answer = await read_exactly_or_eof(reader)
            writer.close()
        assert answer[:down] == pattern(down)
        assert answer[down:] == digest(body)

    clients = [asyncio.create_task(one(i)) for i in range(1000)]
    await wait_until(lambda: len(route.servicer.splices) == 1000, "1000 tunnels open at once", 120)
    all_open.set()
    await asyncio.gather(*clients)
    assert route.servicer.stats.opened - opened == 1000
    assert service.connections == 1001
    await wait_until(lambda: not route.servicer.splices, "every tunnel to close", 60)
    await wait_until(lambda: _fds() <= fds, f"fds back to {fds} (now {_fds()})", 60)
    await wait_until(
        lambda: len(asyncio.all_tasks()) <= tasks,
        f"tasks back to {tasks} (now {len(asyncio.all_tasks())})",
        60,
    )
    assert route.servicer.stats.resets == 0
    await service.close()
