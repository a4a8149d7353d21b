"""The route's half of a tunnel: two streams spliced by two pumps.

Frames pass through as the bytes they arrived as. Each pump runs in the
handler of the leg it reads (Dial's handler reads the dialling node's stream
and writes the serving node's, Accept's the other way), so a tunnel costs no
tasks of its own: an idle tunnel is two handlers each waiting in a read. Each
leg's context is written only by the pump that reads the other leg, so no
context ever has two writers. A pump that sees a reset (forwarded or its own)
stops the other pump too: the tunnel is dead both ways, and both nodes are
told with a reset frame. A handler whose pump ended waits for the other pump
before its RPC may end: the other pump may still be writing to its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from vnet import wire
from vnet.core import pacing
from vnet.core.budget import Budget

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


class Leg:
    """One stream of a tunnel, and the pump that reads it."""

    # Slots: a route holds two of these per open tunnel.
    __slots__ = ("ctx", "task", "state", "stopped", "finished", "ending", "told", "why")

    def __init__(self, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        self.ctx = ctx
        # The handler task the pump runs in, once it runs.
        self.task: asyncio.Task[None] | None = None
        self.state = _IDLE
        # The other side asked this pump to stop (a cancel of ours, not grpc's).
        self.stopped = False
        # This direction ended with a fin: the tunnel is half-closed.
        self.finished = False
        # The pump reading this leg is telling the other leg how it ended; it
        # must not be cancelled then, or that word is lost.
        self.ending = False
        # A fin or reset frame was written to this leg's stream: its node knows
        # how the tunnel ended. If not, the RPC must not end with OK.
        self.told = False
        # Why the tunnel was reset, when the reset frame could not be written:
        # the RPC's status says it instead.
        self.why = ""


class Splice:
    """One tunnel: the dialling node's leg and the serving node's leg."""

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
        "_abort_reason",
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
        self.last_activity = asyncio.get_running_loop().time()
        self._abort_reason = ""
        # Futures of whoever waits for the end; made only when someone waits.
        self._waiters: list[asyncio.Future[None]] | None = None
        self._closed = False
        stats.opened += 1

    @property
    def half_closed(self) -> bool:
        return self.dial.finished or self.accept.finished

    def _other(self, leg: Leg) -> Leg:
        return self.accept if leg is self.dial else self.dial

    async def run(self, src: Leg) -> None:
        """Pump src into the other leg in the calling handler, then wait for the other pump.

        The caller's RPC may end when this returns. A cancel from gRPC (src's
        node went away) resets the tunnel and is raised again; a stop asked by
        the other pump is not. One coroutine, not a pump awaited by a runner:
        an idle tunnel holds two of these frames.
        """
        dst = self._other(src)
        if src.state != _IDLE:
            raise RuntimeError("a leg is pumped once")
        if src.stopped:
            # Stopped before it started: like a pump task cancelled before its first step.
            src.state = _PUMPED
            if dst.state == _PUMPED:
                self._finish()
            await self.wait()
            return
        src.task = asyncio.current_task()
        src.state = _PUMPING
        loop = asyncio.get_running_loop()
        to_serve = src is self.dial
        name = "dial" if to_serve else "accept"
        # How the last frame ended its direction, if it did. Kept instead of
        # the frame: a 512 KiB frame held through a long wait is memory a
        # stalled or idle tunnel need not pin.
        kind: wire.FrameKind | None = None
        reason = ""
        cancelled = False
        try:
            try:
                while True:
                    msg = await src.ctx.read()
                    if msg is grpc.aio.EOF:
                        break
                    if msg[:1] != wire.DATA_TAG and wire.terminal_kind(msg) is wire.FrameKind.RESET:
                        # Its node cancels its call right after a reset:
                        # forward it out of that cancel's reach (see _tell_reset).
                        kind = wire.FrameKind.RESET
                        await self._shielded(self._forward(dst, msg))
                        break
                    if self.budget is not None:
                        self._hold(src, len(msg), loop.time())
                    await dst.ctx.write(msg)
                    if self.budget is not None:
                        self.budget.release(src)
                    self.last_activity = loop.time()
                    if to_serve:
                        self.stats.bytes_to_serve += len(msg)
                    else:
                        self.stats.bytes_to_dialer += len(msg)
                    kind = wire.terminal_kind(msg)
                    # Nothing follows a fin or reset (route.proto), so the node
                    # need not half-close as well: one call operation less at
                    # each end of every tunnel.
                    if msg[:1] != wire.DATA_TAG and kind is not None:
                        break
                    # Not held while the next read waits (maybe for minutes).
                    del msg
                # Only the last frame says how the direction ended.
                if kind is wire.FrameKind.FIN:
                    src.finished = dst.told = True
                elif kind is wire.FrameKind.RESET:
                    self.stats.resets += 1
                    log.debug(
                        "tunnel %s serveid %s reset by the %s side",
                        self.tunnel_id,
                        self.serveid,
                        name,
                    )
                    self._stop(dst)
                else:
                    reason = f"{_NODE[name]}'s stream ended without fin"
            except asyncio.CancelledError:
                other = "accept" if to_serve else "dial"
                reason = self._abort_reason or (
                    f"{_NODE[other]} reset it" if src.stopped else f"{_NODE[name]} went away"
                )
                cancelled = True
            except grpc.aio.BaseError:
                # Core refused a read or write: one of the two calls had
                # ended (its node cancelled it), usually the other one.
                reason = "a stream of the tunnel had ended"
            except Exception as exc:  # noqa: BLE001 - any failure resets the tunnel
                reason = f"{_NODE[name]}'s stream failed: {type(exc).__name__}"
            if reason:
                src.ending = True
                await self._tell_reset(dst, reason)
            # Our own stop is taken back; any other cancel (gRPC's: this
            # handler's RPC is gone) goes on up.
            if cancelled and (not src.stopped or src.task.uncancel() > 0):
                raise asyncio.CancelledError
        finally:
            if self.budget is not None:
                self.budget.release(src)
            src.state = _PUMPED
            src.task = None
            if dst.state == _PUMPED:
                self._finish()
        await self.wait()

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
        if src.stopped:
            # This tunnel was the one over budget: its write would only wait.
            raise asyncio.CancelledError

    def reset_for_memory(self, reason: str) -> None:
        """Reset this tunnel: the route holds too much in stalled writes."""
        if self._closed or self._abort_reason:
            return
        self.stats.memory_resets += 1
        log.info("tunnel %s serveid %s: %s; reset", self.tunnel_id, self.serveid, reason)
        self.abort(reason)

    async def lost(self, src: Leg) -> None:
        """src's handler is ending before its pump started (its node went away): reset."""
        if src.state != _IDLE:
            return
        src.state = _PUMPED
        dst = self._other(src)
        try:
            if not src.stopped:
                src.ending = True
                await self._tell_reset(dst, f"{_NODE[self._name(src)]} went away")
        finally:
            if dst.state == _PUMPED:
                self._finish()

    def _name(self, leg: Leg) -> str:
        return "dial" if leg is self.dial else "accept"

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

    async def _tell_reset(self, dst: Leg, reason: str) -> None:
        self.stats.resets += 1
        log.debug("tunnel %s serveid %s reset: %s", self.tunnel_id, self.serveid, reason)
        # In a task of its own: the handler running this is often being
        # cancelled by gRPC (its node just went away), and a cancel landing
        # mid-write would leave the write half done in core. Then dst's node
        # gets the reset but dst's RPC can neither write nor end with a status
        # (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS). So the write is let finish
        # (it is bounded) before the cancel goes on.
        try:
            await self._shielded(self._forward(dst, wire.encode_reset(reason)))
        finally:
            if not dst.told:
                dst.why = reason
            self._stop(dst)

    @staticmethod
    async def _shielded(write: Coroutine[Any, Any, None]) -> None:
        """Run write to its end (it is bounded) even if the caller is cancelled meanwhile."""
        telling = asyncio.ensure_future(write)
        try:
            await asyncio.shield(telling)
        except asyncio.CancelledError:
            await asyncio.wait({telling})
            raise

    @staticmethod
    async def _forward(dst: Leg, frame: bytes) -> None:
        """Write a reset frame to dst; bounded: the far side may be gone or stuck."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dst.ctx.write(frame), RESET_WRITE_TIMEOUT)
            dst.told = True

    @staticmethod
    def _stop(leg: Leg) -> None:
        if leg.stopped or leg.ending or leg.state == _PUMPED:
            return
        leg.stopped = True
        if (
            leg.state == _PUMPING
            and leg.task is not None
            and leg.task is not asyncio.current_task()
        ):
            leg.task.cancel()

    def abort(self, reason: str = "") -> None:
        """Reset both ends now."""
        self._abort_reason = self._abort_reason or reason
        for leg in (self.dial, self.accept):
            self._stop(leg)

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
