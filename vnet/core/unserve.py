"""unserve, from the original vnet: offering a service on another node's request.

Pure: what a node may offer, and when an offer lapses. The node's I/O
around it is vnet.node.offers.

The original's rules: `allow_unserve` must be true; unless `unserve_remote`
is true, only loopback addresses may be offered; at most `unserve_num` live
at once. An offer never connected lapses after 3 minutes; once used, 1 minute
after its last connection closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vnet.core.auth import is_loopback
from vnet.core.config import VnetConfig

UNUSED_TTL = 180.0
LINGER = 60.0


def refusal(vnet: VnetConfig, ip: str, addresses: Sequence[str], live: int) -> str:
    """Why this node will not offer ip (resolved to addresses); "" if it will."""
    if not vnet.allow_unserve:
        return "this node does not allow unserve (allow_unserve=false)"
    if live >= vnet.unserve_num:
        return (
            f"this node has {live} unserve(s) already, its limit (unserve_num={vnet.unserve_num})"
        )
    return address_refusal(vnet, ip, addresses)


def address_refusal(vnet: VnetConfig, ip: str, addresses: Sequence[str]) -> str:
    """Why ip, resolved to addresses, may not be dialled for an unserve ("" if it may).

    Asked again at each connection, after resolving the name again, so a
    name that later points elsewhere is caught too.
    """
    if not addresses:
        return f"cannot resolve {ip!r}"
    if not vnet.unserve_remote:
        for address in addresses:
            if not is_loopback(address):
                shown = ip if address == ip else f"{ip} ({address})"
                return (
                    f"{shown} is not a loopback address, and this node allows only those "
                    "(unserve_remote=false)"
                )
    return ""


@dataclass
class Offer:
    """One live unserve on the offering node."""

    serveid: int
    ip: str
    port: int
    requester: str
    created: float
    open: int = 0
    used: bool = False
    last_close: float = 0.0

    def opened(self) -> None:
        self.open += 1
        self.used = True

    def closed(self, now: float) -> None:
        self.open -= 1
        self.last_close = now

    def lapses_at(self, unused_ttl: float = UNUSED_TTL, linger: float = LINGER) -> float | None:
        """When it is withdrawn; None while a connection is open."""
        if self.open:
            return None
        return self.last_close + linger if self.used else self.created + unused_ttl
