"""The UDP rules of vnet/core/udp.py: pure, the clock passed in."""

from __future__ import annotations

from vnet.core.udp import (
    DatagramQueue,
    Drop,
    IdleClock,
    Slots,
    Throttle,
    UdpCounters,
    take_both,
)


def test_queue_drops_its_oldest_by_count() -> None:
    queue = DatagramQueue(max_items=3, max_bytes=1000)
    assert [queue.push(d) for d in (b"a", b"b", b"c")] == [0, 0, 0]
    assert queue.push(b"d") == 1
    assert [queue.pop() for _ in range(4)] == [b"b", b"c", b"d", None]
    assert queue.nbytes == 0


def test_queue_drops_its_oldest_by_bytes() -> None:
    queue = DatagramQueue(max_items=100, max_bytes=10)
    queue.push(b"12345")
    queue.push(b"6789")
    assert queue.push(b"abc") == 1  # 5 + 4 + 3 > 10: the oldest goes
    assert len(queue) == 2
    assert queue.nbytes == 7
    # A datagram larger than the whole bound still passes, alone.
    assert queue.push(b"x" * 50) == 2
    assert queue.pop() == b"x" * 50


def test_idle_clock_follows_the_last_datagram() -> None:
    clock = IdleClock(60, now=100.0)
    assert clock.deadline == 160.0
    assert not clock.expired(159.9)
    clock.touch(150.0)
    assert not clock.expired(160.0)
    assert clock.expired(210.0)


def test_slots_cap_the_use_and_the_node_together() -> None:
    use, node = Slots(2), Slots(3)
    assert take_both(use, node) is None
    assert take_both(use, node) is None
    assert take_both(use, node) is use  # the use's cap
    assert node.used == 2
    other = Slots(5)
    assert take_both(other, node) is None
    assert take_both(other, node) is node  # the node's cap, and other's slot given back
    assert other.used == 1
    use.give()
    node.give()
    assert take_both(use, node) is None


def test_throttle_logs_once_per_interval_and_counts_the_rest() -> None:
    throttle = Throttle(every=10)
    assert throttle.due(0) == 0
    assert throttle.due(1) is None
    assert throttle.due(9.9) is None
    assert throttle.due(10) == 2
    assert throttle.due(25) == 0


def test_counters_summary_names_every_drop_reason() -> None:
    counters = UdpCounters()
    counters.drop(Drop.OVERSIZE)
    counters.drop(Drop.FLOW_LIMIT, 3)
    summary = counters.summary()
    assert "queue_full 0, oversize 1, flow_limit 3" in summary
