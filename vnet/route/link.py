"""The I/O side of one session at the route: its own control events, its place in its
group's serve changes, the tunnels it is an end of.

vnet.core.sessions.Session is the decision side (who it is, what it may do); the servicer
(vnet.route.service) keeps one Link per live session.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from vnet.core.registry import Vnet
from vnet.core.sessions import Session
from vnet.core.unanswered import AnswerWatch
from vnet.route.splice import Splice

# Logged as the servicer's: the same lines as before this module.
log = logging.getLogger("vnet.route.service")

# A node's own events (tunnels to accept, unserve requests) waiting for its control
# stream; its serve changes are not queued here (vnet.route.fanout). Bounded by the tunnel
# cap in practice; a node that lets this many pile up does not read its stream.
CONTROL_QUEUE = 10_000


# weakref_slot: the probes (vnet.route.probes) remember silent nodes weakly.
@dataclass(eq=False, slots=True, weakref_slot=True)
class Link:
    """The I/O side of one session (vnet.core.sessions.Session): its own encoded
    control events, how far its stream has read the group's serve changes, and
    the tunnels it is an end of."""

    core: Session
    # Made when needed: an idle node costs as little as can be.
    events: deque[bytes] | None = None
    wake: asyncio.Event | None = None
    # How far into its group's feed (vnet.core.feed) its stream has sent.
    cursor: int = 0
    splices: set[Splice] = field(default_factory=set)
    # Its unanswered open_tunnels: a silent node's serves are refused at once.
    answers: AnswerWatch = field(default_factory=AnswerWatch)
    # For the admin API (vnet.route.admin): where it joined from, its client
    # certificate's name, when (wall clock, ms), the digest of the token it
    # joined with (a reload ends the session when that is no longer valid),
    # and the bytes of its tunnels that have closed, each way.
    peer: str = ""
    identity: str = ""
    joined_at_ms: int = 0
    credential: bytes = b""
    bytes_from_node: int = 0
    bytes_to_node: int = 0

    @property
    def vnet(self) -> Vnet:
        return self.core.vnet

    @property
    def control_open(self) -> bool:
        return self.core.control_open

    def push(self, event: bytes) -> None:
        if self.core.closed:
            return
        if self.events is None:
            self.events = deque()
        if len(self.events) >= CONTROL_QUEUE:
            # A node that does not read its control stream is broken; it
            # will be dropped when its stream ends, so drop it now: closed,
            # its calls are refused from here on as after a drop.
            log.warning("vnet %s does not read its control stream; dropping it", self.vnet.vnetid)
            self.core.closed = True
            return
        self.events.append(event)
        if self.wake is not None:
            self.wake.set()


def forget_splice(splices: set[Splice], done: Splice) -> None:
    """A tunnel has ended: out of the route's splices and its ends', and its
    bytes added to its ends' counts (the admin API's per-session totals)."""
    splices.discard(done)
    for end in done.ends:
        end.splices.discard(done)
    if len(done.ends) == 2:
        dialer, server = done.ends
        dialer.bytes_from_node += done.bytes_to_serve
        dialer.bytes_to_node += done.bytes_to_dialer
        server.bytes_from_node += done.bytes_to_dialer
        server.bytes_to_node += done.bytes_to_serve
