"""A UDP use: one local UDP socket, one flow (one Dial stream) per client address.

vnet/node/uses.py opens it instead of a TCP listener for `type=udp`. Every
datagram from a client address with no flow opens one, within the use's and
the node's caps (vnet/core/udp.py); the flow's datagrams go out in order on
its own stream, and the datagrams that come back are sent to that address
only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, cast

from vnet.core.config import UseConfig
from vnet.core.registry import Serve
from vnet.core.udp import (
    MAX_DATAGRAM,
    Drop,
    Slots,
    Throttle,
    UdpCounters,
    take_both,
)
from vnet.node.client import TunnelCall
from vnet.node.udp_flow import Flow, LocalSocket

log = logging.getLogger(__name__)

Address = tuple[Any, ...]
# At most one line a second about this use's flows being reset.
RESET_LOG_EVERY = 1.0
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class UdpUse(asyncio.DatagramProtocol):
    """The socket of one running UDP use, and its flows by client address."""

    def __init__(
        self,
        config: UseConfig,
        serve: Serve,
        dial: Callable[[int, str], TunnelCall],
        spawn: Spawn,
        counters: UdpCounters,
        node_slots: Slots,
    ) -> None:
        self.config = config
        self.serve = serve
        self._dial = dial
        self._spawn = spawn
        self.counters = counters
        self.slots = Slots(config.udp_flows)
        self._node_slots = node_slots
        self.flows: dict[Address, Flow] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self._socket: LocalSocket | None = None
        self._ids = itertools.count(1)
        self._refusals = Throttle()
        self._oversize = Throttle()
        self._resets = Throttle(RESET_LOG_EVERY)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is not a DatagramTransport subclass on every Python.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._socket = LocalSocket(self.transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        flow = self.flows.get(addr)
        if len(data) > MAX_DATAGRAM:
            self.counters.drop(Drop.OVERSIZE)
            self._say(
                self._oversize,
                "dropped a %d-byte datagram from %s (at most %d bytes pass)",
                len(data),
                _where(addr),
                MAX_DATAGRAM,
            )
            return
        if flow is None:
            flow = self._open(addr)
            if flow is None:
                return
        flow.push(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier send to a client (it went away): the
        # flow carries on, and ends by idling.
        log.debug("[use.%s] %s", self.config.key, exc)

    def _open(self, addr: Address) -> Flow | None:
        full = take_both(self.slots, self._node_slots)
        if full is not None:
            self.counters.drop(Drop.FLOW_LIMIT)
            which = (
                f"[use.{self.config.key}] udp_flows={full.limit}"
                if full is self.slots
                else f"[vnet] udp_flows={full.limit}"
            )
            self._say(
                self._refusals,
                "no new flow for %s: %d flows open, the cap of %s",
                _where(addr),
                full.used,
                which,
            )
            return None
        serveid = self.serve.serveid
        tunnel_id = secrets.token_hex(8)
        label = (
            f"[use.{self.config.key}] flow {next(self._ids)} from {_where(addr)} "
            f"-> serveid {serveid}"
        )
        fields: dict[str, object] = {
            "vnetid": self.serve.vnetid,
            "serveid": serveid,
            "tunnel": tunnel_id,
        }
        flow = Flow(
            self._dial(serveid, tunnel_id),
            lambda payload: self._send(payload, addr),
            self.counters,
            self.config.udp_idle,
            label,
            fields,
        )
        self.flows[addr] = flow

        def forget(ended: Flow) -> None:
            if self.flows.get(addr) is ended:
                del self.flows[addr]
            self.slots.give()
            self._node_slots.give()

        flow.on_end = forget
        flow.resets = self._resets
        task = self._spawn(flow.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        log.debug("%s: opened", label, extra=fields)
        return flow

    def _send(self, payload: bytes | memoryview, addr: Address) -> bool:
        return self._socket is not None and self._socket.send(payload, addr)

    def _say(self, throttle: Throttle, message: str, *args: object) -> None:
        held = throttle.due(asyncio.get_running_loop().time())
        if held is None:
            return
        more = f" ({held} more since the last such line)" if held else ""
        log.warning("[use.%s] " + message + "%s", self.config.key, *args, more)

    def close(self) -> None:
        """Stop listening and end every flow (each sends its fin)."""
        for flow in list(self.flows.values()):
            flow.end("the use closed")
        if self._socket is not None:
            self._socket.close()


def _where(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def open_udp_use(
    config: UseConfig,
    serve: Serve,
    port: int,
    dial: Callable[[int, str], TunnelCall],
    spawn: Spawn,
    counters: UdpCounters,
    node_slots: Slots,
) -> UdpUse:
    """Bind the use's socket; raises OSError as asyncio.start_server would."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpUse(config, serve, dial, spawn, counters, node_slots),
        local_addr=(config.ip, port),
    )
    return protocol
