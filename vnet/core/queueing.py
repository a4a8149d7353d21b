"""Keeping the queue short on a node's path while someone types: a delay-based rate
for the node's bulk tunnels.

On a real link the wait behind a download is not CPU but bytes queued ahead of a
keystroke: the sending node's socket buffer (the kernel grows it to megabytes), the
bottleneck link's buffer, the route's socket toward the receiving node. Measured on
an emulated 50 ms / 100 Mbit/s path, a 1-byte ping-pong next to an upload took
~450 ms where the bare round trip is 52 ms, with ~2 MB unsent in the office node's
socket and ~1.8 MB in the route's socket toward home. Smaller frames do not help
(the bytes are queued below gRPC), and a fixed rate is wrong on every link but one.
The node owns the sender, so it can keep those queues short itself: send bulk
bytes only as fast as the path drains them.

How (LEDBAT's delay signal, RFC 6817, with BBR's idea of pacing at the path's
estimated rate, and a drain phase like BBR's). While an interactive tunnel is active
and bulk tunnels are sending, the node times a probe every round trip through the
route and the peer node of its busiest bulk tunnel (a Ping with via: it crosses the
same sockets and links as the tunnel's frames). The queueing delay is that round
trip minus the lowest one seen on that path (the base). From two probes in a row
and the bytes sent between them the node estimates the path's rate (see
_estimate), and the bulk tunnels together get that rate, a little more while the
delay is under the target and less above it: the queue rests at the target with the
link busy, where a rate that only reacts to the delay kept crossing the path's rate
and building a queue each time. When governing starts, the queues are still full of
the transfer's bytes and no base is known: the rate drops to a tenth of what the
bulk tunnels were sending until the round trip stops falling, and the lowest one
seen then is the base; from there a startup grows the rate fast until a queue
shows. A base not confirmed for REBASE_S is measured again the same way (the path
may have changed). Nothing of this runs while no interactive tunnel exists: a lone
download is never paced, so it keeps the whole link on any bandwidth-delay product.

Pure: the caller passes the time, the probe results and the bytes sent.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

# Queueing delay the bulk tunnels may build while someone types. A few ms keeps the
# bottleneck busy (a standing queue means the link never idles) and stays well
# under what a person notices; it must exceed the probes' own jitter (the three
# processes' event loops, ~1-3 ms on a busy box).
TARGET_S = 0.012
# How long governing lasts after the last interactive read: longer than the gap
# between a ping-pong's reads when the queue is full (hundreds of ms), so the
# governor is not switched off by the very queue it is draining.
HOLD_S = 2.0
# Bulk tunnels count as sending if they sent within this. Longer than the stalls
# of a local sender whose loopback segments the kernel dropped (a paced reader
# lets its socket's receive queue fill; `ss` showed 0.7-4.9 MB retransmitted on
# the benchmark's loopback upload, and its retransmission timeout backs off to
# seconds): governing that lapsed in such a stall let the resumed transfer go
# out unpaced, 512 KiB frames into every buffer on the way, and drained again.
BULK_IDLE_S = 5.0
# At most this many probes a second on a short path.
PROBE_GAP_S = 0.02
# The rate while draining, as a share of what the bulk tunnels sent before: next
# to nothing, so the queues empty at the link's own rate and the drain is short.
DRAIN_SHARE = 0.1
# A drain ends after this even if the round trip keeps falling.
DRAIN_MAX_S = 3.0
# Probes in a row that no longer fall before a drain ends.
FLAT_PROBES = 2
# Re-measure a base not seen again within this.
REBASE_S = 30.0
# The rate is the path's estimated rate times 1 + GAIN x (target - delay) / target,
# within 1 - MAX_DOWN and 1 + MAX_UP: 10% over the estimate with no queue (which is
# also how fast the estimate grows while nothing queues: the startup), the estimate
# itself at the target, 30% under it at four targets.
GAIN = 0.1
MAX_UP = 0.1
MAX_DOWN = 0.5
# Under the target the estimate itself grows by up to GROW a probe, if the bulk
# tunnels sent at least USED of the rate (not if they have less to send).
GROW = 0.03
USED = 0.9
# After a drain the rate runs this far ahead of the estimate (which grows with what
# gets through) until STARTUP_PROBES probes in a row show STARTUP_UNTIL of the target.
STARTUP_UP = 0.25
STARTUP_UNTIL = 0.25
STARTUP_PROBES = 2
# Past this many targets of delay the estimate is lowered by BACKOFF (once per probe
# sent after the last time): the path's rate has fallen, or another sender joined.
OVERSHOOT = 4
BACKOFF = 0.85
# The estimate: each pair of probes with a queue ahead of both (QUEUED_S or more,
# over the probes' own jitter) measures the path's rate; the estimate moves EST_GAIN
# of the way to it, each sample held within EST_CLAMP of the estimate.
QUEUED_S = 0.003
EST_GAIN = 0.125
EST_CLAMP = 1.3
# A fall of the delay that would take a path this many times the estimate is the
# end of a stall, not a queue drained (see _unstall).
UNSTALL = 2.0
# A probe this far over the lowest of the last FILTER is a stall (see _estimate).
STALL_S = 2 * TARGET_S
# The rate never falls below this: bulk slows, it never stops.
FLOOR_RATE = 256 * 1024
# The sending rate is counted in buckets of this length, over BUCKETS of them.
BUCKET_S = 0.1
BUCKETS = 20
# How far behind the rate the bulk tunnels may fall and then catch up at once. Each
# send itself takes time (the write's completion comes back through gRPC's
# poller), and a debt forgotten after every slow write would halve the rate.
BURST_S = 0.015
# The delay is the lowest of the last this many probes: one late probe (an event
# loop busy elsewhere for a moment) is noise; a queue shows in every probe.
FILTER = 3
# While governed, a bulk frame carries about this much of the rate: on a 100 Mbit/s
# link a 64 KiB frame is 5 ms on the wire, and bursts of them put that much queue
# in front of a keystroke (measured: ~10 ms of delay at 60% of the link rate, and
# the governor cut the rate to hold it). 16 KiB frames held it at ~4 ms up to 90%.
FRAME_S = 0.0015
MIN_FRAME = 16 * 1024
# A path whose base round trip is under this (loopback, a LAN; a loaded loopback
# answers probes in 1-5 ms) is not paced: its
# queues drain at LAN speed, a keystroke there waits on CPU rather than on bytes
# (the pacer's bulk_while_interactive covers that), and pacing it cost iperf3 a
# sixth of one stream's rate on loopback (its control connection is interactive).
# Such a path is probed once a LOCAL_PROBE_S, to notice if it stops being local.
LOCAL_RTT_S = 0.005
LOCAL_PROBE_S = 1.0
# A pause shorter than this is not taken (the loop's timers are ~1 ms coarse).
MIN_PAUSE_S = 0.001


class Phase(enum.Enum):
    OFF = "off"  # no interactive tunnel, or no bulk: nothing is paced
    DRAIN = "drain"  # emptying the queues to find the base round trip
    TRACK = "track"  # holding the queueing delay near the target
    LOCAL = "local"  # a path of under LOCAL_RTT_S: not paced (see LOCAL_RTT_S)


@dataclass
class _Base:
    rtt: float
    seen: float  # when a probe last came within the target of it


@dataclass
class Governor:
    """One per node: the bulk tunnels' common rate while an interactive one is active."""

    target: float = TARGET_S
    hold: float = HOLD_S
    local_rtt: float = LOCAL_RTT_S
    phase: Phase = Phase.OFF
    # Bytes/s the bulk tunnels may send now (inf while OFF).
    rate: float = math.inf
    # The last probe's queueing delay, and its path's base (for metrics and show).
    delay: float = 0.0
    base: float = 0.0
    # Totals for the metrics: seconds of pause asked of bulk tunnels, probes taken.
    held_s: float = 0.0
    probes: int = 0
    _interactive_at: float = -math.inf
    _bulk_at: float = -math.inf
    _buckets: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    _bucket_at: int = 0
    _by_peer: dict[str, int] = field(default_factory=dict)
    _peer: str = ""
    _bases: dict[str, _Base] = field(default_factory=dict)
    _probe_out: bool = False
    _next_probe: float = -math.inf
    _paid_until: float = -math.inf
    _cut_at: float = -math.inf
    _drain_at: float = 0.0
    _drain_min: float = math.inf
    # The path's estimated rate, bytes/s (see _estimate).
    capacity: float = 0.0
    _startup: bool = False
    # Probes in a row (stalls aside) with STARTUP_UNTIL of the target or more.
    _queued: int = 0
    # Whether the bulk tunnels sent under USED of the rate between the last two
    # probes (they had no more to send), or the pair measured nothing.
    _limited: bool = True
    # Bytes the bulk tunnels sent in all, and that count when the probe out left.
    _sent_total: int = 0
    _probe_bytes: int = 0
    # The last probe in TRACK: (sent_at, _probe_bytes, its queueing delay).
    _last_probe: tuple[float, int, float] | None = None
    # The estimate before the far-over cuts of the current episode (see _unstall),
    # and the last probe's (sent_at, delay).
    _before_cuts: float | None = None
    _prev: tuple[float, int, float] | None = None
    _recent: list[float] = field(default_factory=list)
    _resume_rate: float = FLOOR_RATE
    _flat: int = 0

    # --- what the tunnels tell it -----------------------------------------

    def interactive(self, now: float) -> None:
        """An interactive tunnel read at now."""
        self._interactive_at = now

    def quiet(self) -> None:
        """The interactive tunnel ended: governing ends with the next call."""
        self._interactive_at = -math.inf

    def sent(self, peer: str, nbytes: int, now: float) -> None:
        """A bulk tunnel toward peer (a vnetid, "" if unknown) sent nbytes at now."""
        self._bulk_at = now
        self._roll(now)
        self._buckets[self._bucket_at % BUCKETS] += nbytes
        self._sent_total += nbytes
        self._by_peer[peer] = self._by_peer.get(peer, 0) + nbytes

    def pause(self, nbytes: int, now: float) -> float:
        """Seconds a bulk tunnel should wait after sending nbytes (0: go on)."""
        self._update(now)
        if not self.pacing:
            return 0.0
        # A frame read before governing began (up to 512 KiB) is charged as one
        # governed frame: at the drain's rate its full size would stall the
        # tunnel for seconds, for bytes that went out before the rate existed.
        charged = min(nbytes, self.frame(nbytes))
        self._paid_until = max(self._paid_until, now - BURST_S) + charged / self.rate
        wait = self._paid_until - now
        if wait < MIN_PAUSE_S:
            return 0.0
        self.held_s += wait
        # A tunnel held back is still a bulk tunnel sending.
        self._bulk_at = max(self._bulk_at, self._paid_until)
        return wait

    # --- probes -----------------------------------------------------------

    def probe_due(self, now: float) -> str | None:
        """The peer to probe through now ("" for the route alone), or None: no probe due."""
        self._update(now)
        if self.phase is Phase.OFF or self._probe_out or now < self._next_probe:
            return None
        self._probe_out = True
        self._probe_bytes = self._sent_total
        if self._by_peer:
            self._peer = max(self._by_peer, key=self._by_peer.__getitem__)
            self._by_peer.clear()
        return self._peer

    @property
    def pacing(self) -> bool:
        """Whether bulk tunnels are paced (and read governed frames) now."""
        return self.phase is Phase.DRAIN or self.phase is Phase.TRACK

    def frame(self, largest: int) -> int:
        """How much a bulk tunnel reads (and sends as one message) while governed."""
        if math.isinf(self.rate):
            return largest
        return max(MIN_FRAME, min(largest, int(self.rate * FRAME_S)))

    def next_probe_in(self, now: float) -> float | None:
        """Seconds until a probe may be due; None while governing is off."""
        self._update(now)
        if self.phase is Phase.OFF:
            return None
        return max(0.0, self._next_probe - now)

    def probed(self, path: str, rtt: float, sent_at: float, now: float) -> None:
        """A probe sent at sent_at over path (a peer's vnetid, or "" for the route
        alone) came back after rtt seconds."""
        self._probe_out = False
        self.probes += 1
        self._next_probe = sent_at + PROBE_GAP_S
        if self.phase is Phase.OFF:
            return
        base = self._bases.get(path)
        if self.phase is Phase.DRAIN:
            self._draining(path, rtt, now)
            return
        if base is None or now - base.seen > REBASE_S:
            self._start_drain(now)
            self._draining(path, rtt, now)
            return
        if self.phase is Phase.LOCAL:
            self._next_probe = sent_at + LOCAL_PROBE_S
            if rtt - base.rtt <= self.target:
                base.seen = now
            return
        if rtt < base.rtt:
            base.rtt = rtt
        self._recent = [*self._recent[-(FILTER - 1) :], rtt]
        self.base = base.rtt
        before, self.delay = self.delay, min(self._recent) - base.rtt
        latest = rtt - base.rtt
        if self.delay <= self.target:
            base.seen = now
        # Far over the lowest of the last few: a stall (see _estimate), not a queue.
        stalled = latest > self.delay + STALL_S
        if not stalled:
            over = latest >= STARTUP_UNTIL * self.target
            self._queued = self._queued + 1 if over else 0
        self._unstall(sent_at, latest, rtt)
        if not stalled:
            self._estimate(sent_at, latest)
        # Far over: a queue of several targets (the path's rate fell, or another
        # sender joined): the estimate is too high. Lower it once per probe that left
        # after the last cut (earlier ones sat in the queue that cut drains), and not
        # while the delay already falls.
        far = self.delay > OVERSHOOT * self.target
        if far and sent_at > self._cut_at and self.delay >= before:
            if self._before_cuts is None:
                self._before_cuts = self.capacity
            self.capacity = max(FLOOR_RATE, self.capacity * BACKOFF)
            self._cut_at = now
        elif self.delay <= self.target:
            self._before_cuts = None
        if self._startup and (stalled or self._queued < STARTUP_PROBES):
            # From the drain's rate up, fast, until a queue begins to show (as
            # HyStart ends slow start on a rising delay, before the overshoot):
            # the estimate follows what got through, STARTUP_UP ahead of it. The
            # newest two probes, not the filter's three: at 25% over the path a
            # queue grows a target a probe, and a late end is a queue of several;
            # one probe alone would end it on noise, and a stall (a lossy link's
            # retransmission) does not count at all.
            self.rate = max(FLOOR_RATE, self.capacity * (1 + STARTUP_UP))
            return
        self._startup = False
        # The rate is the path's estimated rate, a little over it while the delay is
        # under the target and under it above: the queue settles at the target (a
        # proportional controller on the queue, anchored to the estimate, so that
        # the path's own rate is where it rests rather than a point it oscillates
        # around). Not over the estimate while the newest probe is over the target:
        # a queue that has begun to build stops growth at once, not FILTER probes on.
        err = (self.target - self.delay) / self.target
        if err > 0 and latest > self.target:
            err = 0.0
        if err > 0 and not self._limited:
            # Under the target with the estimate in use: the path may carry more
            # than the estimate (it was lowered by noise, or the path got faster).
            # Only a queue measures the path, so grow until one shows, slowly; the
            # slope of the queue corrects any excess within a few probes.
            self.capacity *= 1 + GROW * err
        factor = min(1 + MAX_UP, max(1 - MAX_DOWN, 1 + GAIN * err))
        self.rate = max(FLOOR_RATE, self.capacity * factor)

    def _unstall(self, sent_at: float, latest: float, rtt: float) -> None:
        """Undo the cuts of a run of late probes that were no queue.

        A queue drains at the path's rate C: between two probes' departures dt
        apart, with `sent` bytes sent meanwhile, the delay ahead of a probe falls by
        at most dt - sent / C. A fall so fast that it would take a path more than
        UNSTALL times the estimate means the round trips before it were not a
        queue but a stall of the processes or the connection (a box short of CPU
        stalls them for hundreds of ms, several probes in a row): the estimate the
        far-over cuts lowered meanwhile is restored, and the filter forgets them.
        """
        last, self._prev = self._prev, (sent_at, self._probe_bytes, latest)
        if last is None or self._before_cuts is None:
            return
        at, nbytes, before = last
        drained = sent_at - at + latest - before
        if drained * UNSTALL * self._before_cuts < self._probe_bytes - nbytes:
            self.capacity = max(self.capacity, self._before_cuts)
            self._before_cuts = None
            self._recent = [rtt]
            self.delay = latest

    def _estimate(self, sent_at: float, latest: float) -> None:
        """The path's rate from this probe and the last one before it.

        Between two probes' departures the bulk tunnels sent `sent` bytes and the
        queue ahead of a probe went from d1 to d2 seconds of the path's rate C.
        While a queue stood throughout, the path drained C x dt of it, so
        C x (dt + d2 - d1) = sent: the delivery rate, seen from the sender alone.
        With no queue at the start, the path idled for part of dt, and carried at
        least sent - C x d2: C >= sent / (dt + d2), which is how the estimate grows.
        A probe more than STALL_S over the lowest of the last few is a stall (a
        retransmission ahead of it on the connection), not the queue: the caller
        skips it, and the next pair spans it.
        """
        last, self._last_probe = self._last_probe, (sent_at, self._probe_bytes, latest)
        self._limited = True
        if last is None:
            return
        at, nbytes, d1 = last
        dt, sent, d2 = sent_at - at, self._probe_bytes - nbytes, latest
        if dt <= 0:
            return
        # The rate in force since the last probe (this one's law has not run yet).
        self._limited = sent / dt < USED * self.rate
        if d1 < QUEUED_S:
            self.capacity = max(self.capacity, sent / (dt + d2))
            return
        # dt + d2 - d1 > 0: a queue that fell by more than dt would have drained
        # faster than the path runs.
        sample = sent / max(dt + d2 - d1, dt / EST_CLAMP)
        sample = min(EST_CLAMP * self.capacity, max(self.capacity / EST_CLAMP, sample))
        if sample < self.capacity and self._limited:
            # Sending less than the estimate allows (nothing more to send): a
            # queue that stands meanwhile is not ours to measure the path by (as
            # BBR takes an app-limited sample only if it raises the estimate).
            return
        self.capacity = max(FLOOR_RATE, self.capacity + EST_GAIN * (sample - self.capacity))

    def recover(self, capacity: float) -> None:
        """The path's estimate goes back up to `capacity` (one taken earlier).

        For a connection whose congestion control held it below the path for a while
        (vnet.core.steering: a loss-based one on a lossy link, since switched back):
        what the probes measured meanwhile was that window, not the path.
        """
        if self.phase is not Phase.TRACK or capacity <= self.capacity:
            return
        self.capacity = capacity
        self.rate = max(FLOOR_RATE, capacity)
        self._before_cuts = None

    def lost(self) -> None:
        """The probe failed (no answer, the peer left): the next one may go."""
        self._probe_out = False

    def halt(self) -> None:
        """Off for good: nothing times the path any more (the prober failed)."""
        self.hold = -math.inf
        self.phase, self.rate = Phase.OFF, math.inf

    def reset(self) -> None:
        """A new connection to the route: the paths and their bases are new."""
        self._bases.clear()
        self._by_peer.clear()
        self._probe_out = False
        self.phase, self.rate = Phase.OFF, math.inf

    # --- state --------------------------------------------------------------

    def sending_rate(self, now: float) -> float:
        """What the bulk tunnels sent per second over the last second (the current
        bucket excluded: it has only just begun)."""
        self._roll(now)
        last = [self._buckets[(self._bucket_at - i) % BUCKETS] for i in range(1, 11)]
        return sum(last) / (BUCKET_S * len(last))

    def active(self, now: float) -> bool:
        return now - self._interactive_at < self.hold and now - self._bulk_at < BULK_IDLE_S

    def _update(self, now: float) -> None:
        active = self.active(now)
        if self.phase is Phase.OFF and active:
            self._roll(now)
            self._start_drain(now)
        elif self.phase is not Phase.OFF and not active:
            self.phase, self.rate = Phase.OFF, math.inf
            self._probe_out = False

    def _start_drain(self, now: float) -> None:
        # Where tracking starts once drained: what the bulk tunnels were sending.
        self._resume_rate = max(FLOOR_RATE, self.sending_rate(now))
        self.phase = Phase.DRAIN
        self.rate = max(FLOOR_RATE, DRAIN_SHARE * self._resume_rate)
        self._drain_at, self._drain_min, self._flat = now, math.inf, 0
        # Not held to the pre-drain schedule: the debt of unpaced sending is not ours.
        self._paid_until = now

    def _draining(self, path: str, rtt: float, now: float) -> None:
        # Still falling: by more than the target below the lowest so far.
        if rtt < self._drain_min - self.target:
            self._flat = 0
        else:
            self._flat += 1
        self._drain_min = min(self._drain_min, rtt)
        self.delay = max(0.0, rtt - self._drain_min)
        if self._flat >= FLAT_PROBES or now - self._drain_at > DRAIN_MAX_S:
            self._bases[path] = _Base(self._drain_min, now)
            self.base = self._drain_min
            if self._drain_min < self.local_rtt:
                self.phase, self.rate = Phase.LOCAL, math.inf
                self._next_probe = now + LOCAL_PROBE_S
                return
            self.phase = Phase.TRACK
            # What the bulk tunnels sent before: a floor for the path's rate. From
            # there it grows while nothing queues, as fast as the law lets the rate.
            self.capacity = self._resume_rate
            self.rate = self._resume_rate
            self._last_probe = self._prev = self._before_cuts = None
            self._startup = True
            self._queued = 0
            self._paid_until = now
            self._cut_at = now
            # The last probe counts in the filter, so one late probe right after
            # the drain is filtered like any other.
            self._recent = [rtt]

    def _roll(self, now: float) -> None:
        """Move the sending-rate buckets on to now's, emptying the ones passed."""
        at = int(now / BUCKET_S)
        if at == self._bucket_at:
            return
        for i in range(max(self._bucket_at + 1, at - BUCKETS + 1), at + 1):
            self._buckets[i % BUCKETS] = 0
        self._bucket_at = at
