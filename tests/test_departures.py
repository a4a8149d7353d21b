"""How the route words a node's departure: "left" when it said so, "lost" when
its connection broke; and the node's words when the route forgot its session."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.conftest import MakeNode, MakeRoute, wait_until
from vnet.core.config import ServeConfig
from vnet.core.errors import RouteUnavailable, Unauthenticated
from vnet.node.client import RouteClient
from vnet.node.node import SESSION_FORGOTTEN, lost_words
from vnet.route.server import RunningRoute
from vnet.route.service import BAD_CREDENTIALS


def _route_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vnet.route.service"]


async def test_a_node_that_stops_left(
    make_node: MakeNode, route: RunningRoute, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vnet.route.service")
    node = await make_node("office", serves=[ServeConfig(key="a", port=9, serveid=701)])
    await node.stop()
    await wait_until(lambda: not route.servicer.sessions, "the session to end")
    gone = [x for x in _route_lines(caplog) if "withdrawn" in x]
    assert gone == ["vnet 01 (office) left group g; 1 serve(s) withdrawn"], gone


async def test_a_node_whose_connection_breaks_was_lost(
    route: RunningRoute, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vnet.route.service")
    client = RouteClient(f"127.0.0.1:{route.port}")
    await client.connect(10)
    await client.join("crashy", "g")

    async def read_control() -> None:
        # The call's own cancel, when the channel closes under it.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async for _ in client.control():
                pass

    control = asyncio.create_task(read_control())
    await wait_until(
        lambda: any(s.control_open for s in route.servicer.sessions.values()), "control"
    )
    # What a crashed process leaves: its connection closes, nothing is said.
    await client.close()
    await wait_until(lambda: not route.servicer.sessions, "the session to end")
    await control
    gone = [x for x in _route_lines(caplog) if "withdrawn" in x]
    assert gone == ["vnet 01 (crashy) dropped from group g: connection lost; 0 serve(s) withdrawn"]
    assert not any("left" in x for x in gone)


def test_a_forgotten_session_is_not_called_bad_credentials() -> None:
    refused = Unauthenticated(BAD_CREDENTIALS)
    # Join itself refused: the token is wrong, and the node says so.
    assert lost_words(refused, joined=False) == BAD_CREDENTIALS
    # Joined, then the session was unknown: the route restarted.
    assert lost_words(refused, joined=True) == SESSION_FORGOTTEN
    # The control stream's failure carries the status as its cause.
    control = RouteUnavailable(f"control stream ended: {refused}")
    control.__cause__ = refused
    assert lost_words(control, joined=True) == SESSION_FORGOTTEN
    assert "credentials" in lost_words(control, joined=False)
    assert lost_words(RouteUnavailable("refused"), joined=True) == "refused"


async def test_a_route_that_stops_is_said_to_have_stopped(
    make_route: MakeRoute, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    route = await make_route(stop_grace=0.1)
    node = await make_node("n", route=route)
    await route.stop()
    await wait_until(lambda: not node.connected, "the node to notice")
    await wait_until(
        lambda: any("lost the route" in r.getMessage() for r in caplog.records), "the log"
    )
    (lost,) = [r.getMessage() for r in caplog.records if "lost the route" in r.getMessage()]
    assert lost == "lost the route: the route stopped; reconnecting"
