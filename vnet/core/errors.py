"""The error families of vnet.

Every error vnet raises on purpose derives from VnetError. Boundaries translate
once: the route's servicer maps these to gRPC status codes, and the node maps
gRPC errors back to these (see vnet.wire).
"""

from __future__ import annotations


class VnetError(Exception):
    """Root of every error vnet raises on purpose."""


class ConfigError(VnetError):
    """A configuration file is wrong; names the file, line, section and key at fault."""

    def __init__(
        self,
        path: str,
        section: str | None,
        key: str | None,
        reason: str,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.section = section
        self.key = key
        self.reason = reason
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        # "file:line:" as compilers write it, so editors can jump there.
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.reason}"


# The families below cross the wire: each has exactly one gRPC status code
# (vnet.wire.STATUS_OF), and a code comes back as its family (ERROR_OF), so
# every family survives the round trip (tests/test_wire.py checks them all).
# A subclass narrows its family on the side that raises it; the far side
# sees the family.


class ProtocolError(VnetError):
    """Somebody broke the protocol: a malformed request or frame (INVALID_ARGUMENT)."""


class LocalProtocolError(ProtocolError):
    """What we sent was refused as malformed: the mistake is ours."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something malformed: the mistake is theirs."""


class InvalidRequest(RemoteProtocolError):
    """A request the route received is malformed (out-of-range serveid, bad port, ...)."""


class MalformedFrame(RemoteProtocolError):
    """A tunnel frame is not a valid TunnelFrame."""


class ServeIdTaken(VnetError):
    """A static serveid is already registered by another node of the group (ALREADY_EXISTS)."""


class NotFound(VnetError):
    """No such serve or node, as far as the caller may know (NOT_FOUND)."""


class Unauthenticated(VnetError):
    """No valid credential. Says nothing about what exists behind it (UNAUTHENTICATED)."""


class SessionUnknown(Unauthenticated):
    """The session presented is not (or no longer) known to the route."""


class LimitExceeded(VnetError):
    """A cap was reached: nodes, serves, tunnels, failed attempts (RESOURCE_EXHAUSTED)."""


class Busy(LimitExceeded):
    """The route is admitting too many nodes at once: try again after retry_after seconds
    (RESOURCE_EXHAUSTED with the hint in trailing metadata, vnet.wire.MD_RETRY_AFTER)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoFreeServeId(LimitExceeded):
    """Every dynamic serveid of the group is in use: the serveid space is a cap too."""


class Refused(VnetError):
    """The node asked (for an unserve) said no, and says why (FAILED_PRECONDITION)."""


class RouteUnavailable(VnetError):
    """The route cannot be reached, went away, or could not get an answer (UNAVAILABLE)."""


class Unanswered(RouteUnavailable):
    """The node the route asked did not answer in time."""


class Forbidden(VnetError):
    """Not allowed from here, whatever the credential (PERMISSION_DENIED): the admin API
    of a route without an admin token, called from another machine."""


class StoreUnavailable(RouteUnavailable):
    """The route cluster's store (etcd) cannot be reached or did not answer in time.

    The message names the store and its endpoints, so that a node refused a
    join knows it was the shared registry that failed, not the route."""


class Fenced(StoreUnavailable):
    """This route's lease in the store was lost (etcd unreachable past the lease's
    TTL, or the lease expired): it no longer admits nodes or registers serves."""
