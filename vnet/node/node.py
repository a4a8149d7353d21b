"""A vnet node: joins the route, registers its serves, maps uses to local ports.

A node given several routes ([route] routes=) joins the first that answers
and, when it loses that one, fails over to the next (see _reconnect).

Every accepted local connection becomes its own tunnel (its own gRPC stream,
with its own flow control), so one slow reader cannot stall the others.

The Node keeps the lifecycle (start, reconnect, stop) and dispatches the
control stream's events; its serves' registration and accepting side are
vnet.node.serves, its uses' listeners and dialling side vnet.node.uses. The
console changes a running node through the public methods below (open,
close, add, delete a serve or use, reload), which vnet.node.editing carries out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from vnet.core.config import NodeConfig, ServeConfig, UseConfig
from vnet.core.config_diff import ConfigDiff
from vnet.core.errors import Busy, RouteUnavailable, Unauthenticated, VnetError
from vnet.core.pacing import Pacer
from vnet.core.queueing import Governor
from vnet.core.registry import Serve
from vnet.core.udp import Slots
from vnet.node import probing
from vnet.node.client import (
    CLOSE_TIMEOUT,
    ControlEvent,
    EchoAsked,
    GoingAway,
    IdConflict,
    NodeCredentials,
    OpenTunnel,
    RouteClient,
    ServeAdded,
    ServeChanges,
    ServeRemoved,
    Snapshot,
    UnserveAsked,
    client_for,
)
from vnet.node.editing import Editor
from vnet.node.offers import Unserves
from vnet.node.probing import Prober
from vnet.node.serves import Serves
from vnet.node.state import NodeRequestError, NodeTimeouts, ServeState
from vnet.node.uses import Uses, UseState

log = logging.getLogger(__name__)

SESSION_FORGOTTEN = "the route restarted; joining again as a new session"


# How many times a registration answered "busy" is tried again before it counts as refused.
BUSY_RETRIES = 5


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
        # The routes it may join, in order, and which one it is on (or trying).
        # Fixed at start: a reload that changes them needs a restart.
        self._targets = config.targets
        self._at = 0
        # Times the node joined another route than the one it had lost or left.
        self.route_moves = 0
        # Where it last joined ("" before the first join).
        self._joined_at = ""
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
        target = config.vnet.queue_target_ms / 1000
        self.governor = Governor(target=target) if target else None
        self.pacer = Pacer(
            shared_rate=config.vnet.bulk_while_interactive * 1_000_000, governor=self.governor
        )
        self.prober = (
            Prober(self.governor, lambda: self.client) if self.governor is not None else None
        )
        if self.prober is not None:
            self.pacer.on_interactive = self.prober.wake.set
        # UDP flows held at once, by the uses and the serves together.
        self.udp_slots = Slots(config.vnet.udp_flows)
        # The uses' listeners and the dialling side of tunnels. Through a
        # lambda: the client is replaced on each reconnect.
        self.use_side = Uses(
            self.remote,
            lambda serveid, tunnel_id: self.client.dial(serveid, tunnel_id),
            self._spawn,
            self.pacer,
            self.udp_slots,
        )
        self.uses: dict[str, UseState] = self.use_side.states
        # Why the route went away, once it has.
        self.lost = ""
        self._control: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._snapshot = asyncio.Event()
        # Whether the last _join got past Join itself (see lost_words), and
        # whether it reached the route at all (a route that answers and
        # refuses is one to move on from at once).
        self._joined = False
        self._reached = False
        # Set when the route says it is going away with a grace, and the node
        # has another route to go to: it moves now, not at the stream's end.
        self._moving = asyncio.Event()
        # Clients of routes the node has left while their tunnels drain, with
        # the serves registered there then (by serveid), for the tunnels it
        # still asks for in its grace.
        self._leaving: dict[RouteClient, dict[int, ServeConfig]] = {}
        # The route said it is stopping (going_away): its stream's end is no surprise.
        self._going_away = False
        # Its reason, when the route ended only this node's session (grace 0: a kick).
        self._sent_away = ""
        # What it said when it is going away with a grace (see _moving).
        self._going_reason = ""
        self._going_grace = 0.0
        self.unserves = Unserves(self, self.timeouts.unserve_unused, self.timeouts.unserve_linger)
        # The serves' registration and the accepting side of tunnels.
        self.serve_side = Serves(self)
        self._editor = Editor(self)

    @property
    def name(self) -> str:
        return self.config.vnet.name or "vnet"

    @property
    def route_address(self) -> str:
        """The route the node is on now (or trying to reach), as HOST:PORT."""
        return self._targets[self._at].address

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
            target=self._targets[self._at],
        )

    @property
    def _several(self) -> bool:
        return len(self._targets) > 1

    @property
    def _fails_over(self) -> bool:
        """Whether a route going away sends the node to another (not when
        reconnecting is off: reconnect_max 0 ends the node instead)."""
        return self._several and self.timeouts.reconnect_max > 0

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
        await self._join_first()
        self._supervisor = asyncio.create_task(self._supervise())
        self._spawn(self.unserves.lapse_forever())
        if self.prober is not None:
            self._spawn(self.prober.run())
        # terminal=false: the file is all there is, so everything active starts.
        console = cfg.vnet.terminal
        serve_now = autostart and (not console or cfg.vnet.startserve)
        use_now = autostart and (not console or cfg.vnet.startuse)
        for serve in cfg.serves:
            state = self.serves[serve.key] = ServeState(serve, running=serve.active and serve_now)
            if state.running:
                await self.register_logged(state)
        for use in cfg.uses:
            ustate = self.uses[use.key] = UseState(use, running=use.active and use_now)
            if use.serveid == 0:
                ustate.running = False
                log.warning("[use.%s] has no serveid; it stays off", use.key)
            elif ustate.running:
                await self.use_side.reconcile(ustate)

    async def _join_first(self) -> None:
        """Join the first of the routes that answers, in the order given.

        One that cannot be reached, or answers that it is unavailable or busy,
        sends the node to the next; any other refusal (credentials, a limit)
        is the node's to fix and ends the start. Raises RouteUnavailable
        naming every route's reason when none would do.
        """
        failures: list[str] = []
        for at in range(len(self._targets)):
            if at:
                await self.client.close_quietly()
                self._at = at
                self.client = self._new_client()
            try:
                await self._join(fail_fast=True)
                return
            except (RouteUnavailable, Busy) as exc:
                if not self._several:
                    raise
                log.warning("route %s would not do: %s", self.route_address, exc)
                failures.append(f"{self.route_address}: {exc}")
        raise RouteUnavailable("no route of [route] routes would do: " + "; ".join(failures))

    async def _join(self, fail_fast: bool = False) -> None:
        """Connect, join (taking the last session over, if any), open control.

        fail_fast: give up as soon as the route is known to be unreachable
        (starting); otherwise wait the connect timeout (reconnecting)."""
        cfg = self.config
        self._reached = False
        await self.client.connect(self.timeouts.connect, fail_fast=fail_fast)
        self._reached = True
        self._joined = self._going_away = False
        self._sent_away = ""
        self._moving.clear()
        # The serveids it had: a restarted route holds them for it (vnet.core.claims).
        had = [s.last_serveid for s in self.serves.values() if s.last_serveid]
        joined = await self.client.join(
            cfg.vnet.name, cfg.vnet.group, resume=self._resume, boot_id=self.boot_id, serveids=had
        )
        self._joined = True
        here = self.route_address
        # Another route has another boot id: a move, not a restart.
        moved = bool(self._joined_at) and self._joined_at != here
        restarted = not moved and bool(self.boot_id) and joined.boot_id != self.boot_id
        if self._resume is not None and joined.vnetid != self._resume[0]:
            log.warning(
                "rejoined as vnet %s: vnet %s was taken by another node",
                joined.vnetid,
                self._resume[0],
            )
        self.vnetid, self.group, self.boot_id = joined.vnetid, joined.group, joined.boot_id
        self._resume = (joined.vnetid, joined.resume_token)
        if moved:
            self.route_moves += 1
        log.info(
            "joined route %s as vnet %s (%s) in group %s%s",
            here,
            self.vnetid,
            self.name,
            self.group,
            f" (moved from route {self._joined_at})"
            if moved
            else " (the route restarted)"
            if restarted
            else "",
        )
        self._joined_at = here
        self._snapshot.clear()
        self._control = asyncio.create_task(self._run_control(self.client))
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
        while True:
            control = self._control
            assert control is not None
            moving = asyncio.create_task(self._moving.wait())
            try:
                await asyncio.wait({control, moving}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moving.cancel()
            if not control.done():
                # The route is going away and there is another: go now, and
                # leave its tunnels to finish in its grace.
                why = f"the route is going away ({self._going_reason})"
                self._let_go(self.client, control, self._going_grace)
                # Not connected (show, metrics) until the next route is joined.
                self._control = None
                self._on_lost(why)
                await self._reconnect(why, at_once=True)
                continue
            try:
                await control
                why = "the route closed the control stream"
            except RouteUnavailable as exc:
                why = lost_words(exc, joined=True)
            if self._sent_away:
                why = f"the route ended this node's session ({self._sent_away})"
            elif self._going_away:
                # Not "Cancelling all calls" or the like: it stopped, and said so.
                why = "the route stopped"
            if self.timeouts.reconnect_max <= 0:
                raise RouteUnavailable(why)
            # A route that said it is stopping will not be back soon: the next,
            # now. Not after a kick (grace 0): that is an admin's word on this
            # node, and it comes back after its backoff, as with one route.
            stopped = self._going_away and not self._sent_away
            await self._reconnect(why, at_once=stopped and self._several)

    def _let_go(self, client: RouteClient, control: asyncio.Task[None], grace: float) -> None:
        """Leave a route that is going away without cutting its tunnels: its
        channel stays open until it ends the control stream (its grace is
        over), or a while after that at most, then it is closed."""
        self._leaving[client] = self.serving

        async def close_later() -> None:
            try:
                await asyncio.wait({control}, timeout=grace + CLOSE_TIMEOUT)
            finally:
                control.cancel()
                # Its end was expected: awaited here, neither logged nor
                # taken for the new route's (it is still in _leaving).
                with contextlib.suppress(BaseException):
                    await control
                self._leaving.pop(client, None)
                await client.close_quietly()

        self._spawn(close_later())

    async def _reconnect(self, why: str, at_once: bool = False) -> None:
        """Back off (exponential, with jitter) and rejoin until it works.

        With several routes each attempt goes to the next one, cycling, so a
        dead route costs one attempt. at_once: the first attempt without
        waiting (the route said it is going away). A route that answers but
        refuses (UNAVAILABLE: draining, or a clustered route cut off from its
        store) sends the node on to the next at once too, once per route in
        a row, so that routes all refusing still get the backoff.
        """
        lost_at = asyncio.get_running_loop().time()
        lost = self.route_address
        if self._several:
            log.warning("lost route %s: %s; failing over to the next route", lost, why)
        else:
            log.warning("lost the route: %s; reconnecting", why)
        delay = self.timeouts.reconnect_min
        attempt = 0
        refused = 0
        while True:
            if not at_once:
                # Equal jitter: nodes that lost a route together do not all come back at once.
                await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            at_once = False
            attempt += 1
            self._at = (self._at + 1) % len(self._targets)
            # A fresh channel: the old one's own reconnect backoff would add
            # to ours. The old one may sit on a dead link: close it aside
            # (unless it is a route left with its tunnels draining: _let_go).
            if self.client not in self._leaving:
                self._spawn(self.client.close_quietly())
            self.client = self._new_client()
            # The serving nodes are reconnecting too: keep our listeners a
            # while, from the first snapshot on.
            grace = max(2 * self.timeouts.reconnect_max, 1.0)
            self.use_side.hold_until = asyncio.get_running_loop().time() + grace
            try:
                # With other routes to try, one that cannot be reached is left
                # as soon as that is certain, not at the connect timeout.
                await self._join(fail_fast=self._several)
                break
            except VnetError as exc:
                why = lost_words(exc, self._joined)
                where = f" (route {self.route_address})" if self._several else ""
                if why == SESSION_FORGOTTEN:
                    log.info("reconnect attempt %d%s: %s", attempt, where, why)
                else:
                    log.info("reconnect attempt %d%s failed: %s", attempt, where, why)
                said_no = isinstance(exc, RouteUnavailable) and self._reached and not self._joined
                refused = refused + 1 if said_no else 0
                at_once = self._several and said_no and refused < len(self._targets)
                delay = min(delay * 2, self.timeouts.reconnect_max)
                if isinstance(exc, Busy):
                    # The route is admitting a storm and said when to come back:
                    # not sooner (the jitter above spreads the returns over
                    # delay/2..delay, so at least twice the hint).
                    delay = max(delay, 2 * exc.retry_after)
        for state in self.serves.values():
            if state.running and state.serveid is None:
                await self.register_logged(state)
        self._spawn(self._end_hold(grace))
        self.use_side.reconcile_all()
        log.info(
            "reconnected%s after %.1fs (%d attempt(s))",
            f" to route {self.route_address} (lost {lost})" if self._several else "",
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
        self.use_side.close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._control is not None:
            with contextlib.suppress(BaseException):
                await self._control
        for client in list(self._leaving):
            await client.close_quietly()
        await self.client.close()

    # --- control events ----------------------------------------------------

    async def _run_control(self, client: RouteClient) -> None:
        try:
            async for event in client.control():
                if client in self._leaving:
                    self._on_leaving_event(client, event)
                else:
                    self._on_event(event)
        except RouteUnavailable as exc:
            if client not in self._leaving:
                self._on_lost(str(exc))
            raise
        finally:
            # A route left behind has no say in the next one's snapshot.
            if client not in self._leaving:
                self._snapshot.set()

    def _on_leaving_event(self, client: RouteClient, event: ControlEvent) -> None:
        """An event from a route the node has left (it is going away): tunnels
        to the serves still registered there are accepted until its grace ends;
        what it says of the group's serves is the new route's to say now."""
        if isinstance(event, OpenTunnel):
            serving = self._leaving[client]
            self._spawn(self.serve_side.accept(event, client.accept(event.tunnel_id), serving))
        elif isinstance(event, EchoAsked):
            self._spawn(probing.echo(client, event.probe))

    def _drop_ephemeral(self, which: Callable[[UseState], bool]) -> None:
        for key, state in list(self.uses.items()):
            if state.ephemeral and which(state):
                state.running = False
                self.use_side.close(state)
                del self.uses[key]
                log.info("[use.%s] removed: its unserve is gone", key)

    def add_unserve_state(self, config: ServeConfig, serveid: int) -> None:
        """An offer made on request, served like the config's serves."""
        self.serves[config.key] = ServeState(config, running=True, serveid=serveid, unserve=True)

    async def _end_hold(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self.use_side.reconcile_all()

    def _on_lost(self, why: str) -> None:
        """Forget what the route knew; keep listening.

        Use listeners stay up through an outage, so clients get a prompt
        reset (no serve is known) instead of "connection refused" flapping,
        and the ports are still ours when the route is back.
        """
        self.lost = why
        self.remote.clear()
        if self.governor is not None:
            # The next connection's paths are new: their bases too.
            self.governor.reset()
        self.unserves.forget()
        self._drop_ephemeral(lambda _: True)
        self.serve_side.route_lost()

    def _on_event(self, event: ControlEvent) -> None:
        if isinstance(event, OpenTunnel):
            # The Accept call starts here, before anything awaits: the route
            # waits for it, and under a burst the target connect (Serves.accept)
            # may queue (or a slow target take seconds) behind other tunnels.
            # Frames from the dialler wait in the stream's window meanwhile.
            self._spawn(self.serve_side.accept(event, self.client.accept(event.tunnel_id)))
            return
        if isinstance(event, UnserveAsked):
            self._spawn(self.unserves.answer(event))
            return
        if isinstance(event, EchoAsked):
            self._spawn(probing.echo(self.client, event.probe))
            return
        if isinstance(event, GoingAway):
            self._going_away = True
            if event.grace == 0:
                self._sent_away = event.reason
                log.warning("the route ends this node's session: %s", event.reason)
                return
            log.warning(
                "route %s is going away (%s); open tunnels have %.1fs%s",
                self.route_address,
                event.reason,
                event.grace,
                "; moving to the next route now" if self._fails_over else "",
            )
            if self._fails_over:
                self._going_reason, self._going_grace = event.reason, event.grace
                self._moving.set()
            return
        if isinstance(event, IdConflict):
            log.warning("%s", event.detail)
            return
        if isinstance(event, ServeChanges):
            # Several at once (the route coalesced them): one by one, then one reconcile.
            for removed in event.removed:
                self._on_serve_event(removed)
            for added in event.added:
                self._on_serve_event(added)
        else:
            self._on_serve_event(event)
        self.use_side.reconcile_all()

    def _on_serve_event(self, event: ControlEvent) -> None:
        if isinstance(event, Snapshot):
            # A snapshot in the middle of the stream (the route resynchronises a
            # node that fell behind) may leave out serves that went meanwhile.
            left = set(self.remote) - {s.serveid for s in event.serves}
            if left:
                self._drop_ephemeral(lambda u: u.config.serveid in left)
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

    # --- serves: registration ------------------------------------------------

    async def register_logged(self, state: ServeState) -> int | None:
        """Register, logging a refusal (start-up and reload, where no one is asking).

        A route that says it is busy (it restarted and is giving returning nodes
        their serveids back first) is asked again after its hint, with jitter.
        """
        try:
            for _ in range(BUSY_RETRIES):
                try:
                    return await self.serve_side.register(state)
                except Busy as exc:
                    log.info("[serve.%s] the route is busy: %s", state.key, exc)
                    await asyncio.sleep(exc.retry_after * random.uniform(1.0, 1.5))
            return await self.serve_side.register(state)
        except VnetError as exc:
            why = lost_words(exc, joined=True)
            if why == SESSION_FORGOTTEN:
                # Not an error of the serve's: the node registers it again on rejoining.
                state.error = why
                log.warning("[serve.%s] not registered yet: %s", state.key, why)
            else:
                log.error("[serve.%s] not registered: %s", state.key, why)
            return None

    # --- the console's requests (vnet.node.editing does them) -----------------

    async def open_serve(self, key: str) -> int:
        """Activate and register; returns the serveid the route settled on."""
        return await self._editor.open_serve(key)

    async def close_serve(self, key: str) -> None:
        """Unregister and mark inactive; tunnels already open carry on."""
        await self._editor.close_serve(key)

    async def add_serve(self, serve: ServeConfig) -> int | None:
        """`serve new` (inactive) or `serve run` (active: registered now)."""
        return await self._editor.add_serve(serve)

    async def delete_serve(self, key: str) -> None:
        await self._editor.delete_serve(key)

    async def open_use(self, key: str) -> UseState:
        """Activate: listen now if the serve is there, else as soon as it appears."""
        return await self._editor.open_use(key)

    async def close_use(self, key: str) -> None:
        """Stop listening and mark inactive; connections already accepted carry on."""
        await self._editor.close_use(key)

    async def add_use(self, use: UseConfig) -> UseState:
        """`use new` (inactive) or `use run` (active: listens when its serve is there)."""
        return await self._editor.add_use(use)

    async def delete_use(self, key: str) -> None:
        await self._editor.delete_use(key)

    async def reload(self, new: NodeConfig) -> tuple[ConfigDiff, list[str]]:
        """Apply only what differs from new; returns the diff and what failed."""
        return await self._editor.reload(new)

    async def unserve(self, vnetid: str, ip: str, port: int, type: str = "tcp") -> Serve:
        """Ask vnet `vnetid` to offer ip:port; the serve it registered."""
        return await self._editor.unserve(vnetid, ip, port, type)

    async def map_unserve(self, serve: Serve, ip: str, port: int) -> UseState:
        """Map an unserve to a local port, for as long as the unserve lives."""
        return await self._editor.map_unserve(serve, ip, port)


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
