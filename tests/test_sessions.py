"""The route's session table and tunnel rendezvous, with an injected clock and secrets."""

from __future__ import annotations

import itertools

import pytest

from vnet.core.sessions import Rendezvous, Sessions
from vnet.errors import InvalidRequest, LimitExceeded, NotFound
from vnet.registry import Registry


def table(max_nodes: int = 100) -> Sessions:
    counter = itertools.count()
    return Sessions(Registry(), max_nodes, secret=lambda: f"secret-{next(counter)}")


def test_join_gives_vnetids_in_order_and_indexes_by_group() -> None:
    t = table()
    a = t.join("a", "home", now=0.0).session
    b = t.join("b", "work", now=0.0).session
    c = t.join("c", "home", now=0.0).session
    assert [a.vnet.vnetid, b.vnet.vnetid, c.vnet.vnetid] == ["01", "02", "03"]
    assert t.in_group("home") == [a, c]
    assert t.in_group("work") == [b]
    assert t.in_group("none") == []
    assert t.get(a.token) is a
    assert t.of_vnet("02") is b


def test_a_full_route_refuses_and_changes_nothing() -> None:
    t = table(max_nodes=1)
    t.join("a", "g", now=0.0)
    with pytest.raises(LimitExceeded, match="full"):
        t.join("b", "g", now=0.0)
    assert len(t) == 1


def test_resume_with_the_right_token_replaces_the_stale_session() -> None:
    t = table()
    first = t.join("a", "g", now=0.0)
    t.registry.register(first.session.vnet.vnetid, 700, "ssh", "127.0.0.1", 22)
    again = t.join("a", "g", now=1.0, resume_vnetid="01", resume_token=first.resume_token)
    assert again.session.vnet.vnetid == "01"
    assert again.replaced is first.session
    assert [s.serveid for s in again.withdrawn] == [700]
    assert first.session.closed
    assert t.get(first.session.token) is None
    assert t.in_group("g") == [again.session]


@pytest.mark.parametrize(
    ("token", "group"),
    [("wrong", "g"), ("", "g"), ("REAL", "other")],
    ids=["wrong", "none", "group"],
)
def test_resume_without_proof_gets_a_new_vnetid(token: str, group: str) -> None:
    t = table()
    first = t.join("a", "g", now=0.0)
    again = t.join(
        "b",
        group,
        now=1.0,
        resume_vnetid="01",
        resume_token=first.resume_token if token == "REAL" else token,
    )
    assert again.session.vnet.vnetid == "02"
    assert again.replaced is None
    assert not first.session.closed


def test_a_free_vnetid_is_given_back_after_a_restart() -> None:
    # A restarted route has never seen the session: the id is free, so it is kept.
    t = table()
    again = t.join("a", "g", now=0.0, resume_vnetid="07", resume_token="from another boot")
    assert again.session.vnet.vnetid == "07"


def test_one_control_stream_per_session() -> None:
    t = table()
    s = t.join("a", "g", now=0.0).session
    t.open_control(s)
    with pytest.raises(InvalidRequest, match="already has a control stream"):
        t.open_control(s)


def test_sessions_without_control_expire_by_the_clock() -> None:
    t = table()
    early = t.join("a", "g", now=0.0).session
    controlled = t.join("b", "g", now=0.0).session
    late = t.join("c", "g", now=8.0).session
    t.open_control(controlled)
    assert t.uncontrolled(now=9.9, within=10.0) == []
    assert t.uncontrolled(now=10.0, within=10.0) == [early]
    assert t.uncontrolled(now=18.0, within=10.0) == [early, late]


def test_drop_withdraws_serves_once() -> None:
    t = table()
    s = t.join("a", "g", now=0.0).session
    t.registry.register(s.vnet.vnetid, 0, "web", "127.0.0.1", 80)
    gone = t.drop(s)
    assert gone is not None
    assert len(gone) == 1
    assert t.drop(s) is None
    assert t.in_group("g") == []
    assert t.of_vnet(s.vnet.vnetid) is None


def test_only_the_serving_node_accepts_and_each_accept_moves_the_deadline() -> None:
    t = table()
    owner = t.join("home", "g", now=0.0).session
    dialer = t.join("office", "g", now=0.0).session
    r = Rendezvous(accept=10.0, limit=60.0)
    first = r.add("t1", owner, dialer, 700, now=0.0)
    second = r.add("t2", owner, dialer, 700, now=1.0)
    with pytest.raises(InvalidRequest):
        r.add("t1", owner, dialer, 700, now=1.0)
    assert r.deadline(first) == 10.0
    with pytest.raises(NotFound):
        r.take("t1", dialer, now=2.0)
    assert r.take("t1", owner, now=9.0) is first
    # The node is answering: t2 may wait 10 s from that answer.
    assert r.deadline(second) == 19.0
    owner.accepted_at = 100.0
    assert r.deadline(second) == 61.0, "never past the limit"
    assert "t2" in r
    assert r.of_session(dialer) == [second]
    assert len(r) == 0
