"""A Ping is not queued behind a storm of Joins (vnet.route.server: registered methods).

C-core holds the calls the route's loop has not taken yet; grpc.aio takes them one at a time
per queue. With one queue for every method, a Ping that arrives behind 200 Joins is taken
after all of them; with a queue per method it is taken at once. The route's loop is held
(synchronously, while C-core's own threads go on receiving) until C-core has all 201 calls,
so every one of them is queued when the loop takes the first; then only the order in which
they are answered is checked, never a time.
"""

from __future__ import annotations

import json
import threading
import time

import grpc

from tests.conftest import TIMEOUT, wait_until
from tests.rawclient import Raw
from vnet.route.server import RunningRoute
from vnetrpc.v1 import route_pb2 as pb
from vnetrpc.v1 import route_pb2_grpc as pb_grpc

JOINS = 200


def calls_started() -> int:
    """Calls C-core has received on this process's servers (channelz), taken or not; the
    test's route is the only one that gets calls meanwhile."""
    # The channelz bindings of grpcio's core module: a count C-core keeps on its own
    # threads, readable while the route's loop is held.
    from grpc._cython import cygrpc

    servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    return sum(int(s["data"].get("callsStarted", 0)) for s in servers)


def hold_loop_until_received(count: int) -> None:
    """Block the calling thread (the route's loop) until C-core has received `count` calls:
    none of them can be taken meanwhile. A bounded poll of C-core's own count."""
    deadline = time.monotonic() + TIMEOUT
    while calls_started() < count:
        assert time.monotonic() < deadline, "C-core did not receive the calls"
        time.sleep(0.005)


async def test_a_ping_is_answered_before_the_joins_queued_ahead_of_it(
    route: RunningRoute,
) -> None:
    raw = Raw(route.port)
    joined = await raw.join(None)
    await raw.channel.close()
    # A blocking client of its own (its calls go on while this test holds the loop).
    channel = grpc.insecure_channel(f"127.0.0.1:{route.port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        stub = pb_grpc.RouteServiceStub(channel)
        before = calls_started()
        order: list[int] = []
        lock = threading.Lock()

        def answered(index: int) -> None:
            with lock:
                order.append(index)

        calls = [
            stub.Join.future(pb.JoinRequest(name=f"n{i}", group="a"), timeout=TIMEOUT)
            for i in range(JOINS)
        ]
        calls.append(
            stub.Ping.future(
                pb.PingRequest(nonce=7),
                metadata=(("vnet-session", joined.session),),
                timeout=TIMEOUT,
            )
        )
        for index, call in enumerate(calls):
            call.add_done_callback(lambda _, i=index: answered(i))
        hold_loop_until_received(before + len(calls))
        await wait_until(lambda: len(order) == len(calls), "every call answered")
        assert all(call.exception() is None for call in calls)
        assert calls[-1].result().nonce == 7
        # Behind 200 Joins in one queue it would be the last; in a queue of its own it is
        # among the first few (one call a queue a turn of the loop).
        assert order.index(JOINS) < JOINS // 4, order.index(JOINS)
    finally:
        channel.close()
