"""The governor's decisions (vnet/core/queueing.py), on an injected clock.

A small model of a path stands in for the network: a bottleneck of a fixed rate
with a FIFO in front of it, fed by what the governor lets the bulk tunnels send.
The probes' round trips are the base plus that FIFO's depth over the rate, so
the tests check the controller against the quantity it is meant to hold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from vnet.core import queueing as q
from vnet.core.pacing import Lane, Pacer
from vnet.core.queueing import Governor, Phase

MB = 1_000_000
BASE = 0.050


class Path:
    """A bottleneck of rate bytes/s with a FIFO of `queued` bytes in front of it."""

    def __init__(self, rate: float, queued: float = 0.0) -> None:
        self.rate, self.queued = rate, queued

    def run(self, sent: float, dt: float) -> None:
        self.queued = max(0.0, self.queued + sent - self.rate * dt)

    def rtt(self) -> float:
        return BASE + self.queued / self.rate


class Sim:
    """A bulk tunnel that always has data, sent through g onto path, with an interactive
    tunnel active and one probe in flight at a time; run() moves simulated time on.
    late(), if given, adds to each probe's round trip what the path's queue does not:
    the processes' jitter, a retransmission ahead of the probe on a lossy link."""

    def __init__(self, g: Governor, path: Path, late: Callable[[], float] | None = None) -> None:
        self.g, self.path, self.late = g, path, late
        self.now = 0.0
        self.pending: tuple[float, float] | None = None  # (sent_at, due_at)
        self.frame_debt = 0.0
        self.sent = 0.0

    def run(self, seconds: float) -> None:
        g, path, step = self.g, self.path, 0.001
        end = self.now + seconds
        while self.now < end:
            now = self.now
            g.interactive(now)
            # The bulk tunnel sends a frame whenever the governor has no pause for it.
            self.frame_debt -= step
            if self.frame_debt <= 0:
                size = g.frame(64 * 1024) if g.phase is not Phase.OFF else 512 * 1024
                g.sent("peer", size, now)
                path.run(size, 0.0)
                self.sent += size
                self.frame_debt = max(g.pause(size, now), step)
            path.run(0.0, step)
            if self.pending is None:
                peer = g.probe_due(now)
                if peer is not None:
                    assert peer == "peer"
                    extra = self.late() if self.late is not None else 0.0
                    self.pending = (now, now + path.rtt() + extra)
            elif now >= self.pending[1]:
                g.probed("peer", now - self.pending[0], self.pending[0], now)
                self.pending = None
            self.now += step


def test_off_until_an_interactive_tunnel_and_a_bulk_one_are_both_active() -> None:
    g = Governor()
    g.sent("peer", 512 * 1024, 0.0)
    assert g.pause(512 * 1024, 0.0) == 0.0
    assert g.phase is Phase.OFF
    assert g.probe_due(0.0) is None
    g.interactive(0.1)
    assert g.probe_due(0.1) == "peer"
    assert g.phase is Phase.DRAIN
    # Typing stops: after the hold, bulk runs free again.
    assert g.next_probe_in(0.1 + q.HOLD_S + 0.01) is None
    assert g.phase is Phase.OFF
    assert math.isinf(g.rate)


def test_one_probe_at_a_time_and_not_more_often_than_the_gap() -> None:
    g = Governor()
    g.sent("peer", 100_000, 0.0)
    g.interactive(0.0)
    assert g.probe_due(0.0) == "peer"
    assert g.probe_due(0.001) is None  # the first is still out
    g.probed("peer", 0.001, 0.0, 0.001)
    assert g.probe_due(0.002) is None  # within the gap
    assert g.next_probe_in(0.002) == q.PROBE_GAP_S - 0.002
    assert g.probe_due(q.PROBE_GAP_S) == "peer"


def test_the_probe_goes_through_the_busiest_bulk_tunnels_peer() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("a", 10_000, 0.0)
    g.sent("b", 50_000, 0.0)
    assert g.probe_due(0.0) == "b"
    g.lost()
    # Nothing sent since: the same path again rather than the route alone.
    assert g.probe_due(0.1) == "b"


def test_a_full_queue_is_drained_and_the_base_found() -> None:
    # A download ran alone and filled ~4 MB of queue (330 ms at 12 MB/s).
    path = Path(12 * MB, queued=4 * MB)
    g = Governor()
    for i in range(10):
        g.sent("peer", 524_288, i * 0.1)
    g.interactive(1.0)
    sim = Sim(g, path)
    sim.now = 1.0
    sim.run(3.0)
    assert g.phase is Phase.TRACK
    assert abs(g.base - BASE) < 0.005
    assert path.queued < 12 * MB * g.target * 2


def _settled(path: Path, late: Callable[[], float] | None = None) -> tuple[Sim, list[float]]:
    """A governor from its first probe on path, run 6 s; then 4 s measured: the sim and
    the path's queueing delay every 0.1 s of those 4 s."""
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    sim = Sim(g, path, late)
    sim.run(6.0)
    delays = []
    for _ in range(40):
        sim.run(0.1)
        delays.append(path.rtt() - BASE)
    return sim, delays


def test_tracking_holds_the_delay_near_the_target_at_the_path_rate() -> None:
    path = Path(12 * MB)
    sim, delays = _settled(path)
    sent = sim.sent
    sim.run(4.0)
    assert sim.g.phase is Phase.TRACK
    assert max(delays) < 2 * sim.g.target
    assert sum(delays) / len(delays) < 1.5 * sim.g.target
    # A queue stands throughout, so the link never idles (the law of before held
    # 0.9x with the queue empty half the time).
    assert min(delays) > 0
    assert (sim.sent - sent) / 4.0 > 0.97 * path.rate
    assert sim.g.capacity == pytest.approx(path.rate, rel=0.05)


def test_recover_brings_back_the_estimate_a_collapsed_window_pulled_down() -> None:
    """A connection on cubic over a lossy link carries a fraction of the path for a
    second or two, and the estimate follows it down; once the connection is back on
    its own algorithm (vnet.core.steering), recover() restores the estimate from before."""
    path = Path(12 * MB)
    sim, _ = _settled(path)
    saved = sim.g.capacity
    # Down step by step, as a window halving loss after loss (a sudden drop reads as a stall).
    for share in (0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.06, 0.04):
        path.rate = share * 12 * MB
        sim.run(0.5)
    assert sim.g.capacity < 0.5 * saved
    path.rate = 12 * MB
    sim.g.recover(saved)
    assert sim.g.capacity == saved
    assert sim.g.rate >= saved
    sent = sim.sent
    sim.run(1.0)
    assert sim.sent - sent > 0.9 * path.rate
    # Never lowers it, and only while tracking.
    sim.g.recover(saved / 10)
    assert sim.g.capacity >= 0.5 * saved
    idle = Governor()
    idle.recover(saved)
    assert idle.capacity == 0.0


def test_the_startup_after_the_drain_ends_before_a_queue_of_several_targets() -> None:
    # The law of before grew the rate 12% a probe until the filtered delay showed half
    # the target: a queue of ~130 ms on this path, enough for the p99 of a ping next to
    # the transfer.
    path = Path(12 * MB)
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    sim = Sim(g, path)
    worst = 0.0
    for _ in range(40):
        sim.run(0.1)
        worst = max(worst, path.rtt() - BASE)
    assert not g._startup
    assert worst < 4 * g.target


def _noisy(seed: int, late_share: float) -> Callable[[], float]:
    """Each probe up to 3 ms late (the event loops), and late_share of them 25-55 ms
    more (a retransmission ahead of the probe: profile B's 1% loss)."""
    rng = random.Random(seed)

    def late() -> float:
        extra = rng.random() * 0.003
        if rng.random() < late_share:
            extra += 0.025 + rng.random() * 0.03
        return extra

    return late


def test_late_probes_of_a_lossy_link_do_not_hold_bulk_down() -> None:
    # With a third of the probes late, the law of before cut on each run of them and
    # bulk fell to a fifth of the path (0.35-3 MB/s in the WAN bench's profile B).
    path = Path(12 * MB)
    sim, delays = _settled(path, _noisy(1, 0.3))
    sent = sim.sent
    sim.run(4.0)
    assert (sim.sent - sent) / 4.0 > 0.9 * path.rate
    # The late probes hide the queue now and then: it stays within a few targets,
    # a small part of what the retransmissions themselves cost a keystroke there.
    assert max(delays) < 5 * sim.g.target


def _probe(g: Governor, at: float, delay: float, nbytes: int, rtt: float | None = None) -> None:
    """nbytes sent just before a probe that left at `at` behind a queue of delay s
    (back after rtt, BASE + delay if None)."""
    g.sent("peer", nbytes, at)
    g.probe_due(at)
    back = BASE + delay if rtt is None else rtt
    g.probed("peer", back, at, at + back)


def test_the_estimate_follows_the_queues_slope() -> None:
    g = _tracking(10 * MB)
    # Probes 50 ms apart with 0.6 MB sent between each, the queue ahead of them
    # growing by 2 ms each time: the path drains 0.6 MB in 52 ms, 11.5 MB/s.
    for i in range(15):
        _probe(g, 0.2 + i * 0.05, 0.004 + 0.002 * i, 600_000)
    assert g.capacity == pytest.approx(0.6 * MB / 0.052, rel=0.02)


def test_one_late_probe_is_a_stall_not_a_queue() -> None:
    g = _tracking(10 * MB)
    for t in (0.1, 0.15, 0.2):  # a queue at the target, at the path's rate
        _probe(g, t, g.target, 500_000)
    before = g.capacity
    # A retransmission holds the next one up 200 ms: taken for a queue, that pair
    # would say the path drained 0.5 MB in 250 ms (2 MB/s).
    _probe(g, 0.25, g.target + 0.2, 500_000)
    assert g.delay == pytest.approx(g.target)
    assert g.capacity == before
    # Not grown either, while the newest probe is late.
    assert g.rate == pytest.approx(before)
    # The next pair spans it: 2.6 MB sent in the 0.26 s since the last probe that
    # measured the path, the queue the same: 10 MB/s (the pair from the late probe
    # would say 210: it "drained" 200 ms of queue in 10 ms).
    _probe(g, 0.46, g.target, 2_100_000)
    assert 10 * MB <= g.capacity <= before


def test_the_startup_ends_on_two_probes_in_a_row_over_a_quarter_of_the_target() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)
    assert g._startup
    start = g.capacity
    _probe(g, 0.15, 0, 0)
    assert g.rate == pytest.approx(start * (1 + q.STARTUP_UP))
    # Retransmissions ahead of two probes in a row (a lossy link) are not a queue.
    _probe(g, 0.2, 0.1, 0)
    _probe(g, 0.35, 0.1, 0)
    assert g._startup
    # One probe over it is the processes' jitter as often as a queue.
    _probe(g, 0.5, 0.4 * g.target, 0)
    assert g._startup
    _probe(g, 0.55, 0.4 * g.target, 0)
    assert not g._startup
    assert g.rate <= g.capacity * (1 + q.MAX_UP) + 1


def test_the_rate_is_the_estimate_over_under_the_target_and_under_over_it() -> None:
    g = _tracking(10 * MB)
    g.probed("peer", BASE, 0.2, 0.25)  # no queue
    assert g.rate == pytest.approx(g.capacity * (1 + q.MAX_UP))
    g = _tracking(10 * MB)
    for t in (0.2, 0.25, 0.3):  # three probes at twice the target
        g.probed("peer", BASE + 2 * g.target, t, t + 0.06)
    assert g.rate == pytest.approx(g.capacity * (1 - q.GAIN))


def test_under_the_target_the_estimate_grows_only_while_it_is_used() -> None:
    g = _tracking(10 * MB)
    for i in range(10):  # 0.1 MB per 50 ms: 2 MB/s of the 10 the estimate allows
        _probe(g, 0.2 + i * 0.05, 0.004, 100_000)
    # Nor lowered: a queue that stands while the tunnels have little to send does
    # not say how fast the path drains.
    assert g.capacity == 10 * MB
    for i in range(10, 20):  # 0.5 MB per 50 ms: the estimate in use
        _probe(g, 0.2 + i * 0.05, 0.004, 500_000)
    assert g.capacity > 10 * MB


def test_far_over_the_target_the_estimate_is_cut_once_per_probe_sent_after_it() -> None:
    g = _tracking(10 * MB)
    far = 5 * g.target
    for t in (0.2, 0.25, 0.3):  # at the path's rate: the estimate itself stays
        _probe(g, t, far, 500_000)
    cut = g.capacity
    assert cut == pytest.approx(10 * MB * q.BACKOFF)
    assert g.rate == pytest.approx(cut * (1 - q.GAIN * 4))
    # Sent before that cut took effect (its answer came after): no second cut.
    _probe(g, 0.31, far, 50_000, rtt=BASE + far + 0.2)
    assert g.capacity == pytest.approx(cut, rel=0.05)
    # Sent after it, still far over but falling: the cut is working.
    _probe(g, 0.8, far - 0.005, 0)
    assert g.capacity == pytest.approx(cut, rel=0.05)
    before = g.capacity
    # Rising again: cut again.
    for t in (0.85, 0.9, 0.95):
        _probe(g, t, far + 0.05, 500_000)
    assert g.capacity < before


def test_the_cuts_of_a_stall_that_was_no_queue_are_undone() -> None:
    g = _tracking(10 * MB)
    for t in (0.2, 0.25, 0.3):  # a queue at the target, the tunnels at the rate
        _probe(g, t, g.target, 500_000)
    # The processes stall: four probes 200-300 ms late, one after the other.
    at = last = 0.35
    for late in (0.2, 0.25, 0.3, 0.25):
        _probe(g, at, g.target + late, int(g.rate * 0.05))
        last, at = at, at + BASE + g.target + late
    assert g.capacity < 0.9 * 10 * MB
    # The next is back at the target: 260 ms of queue cannot drain in the ~310 ms
    # since the last probe left while the tunnels sent at about half the path's rate.
    _probe(g, at, g.target, int(g.rate * (at - last)))
    assert g.capacity == pytest.approx(10 * MB, rel=0.05)
    assert g.delay == pytest.approx(g.target)


def test_a_path_that_slows_down_is_followed() -> None:
    path = Path(12 * MB)
    sim, _ = _settled(path)
    path.rate = 6 * MB  # another sender took half
    sim.run(8.0)
    delays = []
    for _ in range(20):
        sim.run(0.1)
        delays.append(path.rtt() - BASE)
    assert sim.g.capacity == pytest.approx(6 * MB, rel=0.1)
    assert max(delays) < 2 * sim.g.target


def _tracking(rate: float) -> Governor:
    """A governor past its drain and startup on a path whose base is BASE, at rate."""
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 2_000_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)  # drained: the base is BASE
    assert g.phase is Phase.TRACK
    g._startup = False
    g._last_probe = None
    g.rate = g.capacity = rate
    g.interactive(0.2)
    return g


def test_the_rate_never_falls_below_the_floor_and_pauses_pay_for_the_bytes() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 1_000, 0.0)
    g.probe_due(0.0)
    assert g.phase is Phase.DRAIN
    assert g.rate == q.FLOOR_RATE
    wait = g.pause(q.MIN_FRAME, 0.0)
    assert abs(wait - q.MIN_FRAME / q.FLOOR_RATE) < 1e-9
    assert g.held_s == wait
    # A tunnel held back counts as sending: governing does not lapse meanwhile.
    g.interactive(wait - 0.01 + q.BULK_IDLE_S)
    assert g.active(wait - 0.01 + q.BULK_IDLE_S)
    # A 512 KiB frame read before governing began is charged as one governed frame.
    assert g.pause(512 * 1024, wait) == wait + q.MIN_FRAME / q.FLOOR_RATE - wait


def test_a_transfer_that_stalls_for_seconds_resumes_paced() -> None:
    # A local sender whose loopback segments were dropped waits out retransmission
    # timeouts of up to seconds; if governing lapsed meanwhile, the transfer would
    # resume unpaced and fill every queue on the path at once.
    g = _tracking(10 * MB)
    g.sent("peer", 64 * 1024, 0.2)
    for t in (0.5, 1.0, 2.0, 3.0):
        g.interactive(t)
        assert g.next_probe_in(t) is not None
    assert g.phase is Phase.TRACK
    assert g.pacing
    assert g.frame(512 * 1024) < 64 * 1024


def test_frames_shrink_with_the_rate_while_governed() -> None:
    g = Governor()
    assert g.frame(64 * 1024) == 64 * 1024  # not governed
    g.rate = 12 * MB
    assert g.frame(64 * 1024) == int(12 * MB * q.FRAME_S)
    g.rate = 1 * MB
    assert g.frame(64 * 1024) == q.MIN_FRAME
    g.rate = 400 * MB
    assert g.frame(64 * 1024) == 64 * 1024


def test_reset_forgets_the_paths() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)
    assert g.phase is Phase.TRACK
    g.reset()
    assert g.phase is Phase.OFF
    assert math.isinf(g.rate)
    g.interactive(1.0)
    g.sent("peer", 100_000, 1.0)
    assert g.probe_due(1.0) == "peer"
    assert g.phase is Phase.DRAIN  # a new connection's base is measured again


def test_the_pacer_exempts_the_interactive_tunnel_and_paces_the_bulk_one() -> None:
    g = Governor()
    woken = []
    pacer = Pacer(governor=g, shared_rate=0)
    pacer.on_interactive = lambda: woken.append(1)
    typing, bulk = Lane(peer="02"), Lane(peer="03")
    pacer.note(typing, 1, 0.0)
    pacer.note(bulk, 512 * 1024, 0.0)
    pacer.note(typing, 1, 0.01)
    pacer.note(typing, 1, 0.02)  # its second small read after the first: interactive
    assert woken
    pacer.note(bulk, 512 * 1024, 0.03)
    # Governing starts (drain): the bulk tunnel reads small frames and waits; the
    # interactive one neither.
    assert g.probe_due(0.03) == "03"
    assert pacer.read_size(bulk, 0.03) == q.MIN_FRAME
    assert pacer.read_size(typing, 0.03) == pacer.bulk
    assert pacer.pause(bulk, 64 * 1024, 0.03) > 0
    assert pacer.pause(typing, 1, 0.03) == 0.0


def test_a_local_path_is_drained_once_then_not_paced_and_probed_seldom() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", 0.0005, i * 0.02, i * 0.02 + 0.0005)
    assert g.phase is Phase.LOCAL
    assert not g.pacing
    assert g.pause(64 * 1024, 0.1) == 0.0
    assert g.frame(512 * 1024) == 512 * 1024
    assert g.next_probe_in(0.1) == pytest.approx(0.0405 + q.LOCAL_PROBE_S - 0.1)
    # Still local a minute on (each probe confirms the base): no new drain.
    for t in (i + 0.5 for i in range(1, 60)):
        g.interactive(t)
        g.sent("peer", 100_000, t)
        assert g.probe_due(t) == "peer"
        g.probed("peer", 0.0006, t, t + 0.0006)
    assert g.phase is Phase.LOCAL


def test_governing_ends_with_the_interactive_tunnel_and_short_bulk_reads_do_not_start_it() -> None:
    g = Governor()
    pacer = Pacer(governor=g, shared_rate=0)
    typing, bulk = Lane(peer="02"), Lane(peer="03")
    for t in (0.0, 0.01, 0.02):
        pacer.note(typing, 1, t)
    pacer.note(bulk, 512 * 1024, 0.03)
    assert g.probe_due(0.03) == "03"
    pacer.closed(typing)
    assert g.next_probe_in(0.04) is None
    assert not g.pacing
    # A transfer whose reads come up short now and then is not someone typing.
    other = Lane(peer="03")
    for t in range(10):
        pacer.note(other, 512 * 1024, 1.0 + t * 0.01)
    pacer.note(other, 100, 1.2)
    pacer.note(other, 100, 1.21)
    pacer.note(other, 100, 1.22)
    assert g.next_probe_in(1.22) is None
