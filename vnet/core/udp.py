"""UDP flows: the rules, without I/O.

A UDP use receives datagrams from many clients on one socket; each client
address is a *flow*, carried as its own tunnel (its own gRPC stream), so one
busy flow never waits behind another. The serving node keeps one connected
UDP socket per flow toward its target, so replies go back to the flow they
belong to. Each data frame of a flow's tunnel is exactly one datagram.

What is decided here, for vnet/node/udp*.py to carry out:

- **Size.** A datagram of at most MAX_DATAGRAM bytes (65,507, the most an
  IPv4 UDP datagram holds) passes whole; a larger one (possible over IPv6)
  is dropped and counted as `oversize`, since the far side may not be able
  to send it on.
- **Queues.** Datagrams wait for their tunnel in a bounded queue per flow
  (QUEUE_DATAGRAMS datagrams and QUEUE_BYTES bytes, whichever comes first).
  When it is full the *oldest* datagram is dropped (`queue_full`): for the
  real-time traffic UDP carries (games, voice, media, DNS retries) a fresh
  datagram is worth more than one that has already waited, and the sender
  retries or moves on either way. Toward the local socket, datagrams are
  dropped (newest, as the kernel would) while the socket's transport holds
  more than SEND_BUFFER_BYTES unsent.
- **Idle.** A flow with no datagram either way for its `udp_idle` seconds
  ends. Both ends agree because the end that times out first sends a fin
  frame, and the other ends the flow on receiving it (sending its own fin
  back): the flow lasts min(use's udp_idle, serve's udp_idle) of silence,
  and both nodes forget it within one trip through the route.
- **Caps.** A use holds at most `udp_flows` flows (`[use.NAME]`, 256 by
  default) and a node at most `[vnet] udp_flows` (1,024) over its uses and
  serves together. A datagram that would open a flow beyond a cap is
  dropped (`flow_limit`); a tunnel for a serve beyond the node's cap is
  refused. Either is logged, at most once per LOG_EVERY seconds per use or
  serve, with the number dropped meanwhile.

Clocks are passed in (loop time in seconds), so tests need not wait.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

# 65,535 (the IPv4 total length field) - 20 (IP header) - 8 (UDP header).
MAX_DATAGRAM = 65_507
QUEUE_DATAGRAMS = 512
QUEUE_BYTES = 1024 * 1024
SEND_BUFFER_BYTES = 1024 * 1024
LOG_EVERY = 10.0
# SO_RCVBUF / SO_SNDBUF asked for on every UDP socket of a node: a burst
# from many clients must fit while the node is busy (the kernel drops what
# does not, unseen by vnet). Linux caps it at net.core.rmem_max / wmem_max.
SOCKET_BUFFER = 4 * 1024 * 1024


class Drop(enum.Enum):
    """Why a datagram was dropped (the label in metrics and in `show`)."""

    QUEUE_FULL = "queue_full"
    OVERSIZE = "oversize"
    FLOW_LIMIT = "flow_limit"


@dataclass
class UdpCounters:
    """Traffic of one UDP use or serve, over all its flows."""

    flows_opened: int = 0
    flows_open: int = 0
    # Ended cleanly: udp_idle seconds of silence here or at the far end, or
    # the use closing.
    flows_closed: int = 0
    # Ended by a reset (the far end went away, the stream failed).
    flows_reset: int = 0
    # Local socket -> tunnel ("out") and tunnel -> local socket ("in").
    datagrams_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    bytes_in: int = 0
    drops: dict[Drop, int] = field(default_factory=lambda: dict.fromkeys(Drop, 0))

    def drop(self, reason: Drop, count: int = 1) -> None:
        self.drops[reason] += count

    def summary(self) -> str:
        """One line for `show use` / `show serve`."""
        drops = ", ".join(f"{r.value} {n}" for r, n in self.drops.items())
        return (
            f"flows {self.flows_open} open, {self.flows_opened} opened; "
            f"out {self.datagrams_out} datagrams {self.bytes_out} bytes; "
            f"in {self.datagrams_in} datagrams {self.bytes_in} bytes; drops: {drops}"
        )


class DatagramQueue:
    """A bounded FIFO of datagrams that drops its oldest when full."""

    __slots__ = ("_items", "nbytes", "max_items", "max_bytes")

    def __init__(self, max_items: int = QUEUE_DATAGRAMS, max_bytes: int = QUEUE_BYTES) -> None:
        self._items: deque[bytes] = deque()
        self.nbytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._items)

    def push(self, datagram: bytes) -> int:
        """Queue datagram; returns how many older ones were dropped for it."""
        dropped = 0
        while self._items and (
            len(self._items) >= self.max_items or self.nbytes + len(datagram) > self.max_bytes
        ):
            self.nbytes -= len(self._items.popleft())
            dropped += 1
        self._items.append(datagram)
        self.nbytes += len(datagram)
        return dropped

    def pop(self) -> bytes | None:
        if not self._items:
            return None
        datagram = self._items.popleft()
        self.nbytes -= len(datagram)
        return datagram


class Slots:
    """A cap on flows held at once (one use's, or one node's)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)


def take_both(use: Slots, node: Slots) -> Slots | None:
    """Take a slot of the use and of the node, or neither; returns the cap that is full."""
    if not use.take():
        return use
    if not node.take():
        use.give()
        return node
    return None


class IdleClock:
    """When a flow has been silent both ways for `idle` seconds."""

    __slots__ = ("idle", "last")

    def __init__(self, idle: float, now: float) -> None:
        self.idle = idle
        self.last = now

    def touch(self, now: float) -> None:
        """A datagram passed, either way."""
        self.last = now

    @property
    def deadline(self) -> float:
        return self.last + self.idle

    def expired(self, now: float) -> bool:
        return now >= self.deadline


class Throttle:
    """At most one log line per `every` seconds; counts what it held back."""

    __slots__ = ("every", "_next", "held")

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._next = float("-inf")
        self.held = 0

    def due(self, now: float) -> int | None:
        """None: stay quiet. Else log now, mentioning the returned count held back."""
        if now < self._next:
            self.held += 1
            return None
        self._next = now + self.every
        held, self.held = self.held, 0
        return held
