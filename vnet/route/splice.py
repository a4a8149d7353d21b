"""The route's half of a tunnel: two streams spliced by two pumps.

Frames pass through as the bytes they arrived as. Each pump runs in the
handler of the leg it reads (Dial's handler reads the dialling node's stream
and writes the serving node's, Accept's the other way), so a tunnel costs no
tasks of its own: an idle tunnel is two handlers each waiting in a read. Each
leg's context is written only by the pump that reads the other leg, so no
context ever has two writers. A tunnel to another route (vnet.route.peer) has
a client call as its serving leg: no handler runs for that one, so its pump is
a task.

How the tunnel ends is not decided here: each pump feeds what its leg did
(data, fin, reset, the stream's end, a failure or a cancel) to the splice's
TunnelState (vnet/core/tunnel_state.py; end A is the dialling leg, B the
serving one) and carries out what it returns: forward the frame, write a
reset, stop the other pump. A reset for a leg whose writer runs in another
task is left with that leg (Leg.pending) for its writer to write as the
machine stops it. A handler whose pump ended waits for the other pump before
its RPC may end (the other pump may still be writing to its stream), and then
ends it OK only if the machine told its leg how the tunnel ended and that
word reached it (Leg.told, route/rpc.py end_unless_told).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from vnet import wire
from vnet.core import pacing
from vnet.core.budget import Budget
from vnet.core.tunnel_state import Action, Do, End, Event, Flow, Kind, Phase, TunnelState

log = logging.getLogger(__name__)

RESET_WRITE_TIMEOUT = 2.0


@dataclass
class SpliceStats:
    """Route-wide tunnel counters, read by the metrics endpoint."""

    opened: int = 0
    closed: int = 0
    resets: int = 0
    # Frame bytes relayed, by direction (dialling node -> serving node, and back).
    bytes_to_serve: int = 0
    bytes_to_dialer: int = 0
    # Tunnels reset because the route held too much of their data (vnet/core/budget.py).
    memory_resets: int = 0


# Who is at the end of each leg, in the reasons a reset frame carries to the nodes.
_NODE = {"dial": "the dialling node", "accept": "the serving node"}

# A leg's pump: not started yet, running, ended.
_IDLE, _PUMPING, _PUMPED = 0, 1, 2


class _Stopped(Exception):
    """The pump's own tunnel was reset while it ran (not a cancel: nothing to take back)."""


class Stream(Protocol):
    """What a leg reads and writes: a node's call (its server context), or
    the dialling route's call to a peer route (a client call, vnet.route.peer)."""

    async def read(self) -> Any: ...

    async def write(self, message: bytes, /) -> None: ...


class Leg:
    """One stream of a tunnel, and the pump that reads it: I/O bookkeeping only.

    How the tunnel ends is its TunnelState's (vnet/core/tunnel_state.py).
    """

    # Slots: a route holds two of these per open tunnel.
    __slots__ = ("ctx", "task", "pump", "end", "machine", "cancelled", "pending", "why")

    def __init__(self, ctx: Stream) -> None:
        self.ctx = ctx
        # The handler task the pump runs in, once it runs.
        self.task: asyncio.Task[None] | None = None
        self.pump = _IDLE
        # Which end of the machine this leg is, and the machine (set by Splice).
        self.end = End.A
        self.machine: TunnelState | None = None
        # We cancelled the pump's task (the machine stopped its reading): taken back.
        self.cancelled = False
        # A reset this leg is to get, decided while its writer (the other
        # leg's pump) ran in another task: that pump writes it as it ends.
        self.pending: str | None = None
        # The fin or reset meant for this leg did not reach it, and why: its
        # RPC must not end with OK then, and the status says why instead.
        self.why: str | None = None

    @property
    def told(self) -> bool:
        """A fin or reset was written to this leg's stream: its node knows how the tunnel ended."""
        return self.machine is not None and self.machine.told(self.end) and self.why is None


class Splice:
    """One tunnel: the dialling node's leg (end A) and the serving node's (end B)."""

    __slots__ = (
        "tunnel_id",
        "serveid",
        "dial",
        "accept",
        "stats",
        "on_done",
        "ends",
        "budget",
        "last_activity",
        "opened_at",
        "bytes_to_serve",
        "bytes_to_dialer",
        "state",
        "_waiters",
        "_closed",
    )

    def __init__(
        self,
        tunnel_id: str,
        serveid: int,
        dial: Leg,
        accept: Leg,
        stats: SpliceStats,
        on_done: Callable[[Splice], None] = lambda _: None,
        ends: tuple[Any, ...] = (),
        budget: Budget | None = None,
    ) -> None:
        self.tunnel_id = tunnel_id
        self.serveid = serveid
        self.dial = dial
        self.accept = accept
        self.stats = stats
        self.on_done = on_done
        # Whoever keeps this splice (the route's sessions), for on_done.
        self.ends = ends
        # What the route's pumps hold in stalled writes, and its limits.
        self.budget = budget
        # When a frame last went through, by the loop's clock: for idle reaping.
        self.last_activity = self.opened_at = asyncio.get_running_loop().time()
        # Frame bytes relayed each way, for the admin API (vnet.route.admin).
        self.bytes_to_serve = self.bytes_to_dialer = 0
        # How the tunnel ends: the pumps feed it and do what it says.
        self.state = TunnelState()
        dial.end, accept.end = End.A, End.B
        dial.machine = accept.machine = self.state
        # Futures of whoever waits for the end; made only when someone waits.
        self._waiters: list[asyncio.Future[None]] | None = None
        self._closed = False
        stats.opened += 1

    @property
    def half_closed(self) -> bool:
        return self.state.phase is Phase.HALF_CLOSED

    def _leg(self, end: End) -> Leg:
        return self.dial if end is End.A else self.accept

    def _name(self, leg: Leg) -> str:
        return "dial" if leg is self.dial else "accept"

    async def run(self, src: Leg) -> None:
        """Pump src into the other leg in the calling handler, then wait for the other pump.

        The caller's RPC may end when this returns. A cancel from gRPC (src's
        node went away) resets the tunnel and is raised again; a stop the
        machine asked for is not. One coroutine, not a pump awaited by a
        runner: an idle tunnel holds two of these frames.
        """
        dst = self.accept if src is self.dial else self.dial
        if src.pump != _IDLE:
            raise RuntimeError("a leg is pumped once")
        if self.state.done:
            # Reset before it started: like a pump task cancelled before its first step.
            src.pump = _PUMPED
            if dst.pump == _PUMPED:
                self._finish()
            await self.wait()
            return
        task = src.task = asyncio.current_task()
        assert task is not None
        src.pump = _PUMPING
        loop = asyncio.get_running_loop()
        to_serve = src is self.dial
        name = self._name(src)
        data, fin, reset = (Event(src.end, kind) for kind in (Kind.DATA, Kind.FIN, Kind.RESET))
        # A fin is being written to dst: if that fails, dst never got it.
        writing_fin = False
        gone = False
        try:
            try:
                while True:
                    msg = await src.ctx.read()
                    if msg is grpc.aio.EOF:
                        why = f"{_NODE[name]}'s stream ended without fin"
                        await self._carry_out(self._feed(Event(src.end, Kind.ENDED)), why)
                        break
                    # Only a frame not led by the data tag can end a direction.
                    kind = None if msg[:1] == wire.DATA_TAG else wire.terminal_kind(msg)
                    if kind is wire.FrameKind.RESET:
                        log.debug(
                            "tunnel %s serveid %s reset by the %s side",
                            self.tunnel_id,
                            self.serveid,
                            name,
                        )
                        # Passed on as the bytes it came as, with its node's reason.
                        await self._carry_out(self._feed(reset), "", msg)
                        break
                    actions = self.state.receive(fin if kind is wire.FrameKind.FIN else data)
                    if not actions or actions[0].do not in (Do.FORWARD, Do.SEND_FIN):
                        # The machine allows nothing after a fin; the route
                        # reads none, so this does not happen.
                        await self._carry_out(actions, "frame after fin")
                        break
                    writing_fin = kind is wire.FrameKind.FIN
                    if self.budget is not None:
                        self._hold(src, len(msg), loop.time())
                    await dst.ctx.write(msg)
                    writing_fin = False
                    if self.budget is not None:
                        self.budget.release(src)
                    self.last_activity = loop.time()
                    if to_serve:
                        self.stats.bytes_to_serve += len(msg)
                        self.bytes_to_serve += len(msg)
                    else:
                        self.stats.bytes_to_dialer += len(msg)
                        self.bytes_to_dialer += len(msg)
                    # Nothing follows a fin (route.proto), so the node need not
                    # half-close as well: one call operation less at each end
                    # of every tunnel.
                    if kind is not None:
                        break
                    # Not held while the next read waits (maybe for minutes).
                    del msg
            except _Stopped:
                await self._failed(src, dst, writing_fin, self.state.reason)
            except asyncio.CancelledError:
                # Ours (the machine stopped this reading) is taken back; any
                # other (gRPC's: this handler's RPC is gone) goes on up.
                gone = not src.cancelled or task.uncancel() > 0
                why = f"{_NODE[name]} went away" if gone else self.state.reason
                await self._failed(src, dst, writing_fin, why)
            except grpc.aio.BaseError:
                # Core refused a read or write: one of the two calls had
                # ended (its node cancelled it), usually the other one.
                await self._failed(src, dst, writing_fin, "a stream of the tunnel had ended")
            except Exception as exc:  # noqa: BLE001 - any failure resets the tunnel
                why = f"{_NODE[name]}'s stream failed: {type(exc).__name__}"
                await self._failed(src, dst, writing_fin, why)
            if dst.pending is not None:
                # A reset decided while this pump ran: it is dst's only writer.
                why = dst.pending
                log.debug("tunnel %s serveid %s reset: %s", self.tunnel_id, self.serveid, why)
                await self._write_reset(dst, wire.encode_reset(why), why)
            if gone:
                raise asyncio.CancelledError
        finally:
            if self.budget is not None:
                self.budget.release(src)
            if dst.pending is not None:
                # Cut off before it could write it: dst's status says it.
                self._missed(dst, dst.pending)
                dst.pending = None
            src.pump = _PUMPED
            src.task = None
            if dst.pump == _PUMPED:
                self._finish()
        await self.wait()

    async def _failed(self, src: Leg, dst: Leg, writing_fin: bool, why: str) -> None:
        """src's pump failed or was stopped: the tunnel is reset (if it has not
        ended yet), and dst told. A fin cut off on its way did not reach dst."""
        if writing_fin:
            dst.why = why
        await self._carry_out(self._feed(Event(src.end, Kind.FAILED, why)), why)

    def _hold(self, src: Leg, nbytes: int, now: float) -> None:
        """Book the write src's pump starts; reset whichever tunnels that puts over budget.

        While it waits the pump holds the frame and gRPC its copy; once it has
        waited a while the budget books the window C-core fills on src too
        (vnet/core/budget.py), on the timer armed here.
        """
        budget = self.budget
        assert budget is not None
        node = (self.ends[0] if src is self.dial else self.ends[1]) if self.ends else src
        bulk = nbytes > pacing.BULK_READ
        _reset_all(budget.hold(src, self, node, 2 * nbytes, now, bulk))
        if budget.armed is None:
            _arm(budget)
        if self.state.phase is Phase.RESET:
            # This tunnel was the one over budget: its write would only wait.
            raise _Stopped

    def reset_for_memory(self, reason: str) -> None:
        """Reset this tunnel: the route holds too much in stalled writes."""
        if self.state.done:
            return
        self.stats.memory_resets += 1
        log.info("tunnel %s serveid %s: %s; reset", self.tunnel_id, self.serveid, reason)
        self.abort(reason)

    async def lost(self, src: Leg) -> None:
        """src's handler is ending before its pump started (its node went away): reset."""
        if src.pump != _IDLE:
            return
        src.pump = _PUMPED
        dst = self.accept if src is self.dial else self.dial
        try:
            why = f"{_NODE[self._name(src)]} went away"
            await self._carry_out(self._feed(Event(src.end, Kind.FAILED, why)), why)
        finally:
            if dst.pump == _PUMPED:
                self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stats.closed += 1
        if self._waiters is not None:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters = None
        self.on_done(self)
        log.debug("tunnel %s serveid %s closed", self.tunnel_id, self.serveid)

    def _feed(self, event: Event) -> Sequence[Action]:
        """Tell the machine what an end did; count the tunnel's reset once, if this was it."""
        was_done = self.state.done
        actions = self.state.receive(event)
        if not was_done and self.state.phase is Phase.RESET:
            self.stats.resets += 1
        return actions

    async def _carry_out(self, actions: Sequence[Action], why: str, frame: bytes = b"") -> None:
        """Do, in order, what the machine said after an event of the current pump's leg.

        Such an event only ever tells the leg this pump writes (a reset from
        an end is told to the other end), so each leg keeps one writer.
        FORWARD and SEND_FIN are the pump's own write of the frame it read.
        """
        for action in actions:
            if action.do is Do.SEND_RESET:
                assert action.end is not None
                if not frame:
                    log.debug("tunnel %s serveid %s reset: %s", self.tunnel_id, self.serveid, why)
                await self._write_reset(self._leg(action.end), frame or wire.encode_reset(why), why)
            else:
                self._apply(action, why)

    async def _write_reset(self, dst: Leg, frame: bytes, why: str) -> None:
        dst.pending = None
        # In a task of its own: the handler running this is often being
        # cancelled by gRPC (its node just went away), and a cancel landing
        # mid-write would leave the write half done in core. Then dst's node
        # gets the reset but dst's RPC can neither write nor end with a status
        # (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS). So the write is let finish
        # (it is bounded) before the cancel goes on.
        await self._shielded(self._forward(dst, frame, why))

    @staticmethod
    async def _shielded(write: Coroutine[Any, Any, None]) -> None:
        """Run write to its end (it is bounded) even if the caller is cancelled meanwhile."""
        telling = asyncio.ensure_future(write)
        try:
            await asyncio.shield(telling)
        except asyncio.CancelledError:
            await asyncio.wait({telling})
            raise

    async def _forward(self, dst: Leg, frame: bytes, why: str) -> None:
        """Write a reset frame to dst; bounded: the far side may be gone or stuck."""
        try:
            await asyncio.wait_for(dst.ctx.write(frame), RESET_WRITE_TIMEOUT)
        except Exception:  # noqa: BLE001 - dst gone or stuck: its status says it instead
            self._missed(dst, why)
        else:
            # The reset reached dst, even if a fin cut off before it did not.
            dst.why = None

    def _missed(self, leg: Leg, why: str) -> None:
        """The reset meant for leg did not reach it: unless a fin did before, its
        RPC's status must tell it instead (route/rpc.py end_unless_told)."""
        fin_reached = self.state.flow(leg.end.other) is Flow.FINISHED and leg.why is None
        if leg.why is None and not fin_reached:
            leg.why = why

    def _apply(self, action: Action, why: str) -> None:
        """Do one of the machine's actions that needs no write from this task."""
        if action.end is None:
            return  # CLOSE: each handler's RPC ends as its pump and wait() return
        leg = self._leg(action.end)
        if action.do is Do.STOP_READING:
            task = leg.task
            if (
                leg.pump == _PUMPING
                and task is not None
                and task is not asyncio.current_task()
                and not leg.cancelled
            ):
                leg.cancelled = True
                task.cancel()
        elif action.do is Do.SEND_RESET:
            # Written by leg's only writer, the other leg's pump, as it ends
            # (the machine stops it too); if none runs, leg goes untold.
            if self._leg(action.end.other).pump == _PUMPING:
                leg.pending = why or f"{_NODE[self._name(leg)]} reset it"
            else:
                self._missed(leg, why)

    def abort(self, reason: str = "") -> None:
        """Reset both ends now."""
        was_done = self.state.done
        actions = self.state.cancel(reason)
        if not was_done and self.state.done:
            self.stats.resets += 1
        for action in actions:
            self._apply(action, reason)

    async def wait(self) -> None:
        """Until both pumps ended; a caller cancelled meanwhile resets the tunnel."""
        if self._closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Our own caller went away: the other pump cannot go on either.
            self.abort()
            raise

    def closed_future(self) -> asyncio.Future[None]:
        """A future done when both pumps ended (for whoever waits without a task)."""
        waiter = asyncio.get_running_loop().create_future()
        if self._closed:
            waiter.set_result(None)
            return waiter
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        return waiter


async def lost_if_made(made: asyncio.Future[Splice], leg: Callable[[Splice], Leg]) -> None:
    """A handler cancelled while waiting for its splice: if the splice was made all the
    same, the pump of that handler's leg will never run, so the tunnel is reset (lost)."""
    if made.done() and not made.cancelled() and made.exception() is None:
        splice = made.result()
        await splice.lost(leg(splice))


def _reset_all(victims: list[tuple[Any, str]]) -> None:
    for tunnel, reason in victims:
        if isinstance(tunnel, Splice):
            tunnel.reset_for_memory(reason)


def _arm(budget: Budget) -> None:
    """Call the budget's settle when its oldest young hold comes of age (one timer per route)."""
    due = budget.next_due()
    if due is None:
        budget.armed = None
        return
    budget.armed = due
    asyncio.get_running_loop().call_at(due, _settle, budget)


def _settle(budget: Budget) -> None:
    # The loop may run a timer up to its clock's resolution early.
    now = max(asyncio.get_running_loop().time(), budget.armed or 0.0)
    _reset_all(budget.settle(now))
    _arm(budget)


async def reap(splices: set[Splice], idle: float) -> None:
    """Reset the tunnels of splices closed one way and then silent past idle seconds.

    A peer that half-closed and vanished (or a client that never reads
    its end) would otherwise hold the tunnel, its buffers and two
    streams forever. By the loop's clock, as the splices keep it.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(idle / 4, 0.02))
        now = loop.time()
        for splice in list(splices):
            if splice.half_closed and now - splice.last_activity > idle:
                log.info(
                    "tunnel %s serveid %s: half-closed and idle for %.0fs; reset",
                    splice.tunnel_id,
                    splice.serveid,
                    idle,
                )
                splice.abort("idle after half-close")
