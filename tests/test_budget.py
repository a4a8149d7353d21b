"""The route's memory budget: who is over, and which tunnel gives way (vnet/core/budget.py)."""

from __future__ import annotations

import pytest

from vnet.core.budget import GRACE_S, MIB, Budget
from vnet.core.config import Checked, RouteSettings, check_route_config, parse_route_config


def test_holds_within_the_limits_reset_nothing_and_released_holds_free_their_bytes() -> None:
    budget = Budget(total=10 * MIB, per_node=6 * MIB)
    assert budget.hold("a1", "A", "x", 3 * MIB, now=0.0) == []
    assert budget.hold("b1", "B", "y", 3 * MIB, now=1.0) == []
    assert budget.held == 6 * MIB
    budget.release("a1")
    budget.release("a1")  # a pump ending after its tunnel was dropped: no harm
    assert budget.held == 3 * MIB
    assert budget.node_held("x") == 0
    # A new hold of the same key replaces the last one, it does not add to it.
    assert budget.hold("b1", "B", "y", 2 * MIB, now=2.0) == []
    assert budget.held == budget.node_held("y") == 2 * MIB


def test_a_node_over_its_share_loses_its_longest_stalled_tunnel_not_another_nodes() -> None:
    budget = Budget(total=100 * MIB, per_node=8 * MIB)
    budget.hold("other", "O", "victim-node", 4 * MIB, now=0.0)  # the oldest, but not x's
    budget.hold("s1", "S1", "x", 4 * MIB, now=1.0)
    budget.hold("s2", "S2", "x", 4 * MIB, now=2.0)
    reset = budget.hold("s3", "S3", "x", 1 * MIB, now=3.0)
    assert [tunnel for tunnel, _ in reset] == ["S1"]
    assert "share" in reset[0][1]
    assert budget.node_held("x") == 5 * MIB
    assert budget.node_held("victim-node") == 4 * MIB


def test_over_the_total_the_longest_stalled_tunnel_goes_whichever_node_it_is() -> None:
    budget = Budget(total=10 * MIB, per_node=8 * MIB)
    budget.hold("a", "A", "x", 4 * MIB, now=5.0)
    budget.hold("b", "B", "y", 4 * MIB, now=1.0)
    reset = budget.hold("c", "C", "z", 4 * MIB, now=6.0)
    assert [tunnel for tunnel, _ in reset] == ["B"]
    assert "budget" in reset[0][1]
    assert budget.held == 8 * MIB


def test_a_tunnel_dropped_frees_both_its_directions_and_is_named_once() -> None:
    budget = Budget(total=10 * MIB, per_node=10 * MIB)
    budget.hold("t-up", "T", "x", 3 * MIB, now=0.0)
    budget.hold("t-down", "T", "y", 3 * MIB, now=0.5)
    budget.hold("u", "U", "x", 3 * MIB, now=1.0)
    reset = budget.hold("v", "V", "y", 3 * MIB, now=2.0)
    assert [tunnel for tunnel, _ in reset] == ["T"]
    assert budget.held == 6 * MIB


def test_a_slow_reader_whose_writes_complete_stays_young_and_a_stalled_one_goes_first() -> None:
    budget = Budget(total=9 * MIB, per_node=9 * MIB)
    budget.hold("stalled", "S", "x", 4 * MIB, now=0.0)
    for t in range(1, 100):
        # The slow reader's each write waits a while, then is taken.
        budget.hold("slow", "L", "y", 4 * MIB, now=float(t))
        budget.release("slow")
    budget.hold("slow", "L", "y", 4 * MIB, now=100.0)
    reset = budget.hold("new", "N", "z", 4 * MIB, now=100.5)
    assert [tunnel for tunnel, _ in reset] == ["S"]


def test_a_hold_larger_than_the_share_drops_its_own_tunnel() -> None:
    budget = Budget(total=10 * MIB, per_node=4 * MIB)
    assert [t for t, _ in budget.hold("big", "B", "x", 5 * MIB, now=0.0)] == ["B"]
    assert budget.held == 0


def test_a_write_waiting_past_the_grace_books_its_window_and_can_put_the_node_over() -> None:
    budget = Budget(total=100 * MIB, per_node=7 * MIB, window=3 * MIB)
    # Many writes waiting a moment, with little in them: nobody is reset.
    for i in range(1000):
        assert budget.hold(("w", i), ("T", i), "busy", 16 * 1024, now=0.0) == []
        budget.release(("w", i))
    assert budget.settle(now=GRACE_S + 1) == []
    assert budget.next_due() is None
    budget.hold("s1", "S1", "x", 1 * MIB, now=10.0)
    budget.hold("s2", "S2", "x", 1 * MIB, now=10.5)
    assert budget.next_due() == 10.0 + GRACE_S
    assert budget.settle(now=10.0 + GRACE_S - 0.01) == []
    # The first comes of age: 1 + 3 + 1 MiB, within the share.
    assert budget.settle(now=10.0 + GRACE_S) == []
    assert budget.node_held("x") == 5 * MIB
    # The second too: 8 > 7, and the one stalled longest goes.
    reset = budget.settle(now=10.5 + GRACE_S)
    assert [tunnel for tunnel, _ in reset] == ["S1"]
    assert budget.node_held("x") == 4 * MIB
    assert budget.next_due() is None


def test_a_full_frame_books_its_window_at_once() -> None:
    budget = Budget(total=100 * MIB, per_node=7 * MIB, window=3 * MIB)
    assert budget.hold("a", "A", "x", MIB, now=0.0, bulk=True) == []
    assert budget.node_held("x") == 4 * MIB
    assert budget.next_due() is None
    assert [t for t, _ in budget.hold("b", "B", "x", MIB, now=0.1, bulk=True)] == ["A"]


def test_a_write_that_finished_before_the_grace_books_no_window() -> None:
    budget = Budget(total=100 * MIB, per_node=100 * MIB, window=3 * MIB)
    budget.hold("a", "A", "x", MIB, now=0.0)
    budget.release("a")
    budget.hold("a", "A", "x", MIB, now=0.5)
    assert budget.settle(now=GRACE_S) == []
    assert budget.held == MIB
    assert budget.next_due() == 0.5 + GRACE_S


def _route(body: str) -> Checked[RouteSettings]:
    return check_route_config("r.ini", f"[route]\nip=127.0.0.1\nport=7749\n{body}")


def test_the_budget_is_a_route_setting_with_defaults_and_a_share_that_follows_a_small_total() -> (
    None
):
    limits = parse_route_config("r.ini", "[route]\nip=127.0.0.1\nport=7749\n").limits
    assert (limits.tunnel_memory, limits.tunnel_memory_per_node) == (512, 256)
    small = _route("tunnel_memory=32\n")
    assert small.ok
    assert small.config.limits.tunnel_memory == 32
    assert small.config.limits.tunnel_memory_per_node == 32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("tunnel_memory=4\n", "r.ini:4: [route] tunnel_memory: 4 is out of range (8-1000000)"),
        ("tunnel_memory=lots\n", "r.ini:4: [route] tunnel_memory: 'lots' is not a whole number"),
        (
            "tunnel_memory_per_node=2\n",
            "r.ini:4: [route] tunnel_memory_per_node: 2 is out of range (4-1000000)",
        ),
        (
            "tunnel_memory=64\ntunnel_memory_per_node=128\n",
            "r.ini:5: [route] tunnel_memory_per_node: must not exceed tunnel_memory (64)",
        ),
    ],
)
def test_a_bad_budget_is_refused_naming_file_section_and_key(body: str, message: str) -> None:
    checked = _route(body)
    assert not checked.ok
    assert message in [str(e) for e in checked.problems.errors]
