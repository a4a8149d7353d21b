"""Every error family survives the trip route -> status code -> node.

In the spirit of httpx's test that every exception is mapped: each family
that crosses the wire has one code, each code comes back as that family, and
a real gRPC call carries them all (the route's own translation, `translated`,
on one side, the node's, `error_of`, on the other).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from vnet import wire
from vnet.core import errors
from vnet.core.errors import ConfigError, LocalProtocolError, ProtocolError, VnetError
from vnet.route.rpc import translated

# Errors that are reported where they happen and never cross the wire.
LOCAL_ONLY = {ConfigError, LocalProtocolError}


def every_error() -> Iterator[type[VnetError]]:
    seen: set[type[VnetError]] = set()
    todo = [VnetError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and sub.__module__ == errors.__name__:
                seen.add(sub)
                todo.append(sub)
                yield sub


def family_on_arrival(cls: type[VnetError]) -> type[VnetError]:
    """The family a node should see for an error the route raised."""
    code = wire.status_of(cls("x"))
    return wire.ERROR_OF[code]


def test_the_two_tables_are_inverses() -> None:
    assert len(set(wire.STATUS_OF.values())) == len(wire.STATUS_OF), "two families share a code"
    for family, code in wire.STATUS_OF.items():
        back = wire.ERROR_OF[code]
        assert back is family or (family is ProtocolError and back is LocalProtocolError)
    assert set(wire.ERROR_OF) == set(wire.STATUS_OF.values())


@pytest.mark.parametrize("cls", sorted(every_error(), key=lambda c: c.__name__))
def test_every_error_has_a_family_and_a_code(cls: type[VnetError]) -> None:
    if cls in LOCAL_ONLY:
        return
    code = wire.status_of(cls("x"))
    assert code is not grpc.StatusCode.INTERNAL, f"{cls.__name__} has no status code"
    arrived = family_on_arrival(cls)
    if arrived is LocalProtocolError:
        # The route's "your request is malformed" is, for the node, its own mistake.
        assert issubclass(cls, ProtocolError)
    else:
        assert issubclass(cls, arrived), f"{cls.__name__} comes back as {arrived.__name__}"


def test_a_frame_from_the_peer_is_a_remote_protocol_error() -> None:
    with pytest.raises(errors.RemoteProtocolError):
        wire.decode_frame(b"\xff\xff")


@pytest.fixture
async def raiser() -> AsyncIterator[grpc.aio.Channel]:
    """A real gRPC server whose one method raises the error named in the request."""
    by_name = {cls.__name__: cls for cls in every_error()}

    async def fail(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise by_name[request.decode()](f"it was {request.decode()}")

    handler = grpc.method_handlers_generic_handler(
        "test.Raise",
        {"Raise": grpc.unary_unary_rpc_method_handler(translated(fail, collections.Counter()))},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


async def test_every_family_survives_a_real_call(raiser: grpc.aio.Channel) -> None:
    call = raiser.unary_unary("/test.Raise/Raise")
    for cls in every_error():
        if cls in LOCAL_ONLY:
            continue
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(cls.__name__.encode(), timeout=10)
        err = wire.error_of(failed.value)
        if cls is errors.Busy:
            # Busy is the one that travels with more than its code: its retry hint.
            assert type(err) is errors.Busy
            assert err.retry_after == 1.0
        else:
            assert type(err) is family_on_arrival(cls)
        assert str(err) == f"it was {cls.__name__}"
