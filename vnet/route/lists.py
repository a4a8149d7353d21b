"""The List answers (ListServes, ListVnets): encoded once per change of the group.

Every node's console asks every 10 s, so an answer is kept, encoded, until the
group's registry version moves (a node or serve added or gone, here or, in a
cluster, on another route).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vnet.wire import route_messages as msg

if TYPE_CHECKING:
    from vnet.route.service import RouteServicer


class Lists:
    """A route's encoded List answers, by (kind, group)."""

    def __init__(self, servicer: RouteServicer) -> None:
        self.servicer = servicer
        self._kept: dict[tuple[str, str], tuple[int, bytes]] = {}

    def _listed(self, kind: str, group: str, make: Callable[[], bytes]) -> bytes:
        version = self.servicer.registry.version(group)
        kept = self._kept.get((kind, group))
        if kept is None or kept[0] != version:
            kept = (version, make())
            self._kept[(kind, group)] = kept
        return kept[1]

    def serves(self, group: str) -> bytes:
        registry = self.servicer.registry
        return self._listed("serves", group, lambda: msg.list_serves_answer(registry.serves(group)))

    def vnets(self, group: str) -> bytes:
        """The group's nodes with their serve counts; in a cluster, on every route."""
        servicer = self.servicer

        def make() -> bytes:
            registry = servicer.registry
            vnets = [(v, registry.serve_count(v.vnetid)) for v in registry.vnets(group)]
            if servicer.member is not None:
                vnets = servicer.member.with_remote(group, vnets)
            return msg.list_vnets_answer(vnets)

        return self._listed("vnets", group, make)
