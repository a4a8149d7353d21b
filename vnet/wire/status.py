"""Errors <-> gRPC status codes: one table each way, inverses of each other."""

from __future__ import annotations

import grpc

from vnet.core.errors import (
    Busy,
    Forbidden,
    LimitExceeded,
    LocalProtocolError,
    NotFound,
    ProtocolError,
    Refused,
    RouteUnavailable,
    ServeIdTaken,
    Unauthenticated,
    VnetError,
)

# Each error family to its status code, used by the route's servicer; a
# subclass goes out as its family's code.
STATUS_OF: dict[type[VnetError], grpc.StatusCode] = {
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    ServeIdTaken: grpc.StatusCode.ALREADY_EXISTS,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Refused: grpc.StatusCode.FAILED_PRECONDITION,
    RouteUnavailable: grpc.StatusCode.UNAVAILABLE,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
}

# And back again, used by the node: the same table inverted, except that
# INVALID_ARGUMENT, seen by the node, means its own request was malformed.
ERROR_OF: dict[grpc.StatusCode, type[VnetError]] = {
    code: LocalProtocolError if family is ProtocolError else family
    for family, code in STATUS_OF.items()
}


def status_of(exc: VnetError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def error_of(exc: grpc.aio.AioRpcError) -> VnetError:
    """The vnet error for a failed call; unknown codes mean the route is unwell."""
    kind = ERROR_OF.get(exc.code(), RouteUnavailable)
    details = exc.details() or exc.code().name
    if kind is LimitExceeded:
        hint = retry_hint(exc)
        if hint > 0:
            return Busy(details, hint)
    return kind(details)


# The route's retry hint on a RESOURCE_EXHAUSTED (trailing metadata), in milliseconds.
MD_RETRY_AFTER = "vnet-retry-after-ms"


def retry_hint(exc: grpc.aio.AioRpcError) -> float:
    """The hint in seconds; 0 without one (or with one that is not a number)."""
    for key, value in exc.trailing_metadata() or ():
        if key == MD_RETRY_AFTER:
            text = value if isinstance(value, str) else value.decode("ascii", "replace")
            if text.isascii() and text.isdigit():
                return min(int(text), 600_000) / 1000
    return 0.0
