"""Fixtures: an in-process route on 127.0.0.1 port 0, and nodes joined to it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from tests.procs import Procs
from vnet.core.config import NodeConfig, RouteConfig, ServeConfig, UseConfig, VnetConfig
from vnet.node.node import Node, NodeTimeouts
from vnet.route.server import RouteTimeouts, RunningRoute, start_route

# Every wait in the tests is a multiple of this.
TIMEOUT = 10.0


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Poll predicate until it is true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A port that was free a moment ago (for configs that need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    """The real commands as subprocesses, all stopped when the test ends."""
    running = Procs(tmp_path)
    yield running
    await running.stop_all()


@pytest.fixture
async def route() -> AsyncIterator[RunningRoute]:
    running = await start_route(
        RouteConfig("127.0.0.1", 0), RouteTimeouts(join=TIMEOUT, accept=TIMEOUT, stop_grace=0.5)
    )
    yield running
    await running.stop()


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(route: RunningRoute) -> AsyncIterator[MakeNode]:
    nodes: list[Node] = []

    async def make(
        name: str = "node",
        group: str = "g",
        serves: Sequence[ServeConfig] = (),
        uses: Sequence[UseConfig] = (),
        vnet: VnetConfig | None = None,
    ) -> Node:
        config = NodeConfig(
            path="(test)",
            route=RouteConfig("127.0.0.1", route.port),
            vnet=vnet or VnetConfig(name=name, group=group),
            serves=tuple(serves),
            uses=tuple(uses),
        )
        node = Node(config, NodeTimeouts(connect=TIMEOUT, target_connect=TIMEOUT))
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()


async def use_port(node: Node, key: str) -> int:
    """The local port of a use, once it listens."""
    await wait_until(lambda: node.uses[key].port is not None, f"[use.{key}] to listen")
    port = node.uses[key].port
    assert port is not None
    return port


async def home_and_office(
    make_node: MakeNode, serves: Sequence[tuple[str, int, int]]
) -> tuple[Node, dict[str, int]]:
    """A node "home" serving each (key, port, serveid) and a node "office" using them all
    on free ports; returns office and its use ports by key, once all listen."""
    await make_node(
        "home",
        serves=[ServeConfig(key=key, port=port, serveid=sid) for key, port, sid in serves],
    )
    office = await make_node(
        "office", uses=[UseConfig(key=key, serveid=sid, port=0) for key, _, sid in serves]
    )
    return office, {key: await use_port(office, key) for key, _, _ in serves}
