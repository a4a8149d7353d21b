"""A serving node's spare Accept streams, opened ahead of the Dials that take them.

For each registered TCP serve the node keeps `[vnet] spares` (2 by default)
Accept calls open at the route with vnet-spare metadata (vnet.route.spares).
The route holds them; a Dial to the serve takes one, and its first message
then names the tunnel (tunnel id, dialling vnetid), and the node answers
with an `accepted` frame. From there it is an open_tunnel's tunnel: the node
connects the serve's target (a failure is a reset toward the dialler) and
relays (vnet.node.serves). Each spare given a tunnel is replaced at once, so
the next Dial finds one too.

A spare the route refuses or ends (a route older than spares says NOT_FOUND;
the serve withdrawn; the session over; the route going away) is not opened
again: that serve's tunnels take the open_tunnel path, which always works,
until the serve is registered again (as after a reconnect). Nothing retries
in a loop against a route that does not want spares.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from vnet import wire
from vnet.core.errors import MalformedFrame
from vnet.node.client import OpenTunnel, RouteClient, TunnelBroken

if TYPE_CHECKING:
    from vnet.node.node import Node

log = logging.getLogger(__name__)

# How a spare ends when the route went away or is stopping, not when it refused spares.
_LOST = frozenset({"", "UNAVAILABLE", "CANCELLED"})


class Spares:
    """The spares of one node's serves; `count` per serve, 0: none."""

    def __init__(self, node: Node, count: int) -> None:
        self.node = node
        self.count = count
        # The idle spares' tasks, by serveid. A task leaves its set when its
        # spare is given a tunnel; a serve whose set is gone gets no more.
        self._idle: dict[int, set[asyncio.Task[None]]] = {}
        # Tunnels accepted on a spare, for the metrics.
        self.used = 0

    @property
    def held(self) -> int:
        """Spares open now and not yet given a tunnel."""
        return sum(len(idle) for idle in self._idle.values())

    def fill(self, serveid: int) -> None:
        """Open serveid's spares (it has just been registered)."""
        if self.count <= 0:
            return
        idle = self._idle.setdefault(serveid, set())
        client = self.node.client
        while len(idle) < self.count:
            self._open(client, serveid, idle)

    def drop(self, serveid: int) -> None:
        """End serveid's idle spares (it is being withdrawn); its tunnels carry on."""
        for task in self._idle.pop(serveid, ()):
            task.cancel()

    def clear(self) -> None:
        """End every idle spare (the route is lost or left)."""
        for serveid in list(self._idle):
            self.drop(serveid)

    def _open(self, client: RouteClient, serveid: int, idle: set[asyncio.Task[None]]) -> None:
        # The call starts now, in the task's first step; the set holds the task.
        idle.add(self.node._spawn(self._hold(client, serveid, idle)))

    async def _hold(self, client: RouteClient, serveid: int, idle: set[asyncio.Task[None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        call = client.spare(serveid)
        try:
            try:
                first = await call.read()
                if first is None:
                    raise TunnelBroken("", "the route ended it")
                tunnel_id, from_vnetid = wire.decode_opened(first)
            except (TunnelBroken, MalformedFrame) as exc:
                idle.discard(task)
                if self._idle.get(serveid) is idle:
                    # The route will not have them (or not now): the serve's
                    # tunnels take the open_tunnel path until it is registered again.
                    del self._idle[serveid]
                    for other in idle:
                        other.cancel()
                    # A lost or stopping route is logged as such by the node; a route
                    # that refuses spares (an older one, a limit) is worth a line.
                    lost = isinstance(exc, TunnelBroken) and exc.code in _LOST
                    log.log(
                        logging.DEBUG if lost else logging.INFO,
                        "serveid %s: no spares now, its tunnels wait for open_tunnel: %s",
                        serveid,
                        exc,
                    )
                return
            idle.discard(task)
            if self._idle.get(serveid) is idle and client is self.node.client:
                self._open(client, serveid, idle)
            self.used += 1
            # The answer the route waits for, before the target's connect (as
            # an Accept call answers an open_tunnel before it).
            try:
                await call.write(wire.ACCEPTED)
            except TunnelBroken as exc:
                log.debug("tunnel %s on a spare of serveid %s: %s", tunnel_id, serveid, exc)
                return
            event = OpenTunnel(tunnel_id=tunnel_id, serveid=serveid, from_vnetid=from_vnetid)
            await self.node.serve_side.accept(event, call)
        finally:
            idle.discard(task)
            call.cancel()
