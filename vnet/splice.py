"""The route's half of a tunnel: two streams spliced by two pumps.

Frames pass through as the bytes they arrived as. Each leg's context is
written only by the pump that reads the other leg, so no context ever has two
writers. A pump that sees a reset (forwarded or its own) stops the other pump
too: the tunnel is dead both ways, and both nodes are told with a reset frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from vnet import wire

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


@dataclass(eq=False)
class Leg:
    ctx: grpc.aio.ServicerContext[bytes, bytes]
    pump: asyncio.Task[None] | None = None
    # This direction ended with a fin: the tunnel is half-closed.
    finished: bool = False
    # The pump reading this leg is telling the other leg how it ended; it
    # must not be cancelled then, or that word is lost.
    ending: bool = False
    # A fin or reset frame was written to this leg's stream: its node knows
    # how the tunnel ended. If not, the RPC must not end with OK.
    told: bool = False


@dataclass(eq=False)
class Splice:
    """One tunnel: the dialling node's leg and the serving node's leg."""

    tunnel_id: str
    serveid: int
    dial: Leg
    accept: Leg
    stats: SpliceStats
    on_done: Callable[[Splice], None] = lambda _: None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # When a frame last went through, by the loop's clock: for idle reaping.
    last_activity: float = 0.0
    _abort_reason: str = ""

    def start(self) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        self.stats.opened += 1
        self.dial.pump = asyncio.create_task(self._pump(self.dial, self.accept, "dial"))
        self.accept.pump = asyncio.create_task(self._pump(self.accept, self.dial, "accept"))
        # The end is noticed by the pumps themselves, not by whoever waits:
        # both handlers may be cancelled (both nodes gone) and wait no more.
        self.dial.pump.add_done_callback(self._pump_done)
        self.accept.pump.add_done_callback(self._pump_done)

    def _pump_done(self, _: asyncio.Task[None]) -> None:
        pumps = (self.dial.pump, self.accept.pump)
        if self.done.is_set() or not all(p is not None and p.done() for p in pumps):
            return
        self.done.set()
        self.stats.closed += 1
        self.on_done(self)
        log.debug("tunnel %s serveid %s closed", self.tunnel_id, self.serveid)

    @property
    def half_closed(self) -> bool:
        return self.dial.finished or self.accept.finished

    async def _pump(self, src: Leg, dst: Leg, name: str) -> None:
        loop = asyncio.get_running_loop()
        to_serve = src is self.dial
        last = b""
        reason = ""
        try:
            while True:
                msg = await src.ctx.read()
                if msg is grpc.aio.EOF:
                    break
                await dst.ctx.write(msg)
                self.last_activity = loop.time()
                if to_serve:
                    self.stats.bytes_to_serve += len(msg)
                else:
                    self.stats.bytes_to_dialer += len(msg)
                last = msg
                # Nothing follows a fin or reset (route.proto), so the node
                # need not half-close as well: one call operation less at
                # each end of every tunnel.
                if msg[:1] != wire.DATA_TAG and wire.terminal_kind(msg) is not None:
                    break
            # Parsed once, at the end: only the last frame says how it ended.
            kind = wire.terminal_kind(last)
            if kind is wire.FrameKind.FIN:
                src.finished = dst.told = True
                return
            if kind is wire.FrameKind.RESET:
                dst.told = True
                self.stats.resets += 1
                self._stop_other(src)
                return
            reason = f"{name} side ended without fin"
        except asyncio.CancelledError:
            reason = self._abort_reason or f"{name} side went away"
        except Exception as exc:  # noqa: BLE001 - any failure resets the tunnel
            reason = f"{name} side failed: {type(exc).__name__}"
        src.ending = True
        self.stats.resets += 1
        log.debug("tunnel %s serveid %s reset: %s", self.tunnel_id, self.serveid, reason)
        # Bounded: the far side may be the one that is gone or stuck.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dst.ctx.write(wire.encode_reset(reason)), RESET_WRITE_TIMEOUT)
            dst.told = True
        self._stop_other(src)

    def _stop_other(self, src: Leg) -> None:
        other = self.accept if src is self.dial else self.dial
        self._stop(other)

    @staticmethod
    def _stop(leg: Leg) -> None:
        if leg.pump is not None and not leg.ending and leg.pump is not asyncio.current_task():
            leg.pump.cancel()

    def abort(self, reason: str = "") -> None:
        """Reset both ends now."""
        self._abort_reason = self._abort_reason or reason
        for leg in (self.dial, self.accept):
            self._stop(leg)

    async def wait(self) -> None:
        """Until both pumps ended; the caller's RPC may end then."""
        try:
            await self.done.wait()
        except asyncio.CancelledError:
            # Our own caller went away: its pump cannot go on either.
            self.abort()
            raise
