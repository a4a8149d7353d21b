"""Ids claimed after a route restart (vnet.core.claims through Sessions and Registry): pure,
on a clock the test moves."""

from __future__ import annotations

import itertools

import pytest

from vnet.core.claims import CLAIM_QUIET, Claims
from vnet.core.errors import Busy, ServeIdTaken
from vnet.core.registry import Registry
from vnet.core.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock, grace: float = 60.0) -> Sessions:
    counter = itertools.count()
    registry = Registry(Claims(clock, clock(), grace))
    return Sessions(registry, 100, lambda: f"secret{next(counter)}")


def test_first_comers_do_not_take_ids_claimed_by_others() -> None:
    clock = Clock()
    table = _table(clock)
    reg = table.registry
    # A returning node claims vnetid 01 and dynamic serveids 1 and 2 ...
    a = table.join("a", "g", clock(), "01", "tok-a", earlier_boot=True, resume_serveids=(1, 2))
    assert a.session.vnet.vnetid == "01"
    # ... a new node joining meanwhile gets neither 01 nor serveid 1 or 2.
    b = table.join("b", "g", clock())
    assert b.session.vnet.vnetid != "01"
    # While claims are still coming in, no fresh dynamic serveid is handed out at all.
    with pytest.raises(Busy) as busy:
        reg.register(b.session.vnet.vnetid, 0, "x", "127.0.0.1", 22)
    assert busy.value.retry_after == pytest.approx(CLAIM_QUIET)
    clock.now += CLAIM_QUIET
    got = reg.register(b.session.vnet.vnetid, 0, "x", "127.0.0.1", 22)
    # From the top down while returning nodes may still claim the low ones.
    assert got.serve.serveid == 499
    wish = reg.register(b.session.vnet.vnetid, 1, "y", "127.0.0.1", 22)
    assert wish.reassigned
    assert wish.serve.serveid not in (1, 2)
    # The claimant gets its own back, unchanged.
    mine = reg.register("01", 2, "s", "127.0.0.1", 22)
    assert mine.serve.serveid == 2
    assert not mine.reassigned


def test_static_serveid_held_for_its_claimant_is_refused_to_others() -> None:
    clock = Clock()
    table = _table(clock)
    table.join("a", "g", clock(), "05", "tok-a", earlier_boot=True, resume_serveids=(700,))
    other = table.join("b", "g", clock())
    with pytest.raises(ServeIdTaken, match="held for vnet 05"):
        table.registry.register(other.session.vnet.vnetid, 700, "ssh", "127.0.0.1", 22)
    assert table.registry.register("05", 700, "ssh", "127.0.0.1", 22).serve.serveid == 700


def test_two_claimants_first_keeps_both_are_told() -> None:
    clock = Clock()
    table = _table(clock)
    first = table.join("a", "g", clock(), "03", "tok-a", earlier_boot=True, resume_serveids=(7,))
    second = table.join("b", "g", clock(), "03", "tok-b", earlier_boot=True, resume_serveids=(7,))
    assert first.session.vnet.vnetid == "03"
    lost = second.session.vnet.vnetid
    assert lost != "03"
    kinds = {(c.kind, c.ident, c.kept_by, c.lost_by) for c in second.conflicts}
    assert kinds == {("vnetid", "03", "03", lost), ("serveid", "7", "03", lost)}
    # The dynamic serveid goes to the first; the second is reassigned when it registers.
    clock.now += CLAIM_QUIET
    assert table.registry.register(lost, 7, "s", "127.0.0.1", 22).reassigned
    assert not table.registry.register("03", 7, "s", "127.0.0.1", 22).reassigned


def test_the_same_claimant_again_takes_its_claim_back() -> None:
    """Its first Join's answer was lost: the same old resume token ends its stale session."""
    clock = Clock()
    table = _table(clock)
    stale = table.join("a", "g", clock(), "04", "tok-a", earlier_boot=True, resume_serveids=(9,))
    again = table.join("a", "g", clock(), "04", "tok-a", earlier_boot=True, resume_serveids=(9,))
    assert again.replaced is stale.session
    assert again.session.vnet.vnetid == "04"
    assert again.conflicts == ()


def test_after_the_grace_nothing_is_held() -> None:
    clock = Clock()
    table = _table(clock, grace=60.0)
    table.join("a", "g", clock(), "01", "tok-a", earlier_boot=True, resume_serveids=(1,))
    table.drop(table.of_vnet("01"))  # type: ignore[arg-type]
    clock.now += 61
    b = table.join("b", "g", clock())
    assert b.session.vnet.vnetid == "01"
    assert table.registry.register("01", 0, "x", "127.0.0.1", 22).serve.serveid == 1


def test_a_claimant_that_loses_its_connection_again_keeps_its_ids() -> None:
    """Back after the restart, it resumes (same boot) with the token this route gave it,
    and again: its vnetid and serveids are still its own, never a fresh one's."""
    clock = Clock()
    table = _table(clock)
    first = table.join("a", "g", clock(), "06", "tok-a", earlier_boot=True, resume_serveids=(8,))
    token = first.resume_token
    table.drop(first.session)  # the connection died before it registered
    again = table.join("a", "g", clock(), "06", token)
    assert again.session.vnet.vnetid == "06"
    # Its stale session is still there this time: taken over, with the newest token.
    third = table.join("a", "g", clock(), "06", again.resume_token)
    assert third.replaced is again.session
    assert third.session.vnet.vnetid == "06"
    assert not table.registry.register("06", 8, "s", "127.0.0.1", 22).reassigned
    # Someone else with the vnetid but no token of it gets a fresh one.
    other = table.join("b", "g", clock(), "06", "guess")
    assert other.session.vnet.vnetid != "06"


def test_a_claimant_dropped_after_registering_keeps_its_serveids() -> None:
    """Its claim was fulfilled (registered), then its session ended (a call that timed out
    in a storm, and it comes back on a new session): within the grace its serveid is still
    held for it, not the next fresh one for anyone asking."""
    clock = Clock()
    table = _table(clock)
    first = table.join("a", "g", clock(), "06", "tok-a", earlier_boot=True, resume_serveids=(8,))
    table.registry.register("06", 8, "s", "127.0.0.1", 22)
    table.drop(first.session)
    clock.now += CLAIM_QUIET + 1  # claims have stopped coming: fresh ids are handed out
    other = table.join("b", "g", clock())
    wished = table.registry.register(other.session.vnet.vnetid, 8, "s", "127.0.0.1", 22)
    assert wished.reassigned
    assert wished.serve.serveid != 8
    again = table.join("a", "g", clock(), "06", first.resume_token)
    assert again.session.vnet.vnetid == "06"
    assert not table.registry.register("06", 8, "s", "127.0.0.1", 22).reassigned
