"""A group's serve-change log (vnet.core.feed): batches, coalescing, snapshots when behind."""

from __future__ import annotations

from vnet.core.feed import Feed
from vnet.core.registry import Serve


def _serve(serveid: int, vnetid: str = "01", name: str = "s") -> Serve:
    return Serve(serveid=serveid, vnetid=vnetid, name=name, ip="127.0.0.1", port=22)


def test_a_batch_has_the_latest_state_of_each_serveid() -> None:
    feed = Feed()
    feed.added(_serve(1, name="old"))
    feed.added(_serve(1, name="new"))
    feed.added(_serve(2))
    batch = feed.since(0)
    assert [s.name for s in batch.added] == ["new", "s"]
    assert batch.removed == ()
    assert batch.upto == 3
    assert not feed.since(3)


def test_withdrawn_then_taken_by_another_node_reports_both() -> None:
    feed = Feed()
    feed.added(_serve(5, "01"))
    cursor = feed.seq
    feed.removed(_serve(5, "01"))
    feed.added(_serve(5, "02"))
    feed.added(_serve(6, "02"))
    feed.removed(_serve(6, "02"))
    batch = feed.since(cursor)
    assert batch.removed == ((5, "01"), (6, "02"))
    assert [(s.serveid, s.vnetid) for s in batch.added] == [(5, "02")]


def test_far_behind_gets_a_snapshot_and_the_log_is_bounded() -> None:
    feed = Feed(keep=8, snapshot_after=4)
    for i in range(1, 6):
        feed.added(_serve(i))
    assert feed.since(0).snapshot  # 5 behind > 4
    assert not feed.since(1).snapshot
    for i in range(6, 30):
        feed.added(_serve(i))
    assert len(feed._log) == 8
    assert feed.since(feed.seq - 9).snapshot  # older than the log keeps
    assert not feed.since(feed.seq - 2).snapshot
