"""Typed access to one section of config.ini, every bad value reported.

Pure. Used by vnet.core.config: each accessor checks one key against the route's
limits (vnet.core.limits) and either returns its value or reports the problem,
with its line, and returns a stand-in so the rest of the file is still
checked in the same pass.
"""

from __future__ import annotations

from vnet.core.ini import Problems, Section
from vnet.core.limits import NAME_MAX, SERVEID_MAX, host_problem, shown, text_problem

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def token_problem(value: str) -> str:
    """Why value cannot be a token ("" when it can).

    It travels as a gRPC metadata value, which must be printable ASCII: any
    other token would fail at every call, not at start.
    """
    if value.isascii() and value.isprintable():
        return ""
    return "contains characters other than printable ASCII (a token travels in a gRPC header)"


class SectionReader:
    """Typed access to one section's keys.

    A bad value is reported to problems with its line, and a stand-in (the
    default) returned, so that the rest of the file is still checked.
    """

    def __init__(
        self, problems: Problems, name: str, section: Section | None, allowed: frozenset[str]
    ) -> None:
        self.problems = problems
        self.name = name
        self.line = section.line if section else None
        entries = section.entries if section else {}
        self.values = {k: e.value for k, e in entries.items() if k in allowed}
        self.lines = {k: e.line for k, e in entries.items()}
        for key in entries:
            if key not in allowed:
                self.fail(key, f"unknown key (known: {', '.join(sorted(allowed))})")

    def fail(self, key: str | None, reason: str) -> None:
        line = self.lines.get(key, self.line) if key is not None else self.line
        self.problems.error(line, self.name, key, reason)

    def has(self, key: str) -> bool:
        return self.values.get(key, "") != ""

    def text(self, key: str, default: str) -> str:
        return self.values.get(key, "") or default

    def name_text(self, key: str, default: str, limit: int = NAME_MAX) -> str:
        """A name or info: printable, at most limit characters (the route's limits)."""
        value = self.text(key, default)
        problem = text_problem(value, limit) if self.has(key) else ""
        if problem:
            self.fail(key, problem)
            return default
        return value

    def host(self, key: str, default: str) -> str:
        """An IP address or host name."""
        if not self.has(key):
            return default
        problem = host_problem(self.values[key])
        if problem:
            self.fail(key, problem)
            return default
        return self.values[key]

    def token(self, key: str) -> str:
        value = self.text(key, "")
        problem = token_problem(value)
        if problem:
            # Kept: the token is given, if wrongly, so protected mode has no
            # second, misleading complaint that there is none.
            self.fail(key, problem)
        return value

    def require(self, key: str) -> bool:
        if not self.has(key):
            self.fail(key, "is required")
            return False
        return True

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.values.get(key, "").lower()
        if raw == "":
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        self.fail(key, f"{shown(self.values[key])} is not true or false")
        return default

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.values.get(key, "")
        if raw == "":
            return default
        # ASCII digits only: int() would take "٧٧٤٩" or "７７４９" too.
        if not (raw.isascii() and raw.isdigit()):
            self.fail(key, f"{shown(raw)} is not a whole number")
            return default
        # Not int() on a long string: it is slow, and refuses over 4300 digits.
        if len(raw.lstrip("0")) > len(str(high)):
            self.fail(key, f"{shown(raw)} is out of range ({low}-{high})")
            return default
        value = int(raw.lstrip("0") or "0")
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low}-{high})")
            return default
        return value

    def port(self, key: str, default: int | None = None) -> int:
        if not self.has(key):
            if default is None:
                self.fail(key, "is required")
                return 1
            return default
        return self.integer(key, 1, 1, 65535)

    def serveid(self) -> int:
        raw = self.values.get("serveid", "")
        if raw and (not (raw.isascii() and raw.isdigit()) or len(raw) > 3):
            self.fail("serveid", f"{shown(raw)} is not a serveid (0-{SERVEID_MAX}, up to 3 digits)")
            return 0
        return self.integer("serveid", 0, 0, SERVEID_MAX)

    def transport(self) -> str:
        """type=: "tcp" (the default) or "udp"; udp_idle= is for udp only."""
        kind = self.text("type", "tcp").lower()
        if kind not in ("tcp", "udp"):
            self.fail("type", f"{shown(kind)} is not supported (tcp or udp)")
            return "tcp"
        for key in ("udp_idle", "udp_flows"):
            if kind != "udp" and self.has(key):
                self.fail(key, "is for type=udp only")
        return kind

    def host_port(self, key: str) -> tuple[str, int] | None:
        """HOST:PORT ([v6]:PORT for IPv6), e.g. for metrics=; None when not given."""
        if not self.has(key):
            return None
        raw = self.values[key]
        host, _, port = raw.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        digits = port.isascii() and port.isdigit() and len(port) <= 5
        if not host or host_problem(host) or not digits or not 0 < int(port) < 65536:
            self.fail(key, f"{shown(raw)} is not HOST:PORT")
            return None
        return host, int(port)

    def one_secret(self) -> None:
        """token, token_env and token_file are alternatives."""
        given = [k for k in ("token", "token_env", "token_file") if self.has(k)]
        if len(given) > 1:
            self.fail(given[1], f"give only one of {', '.join(given)}")

    def pair(self, first: str, second: str) -> None:
        if self.has(first) != self.has(second):
            self.fail(second if self.has(first) else first, f"{first} and {second} go together")
