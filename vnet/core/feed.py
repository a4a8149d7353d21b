"""A group's serve changes as a numbered log that each node's control stream reads at its own pace.

Pure: no I/O. A change (a serve added, replaced or withdrawn) is appended once, whatever the
size of the group; each control stream only remembers how far it has read (a cursor). When
it next sends, it takes everything after its cursor as one batch, one entry per serveid
(the last change wins: a serve added and withdrawn in between is just withdrawn), or, when
it is too far behind (more than `snapshot_after` changes, or further back than the log
keeps), a fresh snapshot instead. So:

- filling a group of N costs N appends and, per node, as many batches as it had chances to
  send, not N messages each;
- per node the backlog is one integer; the log itself is bounded (`keep` entries a group);
- a node that cannot keep up is not dropped and nothing piles up for it: when it reads
  again it gets one snapshot of how things are now.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vnet.core.registry import Serve

# Past this many changes behind, a snapshot is cheaper to send and to apply than a batch.
SNAPSHOT_AFTER = 256
# Changes a group's log keeps; a cursor older than that gets a snapshot.
KEEP = 2048


@dataclass(frozen=True, slots=True)
class Change:
    """One serve change: `serve` now holds serveid (added or replaced), or None (withdrawn,
    with the vnetid that had it)."""

    seq: int
    serveid: int
    vnetid: str
    serve: Serve | None


@dataclass(frozen=True, slots=True)
class Batch:
    """What a stream sends for one read of the log: the serves added (or replaced) and the
    ones withdrawn, by serveid; or `snapshot` when it is too far behind for a batch."""

    upto: int
    added: tuple[Serve, ...] = ()
    removed: tuple[tuple[int, str], ...] = ()
    snapshot: bool = False

    def __bool__(self) -> bool:
        return self.snapshot or bool(self.added) or bool(self.removed)


@dataclass
class Feed:
    """One group's change log."""

    keep: int = KEEP
    snapshot_after: int = SNAPSHOT_AFTER
    seq: int = 0
    _log: deque[Change] = field(default_factory=deque)

    def added(self, serve: Serve) -> None:
        self._append(Change(self.seq + 1, serve.serveid, serve.vnetid, serve))

    def removed(self, serve: Serve) -> None:
        self._append(Change(self.seq + 1, serve.serveid, serve.vnetid, None))

    def _append(self, change: Change) -> None:
        self.seq = change.seq
        self._log.append(change)
        if len(self._log) > self.keep:
            self._log.popleft()

    def behind(self, cursor: int) -> int:
        return self.seq - cursor

    def since(self, cursor: int) -> Batch:
        """Everything after cursor, coalesced by serveid; a snapshot when too far behind."""
        behind = self.seq - cursor
        if behind <= 0:
            return Batch(self.seq)
        oldest = self._log[0].seq if self._log else self.seq + 1
        if behind > self.snapshot_after or cursor + 1 < oldest:
            return Batch(self.seq, snapshot=True)
        latest: dict[int, Change] = {}
        # A serveid withdrawn at some point of the window and added again since: the node
        # hears of both (withdrawn first), as it would have one by one, since whatever it
        # did with the old serve (a use of it) must end.
        withdrawn: dict[int, str] = {}
        # The newest entries are at the right: walk back only as far as the cursor.
        for i in range(len(self._log) - 1, len(self._log) - 1 - behind, -1):
            change = self._log[i]
            latest.setdefault(change.serveid, change)
            if change.serve is None:
                withdrawn[change.serveid] = change.vnetid
        added = []
        removed = []
        for serveid in sorted(latest):
            change = latest[serveid]
            if change.serve is None:
                removed.append((serveid, change.vnetid))
            else:
                if serveid in withdrawn:
                    removed.append((serveid, withdrawn[serveid]))
                added.append(change.serve)
        return Batch(self.seq, tuple(added), tuple(removed))
