"""The serving side of a UDP flow: one connected UDP socket toward the target per flow.

vnet/node/serves.py hands it the OpenTunnel of a `type=udp` serve. The
socket is connected, so the kernel gives it only the target's datagrams, and
every reply goes back on the flow (the client) it belongs to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from vnet.core.config import ServeConfig
from vnet.core.udp import Drop, Slots, Throttle, UdpCounters
from vnet.node import tunnel
from vnet.node.client import OpenTunnel, TunnelCall
from vnet.node.udp_flow import Flow, LocalSocket

log = logging.getLogger(__name__)


class _Target(asyncio.DatagramProtocol):
    """The connected socket of one flow: the target's datagrams into the flow."""

    def __init__(self) -> None:
        self.flow: Flow | None = None
        self.socket: LocalSocket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is not a DatagramTransport subclass on every Python.
        self.socket = LocalSocket(cast(asyncio.DatagramTransport, transport))

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.flow is not None:
            self.flow.push(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for an earlier send: nothing listens on the
        # target's port (yet). UDP keeps going; the client's retries tell.
        log.debug("udp target: %s", exc)

    def send(self, payload: bytes | memoryview) -> bool:
        return self.socket is not None and self.socket.send(payload)


class UdpServing:
    """The UDP flows one node accepts, under the node's cap."""

    def __init__(self, node_slots: Slots) -> None:
        self.node_slots = node_slots
        self._refusals = Throttle()

    async def accept(
        self,
        event: OpenTunnel,
        call: TunnelCall,
        serve: ServeConfig,
        host: str,
        counters: UdpCounters,
        label: str,
    ) -> None:
        if not self.node_slots.take():
            counters.drop(Drop.FLOW_LIMIT)
            reason = (
                f"{self.node_slots.used} UDP flows open, the cap of the serving node's "
                f"[vnet] udp_flows={self.node_slots.limit}"
            )
            held = self._refusals.due(asyncio.get_running_loop().time())
            if held is not None:
                more = f" ({held} more since the last such line)" if held else ""
                log.warning("%s: refused: %s%s", label, reason, more)
            await tunnel.refuse(call, reason)
            return
        try:
            await self._relay(event, call, serve, host, counters, label)
        finally:
            self.node_slots.give()

    async def _relay(
        self,
        event: OpenTunnel,
        call: TunnelCall,
        serve: ServeConfig,
        host: str,
        counters: UdpCounters,
        label: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, target = await loop.create_datagram_endpoint(
                _Target, remote_addr=(host, serve.port)
            )
        except OSError as exc:
            reason = f"cannot reach {serve.ip}:{serve.port}: {exc.strerror or exc}"
            log.warning("%s: %s", label, reason)
            await tunnel.refuse(call, reason)
            return
        fields: dict[str, object] = {
            "vnetid": event.from_vnetid,
            "serveid": event.serveid,
            "tunnel": event.tunnel_id,
        }
        flow = Flow(call, target.send, counters, serve.udp_idle, label, fields)
        target.flow = flow
        try:
            await flow.run()
        finally:
            if target.socket is not None:
                target.socket.close()
            transport.close()
