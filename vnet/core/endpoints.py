"""[route]'s addresses: where a route listens, and the routes a node may join.

Pure, like the rest of the config (vnet.core.config reads them from the file
and re-exports both names). A node's routes= is a list of HOST:PORT entries,
tried in order by vnet.node.node, which fails over between them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vnet.core.limits import host_problem, shown

DEFAULT_ROUTE_IP = "127.0.0.1"
DEFAULT_ROUTE_PORT = 7749


@dataclass(frozen=True)
class RouteEndpoint:
    """[route]: where the route listens, and where nodes connect."""

    ip: str = DEFAULT_ROUTE_IP
    port: int = DEFAULT_ROUTE_PORT

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


def read_routes(raw: str) -> tuple[tuple[RouteEndpoint, ...], str]:
    """[route] routes = HOST:PORT, HOST:PORT, [V6]:PORT: the routes a node may
    join, in the order it tries them; and the problem ("" when none).

    A route named twice is refused: the node would cycle back to the same one
    and count it as another. Names are compared case-blind, addresses as
    addresses ([::1] and [0::1] are one).
    """
    found: list[RouteEndpoint] = []
    seen: dict[str, int] = {}
    entries = raw.split(",")
    for n, entry in enumerate(entries, 1):
        text = entry.strip()
        which = f"entry {n}" if len(entries) > 1 else "the entry"
        if not text:
            return (), f"{which} is empty (give HOST:PORT, comma-separated)"
        endpoint = _endpoint(text)
        if endpoint is None:
            return (), f"{which}, {shown(text)}, is not HOST:PORT ([V6]:PORT for IPv6)"
        same = _canonical(endpoint)
        if same in seen:
            return (), f"{shown(text)} is named twice (entries {seen[same]} and {n})"
        seen[same] = n
        found.append(endpoint)
    return tuple(found), ""


def _endpoint(text: str) -> RouteEndpoint | None:
    host, colon, port = text.rpartition(":")
    if not colon:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return None
    elif ":" in host:
        return None  # an IPv6 address needs its brackets, or its port is ambiguous
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    if not host or host_problem(host) or not digits or not 0 < int(port) < 65536:
        return None
    return RouteEndpoint(host, int(port))


def _canonical(endpoint: RouteEndpoint) -> str:
    try:
        host = str(ipaddress.ip_address(endpoint.ip))
    except ValueError:
        host = endpoint.ip.lower().rstrip(".")
    return f"{host} {endpoint.port}"
