"""A node's serves: registered with the route, and the accepting side of their tunnels.

The counterpart of vnet.node.uses, which dials: each OpenTunnel the route
sends becomes its own connection to the serve's local target, relayed over
its own Accept stream; so does each spare Accept stream the route gives a
tunnel to (vnet.node.spares). Offers made on request (vnet.node.offers) are
accepted here like any other serve, at the address checked just now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from vnet.core.config import ServeConfig
from vnet.core.errors import NotFound, VnetError
from vnet.core.udp import UdpCounters
from vnet.node import tunnel
from vnet.node.client import OpenTunnel, TunnelCall
from vnet.node.spares import Spares
from vnet.node.state import ServeState
from vnet.node.udp_serve import UdpServing

if TYPE_CHECKING:
    from vnet.node.node import Node

# The node's own log, as before this code moved out of vnet.node.node: its
# lines (and filters on the logger's name) stay as they were.
log = logging.getLogger("vnet.node.node")

# Connections to serve targets being made at once; more tunnels wait their
# turn (inside the same target_connect deadline) instead of all dialling
# together. A burst of 2,000 connects would overflow a target's listen
# backlog (asyncio's default is 100; Python's socketserver's is 5): its
# kernel then drops or resets handshakes, which the client sees as resets.
TARGET_CONNECTS = 32


class Serves:
    """Registers one node's serves and accepts the tunnels to them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._target_connects = asyncio.Semaphore(TARGET_CONNECTS)
        self.udp = UdpServing(node.udp_slots)
        # Accept streams opened ahead of the Dials to TCP serves (UDP takes open_tunnel).
        self.spares = Spares(node, node.config.vnet.spares)

    async def register(self, state: ServeState) -> int:
        serve = state.config
        try:
            reg = await self.node.client.register(
                state.last_serveid or serve.serveid,
                serve.name or serve.key,
                serve.ip,
                serve.port,
                serve.info,
                type=serve.type,
            )
        except VnetError as exc:
            state.error = str(exc)
            raise
        state.serveid = reg.serve.serveid
        state.error = ""
        if serve.type == "tcp":
            self.spares.fill(reg.serve.serveid)
        if reg.reassigned:
            log.warning(
                "[serve.%s] serveid %s was taken; the route assigned %s",
                serve.key,
                serve.serveid,
                reg.serve.serveid,
            )
        else:
            log.info(
                "[serve.%s] registered as serveid %s -> %s:%s",
                serve.key,
                reg.serve.serveid,
                serve.ip,
                serve.port,
            )
        return reg.serve.serveid

    def route_lost(self) -> None:
        """The route is gone: no serve is registered, and no spare is open, any more.
        Each serve keeps its serveid as the one to ask for again."""
        self.spares.clear()
        for state in self.node.serves.values():
            if state.serveid is not None:
                state.last_serveid = state.serveid
                state.serveid = None
                state.error = "the route went away"

    async def unregister(self, state: ServeState) -> None:
        serveid, state.serveid = state.serveid, None
        if serveid is None:
            return
        self.spares.drop(serveid)
        if not self.node.connected:
            return
        with contextlib.suppress(NotFound):  # already gone at the route
            await self.node.client.unregister(serveid)
        log.info("[serve.%s] serveid %s unregistered", state.key, serveid)

    async def accept(
        self,
        event: OpenTunnel,
        call: TunnelCall,
        serving: Mapping[int, ServeConfig] | None = None,
    ) -> None:
        """Connect the serve's target and relay; `call` is the Accept already under way.

        serving: the serves by serveid as the route asking knows them (a route
        the node has left, in its grace); None: the node's, as registered now.
        """
        try:
            await self._accept_on(event, call, self.node.serving if serving is None else serving)
        finally:
            # Ended before its relay took the call over (node stopping): let
            # the route know now rather than at the stream's deadline.
            call.cancel()

    async def _accept_on(
        self, event: OpenTunnel, call: TunnelCall, serving: Mapping[int, ServeConfig]
    ) -> None:
        label = f"tunnel {event.tunnel_id} from vnet {event.from_vnetid} -> serveid {event.serveid}"
        serve = serving.get(event.serveid)
        if serve is None:
            await tunnel.refuse(call, f"serveid {event.serveid} is not served here")
            return
        host = serve.ip
        offered = event.serveid in self.node.unserves.offers
        if offered:
            host, reason = await self.node.unserves.dial_address(event.serveid)
            if reason:
                log.warning("%s: refused: %s", label, reason)
                await tunnel.refuse(call, reason)
                return
        if serve.type == "udp":
            await self._accept_udp(event, call, serve, host, label, offered)
            return
        try:
            # One deadline for the wait in line and the connect itself.
            # asyncio.timeout, not wait_for: no extra task for every tunnel.
            async with (
                asyncio.timeout(self.node.timeouts.target_connect),
                self._target_connects,
            ):
                reader, writer = await asyncio.open_connection(
                    host, serve.port, limit=tunnel.READER_LIMIT
                )
        except (OSError, TimeoutError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            reason = f"cannot connect to {serve.ip}:{serve.port}: {detail}"
            log.warning("%s: %s", label, reason)
            await tunnel.refuse(call, reason)
            return
        if offered:
            self.node.unserves.opened(event.serveid)
        try:
            fields = {
                "vnetid": event.from_vnetid,
                "serveid": event.serveid,
                "tunnel": event.tunnel_id,
            }
            await tunnel.relay(
                reader, writer, call, label, fields, pacer=self.node.pacer, local="the service"
            )
        finally:
            if offered:
                self.node.unserves.closed(event.serveid)

    async def _accept_udp(
        self,
        event: OpenTunnel,
        call: TunnelCall,
        serve: ServeConfig,
        host: str,
        label: str,
        offered: bool,
    ) -> None:
        state = next((s for s in self.node.serves.values() if s.serveid == event.serveid), None)
        counters = state.udp if state is not None else UdpCounters()
        if offered:
            self.node.unserves.opened(event.serveid)
        try:
            await self.udp.accept(event, call, serve, host, counters, "udp " + label)
        finally:
            if offered:
                self.node.unserves.closed(event.serveid)
