"""How much tunnel data the route may hold, and which tunnel gives way past that.

A route pump that has read a frame and cannot write it on (the receiving node
does not take it: its reader is stalled, or slow) holds the frame, gRPC's copy
of it, and whatever C-core buffers on the stream it no longer reads (up to its
window, vnet/core/pacing.py STREAM_WINDOW). That is what a stalled tunnel costs the
route, and nothing else bounds its sum but the tunnel caps. So every pump
records a hold for the write it waits in, charged to the node that sent the
frame, and the route keeps two limits: a share per sending node, and a total.

Past either, the tunnel whose oldest pending write has waited longest is reset,
then the next, until the holds fit again. A slow reader that takes frames at
all finishes each write in well under a second, so its holds stay young and it
is reset last; a reader that stopped reading keeps one write pending for as
long as it stays stopped. The per-node share comes first, so a node that stalls
many tunnels (any authenticated node can open thousands) loses its own tunnels
before any other node's; the total covers many nodes doing it at once.

The frame and its copy are booked when the write starts. The window is booked
with them when the frame is a full one (a bulk sender: a stalled reader's
tunnel fills its window at once), else once the write has waited GRACE_S (the
caller runs settle on a timer, at next_due): a busy route has many small
writes pending for a moment, with little behind them. So a sender of smaller
frames can take the route past its budget by what arrives within GRACE_S, and
for no longer than that.

Pure: no asyncio, the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from vnet.core.pacing import STREAM_WINDOW

MIB = 1024 * 1024
# [route] tunnel_memory and tunnel_memory_per_node, in MiB. A stalled tunnel
# books ~8 MiB (both directions, each a 512 KiB frame, gRPC's copy and a 3 MiB
# window), 4 of it per node: the route holds ~64 stalled tunnels before it
# resets any; a node's slow readers take 64 stalled writes before the share binds.
DEFAULT_TOTAL_MIB = 512
DEFAULT_PER_NODE_MIB = 256
# A write pending this long is stalled: from then on the window C-core fills
# behind it is booked too. Not at once: a busy route has many writes pending
# for a moment, most with little behind them (1,000 tunnels each sending 16 KiB
# would book 3 GiB), and a stalled write waits for seconds or for ever.
GRACE_S = 1.0


@dataclass
class Hold:
    """One pending write: who is reset for it, whose frame it is, since when."""

    tunnel: Hashable
    node: Hashable
    nbytes: int
    since: float


class Budget:
    """The route's holds, by key (one per pump), node and in total."""

    def __init__(
        self, total: int, per_node: int, window: int = STREAM_WINDOW, grace: float = GRACE_S
    ) -> None:
        self.total = total
        self.per_node = per_node
        self.window = window
        self.grace = grace
        self.held = 0
        self._holds: dict[Hashable, Hold] = {}
        self._by_node: dict[Hashable, int] = {}
        # Holds not yet old enough for their window, oldest first (some stale).
        self._young: deque[tuple[Hashable, Hold]] = deque()
        # When the caller's timer will call settle next, if one is set.
        self.armed: float | None = None

    def node_held(self, node: Hashable) -> int:
        return self._by_node.get(node, 0)

    def hold(
        self,
        key: Hashable,
        tunnel: Hashable,
        node: Hashable,
        nbytes: int,
        now: float,
        bulk: bool = False,
    ) -> list[tuple[Hashable, str]]:
        """key holds nbytes of node's data from now on (replacing its last hold).

        bulk: the frame is a full one (its node had more waiting to send), so
        the window behind it is booked at once rather than after the grace.

        Returns the tunnels to reset, oldest stall first, each with its reason;
        their holds are taken off the books at once (their pumps release them
        again when they end, which is harmless).
        """
        self.release(key)
        hold = Hold(tunnel, node, 0, now)
        self._holds[key] = hold
        if bulk:
            nbytes += self.window
        else:
            self._young.append((key, hold))
        self._book(hold, nbytes)
        return self._enforce({node})

    def settle(self, now: float) -> list[tuple[Hashable, str]]:
        """Book the window of every hold pending for grace by now; the tunnels to reset."""
        nodes: set[Hashable] = set()
        while self._young and self._young[0][1].since <= now - self.grace:
            key, hold = self._young.popleft()
            if self._holds.get(key) is hold:
                self._book(hold, self.window)
                nodes.add(hold.node)
        return self._enforce(nodes) if nodes else []

    def next_due(self) -> float | None:
        """When settle has work next: the oldest young hold's grace runs out."""
        while self._young and self._holds.get(self._young[0][0]) is not self._young[0][1]:
            self._young.popleft()
        return self._young[0][1].since + self.grace if self._young else None

    def release(self, key: Hashable) -> None:
        """key's write finished (or its pump ended): it holds nothing now."""
        hold = self._holds.pop(key, None)
        if hold is None:
            return
        self.held -= hold.nbytes
        left = self._by_node[hold.node] - hold.nbytes
        if left:
            self._by_node[hold.node] = left
        else:
            del self._by_node[hold.node]

    def _book(self, hold: Hold, nbytes: int) -> None:
        hold.nbytes += nbytes
        self.held += nbytes
        self._by_node[hold.node] = self._by_node.get(hold.node, 0) + nbytes

    def _enforce(self, nodes: set[Hashable]) -> list[tuple[Hashable, str]]:
        victims: list[tuple[Hashable, str]] = []
        for node in nodes:
            while self._by_node.get(node, 0) > self.per_node:
                self._drop(self._oldest(node), "the node's share", victims)
        while self.held > self.total:
            self._drop(self._oldest(None), "the route's budget", victims)
        return victims

    def _oldest(self, node: Hashable | None) -> Hold:
        return min(
            (h for h in self._holds.values() if node is None or h.node == node),
            key=lambda h: h.since,
        )

    def _drop(self, victim: Hold, limit: str, victims: list[tuple[Hashable, str]]) -> None:
        for key in [k for k, h in self._holds.items() if h.tunnel == victim.tunnel]:
            self.release(key)
        over = self.per_node if limit == "the node's share" else self.total
        victims.append((victim.tunnel, f"over {limit} of {over // MIB} MiB held in stalled writes"))
