"""A vnet node: joins the route, registers its serves, maps uses to local ports.

Every accepted local connection becomes its own tunnel (its own gRPC stream,
with its own flow control), so one slow reader cannot stall the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
from dataclasses import dataclass, field

from vnet import tunnel, wire
from vnet.client import (
    ControlEvent,
    NodeCredentials,
    OpenTunnel,
    ServeAdded,
    ServeRemoved,
    Snapshot,
    client_for,
)
from vnet.config import NodeConfig, ServeConfig, UseConfig
from vnet.errors import RouteUnavailable, VnetError
from vnet.registry import Serve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeTimeouts:
    """How long the node waits; shortened in tests."""

    connect: float = 10.0
    # Connecting to a serve's local target for an incoming tunnel.
    target_connect: float = 10.0


@dataclass(eq=False)
class UseState:
    """One [use.NAME] at run time."""

    config: UseConfig
    server: asyncio.Server | None = None
    port: int | None = None
    error: str = ""
    connections: set[asyncio.Task[None]] = field(default_factory=set)
    # Control events can ask for several reconciles at once.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Node:
    """A running node. start() joins and returns; wait() returns when it ends."""

    def __init__(
        self,
        config: NodeConfig,
        timeouts: NodeTimeouts | None = None,
        credentials: NodeCredentials | None = None,
    ) -> None:
        self.config = config
        self.timeouts = timeouts or NodeTimeouts()
        self.client = client_for(config, credentials)
        self.vnetid = ""
        self.group = ""
        # The group's serves, as the control stream tells them.
        self.remote: dict[int, Serve] = {}
        # This node's registered serves by the serveid the route settled on.
        self.serving: dict[int, ServeConfig] = {}
        self.serve_errors: dict[str, str] = {}
        self.uses: dict[str, UseState] = {}
        self._control: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._snapshot = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.vnet.name or "vnet"

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Join, register the serves and open the uses the config asks for.

        Raises RouteUnavailable when the route cannot be reached.
        """
        cfg = self.config
        await self.client.connect(self.timeouts.connect)
        joined = await self.client.join(cfg.vnet.name, cfg.vnet.group)
        self.vnetid, self.group = joined.vnetid, joined.group
        log.info(
            "joined route %s as vnet %s (%s) in group %s",
            cfg.route.address,
            self.vnetid,
            self.name,
            self.group,
        )
        self._control = asyncio.create_task(self._run_control())
        # Uses decide from the snapshot whether their serve is there yet.
        snapshot = asyncio.create_task(self._snapshot.wait())
        await asyncio.wait({snapshot, self._control}, return_when=asyncio.FIRST_COMPLETED)
        snapshot.cancel()
        if self._control.done():
            self._control.result()
        # terminal=false: the file is all there is, so everything active starts.
        console = cfg.vnet.terminal
        for serve in cfg.serves:
            if serve.active and (not console or cfg.vnet.startserve):
                await self.open_serve(serve)
        for use in cfg.uses:
            self.uses[use.key] = UseState(use)
            if use.serveid == 0:
                log.warning("[use.%s] has no serveid; it stays off", use.key)
                continue
            if use.active and (not console or cfg.vnet.startuse):
                await self._reconcile_use(self.uses[use.key])

    async def wait(self) -> None:
        """Until the control stream ends; raises RouteUnavailable then."""
        assert self._control is not None
        await self._control

    async def stop(self) -> None:
        if self._control is not None:
            self._control.cancel()
        for state in self.uses.values():
            self._close_listener(state)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            with contextlib.suppress(BaseException):
                await self._control
        await self.client.close()

    # --- serves ------------------------------------------------------------

    async def open_serve(self, serve: ServeConfig) -> int | None:
        """Register one serve; returns its serveid, or None when refused."""
        try:
            reg = await self.client.register(
                serve.serveid, serve.name or serve.key, serve.ip, serve.port, serve.info
            )
        except VnetError as exc:
            self.serve_errors[serve.key] = str(exc)
            log.error("[serve.%s] not registered: %s", serve.key, exc)
            return None
        self.serve_errors.pop(serve.key, None)
        self.serving[reg.serve.serveid] = serve
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

    async def close_serve(self, serveid: int) -> None:
        self.serving.pop(serveid, None)
        await self.client.unregister(serveid)

    # --- control events ----------------------------------------------------

    async def _run_control(self) -> None:
        try:
            async for event in self.client.control():
                self._on_event(event)
        finally:
            self._snapshot.set()

    def _on_event(self, event: ControlEvent) -> None:
        if isinstance(event, OpenTunnel):
            self._spawn(self._accept(event))
            return
        if isinstance(event, Snapshot):
            self.remote = {s.serveid: s for s in event.serves}
            self._snapshot.set()
        elif isinstance(event, ServeAdded):
            self.remote[event.serve.serveid] = event.serve
            log.info(
                "serve %s (%s) appeared on vnet %s",
                event.serve.serveid,
                event.serve.name,
                event.serve.vnetid,
            )
        elif isinstance(event, ServeRemoved):
            gone = self.remote.pop(event.serveid, None)
            if gone is not None:
                log.info("serve %s (%s) left", gone.serveid, gone.name)
        for state in self.uses.values():
            if state.config.active and state.config.serveid:
                self._spawn(self._reconcile_use(state))

    # --- uses (the dialling side) --------------------------------------------

    async def _reconcile_use(self, state: UseState) -> None:
        """Listen while the use's serve is registered; stop when it leaves."""
        async with state.lock:
            await self._reconcile_locked(state)

    async def _reconcile_locked(self, state: UseState) -> None:
        use = state.config
        serve = self.remote.get(use.serveid)
        if serve is None:
            if state.server is not None:
                self._close_listener(state)
                log.info("[use.%s] serveid %s left; stopped listening", use.key, use.serveid)
            elif not state.error:
                state.error = f"waiting for serveid {use.serveid}"
                log.info("[use.%s] waiting for serveid %s to appear", use.key, use.serveid)
            return
        if state.server is not None:
            return
        port = use.port if use.port is not None else serve.port
        try:
            server = await asyncio.start_server(
                lambda r, w: self._on_local(state, r, w),
                use.ip,
                port,
                limit=tunnel.READER_LIMIT,
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else str(exc)
            if state.error != reason:
                log.error("[use.%s] cannot listen on %s:%s: %s", use.key, use.ip, port, reason)
            state.error = reason
            return
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

    def _close_listener(self, state: UseState) -> None:
        if state.server is not None:
            state.server.close()
            state.server = None
            state.port = None

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
        call = self.client.dial(serveid)
        await tunnel.relay(reader, writer, call, label)

    # --- serves (the accepting side) -----------------------------------------

    async def _accept(self, event: OpenTunnel) -> None:
        label = f"tunnel {event.tunnel_id} from vnet {event.from_vnetid} -> serveid {event.serveid}"
        serve = self.serving.get(event.serveid)
        if serve is None:
            call = self.client.accept(event.tunnel_id)
            await _refuse(call, f"serveid {event.serveid} is not served here")
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(serve.ip, serve.port, limit=tunnel.READER_LIMIT),
                self.timeouts.target_connect,
            )
        except (OSError, TimeoutError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
            reason = f"cannot connect to {serve.ip}:{serve.port}: {detail}"
            log.warning("%s: %s", label, reason)
            await _refuse(self.client.accept(event.tunnel_id), reason)
            return
        call = self.client.accept(event.tunnel_id)
        await tunnel.relay(reader, writer, call, label)


async def _refuse(call: object, reason: str) -> None:
    """Answer an OpenTunnel with a reset, so the dialling client closes at once."""
    try:
        await call.write(wire.encode_reset(reason))  # type: ignore[attr-defined]
        await call.done_writing()  # type: ignore[attr-defined]
        async for _ in call:  # type: ignore[attr-defined]
            pass
    except Exception:  # noqa: BLE001 - the dialler is told by the route either way
        call.cancel()  # type: ignore[attr-defined]


async def run_node(node: Node) -> None:
    """Start and run until the route goes away (RouteUnavailable) or cancelled."""
    try:
        await node.start()
        await node.wait()
    finally:
        await node.stop()


__all__ = ["Node", "NodeTimeouts", "RouteUnavailable", "run_node"]
