"""How long the route waits for nodes (vnet.route.service); shortened in tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouteTimeouts:
    """How long the route waits for nodes; shortened in tests."""

    # A node must open its Control stream this soon after Join.
    join: float = 10.0
    # The serving node must answer an OpenTunnel this soon, counted from the
    # Dial or from the last tunnel it accepted, whichever is later: a node
    # working through a burst of them is slow, not gone.
    accept: float = 10.0
    # However busy the node, a Dial waits for its Accept no longer than this.
    accept_limit: float = 60.0
    # An asked node must answer an unserve request this soon.
    unserve: float = 10.0
    # A node must echo a probe through it (Ping with via) this soon, or it is
    # taken for one that does not echo (vnet/route/probes.py).
    echo: float = 2.0
    # When the route stops: how long open tunnels may still run.
    stop_grace: float = 5.0
    # Keepalive pings on idle connections, and how long an answer may take:
    # a dead or black-holed node is dropped within about the sum.
    keepalive: float = 10.0
    keepalive_timeout: float = 10.0
    # A tunnel closed in one direction and silent this long is reset.
    half_close_idle: float = 300.0
