"""The route's session rules through its servicer, on the route's own (injected) clock."""

from __future__ import annotations

import contextlib
import logging

import grpc
import pytest

from tests.conftest import MakeRoute, wait_until
from tests.rawclient import Raw, status_of
from vnetrpc.v1 import route_pb2 as pb


async def test_a_session_without_its_control_stream_expires_on_the_routes_clock(
    make_route: MakeRoute, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vnet.route.service")
    now = [500.0]
    # The route looks once a second (real time) and decides by its clock: a
    # minute of it passes here in moments.
    route = await make_route(join=60.0, stop_grace=0.2, clock=lambda: now[0])
    raw = Raw(route.port)
    quiet = await raw.join(None, group="g", name="quiet")
    talker = await raw.join(None, group="g", name="talker")
    control = raw.stub.Control(pb.ControlRequest(), metadata=raw.md(None, talker.session))
    await control.read()  # its snapshot: the stream is open
    # Not yet, however long the real wait: the route's clock has not moved on.
    now[0] += 59.0
    route.servicer.drop_uncontrolled()
    assert len(route.servicer.sessions) == 2
    now[0] += 2.0
    await wait_until(lambda: len(route.servicer.sessions) == 1, "the quiet session to expire")
    assert [s.vnet.name for s in route.servicer.sessions.values()] == ["talker"]
    code, _ = await status_of(raw.stub.Ping(pb.PingRequest(), metadata=raw.md(None, quiet.session)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert (await raw.stub.Ping(pb.PingRequest(), metadata=raw.md(None, talker.session))) == (
        pb.PingResponse(boot_id=route.servicer.boot_id)
    )
    lines = [r.getMessage() for r in caplog.records if "withdrawn" in r.getMessage()]
    assert lines == [
        "vnet 01 (quiet) dropped from group g: no control stream after join; 0 serve(s) withdrawn"
    ]
    control.cancel()
    with contextlib.suppress(grpc.aio.AioRpcError):
        await raw.close()
