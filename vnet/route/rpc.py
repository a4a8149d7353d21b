"""The route service's method table, and how its errors become status codes.

One translation (VnetError -> status, through wire.status_of) for every
call. The table itself, with the messages' (de)serializers, is
vnet.wire.route_messages.route_handlers: the handlers here see dataclasses and bytes.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from vnet import wire
from vnet.core.errors import Busy, VnetError
from vnet.wire import route_messages
from vnet.wire.status import MD_RETRY_AFTER

if TYPE_CHECKING:
    from vnet.route.service import RouteServicer
    from vnet.route.splice import Leg

log = logging.getLogger(__name__)

Handler = Callable[..., Coroutine[Any, Any, Any]]


def method_table(servicer: RouteServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers by method name (vnet.wire builds the table); tunnel methods
    pass raw bytes."""
    unary = {
        name: translated(getattr(servicer, name), servicer.rejected)
        for name in route_messages.UNARY_METHODS
    }
    # The tunnel handlers translate VnetError themselves (see refuse).
    return route_messages.route_method_table(
        unary,
        translated_stream(servicer.Control, servicer.rejected),
        servicer.Dial,
        servicer.Accept,
    )


def method_handlers(servicer: RouteServicer) -> grpc.GenericRpcHandler:
    """The same table as one generic handler."""
    return grpc.method_handlers_generic_handler(wire.SERVICE, method_table(servicer))


async def end_unless_told(leg: Leg, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    """A stream whose node got neither fin nor reset must not end with OK:
    a client could take a truncated transfer for a complete one.

    Not on a call that already has its status (done()): abort would fail
    there. And an abort can still fail in core when a write to this leg was
    interrupted (the other leg's handler was cancelled mid-write, so core
    holds a send it never finished): that is the reset it was meant to
    report, not an error, so it is logged at DEBUG and the handler ends;
    gRPC then finishes the call when the node cancels or goes away.
    """
    if leg.told or context.done():
        return
    try:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"tunnel reset: {leg.why}" if leg.why else "tunnel reset"
        )
    except grpc.aio.InternalError as exc:  # ExecuteBatchError: core refused the status
        log.debug("tunnel reset; its stream could not be given a status: %s", exc)


async def refuse(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: VnetError,
    rejected: collections.Counter[str],
) -> NoReturn:
    """End the call with VnetError's status: the one translation table."""
    code = wire.status_of(exc)
    rejected[code.name] += 1
    if isinstance(exc, Busy):
        hint = ((MD_RETRY_AFTER, str(int(exc.retry_after * 1000))),)
        await context.abort(code, str(exc), trailing_metadata=hint)
    await context.abort(code, str(exc))
    raise AssertionError("abort returned")  # abort always raises


def translated(fn: Handler, rejected: collections.Counter[str]) -> Handler:
    """Turn VnetError into the matching status."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(request, context)
        except VnetError as exc:
            await refuse(context, exc, rejected)

    return call


def translated_stream(
    fn: Callable[..., AsyncIterator[Any]], rejected: collections.Counter[str]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except VnetError as exc:
            await refuse(context, exc, rejected)

    return call
