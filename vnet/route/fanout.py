"""Serve changes to every control stream of a group: the I/O side of vnet.core.feed.

Per group: its Feed (the change log), the control streams waiting for the next change, the
last snapshot and batches encoded (streams at the same place of the log share one
encoding), and a flush timer. A change is appended and a flush scheduled; the flush wakes
the waiting streams, each of which then sends, in one message, everything it has not sent
yet (or a snapshot). Flushes of one group are at least `interval` apart, an interval that
grows with the group (0.1 ms a node, 2-250 ms): a storm of registrations in a big group then
reaches each node as a few batches a second, not as one message per registration, and a
single change in a quiet group still goes out at once. Nothing here waits on a stream: a
registration only appends and schedules.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from vnet.core.feed import Feed
from vnet.core.registry import Registry, Serve
from vnet.wire import route_messages as msg

# Flush spacing per node of the group, and its bounds, in seconds.
PER_NODE = 100e-6
MIN_INTERVAL = 0.002
MAX_INTERVAL = 0.25
# Streams woken per turn of the loop: grpc.aio takes new calls (a Ping, a Join) from C-core
# once per turn, so 2,000 writes in one turn would hold them all back.
WAKE_CHUNK = 200


@dataclass(eq=False)
class Group:
    """One group's feed, waiting streams and encodings."""

    name: str
    registry: Registry
    feed: Feed = field(default_factory=Feed)
    # Seq of the last flush: a stream sends what is after its cursor only once it is flushed.
    flushed: int = 0
    waiting: set[asyncio.Event] = field(default_factory=set)
    _last_flush: float = float("-inf")
    _timer: asyncio.TimerHandle | None = None
    _snapshot: tuple[int, bytes] | None = None
    # (cursor, old style) -> encoded messages, valid while the feed is at `_batches_at`.
    _batches: dict[tuple[int, bool], list[bytes]] = field(default_factory=dict)
    _batches_at: int = -1

    def changed(self) -> None:
        """The feed grew: flush now, or as soon as the interval allows."""
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        interval = min(
            max(self.registry.group_size(self.name) * PER_NODE, MIN_INTERVAL), MAX_INTERVAL
        )
        delay = max(0.0, self._last_flush + interval - loop.time())
        self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._last_flush = asyncio.get_running_loop().time()
        self.flushed = self.feed.seq
        waiting, self.waiting = list(self.waiting), set()
        _wake(waiting)

    def snapshot(self) -> tuple[int, bytes]:
        """(seq it is at, encoded snapshot event). Reused until the next flush: a stream that
        opens meanwhile gets the changes after it in its first batch."""
        cached = self._snapshot
        if cached is None or cached[0] < self.flushed:
            cached = (self.feed.seq, msg.snapshot_event(self.registry.serves(self.name)))
            self._snapshot = cached
        return cached

    def batch(self, cursor: int, serve_changes: bool) -> tuple[int, list[bytes]]:
        """What a stream at cursor sends now, and the cursor after it. serve_changes: the
        node understands ServeChanges; else each change goes as a message of its own."""
        if self._batches_at != self.feed.seq:
            self._batches.clear()
            self._batches_at = self.feed.seq
        key = (cursor, serve_changes)
        found = self._batches.get(key)
        if found is not None:
            return self.feed.seq, found
        batch = self.feed.since(cursor)
        if batch.snapshot:
            # Far behind: how things are now, in place of the changes since.
            self._snapshot = None
            seq, data = self.snapshot()
            return seq, [data]
        if serve_changes:
            out = [msg.serve_changes_event(batch.added, batch.removed)]
        else:
            out = [msg.serve_removed_event(_gone(s, v)) for s, v in batch.removed]
            out += [msg.serve_added_event(s) for s in batch.added]
        self._batches[key] = out
        return batch.upto, out


def _wake(events: list[asyncio.Event]) -> None:
    for wake in events[:WAKE_CHUNK]:
        wake.set()
    if len(events) > WAKE_CHUNK:
        asyncio.get_running_loop().call_soon(_wake, events[WAKE_CHUNK:])


def _gone(serveid: int, vnetid: str) -> Serve:
    # Only serveid and vnetid travel in a ServeRemoved.
    return Serve(serveid=serveid, vnetid=vnetid, name="", ip="", port=0)


class Fanout:
    """Every group's Group, made on first use."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._groups: dict[str, Group] = {}

    def group(self, name: str) -> Group:
        found = self._groups.get(name)
        if found is None:
            found = self._groups[name] = Group(name, self.registry)
        return found

    def added(self, serve: Serve, group: str) -> None:
        g = self.group(group)
        g.feed.added(serve)
        g.changed()

    def removed(self, serve: Serve, group: str) -> None:
        g = self.group(group)
        g.feed.removed(serve)
        g.changed()
