"""How much tunnel data the route may hold, and which tunnel gives way past that.

A route pump that has read a frame and cannot write it on (the receiving node
does not take it: its reader is stalled, or slow) holds the frame, gRPC's copy
of it, and whatever C-core buffers on the stream it no longer reads (up to its
window, vnet/pacing.py STREAM_WINDOW). That is what a stalled tunnel costs the
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

Pure: no asyncio, the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

MIB = 1024 * 1024
# [route] tunnel_memory and tunnel_memory_per_node, in MiB. A stalled tunnel
# books ~8 MiB (both directions, each a 512 KiB frame, gRPC's copy and a 3 MiB
# window), 4 of it per node: the route holds ~64 stalled tunnels before it
# resets any; a node's slow readers take 64 pending writes before the share binds.
DEFAULT_TOTAL_MIB = 512
DEFAULT_PER_NODE_MIB = 256


@dataclass
class Hold:
    """One pending write: who is reset for it, whose frame it is, since when."""

    tunnel: Hashable
    node: Hashable
    nbytes: int
    since: float


class Budget:
    """The route's holds, by key (one per pump), node and in total."""

    def __init__(self, total: int, per_node: int) -> None:
        self.total = total
        self.per_node = per_node
        self.held = 0
        self._holds: dict[Hashable, Hold] = {}
        self._by_node: dict[Hashable, int] = {}

    def node_held(self, node: Hashable) -> int:
        return self._by_node.get(node, 0)

    def hold(
        self, key: Hashable, tunnel: Hashable, node: Hashable, nbytes: int, now: float
    ) -> list[tuple[Hashable, str]]:
        """key holds nbytes of node's data from now on (replacing its last hold).

        Returns the tunnels to reset, oldest stall first, each with its reason;
        their holds are taken off the books at once (their pumps release them
        again when they end, which is harmless).
        """
        self.release(key)
        self._holds[key] = Hold(tunnel, node, nbytes, now)
        self.held += nbytes
        self._by_node[node] = self._by_node.get(node, 0) + nbytes
        victims: list[tuple[Hashable, str]] = []
        while self._by_node.get(node, 0) > self.per_node:
            self._drop(self._oldest(node), "the node's share", victims)
        while self.held > self.total:
            self._drop(self._oldest(None), "the route's budget", victims)
        return victims

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
