"""A node's run-time records and settings, apart from the Node that uses them."""

from __future__ import annotations

from dataclasses import dataclass, field

from vnet.core.config import ServeConfig
from vnet.core.errors import VnetError
from vnet.core.udp import UdpCounters
from vnet.core.unserve import LINGER, UNUSED_TTL
from vnet.node.client import KEEPALIVE, KEEPALIVE_TIMEOUT


@dataclass(frozen=True)
class NodeTimeouts:
    """How long the node waits; shortened in tests."""

    connect: float = 10.0
    # Connecting to a serve's local target for an incoming tunnel.
    target_connect: float = 10.0
    # A dead or black-holed route is noticed within about the sum of these.
    keepalive: float = KEEPALIVE
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    # Reconnecting after the route went away: exponential backoff from
    # reconnect_min to reconnect_max, with jitter. reconnect_max 0: never.
    reconnect_min: float = 0.5
    reconnect_max: float = 15.0
    # unserve offers: withdrawn this long after being made if never used,
    # or this long after their last connection closed.
    unserve_unused: float = UNUSED_TTL
    unserve_linger: float = LINGER


@dataclass(eq=False)
class ServeState:
    """One [serve.NAME] at run time."""

    config: ServeConfig
    # Meant to be registered now (active, and started or opened).
    running: bool = False
    # As registered: the route may have assigned another dynamic serveid.
    serveid: int | None = None
    # The serveid it had before the route went away: asked for again, so
    # serveids stay the same across reconnects.
    last_serveid: int | None = None
    error: str = ""
    # Offered on another node's request (unserve): not part of the config.
    unserve: bool = False
    # type=udp: its flows' traffic (kept across reconnects, as a use's counters are).
    udp: UdpCounters = field(default_factory=UdpCounters)

    @property
    def key(self) -> str:
        return self.config.key


class NodeRequestError(VnetError):
    """A console request that does not fit the node's state (no such name, ...)."""
