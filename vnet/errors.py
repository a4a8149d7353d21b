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


class RegistryError(VnetError):
    """A registry request was refused."""


class InvalidRequest(RegistryError):
    """The request itself is malformed (out-of-range serveid, bad port, ...)."""


class ServeIdTaken(RegistryError):
    """A static serveid is already registered by another node of the group."""


class NoFreeServeId(RegistryError):
    """Every dynamic serveid of the group is in use."""


class NotFound(RegistryError):
    """No such serve or node, as far as the caller may know."""


class RouteUnavailable(VnetError):
    """The route cannot be reached or went away."""


class Unauthenticated(VnetError):
    """No valid credential. Says nothing about what exists behind it."""


class LimitExceeded(VnetError):
    """A cap was reached (nodes, serves, tunnels, or failed attempts)."""


class SessionUnknown(Unauthenticated):
    """The session presented is not (or no longer) known to the route."""


class Refused(VnetError):
    """The node asked (for an unserve) said no; says why."""


class Unanswered(VnetError):
    """The node asked did not answer in time."""
