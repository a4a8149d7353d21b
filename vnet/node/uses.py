"""A node's uses: local listeners that follow their serves.

A running use listens only while its serve is registered in the group:
before the serve appears its port is closed (connections are refused at
once), and it closes again when the serve leaves. Every accepted connection
becomes its own tunnel (its own Dial stream).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from vnet.core.config import DEFAULT_UDP_FLOWS, UseConfig
from vnet.core.pacing import Pacer
from vnet.core.registry import Serve
from vnet.core.udp import Slots, UdpCounters
from vnet.node import tunnel
from vnet.node.client import TunnelCall
from vnet.node.udp_use import UdpUse, open_udp_use

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@dataclass(eq=False)
class UseState:
    """One [use.NAME] at run time."""

    config: UseConfig
    # Meant to listen now (active, and started or opened).
    running: bool = False
    server: asyncio.Server | None = None
    port: int | None = None
    error: str = ""
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    # Control events can ask for several reconciles at once.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Made at run time for an unserve: not part of the config, ends with it.
    ephemeral: bool = False
    counters: tunnel.Counters = field(default_factory=tunnel.Counters)
    # type=udp: its socket and flows while it listens, and their traffic.
    udp: UdpUse | None = None
    udp_counters: UdpCounters = field(default_factory=UdpCounters)

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def listening(self) -> bool:
        return self.server is not None or self.udp is not None


class Uses:
    """The uses of one node, by name, and their listeners."""

    def __init__(
        self,
        remote: Mapping[int, Serve],
        dial: Callable[[int, str], TunnelCall],
        spawn: Spawn,
        pacer: Pacer,
        udp_slots: Slots | None = None,
    ) -> None:
        # The group's serves as the control stream tells them (owned by the node).
        self.remote = remote
        self.states: dict[str, UseState] = {}
        self._dial_call = dial
        self._spawn = spawn
        self._pacer = pacer
        self._udp_slots = udp_slots or Slots(DEFAULT_UDP_FLOWS)
        self._ids = itertools.count(1)
        # Until then (loop time), a serve missing from the group does not
        # close its use's listener: after a reconnect the serving nodes may
        # not have registered again yet, and the port should stay ours.
        self.hold_until = 0.0

    async def reconcile(self, state: UseState, *, quiet: bool = False) -> str:
        """Listen or not, as the use's state and its serve say.

        Returns why it cannot listen ("" when it listens, or waits for its
        serve). quiet: the caller reports that itself (the console).
        """
        async with state.lock:
            return await self._reconcile_locked(state, quiet)

    def reconcile_all(self) -> None:
        for state in self.states.values():
            if state.running or state.listening:
                self._spawn(self._reconcile_quietly(state))

    async def _reconcile_quietly(self, state: UseState) -> None:
        await self.reconcile(state)  # errors are logged and kept in state.error

    async def _reconcile_locked(self, state: UseState, quiet: bool) -> str:
        use = state.config
        serve = self.remote.get(use.serveid) if state.running and use.serveid else None
        if serve is None:
            held = state.running and asyncio.get_running_loop().time() < self.hold_until
            if state.listening and held:
                return ""
            if state.listening:
                self.close(state)
                if state.running:
                    log.info("[use.%s] serveid %s left; stopped listening", use.key, use.serveid)
            elif state.running and not state.error:
                state.error = f"waiting for serveid {use.serveid}"
                log.info("[use.%s] waiting for serveid %s to appear", use.key, use.serveid)
            return ""
        if state.listening:
            return ""
        if serve.type != use.type:
            message = (
                f"type={use.type} but serveid {serve.serveid} ({serve.name} on vnet "
                f"{serve.vnetid}) is {serve.type}: set type={serve.type}"
            )
            if state.error != message and not quiet:
                log.error("[use.%s] %s", use.key, message)
            state.error = message
            return message
        port = use.port if use.port is not None else serve.port
        if use.type == "udp":
            return await self._listen_udp(state, serve, port, quiet)
        try:
            server = await asyncio.start_server(
                lambda r, w: self._on_local(state, r, w),
                use.ip,
                port,
                limit=tunnel.READER_LIMIT,
                # asyncio's default of 100 overflows when a browser or a
                # load test opens hundreds at once; the kernel caps it anyway.
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            return _cannot_listen(state, f"{use.ip}:{port}", exc, quiet)
        state.server = server
        state.port = server.sockets[0].getsockname()[1]
        state.error = ""
        log.info(
            "[use.%s] listening on %s:%s -> serveid %s (%s on vnet %s)",
            use.key,
            use.ip,
            state.port,
            serve.serveid,
            serve.name,
            serve.vnetid,
        )
        return ""

    async def _listen_udp(self, state: UseState, serve: Serve, port: int, quiet: bool) -> str:
        use = state.config
        try:
            udp = await open_udp_use(
                use,
                serve,
                port,
                self._dial_call,
                self._spawn,
                state.udp_counters,
                self._udp_slots,
            )
        except OSError as exc:
            return _cannot_listen(state, f"udp {use.ip}:{port}", exc, quiet)
        state.udp = udp
        state.port = udp.port
        state.error = ""
        log.info(
            "[use.%s] listening on udp %s:%s -> serveid %s (%s on vnet %s), udp_idle=%ss",
            use.key,
            use.ip,
            state.port,
            serve.serveid,
            serve.name,
            serve.vnetid,
            use.udp_idle,
        )
        return ""

    def close(self, state: UseState) -> None:
        """Stop listening; TCP connections already accepted carry on, UDP flows end."""
        if state.server is not None:
            state.server.close()
            state.server = None
            state.port = None
        if state.udp is not None:
            state.udp.close()
            state.udp = None
            state.port = None

    def close_all(self) -> None:
        for state in self.states.values():
            self.close(state)

    def _on_local(
        self, state: UseState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = self._spawn(self._dial(state, reader, writer))
        state.connections.add(task)
        task.add_done_callback(state.connections.discard)

    async def _dial(
        self, state: UseState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        serveid = state.config.serveid
        label = f"[use.{state.config.key}] conn {next(self._ids)} -> serveid {serveid}"
        if serveid not in self.remote:
            log.info("%s: refused, serveid %s is not registered", label, serveid)
            tunnel.reset_socket(writer)
            return
        if self.remote[serveid].type != "tcp":
            log.info("%s: refused, serveid %s is no longer tcp", label, serveid)
            tunnel.reset_socket(writer)
            return
        serve = self.remote[serveid]
        tunnel_id = secrets.token_hex(8)
        fields: dict[str, object] = {
            "vnetid": serve.vnetid,
            "serveid": serveid,
            "tunnel": tunnel_id,
        }
        call = self._dial_call(serveid, tunnel_id)
        await tunnel.relay(reader, writer, call, label, fields, state.counters, self._pacer)


def _cannot_listen(state: UseState, where: str, exc: OSError, quiet: bool) -> str:
    """Record why a use could not listen on where; the message for the console."""
    reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
    message = f"cannot listen on {where}: {reason}"
    if state.error != reason and not quiet:
        log.error("[use.%s] %s", state.config.key, message)
    state.error = reason
    return message
