"""The governor's decisions (vnet/core/queueing.py), on an injected clock.

A small model of a path stands in for the network: a bottleneck of a fixed rate
with a FIFO in front of it, fed by what the governor lets the bulk tunnels send.
The probes' round trips are the base plus that FIFO's depth over the rate, so
the tests check the controller against the quantity it is meant to hold.
"""

from __future__ import annotations

import math

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
    tunnel active and one probe in flight at a time; run() moves simulated time on."""

    def __init__(self, g: Governor, path: Path) -> None:
        self.g, self.path = g, path
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
                    self.pending = (now, now + path.rtt())
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


def test_tracking_holds_the_delay_near_the_target_at_near_the_path_rate() -> None:
    path = Path(12 * MB)
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    sim = Sim(g, path)
    sim.run(6.0)
    # Settled: measure the last seconds.
    delays, sent = [], sim.sent
    for _ in range(40):
        sim.run(0.1)
        delays.append(path.rtt() - BASE)
    rate = (sim.sent - sent) / 4.0
    assert g.phase is Phase.TRACK
    assert max(delays) < q.OVERSHOOT * g.target
    assert sum(delays) / len(delays) < 1.5 * g.target
    assert rate > 0.8 * path.rate


def _tracking(rate: float) -> Governor:
    """A governor past its drain and startup on a path whose base is BASE, at rate."""
    g = Governor()
    g.interactive(0.0)
    # 2 MB in one 100 ms: the rate may grow to twice that, 40 MB/s.
    g.sent("peer", 2_000_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)  # drained: the base is BASE
    assert g.phase is Phase.TRACK
    g._startup = False
    g.rate = g._ceiling = rate
    g.interactive(0.2)
    return g


def test_near_the_target_the_rate_moves_in_proportion_both_ways() -> None:
    g = _tracking(10 * MB)
    g.probed("peer", BASE + 0.002, 0.2, 0.25)  # under the target: up, a little
    up = g.rate
    assert 10 * MB < up <= 10 * MB * (1 + q.GAIN_UP)
    for t in (0.25, 0.3, 0.35):  # 1.5x the target, three probes in a row: down
        g.probed("peer", BASE + 1.5 * g.target, t, t + 0.06)
    assert g.rate < up
    assert g.rate > up * (1 - q.GAIN_DOWN) ** 3


def test_far_over_the_target_a_hard_cut_once_per_probe_sent_after_it_and_none_while_falling() -> (
    None
):
    g = _tracking(10 * MB)
    far = BASE + 5 * g.target
    for t in (0.2, 0.21, 0.22):
        g.probed("peer", far, t, t + 0.1)
    cut = g.rate
    assert cut == 10 * MB * q.BACKOFF
    # Sent before that cut took effect: no second cut for the same queue.
    g.probed("peer", far + 0.01, 0.3, 0.5)
    assert g.rate == cut
    # Sent after it, still far over but falling: the cut is working.
    g.probed("peer", far - 0.005, 0.55, 0.6)
    assert g.rate == cut
    # Rising again: cut again.
    for t in (0.6, 0.61, 0.62):
        g.probed("peer", far + 0.05, t, t + 0.2)
    assert g.rate < cut


def test_one_late_probe_is_noise_not_a_queue() -> None:
    g = _tracking(10 * MB)
    g.probed("peer", BASE + 0.2, 0.2, 0.4)
    assert g.delay == 0.0
    # Not cut; not grown either, while the newest probe is late.
    assert g.rate == 10 * MB
    g.probed("peer", BASE, 0.4, 0.45)
    assert g.rate > 10 * MB


def test_startup_grows_fast_but_not_far_ahead_of_what_is_sent() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)  # 1 MB/s in its bucket
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)
    start = g.rate
    g.probed("peer", BASE, 0.15, 0.2)
    assert g.rate == min(start * (1 + q.STARTUP_GROW), q.STARTUP_HEADROOM * g.peak_rate())
    for i in range(50):
        g.probed("peer", BASE, 0.2 + i * 0.05, 0.25 + i * 0.05)
    assert g.rate <= q.STARTUP_HEADROOM * 1_000_000


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
    assert g.active(wait - 0.01 + q.BULK_IDLE_S)
    # A 512 KiB frame read before governing began is charged as one governed frame.
    assert g.pause(512 * 1024, wait) == wait + q.MIN_FRAME / q.FLOOR_RATE - wait


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
