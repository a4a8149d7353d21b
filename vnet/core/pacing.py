"""How big a message a tunnel sends next: bulk transfers yield to interactive traffic.

All of a node's tunnels share one HTTP/2 connection to the route. grpc.aio costs
about the same per message up to a few hundred KiB, so a bulk transfer wants big
messages, though not too big: 1 MiB ones cost every process ~40% more CPU per
byte than 512 KiB ones (docs/BENCHMARKS.md, "Frames and windows"). And every
megabyte queued on the shared connection is a millisecond or more that a
keystroke or a request behind it waits (1 MiB messages put ~8 ms p50 / 24 ms p99
on a ping-pong next to a bulk transfer, 64 KiB messages ~1 ms / 3.5 ms). So a
tunnel reads 512 KiB at a time unless some *other* tunnel of the node has recently shown interactive
traffic, in which case it reads 64 KiB: the bulk transfer slows down only while
someone is typing, and an idle node's single download runs at full speed.

A tunnel counts as interactive from its second small read after the first read:
most protocols open with a small request (an HTTP request line, a length header)
before a bulk body, and a bulk transfer ends with one short read, and neither of
those should slow the node's other transfers. Pure: no asyncio, the caller
passes the time.

Smaller frames alone are not enough where the relay is CPU-bound (this
project's benchmark box: five busy processes on two cores): a ping then waits
for CPU in every process behind bulk frames, and its p99 stays near 11 ms. So
while sharing, the node's bulk tunnels together also keep under a rate
([vnet] bulk_while_interactive, 200 MB/s by default: p99 ~2.5 ms measured),
which leaves the processes idle often enough to answer at once. It is above
most WAN links, so across the internet it rarely binds; 0 turns it off.

Across the internet the wait is in queues below gRPC (socket buffers, the
bottleneck link), which neither smaller frames nor a fixed rate fix: there the
node's Governor (vnet/core/queueing.py) paces the bulk tunnels against the
queueing delay it measures on the path, from the same interactive signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vnet.core.queueing import Governor

# The one constant for a bulk frame's size: measured against 128 KiB, 256 KiB
# and 1 MiB in docs/BENCHMARKS.md ("Frames and windows").
BULK_READ = 512 * 1024
# Each gRPC stream's flow-control window, fixed (docs/DESIGN.md, "Memory"):
# what a peer may send on one stream beyond what its reader has taken. gRPC
# adds the rest of a message being read, so about this plus one BULK_READ is
# in flight per stream: it caps one tunnel at ~3.5 MiB per round trip between
# a node and the route (~36 MB/s at 100 ms; 2 MiB would give ~26, a WAN
# tunnel's floor), and it is most of what a stalled tunnel holds in each
# process (3-7 MiB; the route's total has a budget, vnet/core/budget.py). Fixed
# rather than grown by gRPC's BDP probing, which on loopback grew every
# stream's window to 15-250 MiB once many streams were busy: that much per
# stalled tunnel, in every process on its way.
STREAM_WINDOW = 3 * 1024 * 1024
SHARED_READ = 64 * 1024
# Reads below this are what typing, pings and request/response traffic look like.
INTERACTIVE_BELOW = 16 * 1024
# A tunnel wakes the governor only while its small reads outnumber its large ones
# this many times over.
MOSTLY = 4
# How long one interactive read keeps the bulk tunnels on smaller messages;
# longer than the gap between keystrokes in a burst, short enough that a
# download gets its speed back soon after the typing stops.
HOLD_S = 0.25
# Bytes/s all bulk tunnels of a node may send together while sharing.
SHARED_RATE = 200_000_000
# A pause shorter than this is not taken (the loop's timers are ~1 ms coarse);
# the debt carries over to the next read instead.
MIN_PAUSE_S = 0.001
# How far behind the rate the bulk tunnels may fall and then catch up at once.
BURST_S = 0.002


@dataclass
class Lane:
    """One tunnel's history, as the pacer sees it."""

    reads: int = 0
    small_reads: int = 0
    large_reads: int = 0
    # The vnetid of the node at the tunnel's far end ("" if unknown): where
    # the governor's probes go to time the path this tunnel's bytes take.
    peer: str = ""


class Pacer:
    """One per node, consulted by every tunnel's upstream pump before each read."""

    def __init__(
        self,
        bulk: int = BULK_READ,
        shared: int = SHARED_READ,
        interactive_below: int = INTERACTIVE_BELOW,
        hold: float = HOLD_S,
        shared_rate: float = SHARED_RATE,
        governor: Governor | None = None,
    ) -> None:
        self.bulk = bulk
        # 0: no rate limit while sharing, only the smaller reads.
        self.shared_rate = shared_rate
        self.shared = shared
        self.interactive_below = interactive_below
        self.hold = hold
        self._interactive_at = float("-inf")
        self._interactive_lane: Lane | None = None
        # Reads held to the shared size: how often bulk yielded (a metric).
        self.yielded = 0
        # The time by which the bulk bytes sent while sharing are paid for.
        self._paid_until = float("-inf")
        # None: bulk tunnels are not governed by the path's queueing delay.
        self.governor = governor
        # Called when a tunnel turns interactive (the node wakes its prober).
        self.on_interactive: Callable[[], None] | None = None

    def read_size(self, lane: Lane, now: float) -> int:
        """How much lane may read (and send as one message) now."""
        if lane is self._interactive_lane:
            return self.bulk
        if self.governor is not None and self.governor.pacing:
            self.yielded += 1
            return self.governor.frame(self.shared)
        if now - self._interactive_at < self.hold:
            self.yielded += 1
            return self.shared
        return self.bulk

    def note(self, lane: Lane, nbytes: int, now: float) -> None:
        """Record that lane read nbytes (> 0) at now."""
        lane.reads += 1
        if nbytes >= self.interactive_below:
            lane.large_reads += 1
            if self.governor is not None and lane is not self._interactive_lane:
                self.governor.sent(lane.peer, nbytes, now)
            return
        if lane.reads == 1:
            return
        lane.small_reads += 1
        if lane.small_reads < 2:
            return
        self._interactive_at = now
        self._interactive_lane = lane
        # The governor paces bulk for minutes at a time, so it wants a tunnel that is
        # mostly small reads: a bulk transfer whose reads come up short now and then
        # (a busy box, 8 transfers at once) is not someone typing.
        if self.governor is not None and lane.small_reads > MOSTLY * lane.large_reads:
            self.governor.interactive(now)
            if self.on_interactive is not None:
                self.on_interactive()

    def closed(self, lane: Lane) -> None:
        """lane's tunnel ended: if it was the interactive one, nobody types any more
        (the benchmark's ping-pong ends and its transfer starts at once, and a 2 s
        hold would pace a transfer next to no interactive tunnel at all)."""
        if lane is self._interactive_lane:
            self._interactive_lane = None
            self._interactive_at = float("-inf")
            if self.governor is not None:
                self.governor.quiet()

    def pause(self, lane: Lane, nbytes: int, now: float) -> float:
        """Seconds lane should wait after sending nbytes (0: go on), to keep the
        node's bulk tunnels under shared_rate while another tunnel is interactive."""
        if lane is self._interactive_lane:
            return 0.0
        governed = self.governor.pause(nbytes, now) if self.governor is not None else 0.0
        if not self.shared_rate or not self.sharing(now):
            return governed
        self._paid_until = max(self._paid_until, now - BURST_S) + nbytes / self.shared_rate
        wait = self._paid_until - now
        return max(governed, wait if wait >= MIN_PAUSE_S else 0.0)

    def sharing(self, now: float) -> bool:
        """Whether bulk tunnels are on the smaller messages now (for tests and metrics)."""
        return now - self._interactive_at < self.hold
