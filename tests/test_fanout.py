"""Serve changes to control streams (vnet.route.fanout), join back-pressure and its hint.

A raw client (the .proto only) applies what its control stream brings, batches or single
events, and must end up with exactly what ListServes says; a stream far behind gets one
snapshot; a Join refused as busy carries a retry hint that the node's error keeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.conftest import TIMEOUT, MakeRoute, wait_until
from tests.rawclient import Raw
from vnet import wire
from vnet.core.errors import Busy
from vnet.core.registry import Registry
from vnet.route.admission import HINT_MAX, JoinGate
from vnet.route.fanout import Group
from vnetrpc.v1 import route_pb2 as pb


class View:
    """What a node knows of its group's serves, from its control stream alone."""

    def __init__(self) -> None:
        self.serves: dict[int, str] = {}
        self.messages = 0
        self.kinds: set[str] = set()

    def apply(self, event: Any) -> None:
        self.messages += 1
        kind = event.WhichOneof("event")
        self.kinds.add(kind)
        if kind == "snapshot":
            self.serves = {s.serveid: s.vnetid for s in event.snapshot.serves}
        elif kind == "serve_added":
            self.serves[event.serve_added.serveid] = event.serve_added.vnetid
        elif kind == "serve_removed":
            self.serves.pop(event.serve_removed.serveid, None)
        elif kind == "serve_changes":
            for r in event.serve_changes.removed:
                self.serves.pop(r.serveid, None)
            for s in event.serve_changes.added:
                self.serves[s.serveid] = s.vnetid


async def _follow(raw: Raw, batches: bool) -> tuple[Any, View, asyncio.Task[None]]:
    joined = await raw.join(None, group="g")
    md = raw.md(None, joined.session)
    call = raw.stub.Control(pb.ControlRequest(serve_changes=batches), metadata=md)
    view = View()

    async def read() -> None:
        async for event in call:
            view.apply(event)

    return md, view, asyncio.get_running_loop().create_task(read())


@pytest.mark.parametrize("batches", [True, False])
async def test_a_burst_of_changes_leaves_every_view_equal_to_the_registry(
    make_route: MakeRoute, batches: bool
) -> None:
    route = await make_route()
    watcher, writer = Raw(route.port), Raw(route.port)
    try:
        md, view, reader = await _follow(watcher, batches)
        wmd, _, wreader = await _follow(writer, True)
        register = writer.stub.RegisterServe

        async def one(i: int) -> int:
            req = pb.RegisterServeRequest(serveid=0, name=f"s{i}", ip="127.0.0.1", port=22)
            return int((await register(req, metadata=wmd, timeout=TIMEOUT)).serve.serveid)

        got = await asyncio.gather(*(one(i) for i in range(90)))
        gone = got[::2]
        await asyncio.gather(
            *(
                writer.stub.UnregisterServe(
                    pb.UnregisterServeRequest(serveid=s), metadata=wmd, timeout=TIMEOUT
                )
                for s in gone
            )
        )
        listed = await watcher.stub.ListServes(pb.ListServesRequest(), metadata=md, timeout=5)
        want = {s.serveid: s.vnetid for s in listed.serves}
        assert len(want) == 90 - len(gone)
        await wait_until(lambda: view.serves == want, "the watcher's view to match ListServes")
        # Batches only for a client that asked for them; single events otherwise.
        assert ("serve_changes" in view.kinds) is batches
        assert ("serve_added" in view.kinds) is not batches
        # Still joined: nothing was dropped along the way.
        await watcher.stub.Ping(pb.PingRequest(), metadata=md, timeout=5)
        reader.cancel()
        wreader.cancel()
    finally:
        await watcher.close()
        await writer.close()


async def test_a_stream_far_behind_gets_one_snapshot() -> None:
    registry = Registry()
    vnet = registry.add_vnet("n", "g")
    group = Group("g", registry)
    cursor, _ = group.snapshot()
    for i in range(1, 400):
        group.feed.added(registry.register(vnet.vnetid, 0, f"s{i}", "127.0.0.1", 22).serve)
    group.changed()
    await wait_until(lambda: group.flushed == group.feed.seq, "the flush")
    upto, out = group.batch(cursor, serve_changes=True)
    assert upto == group.feed.seq
    (event,) = [pb.ControlEvent.FromString(data) for data in out]
    assert event.WhichOneof("event") == "snapshot"
    assert len(event.snapshot.serves) == 399
    # Two streams at one place of the log share one encoding.
    near = group.feed.seq - 3
    assert group.batch(near, True)[1] is group.batch(near, True)[1]


def test_join_gate_refuses_only_when_the_route_is_behind() -> None:
    gate = JoinGate(limit=10)
    gate.admit(50)  # many waiting, but the route's loop is on time: slow clients
    gate.lag = 0.5
    gate.admit(9)
    with pytest.raises(Busy) as busy:
        gate.admit(10)
    assert 0 < busy.value.retry_after <= HINT_MAX


async def test_a_busy_answer_carries_its_retry_hint(make_route: MakeRoute) -> None:
    route = await make_route()
    route.servicer.gate.limit = 0
    route.servicer.gate.lag = 1.0
    raw = Raw(route.port)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.join(None, group="g")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = wire.error_of(refused.value)
        assert isinstance(err, Busy)
        assert 0 < err.retry_after <= HINT_MAX
    finally:
        await raw.close()
