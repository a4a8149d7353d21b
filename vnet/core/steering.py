"""Which congestion control vnet's own connections across a link use while bulk is governed.

Measured on the emulated 50 ms / 100 Mbit/s link (docs/BENCHMARKS.md, "A keystroke next to
a transfer: BBR's min-RTT probe"): while the governor (vnet/core/queueing.py) holds a queue
of a few ms on the path, no round trip on the node's connection to the route ever comes back
down to the path's base, so the kernel's BBR lets its min-RTT estimate expire every 10 s and
enters PROBE_RTT: cwnd 4 packets for 200 ms. That connection carries every tunnel, so a
keystroke waits those 200 ms behind it; the governor, which sees only a late probe, paces a
megabyte into the socket meanwhile, and BBR, still in STARTUP because a paced connection is
always application-limited, then sends it at 2.9 times the link's rate: a hundred frames lost
at the bottleneck, a loss recovery, more late keystrokes. The route's socket toward the
receiving node does the same a second later. Nothing in BBR can be told that the queue is
someone else's target, so while governing, those connections use a loss-based congestion
control instead (cubic, else reno, which every kernel allows): the governor keeps the queue
short by itself, so they see no loss and only need a window large enough for the rate. A
lone transfer is not governed, and its connections keep the host's choice (BBR keeps a
lossy link full where cubic would not).

A connection that shows random loss while switched (retransmissions second after second)
goes back at once (LossWatch): on a lossy link BBR is the better of the two. It is then left
alone for LOSSY_FOR_S (Lossy), and the governor gets back the path's estimate from before the
switch (Governor.recover): what it measured while cubic's window collapsed was cubic, not
the path, and from that low start its slow growth took the rest of a transfer.

Pure: the node switches while its governor tracks the path (not while it drains, and not on
a path too short to pace); the route, which does not know a node's phase, switches its
connection toward a node while other nodes' probes pass through it at a governed pace, until
HOLD_S after the last one (Holds).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# Tried in order while governed; reno is built into every kernel and allowed to any user.
GOVERNED = ("cubic", "reno")
# The congestion control that makes a governed connection misbehave (see above).
PROBING = "bbr"
# The route keeps a connection switched this long after the last probe through its node:
# longer than a governor's probe gap (20 ms to a round trip).
HOLD_S = 3.0
# The route switches a connection once two probes in a row through its node came at most
# this far apart: a governed path is probed every round trip, a path too short to govern
# (loopback, a LAN: the governor's LOCAL phase) only once a second (LOCAL_PROBE_S), and its
# connection keeps the host's choice.
PAIRED_S = 0.9

# A switched connection that retransmitted in LOSSY_IN of the last LOSSY_OF intervals of
# LOSSY_S goes back to the host's algorithm: that is random loss, not a queue the governor
# lets overflow (it keeps the queue short: no loss at all on a clean path, measured), and
# there a loss-based algorithm halves its window on every loss. Measured with 1% loss:
# cubic held governed bulk to 0.4-0.6 MB/s where BBR kept 3-7, and the ping's median
# waited behind what the small window would not send.
LOSSY_S = 1.0
LOSSY_OF = 3
LOSSY_IN = 2

# A connection sent back for random loss is not switched again for this long: the link is
# lossy, not only the seconds measured, and every switch costs the transfer a collapse of
# cubic's window (and the governor's estimate with it) before LossWatch can tell again.
LOSSY_FOR_S = 120.0

K = TypeVar("K", bound=Hashable)


@dataclass
class Lossy(Generic[K]):
    """Keys (connections, or the node's route) found lossy, until LOSSY_FOR_S after."""

    memory: float = LOSSY_FOR_S
    _until: dict[K, float] = field(default_factory=dict)

    def found(self, key: K, now: float) -> None:
        self._until[key] = now + self.memory

    def spares(self, key: K, now: float) -> bool:
        """Whether key's connection must keep its own algorithm now (lossy lately)."""
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._until[key]
            return False
        return True


def switch_to(current: str) -> bool:
    """Whether a connection using `current` is switched while governed."""
    return current == PROBING


@dataclass
class Holds(Generic[K]):
    """Keys (connections) held switched from a second probe within `paired` of the one
    before, until `hold` after the last such probe."""

    hold: float = HOLD_S
    paired: float = PAIRED_S
    _until: dict[K, float] = field(default_factory=dict)
    # When the last probe through each key came.
    _last: dict[K, float] = field(default_factory=dict)

    def mark(self, key: K, now: float) -> bool:
        """A probe went through key's connection at now: True when that starts its hold
        (the caller switches it). Only a probe within `paired` of the one before holds it
        (on): a drain's quick probes on a local path are followed by one a second, which
        let the hold run out."""
        last, self._last[key] = self._last.get(key), now
        if last is None or now - last > self.paired:
            return False
        new = key not in self._until
        self._until[key] = now + self.hold
        return new

    def drop(self, key: K) -> None:
        """key's connection is gone: nothing to restore."""
        self._until.pop(key, None)
        self._last.pop(key, None)

    def due(self, now: float) -> list[K]:
        """Keys whose hold ran out by now, no longer held (the caller restores them)."""
        done = [key for key, until in self._until.items() if until <= now]
        for key in done:
            del self._until[key]
        # Probes long past pair with nothing any more.
        for key in [key for key, at in self._last.items() if now - at > self.paired]:
            del self._last[key]
        return done

    def next_due(self) -> float:
        """When the earliest hold runs out (inf: none held)."""
        return min(self._until.values(), default=math.inf)

    def __contains__(self, key: object) -> bool:
        return key in self._until


@dataclass
class LossWatch:
    """Whether a switched connection sees random loss, from its count of retransmitted
    segments (tcp_info's total_retrans) read now and then."""

    interval: float = LOSSY_S
    _start: float | None = None
    _count: int = 0
    # Per interval passed (the last LOSSY_OF - 1), newest last: whether it retransmitted.
    _lossy: list[bool] = field(default_factory=list)
    _retransmitted: bool = False

    def seen(self, now: float, total_retrans: int) -> bool:
        """The connection's count at now: True once it is lossy (LOSSY_IN of LOSSY_OF)."""
        if self._start is None:
            self._start, self._count = now, total_retrans
            return False
        passed = int((now - self._start) / self.interval)
        if passed > 0:
            # The interval that ended, then any with no reading at all (nothing seen).
            self._lossy += [self._retransmitted] + [False] * (passed - 1)
            self._lossy = self._lossy[-(LOSSY_OF - 1) :]
            self._start += passed * self.interval
            self._retransmitted = False
        if total_retrans > self._count:
            self._retransmitted = True
        self._count = total_retrans
        # The current interval counts as soon as it retransmits.
        return sum(self._lossy) + self._retransmitted >= LOSSY_IN
