"""The governor's decisions (vnet/core/queueing.py), on an injected clock.

A small model of a path stands in for the network: a bottleneck of a fixed rate
with a FIFO in front of it, fed by what the governor lets the bulk tunnels send.
The probes' round trips are the base plus that FIFO's depth over the rate, so
the tests check the controller against the quantity it is meant to hold.
"""

from __future__ import annotations

import math

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


def drive(
    g: Governor, path: Path, seconds: float, now: float = 0.0, offered: float = math.inf
) -> float:
    """Run a bulk tunnel that always has data (up to offered bytes/s) through g onto
    path for seconds of simulated time, with an interactive tunnel active and one
    probe per round trip. Returns the time at the end."""
    step = 0.001
    end = now + seconds
    pending: tuple[float, float] | None = None  # (sent_at, due_at)
    frame_debt = 0.0
    while now < end:
        g.interactive(now)
        # The bulk tunnel sends a frame whenever the governor has no pause for it.
        frame_debt -= step
        if frame_debt <= 0:
            size = g.frame(64 * 1024) if g.phase is not Phase.OFF else 512 * 1024
            if not math.isinf(offered):
                size = min(size, int(offered * step) + 1)
            g.sent("peer", size, now)
            path.run(size, 0.0)
            frame_debt = max(g.pause(size, now), step)
        path.run(0.0, step)
        if pending is None:
            peer = g.probe_due(now)
            if peer is not None:
                assert peer == "peer"
                pending = (now, now + path.rtt())
        elif now >= pending[1]:
            g.probed("peer", now - pending[0], pending[0], now)
            pending = None
        now += step
    return now


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
    drive(g, path, 3.0, now=1.0)
    assert g.phase is Phase.TRACK
    assert abs(g.base - BASE) < 0.005
    assert path.queued < 12 * MB * g.target * 2


def test_tracking_holds_the_delay_near_the_target_at_near_the_path_rate() -> None:
    path = Path(12 * MB)
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    now = drive(g, path, 6.0)
    # Settled: measure the last seconds.
    delays, rates = [], []
    for _ in range(40):
        now = drive(g, path, 0.1, now)
        delays.append(path.rtt() - BASE)
        rates.append(g.rate)
    assert g.phase is Phase.TRACK
    assert max(delays) < 3 * g.target
    assert sum(delays) / len(delays) < 1.5 * g.target
    assert sum(rates) / len(rates) > 0.85 * path.rate


def test_no_cut_while_the_delay_falls_and_at_most_one_per_probe_sent_after_a_cut() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 100_000, 0.0)
    g.probe_due(0.0)
    g.probed("peer", BASE, 0.0, 0.05)
    g.probed("peer", BASE, 0.05, 0.10)
    g.probed("peer", BASE, 0.10, 0.15)  # drained: the base is BASE
    assert g.phase is Phase.TRACK
    g.rate = 10 * MB
    g.interactive(0.2)
    g.probed("peer", BASE + 0.06, 0.15, 0.21)
    g.probed("peer", BASE + 0.06, 0.16, 0.22)  # two high probes: filtered delay high
    cut = g.rate
    assert cut < 10 * MB
    # Sent before that cut took effect: no second cut for the same queue.
    g.probed("peer", BASE + 0.08, 0.20, 0.28)
    assert g.rate == cut
    # Sent after it, delay still high but falling: the cut is working.
    g.probed("peer", BASE + 0.03, 0.25, 0.30)
    g.probed("peer", BASE + 0.02, 0.30, 0.35)
    assert g.rate == cut
    # Rising again after the cut: cut again.
    g.probed("peer", BASE + 0.04, 0.36, 0.40)
    g.probed("peer", BASE + 0.05, 0.40, 0.45)
    assert g.rate < cut


def test_one_late_probe_is_noise_not_a_queue() -> None:
    g = Governor()
    g.interactive(0.0)
    # 2 MB in one 100 ms: the rate may grow to twice that, 40 MB/s.
    g.sent("peer", 2_000_000, 0.0)
    g.probe_due(0.0)
    for i in range(3):
        g.probed("peer", BASE, i * 0.05, i * 0.05 + 0.05)
    g.rate = 10 * MB
    g.interactive(0.2)
    g.probed("peer", BASE + 0.2, 0.2, 0.4)
    assert g.delay == 0.0
    assert g.rate > 10 * MB


def test_the_rate_never_falls_below_the_floor_and_pauses_pay_for_the_bytes() -> None:
    g = Governor()
    g.interactive(0.0)
    g.sent("peer", 1_000, 0.0)
    g.probe_due(0.0)
    assert g.phase is Phase.DRAIN
    assert g.rate == q.FLOOR_RATE
    wait = g.pause(64 * 1024, 0.0)
    assert abs(wait - 64 * 1024 / q.FLOOR_RATE) < 1e-9
    assert g.held_s == wait
    # A tunnel held back counts as sending: governing does not lapse meanwhile.
    assert g.active(wait - 0.01 + q.BULK_IDLE_S)


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
