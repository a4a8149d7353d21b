"""A vnet node: joins the route, registers its serves, maps uses to local ports.

Every accepted local connection becomes its own tunnel (its own gRPC stream,
with its own flow control), so one slow reader cannot stall the others.

The console changes a running node through the public methods below
(open/close/add/delete a serve or use, reload). They keep node.config equal
to what `save` would write, refuse a change that could not be saved and
started from again, and raise VnetError with a one-line reason instead of
logging failures; what succeeds is logged, like every other event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from vnet import config_diff, config_save, tunnel
from vnet.client import (
    ControlEvent,
    GoingAway,
    NodeCredentials,
    OpenTunnel,
    RouteClient,
    ServeAdded,
    ServeRemoved,
    Snapshot,
    UnserveAsked,
    client_for,
)
from vnet.config import NodeConfig, ServeConfig, UseConfig
from vnet.errors import NotFound, RouteUnavailable, Unauthenticated, VnetError
from vnet.node_state import NodeRequestError, NodeTimeouts, ServeState
from vnet.pacing import Pacer
from vnet.registry import Serve
from vnet.unserves import Unserves
from vnet.uses import Uses, UseState

log = logging.getLogger(__name__)

SESSION_FORGOTTEN = "the route restarted; joining again as a new session"


def lost_words(exc: VnetError, joined: bool) -> str:
    """What to log for a failure of the route's: the credentials text only
    when Join itself refused them.

    An UNAUTHENTICATED once joined (on the control stream, or on a call with
    the session Join just gave) means the route no longer knows the session:
    it restarted, or dropped it while stopping. Repeating "invalid or missing
    credentials" then would send the user after a token that is fine.
    """
    if joined and (isinstance(exc, Unauthenticated) or isinstance(exc.__cause__, Unauthenticated)):
        return SESSION_FORGOTTEN
    return str(exc)


# Connections to serve targets being made at once; more tunnels wait their
# turn (inside the same target_connect deadline) instead of all dialling
# together. A burst of 2,000 connects would overflow a target's listen
# backlog (asyncio's default is 100; Python's socketserver's is 5): its
# kernel then drops or resets handshakes, which the client sees as resets.
TARGET_CONNECTS = 32


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
        self._credentials = credentials
        self.client = self._new_client()
        self.vnetid = ""
        self.group = ""
        self.boot_id = ""
        # (vnetid, resume token) of the current session, to take it over
        # after a lost connection.
        self._resume: tuple[str, str] | None = None
        # The group's serves, as the control stream tells them.
        self.remote: dict[int, Serve] = {}
        self.serves: dict[str, ServeState] = {}
        # All tunnels share the connection to the route, both ways.
        self.pacer = Pacer(shared_rate=config.vnet.bulk_while_interactive * 1_000_000)
        # Through a lambda: the client is replaced on each reconnect.
        self._uses = Uses(
            self.remote,
            lambda serveid, tunnel_id: self.client.dial(serveid, tunnel_id),
            self._spawn,
            self.pacer,
        )
        self.uses: dict[str, UseState] = self._uses.states
        # Why the route went away, once it has.
        self.lost = ""
        self._control: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot = asyncio.Event()
        # Whether the last _join got past Join itself (see lost_words).
        self._joined = False
        # The route said it is stopping (going_away): its stream's end is no surprise.
        self._going_away = False
        self._target_connects = asyncio.Semaphore(TARGET_CONNECTS)
        self.unserves = Unserves(self, self.timeouts.unserve_unused, self.timeouts.unserve_linger)

    @property
    def name(self) -> str:
        return self.config.vnet.name or "vnet"

    @property
    def connected(self) -> bool:
        return self._control is not None and not self._control.done()

    @property
    def serving(self) -> dict[int, ServeConfig]:
        """Registered serves by the serveid the route settled on."""
        return {s.serveid: s.config for s in self.serves.values() if s.serveid is not None}

    @property
    def serve_errors(self) -> dict[str, str]:
        return {k: s.error for k, s in self.serves.items() if s.error}

    def _new_client(self) -> RouteClient:
        return client_for(
            self.config,
            self._credentials,
            keepalive=self.timeouts.keepalive,
            keepalive_timeout=self.timeouts.keepalive_timeout,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- lifecycle ---------------------------------------------------------

    async def start(self, autostart: bool = True) -> None:
        """Join, register the serves and open the uses the config asks for.

        autostart False starts nothing (`vnet -c`: a script's session).
        Raises RouteUnavailable when the route cannot be reached.
        """
        cfg = self.config
        await self._join(fail_fast=True)
        self._supervisor = asyncio.create_task(self._supervise())
        self._spawn(self.unserves.lapse_forever())
        # terminal=false: the file is all there is, so everything active starts.
        console = cfg.vnet.terminal
        serve_now = autostart and (not console or cfg.vnet.startserve)
        use_now = autostart and (not console or cfg.vnet.startuse)
        for serve in cfg.serves:
            state = self.serves[serve.key] = ServeState(serve, running=serve.active and serve_now)
            if state.running:
                await self._register_logged(state)
        for use in cfg.uses:
            ustate = self.uses[use.key] = UseState(use, running=use.active and use_now)
            if use.serveid == 0:
                ustate.running = False
                log.warning("[use.%s] has no serveid; it stays off", use.key)
            elif ustate.running:
                await self._uses.reconcile(ustate)

    async def _join(self, fail_fast: bool = False) -> None:
        """Connect, join (taking the last session over, if any), open control.

        fail_fast: give up as soon as the route is known to be unreachable
        (starting); otherwise wait the connect timeout (reconnecting)."""
        cfg = self.config
        await self.client.connect(self.timeouts.connect, fail_fast=fail_fast)
        self._joined = self._going_away = False
        joined = await self.client.join(cfg.vnet.name, cfg.vnet.group, resume=self._resume)
        self._joined = True
        restarted = bool(self.boot_id) and joined.boot_id != self.boot_id
        self.vnetid, self.group, self.boot_id = joined.vnetid, joined.group, joined.boot_id
        self._resume = (joined.vnetid, joined.resume_token)
        log.info(
            "joined route %s as vnet %s (%s) in group %s%s",
            cfg.route.address,
            self.vnetid,
            self.name,
            self.group,
            " (the route restarted)" if restarted else "",
        )
        self._snapshot.clear()
        self._control = asyncio.create_task(self._run_control())
        # Uses decide from the snapshot whether their serve is there yet.
        snapshot = asyncio.create_task(self._snapshot.wait())
        await asyncio.wait({snapshot, self._control}, return_when=asyncio.FIRST_COMPLETED)
        snapshot.cancel()
        if self._control.done():
            self._control.result()

    async def wait(self) -> None:
        """Until the node stops; raises RouteUnavailable if the route went
        away and reconnecting is off (reconnect_max 0)."""
        assert self._supervisor is not None
        # Shielded: a waiter cancelled (Ctrl-C, SIGTERM) must not take the
        # control stream down with it before stop() has said Leave.
        await asyncio.shield(self._supervisor)

    async def _supervise(self) -> None:
        """Reconnect whenever the route goes away, for as long as the node runs."""
        assert self._control is not None
        while True:
            try:
                await self._control
                why = "the route closed the control stream"
            except RouteUnavailable as exc:
                why = lost_words(exc, joined=True)
            if self._going_away:
                # Not "Cancelling all calls" or the like: it stopped, and said so.
                why = "the route stopped"
            if self.timeouts.reconnect_max <= 0:
                raise RouteUnavailable(why)
            await self._reconnect(why)
            assert self._control is not None

    async def _reconnect(self, why: str) -> None:
        """Back off (exponential, with jitter) and rejoin until it works."""
        lost_at = asyncio.get_running_loop().time()
        log.warning("lost the route: %s; reconnecting", why)
        delay = self.timeouts.reconnect_min
        attempt = 0
        while True:
            # Equal jitter: nodes that lost a route together do not all come back at once.
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            attempt += 1
            # A fresh channel: the old one's own reconnect backoff would add
            # to ours. The old one may sit on a dead link: close it aside.
            self._spawn(self.client.close_quietly())
            self.client = self._new_client()
            # The serving nodes are reconnecting too: keep our listeners a
            # while, from the first snapshot on.
            grace = max(2 * self.timeouts.reconnect_max, 1.0)
            self._uses.hold_until = asyncio.get_running_loop().time() + grace
            try:
                await self._join()
                break
            except VnetError as exc:
                why = lost_words(exc, self._joined)
                if why == SESSION_FORGOTTEN:
                    log.info("reconnect attempt %d: %s", attempt, why)
                else:
                    log.info("reconnect attempt %d failed: %s", attempt, why)
                delay = min(delay * 2, self.timeouts.reconnect_max)
        for state in self.serves.values():
            if state.running and state.serveid is None:
                await self._register_logged(state)
        self._spawn(self._end_hold(grace))
        self._uses.reconcile_all()
        log.info(
            "reconnected after %.1fs (%d attempt(s))",
            asyncio.get_running_loop().time() - lost_at,
            attempt,
        )

    async def stop(self) -> None:
        if self.connected:
            # Say so, so the route logs a leave and not a lost connection;
            # best effort (an old route has no Leave, a dying link no answer).
            with contextlib.suppress(VnetError):
                await self.client.leave()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
        if self._control is not None:
            self._control.cancel()
        self._uses.close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            with contextlib.suppress(BaseException):
                await self._control
        await self.client.close()

    # --- control events ----------------------------------------------------

    async def _run_control(self) -> None:
        try:
            async for event in self.client.control():
                self._on_event(event)
        except RouteUnavailable as exc:
            self._on_lost(str(exc))
            raise
        finally:
            self._snapshot.set()

    def _drop_ephemeral(self, which: Callable[[UseState], bool]) -> None:
        for key, state in list(self.uses.items()):
            if state.ephemeral and which(state):
                state.running = False
                self._uses.close(state)
                del self.uses[key]
                log.info("[use.%s] removed: its unserve is gone", key)

    def add_unserve_state(self, config: ServeConfig, serveid: int) -> None:
        """An offer made on request, served like the config's serves."""
        self.serves[config.key] = ServeState(config, running=True, serveid=serveid, unserve=True)

    async def unserve(self, vnetid: str, ip: str, port: int) -> Serve:
        """Ask vnet `vnetid` to offer ip:port; the serve it registered."""
        self._require_route()
        serve = await self.client.unserve(vnetid, ip, port)
        # Known now, whether or not its serve_added has come in yet.
        self.remote[serve.serveid] = serve
        return serve

    async def map_unserve(self, serve: Serve, ip: str, port: int) -> UseState:
        """Map an unserve to a local port, for as long as the unserve lives.

        Not part of the config (`save` leaves it out): it ends with the offer.
        """
        key = f"unserve-{serve.vnetid}-{serve.serveid:03d}"
        if key in self.uses:
            raise NodeRequestError(f"[use.{key}] already maps it")
        use = UseConfig(key=key, serveid=serve.serveid, ip=ip, port=port)
        state = self.uses[key] = UseState(use, running=True, ephemeral=True)
        error = await self._uses.reconcile(state, quiet=True)
        if error:
            del self.uses[key]
            raise NodeRequestError(f"unserve {serve.serveid:03d}: {error}")
        return state

    async def _end_hold(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self._uses.reconcile_all()

    def _on_lost(self, why: str) -> None:
        """Forget what the route knew; keep listening.

        Use listeners stay up through an outage, so clients get a prompt
        reset (no serve is known) instead of "connection refused" flapping,
        and the ports are still ours when the route is back.
        """
        self.lost = why
        self.remote.clear()
        self.unserves.forget()
        self._drop_ephemeral(lambda _: True)
        for state in self.serves.values():
            if state.serveid is not None:
                state.last_serveid = state.serveid
                state.serveid = None
                state.error = "the route went away"

    def _on_event(self, event: ControlEvent) -> None:
        if isinstance(event, OpenTunnel):
            # The Accept call starts here, before anything awaits: the route
            # waits for it, and under a burst the target connect below may
            # queue (or a slow target take seconds) behind other tunnels.
            # Frames from the dialler wait in the stream's window meanwhile.
            self._spawn(self._accept(event, self.client.accept(event.tunnel_id)))
            return
        if isinstance(event, UnserveAsked):
            self._spawn(self.unserves.answer(event))
            return
        if isinstance(event, GoingAway):
            self._going_away = True
            log.warning(
                "the route is going away (%s); open tunnels have %.1fs",
                event.reason,
                event.grace,
            )
            return
        if isinstance(event, Snapshot):
            # In place: the uses hold this same dict.
            self.remote.clear()
            self.remote.update((s.serveid, s) for s in event.serves)
            self._snapshot.set()
        elif isinstance(event, ServeAdded):
            self.remote[event.serve.serveid] = event.serve
            # Our own serves were logged as we registered them.
            if event.serve.vnetid != self.vnetid:
                log.info(
                    "serve %s (%s) appeared on vnet %s",
                    event.serve.serveid,
                    event.serve.name,
                    event.serve.vnetid,
                )
        elif isinstance(event, ServeRemoved):
            gone = self.remote.pop(event.serveid, None)
            if gone is not None and gone.vnetid != self.vnetid:
                log.info("serve %s (%s) left", gone.serveid, gone.name)
            # A mapping made for an unserve ends with it: its serveid may
            # later be given to something else.
            self._drop_ephemeral(lambda u: u.config.serveid == event.serveid)
        self._uses.reconcile_all()

    # --- serves: registration ------------------------------------------------

    async def _register(self, state: ServeState) -> int:
        serve = state.config
        try:
            reg = await self.client.register(
                state.last_serveid or serve.serveid,
                serve.name or serve.key,
                serve.ip,
                serve.port,
                serve.info,
            )
        except VnetError as exc:
            state.error = str(exc)
            raise
        state.serveid = reg.serve.serveid
        state.error = ""
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

    async def _register_logged(self, state: ServeState) -> int | None:
        """Register, logging a refusal (start-up and reload, where no one is asking)."""
        try:
            return await self._register(state)
        except VnetError as exc:
            why = lost_words(exc, joined=True)
            if why == SESSION_FORGOTTEN:
                # Not an error of the serve's: the node registers it again on rejoining.
                state.error = why
                log.warning("[serve.%s] not registered yet: %s", state.key, why)
            else:
                log.error("[serve.%s] not registered: %s", state.key, why)
            return None

    async def _unregister(self, state: ServeState) -> None:
        serveid, state.serveid = state.serveid, None
        if serveid is None or not self.connected:
            return
        with contextlib.suppress(NotFound):  # already gone at the route
            await self.client.unregister(serveid)
        log.info("[serve.%s] serveid %s unregistered", state.key, serveid)

    # --- the console's requests ----------------------------------------------

    def _commit(self) -> None:
        """Make node.config the config as it is now."""
        self.config = dataclasses.replace(
            self.config,
            serves=tuple(s.config for s in self.serves.values() if not s.unserve),
            uses=tuple(u.config for u in self.uses.values() if not u.ephemeral),
        )

    def _check(self, serves: tuple[ServeConfig, ...], uses: tuple[UseConfig, ...]) -> None:
        """Refuse a change that `save` could not write and the node start from again."""
        config_save.checked(dataclasses.replace(self.config, serves=serves, uses=uses))

    def _deactivate(self, state: ServeState | UseState, name: str) -> None:
        """`close`: mark inactive in the config and stop meaning to run."""
        if not state.running and not state.config.active:
            raise NodeRequestError(f"{name} is already closed")
        state.running = False
        state.error = ""
        state.config = dataclasses.replace(state.config, active=False)
        self._commit()

    def _require_route(self) -> None:
        if not self.connected:
            raise RouteUnavailable(f"the route is not connected ({self.lost or 'not started'})")

    def serve(self, key: str) -> ServeState:
        try:
            return self.serves[key]
        except KeyError:
            raise NodeRequestError(_no_such("serve", key, self.serves)) from None

    def use(self, key: str) -> UseState:
        try:
            return self.uses[key]
        except KeyError:
            raise NodeRequestError(_no_such("use", key, self.uses)) from None

    async def open_serve(self, key: str) -> int:
        """Activate and register; returns the serveid the route settled on."""
        state = self.serve(key)
        if state.serveid is not None:
            raise NodeRequestError(f"[serve.{key}] is already registered as {state.serveid:03d}")
        self._require_route()
        before = state.config
        state.config = dataclasses.replace(before, active=True)
        self._commit()
        try:
            serveid = await self._register(state)
        except VnetError:
            state.config = before
            self._commit()
            raise
        state.running = True
        return serveid

    async def close_serve(self, key: str) -> None:
        """Unregister and mark inactive; tunnels already open carry on."""
        state = self.serve(key)
        self._deactivate(state, f"[serve.{key}]")
        await self._unregister(state)

    async def add_serve(self, serve: ServeConfig) -> int | None:
        """`serve new` (inactive) or `serve run` (active: registered now)."""
        if serve.key in self.serves:
            raise NodeRequestError(
                f"there is already a [serve.{serve.key}]; "
                f"serve delete {serve.key} first, or pick another name"
            )
        if serve.active:
            self._require_route()
        self._check((*self.config.serves, serve), self.config.uses)
        state = self.serves[serve.key] = ServeState(serve, running=serve.active)
        self._commit()
        log.info("[serve.%s] added (%s)", serve.key, "active" if serve.active else "inactive")
        if not serve.active:
            return None
        try:
            return await self._register(state)
        except VnetError as exc:
            state.running = False
            raise NodeRequestError(f"[serve.{serve.key}] added but not registered: {exc}") from None

    async def delete_serve(self, key: str) -> None:
        state = self.serve(key)
        del self.serves[key]
        self._commit()
        await self._unregister(state)
        log.info("[serve.%s] deleted", key)

    async def open_use(self, key: str) -> UseState:
        """Activate: listen now if the serve is there, else as soon as it appears."""
        state = self.use(key)
        if state.running:
            raise NodeRequestError(f"[use.{key}] is already open")
        if state.config.serveid == 0:
            raise NodeRequestError(
                f"[use.{key}] has no serveid; use delete {key}, then use run {key} serveid=N"
            )
        self._require_route()
        before = state.config
        state.config = dataclasses.replace(before, active=True)
        self._commit()
        state.running = True
        state.error = ""
        error = await self._uses.reconcile(state, quiet=True)
        if error:
            state.running = False
            state.config = before
            self._commit()
            raise NodeRequestError(f"[use.{key}] {error}")
        return state

    async def close_use(self, key: str) -> None:
        """Stop listening and mark inactive; connections already accepted carry on."""
        state = self.use(key)
        self._deactivate(state, f"[use.{key}]")
        was = state.port
        async with state.lock:
            self._uses.close(state)
        if was is not None:
            log.info("[use.%s] closed: stopped listening on %s:%s", key, state.config.ip, was)

    async def add_use(self, use: UseConfig) -> UseState:
        """`use new` (inactive) or `use run` (active: listens when its serve is there)."""
        if use.key in self.uses:
            raise NodeRequestError(
                f"there is already a [use.{use.key}]; "
                f"use delete {use.key} first, or pick another name"
            )
        if use.active:
            self._require_route()
        self._check(self.config.serves, (*self.config.uses, use))
        state = self.uses[use.key] = UseState(use, running=use.active)
        self._commit()
        log.info("[use.%s] added (%s)", use.key, "active" if use.active else "inactive")
        if use.active:
            error = await self._uses.reconcile(state, quiet=True)
            if error:
                state.running = False
                raise NodeRequestError(f"[use.{use.key}] added but {error}")
        return state

    async def delete_use(self, key: str) -> None:
        state = self.use(key)
        del self.uses[key]
        self._commit()
        # A reconcile already queued by a control event must not listen again.
        state.running = False
        async with state.lock:
            self._uses.close(state)
        log.info("[use.%s] deleted", key)

    async def reload(self, new: NodeConfig) -> tuple[config_diff.ConfigDiff, list[str]]:
        """Apply only what differs from new; returns the diff and what failed.

        Unchanged serves and uses, and their open connections, are not touched.
        """
        change = config_diff.diff(self.config, new)
        for what in change.needs_restart:
            log.warning("%s changed: it takes effect when the node restarts", what)
        problems: list[str] = []
        by_key = {s.key: s for s in new.serves}
        # Removed first: that frees static serveids and ports for the rest.
        for key in change.serves.removed:
            await self._unregister(self.serves.pop(key))
            log.info("[serve.%s] removed", key)
        for key in change.serves.changed:
            await self._unregister(self.serves.pop(key))
        for key in (*change.serves.changed, *change.serves.added, *change.serves.toggled):
            state = self.serves.get(key)
            if state is None:
                state = self.serves[key] = ServeState(by_key[key])
            elif not by_key[key].active:
                await self._unregister(state)
            state.config = by_key[key]
            state.running = state.config.active
            if (
                state.running
                and state.serveid is None
                and await self._register_logged(state) is None
            ):
                problems.append(f"[serve.{key}] not registered: {state.error}")
        # Keep the file's order.
        self.serves = {s.key: self.serves[s.key] for s in new.serves}
        uses_by_key = {u.key: u for u in new.uses}
        for key in (*change.uses.removed, *change.uses.changed):
            old = self.uses.pop(key)
            old.running = False  # as in delete_use
            async with old.lock:
                self._uses.close(old)
            if key in change.uses.removed:
                log.info("[use.%s] removed", key)
        for key in (*change.uses.changed, *change.uses.added, *change.uses.toggled):
            use = uses_by_key[key]
            ustate = self.uses.setdefault(key, UseState(use))
            ustate.config = use
            ustate.running = use.active and use.serveid != 0
            error = await self._uses.reconcile(ustate)
            if error:
                problems.append(f"[use.{key}] {error}")
        ordered = {u.key: self.uses[u.key] for u in new.uses}
        self.uses.clear()
        self.uses.update(ordered)  # in place: self._uses holds this dict
        self.config = new
        return change, problems

    # --- serves (the accepting side) -----------------------------------------

    async def _accept(self, event: OpenTunnel, call: Any) -> None:
        """Connect the serve's target and relay; `call` is the Accept already under way."""
        try:
            await self._accept_on(event, call)
        finally:
            # Ended before its relay took the call over (node stopping): let
            # the route know now rather than at the stream's deadline.
            call.cancel()

    async def _accept_on(self, event: OpenTunnel, call: Any) -> None:
        label = f"tunnel {event.tunnel_id} from vnet {event.from_vnetid} -> serveid {event.serveid}"
        serve = self.serving.get(event.serveid)
        if serve is None:
            await tunnel.refuse(call, f"serveid {event.serveid} is not served here")
            return
        host = serve.ip
        offered = event.serveid in self.unserves.offers
        if offered:
            host, reason = await self.unserves.dial_address(event.serveid)
            if reason:
                log.warning("%s: refused: %s", label, reason)
                await tunnel.refuse(call, reason)
                return
        try:
            # One deadline for the wait in line and the connect itself.
            # asyncio.timeout, not wait_for: no extra task for every tunnel.
            async with (
                asyncio.timeout(self.timeouts.target_connect),
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
            self.unserves.opened(event.serveid)
        try:
            fields = {
                "vnetid": event.from_vnetid,
                "serveid": event.serveid,
                "tunnel": event.tunnel_id,
            }
            await tunnel.relay(
                reader, writer, call, label, fields, pacer=self.pacer, local="the service"
            )
        finally:
            if offered:
                self.unserves.closed(event.serveid)


def _no_such(kind: str, key: str, names: dict[str, Any]) -> str:
    known = ", ".join(names) or "none yet"
    return f"no {kind} named {key!r} ({kind}s: {known})"


async def run_node(node: Node) -> None:
    """Start and run until the route goes away (RouteUnavailable) or cancelled."""
    try:
        await node.start()
        await node.wait()
    finally:
        await node.stop()


__all__ = [
    "Node",
    "NodeRequestError",
    "NodeTimeouts",
    "RouteUnavailable",
    "ServeState",
    "UseState",
    "run_node",
]
