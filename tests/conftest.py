"""Fixtures, one per kind of process, each stopping what it started when the
test ends (failed or not): in-process routes on 127.0.0.1 (make_route, and
the plain `route`), nodes joined to them (make_node), and the real commands
as subprocesses (procs)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.procs import Procs
from tests.services import close_left_open
from vnet.core.config import (
    NodeConfig,
    RouteEndpoint,
    RouteLimits,
    ServeConfig,
    UseConfig,
    VnetConfig,
)
from vnet.node.client import NodeCredentials
from vnet.node.node import Node, NodeTimeouts
from vnet.route.security import RouteSecurity
from vnet.route.server import RouteTimeouts, RunningRoute, start_route

# Every wait in the tests is a multiple of this.
TIMEOUT = 10.0


async def wait_until(
    predicate: Callable[[], object],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = 0.01,
) -> None:
    """Poll predicate until it is true; fail naming `what` at the deadline.

    predicate may be async (a coroutine function): each poll is then awaited,
    for conditions only a call can tell (a list from the route, a round trip).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


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


@pytest.fixture(autouse=True)
def _services_closed() -> Iterator[None]:
    """After every test, close the services (tests/services.py) it left open
    because it failed before its own close(): a failure is reported once, by
    its own test, not again as a ResourceWarning in whichever test is running
    when the loop finds the socket. Autouse, so set up first and torn down
    last: after the nodes and routes that used the services have stopped."""
    yield
    close_left_open()


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Procs]:
    """The real commands as subprocesses, all stopped when the test ends."""
    running = Procs(tmp_path)
    yield running
    await running.stop_all()


class MakeRoute:
    """Starts in-process routes (make_route fixture); stop_all() ends them.

    make_route(port=0, ip=..., security=..., limits=..., metrics=..., clock=..., **timeouts):
    the timeouts are RouteTimeouts fields, over join and accept of TIMEOUT and a
    stop_grace of 0.5 s. A test may stop a route itself (RunningRoute.stop is
    idempotent, after an abrupt `server.stop(None)` too) and start another on
    the same port with make_route(old.port).
    """

    def __init__(self) -> None:
        self.started: list[RunningRoute] = []

    async def __call__(
        self,
        port: int = 0,
        *,
        ip: str = "127.0.0.1",
        security: RouteSecurity | None = None,
        limits: RouteLimits | None = None,
        metrics: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        **timeouts: float,
    ) -> RunningRoute:
        values = {"join": TIMEOUT, "accept": TIMEOUT, "stop_grace": 0.5, **timeouts}
        running = await start_route(
            RouteEndpoint(ip, port), RouteTimeouts(**values), security, limits, metrics, clock
        )
        self.started.append(running)
        return running

    async def first(self) -> RunningRoute:
        """The test's first route (the `route` fixture's, if it has one), or a new one."""
        return self.started[0] if self.started else await self()

    async def stop_all(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for running in self.started:
                stack.push_async_callback(running.stop)


@pytest.fixture
async def make_route() -> AsyncIterator[MakeRoute]:
    """Routes on 127.0.0.1, all stopped when the test ends, failed or not."""
    routes = MakeRoute()
    yield routes
    await routes.stop_all()


@pytest.fixture
async def route(make_route: MakeRoute) -> RunningRoute:
    """The one route most tests need (make_route stops it)."""
    return await make_route()


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(make_route: MakeRoute) -> AsyncIterator[MakeNode]:
    """Starts nodes; all are stopped when the test ends (last first), before
    the routes: make_route is set up first, so it is torn down last.

    A node joins the test's first route (the `route` fixture's, if it asked
    for one; else one started now) unless given route= (a RunningRoute or a
    port), or a whole config=. start=False only builds it (run_script starts
    it); a node whose start fails is stopped too.
    """
    nodes = contextlib.AsyncExitStack()

    async def make(
        name: str = "node",
        group: str = "g",
        serves: Sequence[ServeConfig] = (),
        uses: Sequence[UseConfig] = (),
        vnet: VnetConfig | None = None,
        *,
        route: RunningRoute | int | None = None,
        config: NodeConfig | None = None,
        timeouts: NodeTimeouts | None = None,
        credentials: NodeCredentials | None = None,
        start: bool = True,
        autostart: bool = True,
    ) -> Node:
        if config is None:
            if route is None:
                route = await make_route.first()
            port = route if isinstance(route, int) else route.port
            config = NodeConfig(
                path="(test)",
                route=RouteEndpoint("127.0.0.1", port),
                vnet=vnet or VnetConfig(name=name, group=group),
                serves=tuple(serves),
                uses=tuple(uses),
            )
        node = Node(
            config, timeouts or NodeTimeouts(connect=TIMEOUT, target_connect=TIMEOUT), credentials
        )
        nodes.push_async_callback(node.stop)
        if start:
            await node.start(autostart=autostart)
        return node

    async with nodes:
        yield make


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
