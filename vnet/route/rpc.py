"""The route service's method table, and how its errors become status codes.

One translation (VnetError -> status, through wire.status_of) for every
call; the tunnel methods are registered without (de)serializers, so their
frames go through as the bytes they came as.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from vnet import wire
from vnet.core.errors import VnetError
from vnetrpc.v1 import route_pb2 as pb

if TYPE_CHECKING:
    from vnet.route.service import RouteServicer
    from vnet.route.splice import Leg

log = logging.getLogger(__name__)

Handler = Callable[..., Coroutine[Any, Any, Any]]


def method_handlers(servicer: RouteServicer) -> grpc.GenericRpcHandler:
    """The service's handlers; tunnel methods pass raw bytes through."""

    def unary(fn: Handler, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            translated(fn, servicer.rejected),
            request_deserializer=req.FromString,
            response_serializer=resp.SerializeToString,
        )

    def raw_stream(fn: Handler) -> grpc.RpcMethodHandler:
        # No (de)serializers: frames go through as the bytes they came as.
        # The handlers translate VnetError themselves (see refuse).
        return grpc.stream_stream_rpc_method_handler(fn)

    return grpc.method_handlers_generic_handler(
        wire.SERVICE,
        {
            "Join": unary(servicer.Join, pb.JoinRequest, pb.JoinResponse),
            "RegisterServe": unary(
                servicer.RegisterServe, pb.RegisterServeRequest, pb.RegisterServeResponse
            ),
            "UnregisterServe": unary(
                servicer.UnregisterServe, pb.UnregisterServeRequest, pb.UnregisterServeResponse
            ),
            "ListServes": unary(servicer.ListServes, pb.ListServesRequest, pb.ListServesResponse),
            "ListVnets": unary(servicer.ListVnets, pb.ListVnetsRequest, pb.ListVnetsResponse),
            "Ping": unary(servicer.Ping, pb.PingRequest, pb.PingResponse),
            "Leave": unary(servicer.Leave, pb.LeaveRequest, pb.LeaveResponse),
            "Unserve": unary(servicer.Unserve, pb.UnserveRequest, pb.UnserveResponse),
            "AnswerUnserve": unary(
                servicer.AnswerUnserve, pb.AnswerUnserveRequest, pb.AnswerUnserveResponse
            ),
            "Control": grpc.unary_stream_rpc_method_handler(
                translated_stream(servicer.Control, servicer.rejected),
                request_deserializer=pb.ControlRequest.FromString,
                response_serializer=pb.ControlEvent.SerializeToString,
            ),
            "Dial": raw_stream(servicer.Dial),
            "Accept": raw_stream(servicer.Accept),
        },
    )


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
