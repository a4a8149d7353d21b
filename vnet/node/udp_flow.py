"""One UDP flow on a node: a queue of datagrams into a tunnel call, and the call's datagrams out.

The same on both nodes (vnet/node/udp_use.py dials, vnet/node/udp_serve.py
accepts); only where datagrams come from and go to differs. The rules (queue
bound and drop policy, idle, sizes) are vnet/core/udp.py's. Each data frame
is one datagram. A flow ends:

- idle: no datagram either way for udp_idle seconds here: send fin, wait
  (bounded) for the far end's fin and the stream's end;
- fin received (the far end went idle first): send fin back, and end;
- reset frame, a stream that fails or ends without fin: the flow is reset
  (logged at INFO); there is no connection to reset, so the next datagram
  from the same client opens a new flow;
- the node stopping, or the use closing: the call is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from vnet import wire
from vnet.core.errors import ProtocolError
from vnet.core.udp import (
    SEND_BUFFER_BYTES,
    SOCKET_BUFFER,
    DatagramQueue,
    Drop,
    IdleClock,
    Throttle,
    UdpCounters,
)
from vnet.node.client import TunnelBroken, TunnelCall

log = logging.getLogger(__name__)

# How long the close of a flow (our fin, the far end's fin, the stream's end) may take.
CLOSE_TIMEOUT = 2.0

# Sends one datagram to the local socket; False when it had to be dropped.
Send = Callable[[bytes | memoryview], bool]


class LocalSocket:
    """Sends datagrams on a local UDP socket's transport, within SEND_BUFFER_BYTES.

    Empty datagrams too: asyncio's and uvloop's sendto silently send nothing
    for b"", so those go through a duplicate of the socket, made when first
    needed.
    """

    __slots__ = ("transport", "_dup")

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        self._dup: socket.socket | None = None
        sock = transport.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)

    def send(self, payload: bytes | memoryview, addr: Any = None) -> bool:
        transport = self.transport
        if transport.is_closing():
            return False
        # asyncio's and uvloop's datagram transports have it; typeshed does not say so.
        if transport.get_write_buffer_size() > SEND_BUFFER_BYTES:  # type: ignore[attr-defined]
            return False
        if payload:
            transport.sendto(payload, addr)
            return True
        try:
            if self._dup is None:
                self._dup = transport.get_extra_info("socket").dup()
                self._dup.setblocking(False)
            if addr is None:
                self._dup.send(b"")
            else:
                self._dup.sendto(b"", addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.transport.close()
        if self._dup is not None:
            self._dup.close()
            self._dup = None


class FlowReset(Exception):
    """The far end reset the flow, or its stream failed."""


class Flow:
    """One flow: push() datagrams from the local socket, run() until it ends."""

    def __init__(
        self,
        call: TunnelCall,
        send: Send,
        counters: UdpCounters,
        idle: float,
        label: str,
        fields: dict[str, object] | None = None,
    ) -> None:
        self.call = call
        self._send = send
        self.counters = counters
        self.label = label
        self.fields = fields or {}
        self._loop = asyncio.get_running_loop()
        self.clock = IdleClock(idle, self._loop.time())
        self.queue = DatagramQueue()
        self._wake = asyncio.Event()
        # Set once the flow is ending: nothing more is queued or sent.
        self.ending = ""
        self._timer: asyncio.TimerHandle | None = None
        # Called once the flow is over (its table forgets it).
        self.on_end: Callable[[Flow], None] | None = None
        # Shared by a use's flows: while the route is away every datagram of a client
        # opens a flow that fails at once, which must not be a log line each.
        self.resets: Throttle | None = None

    def push(self, datagram: bytes) -> None:
        """A datagram from the local socket, for the far end."""
        if self.ending:
            return
        self.clock.touch(self._loop.time())
        dropped = self.queue.push(datagram)
        if dropped:
            self.counters.drop(Drop.QUEUE_FULL, dropped)
        self._wake.set()

    def end(self, why: str) -> None:
        """End the flow from this side (idle, the use closing): fin after what is queued."""
        if not self.ending:
            self.ending = why
            self._finished()
        self._wake.set()

    def _finished(self) -> None:
        # Forget the flow at once: the next datagram from its client opens a
        # new one rather than joining a flow that is closing.
        if self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end(self)

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self.clock.deadline, self._check_idle)

    def _check_idle(self) -> None:
        if self.ending:
            return
        if self.clock.expired(self._loop.time()):
            self.end(f"idle for {self.clock.idle:g}s")
        else:
            self._arm()

    async def run(self) -> None:
        """Carry the flow until it ends; never raises for network trouble."""
        self.counters.flows_opened += 1
        self.counters.flows_open += 1
        self._arm()
        up = asyncio.create_task(self._upstream())
        down = asyncio.create_task(self._downstream())
        reason = ""
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if down.done() and not _failure(down):
                # The far end's fin: answer it, briefly.
                self.end(self.ending or "the far end ended it")
                await asyncio.wait({up}, timeout=CLOSE_TIMEOUT)
            elif not down.done():
                # Our fin went out, or a write failed: the far end's fin
                # follows, or what the stream says went wrong.
                await asyncio.wait({down}, timeout=CLOSE_TIMEOUT)
            reason = _failure(down) or _failure(up)
            if not reason and not (up.done() and down.done()):
                reason = "reset: the far end did not answer the end of the flow"
            if not reason:
                # Both fins passed: the route ends the stream. A cancel right
                # behind our fin could reach it first and reset the far end.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.call.ended(), CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            reason = "reset: the node is stopping"
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.ending = self.ending or reason or "ended"
            self._finished()
            up.cancel()
            down.cancel()
            self.call.cancel()
            try:
                await asyncio.gather(up, down, return_exceptions=True)
            finally:
                # No await between these two counts (and they happen on a cancel
                # of the gather too): the metrics never show a flow that is
                # neither open nor closed or reset.
                self.counters.flows_open -= 1
                if reason:
                    self.counters.flows_reset += 1
                else:
                    self.counters.flows_closed += 1
            if reason:
                held = 0 if self.resets is None else self.resets.due(self._loop.time())
                if held is not None:
                    more = f" ({held} more flow resets since the last such line)" if held else ""
                    log.info("%s: %s%s", self.label, reason, more, extra=self.fields)
            else:
                log.debug("%s: closed (%s)", self.label, self.ending, extra=self.fields)

    async def _upstream(self) -> None:
        """The queue into the call, then a fin once the flow is ending."""
        while True:
            datagram = self.queue.pop()
            if datagram is None:
                if self.ending:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.call.write(wire.encode_data(datagram))
            self.counters.datagrams_out += 1
            self.counters.bytes_out += len(datagram)
        with contextlib.suppress(TunnelBroken):
            # The far end may have gone already; its reset or status says so.
            await self.call.write(wire.FIN_FRAME)

    async def _downstream(self) -> None:
        """The call's datagrams to the local socket, to the far end's fin."""
        while True:
            raw = await self.call.read()
            if raw is None:
                raise FlowReset("reset by the route: the stream ended without fin")
            try:
                kind, payload = wire.decode_datagram(raw)
            except ProtocolError as exc:
                raise FlowReset(f"reset: {exc}") from None
            if kind is wire.FrameKind.FIN:
                return
            if kind is wire.FrameKind.RESET:
                raise FlowReset(f"reset by the far end: {payload!s}")
            if self.ending:
                continue
            self.clock.touch(self._loop.time())
            if self._send(payload):  # type: ignore[arg-type]
                self.counters.datagrams_in += 1
                self.counters.bytes_in += len(payload)
            else:
                self.counters.drop(Drop.QUEUE_FULL)


def _failure(task: asyncio.Task[None]) -> str:
    if not task.done() or task.cancelled() or task.exception() is None:
        return ""
    exc = task.exception()
    if isinstance(exc, FlowReset):
        return str(exc)
    if isinstance(exc, TunnelBroken):
        if exc.code == "UNAVAILABLE" and exc.details.startswith("tunnel reset"):
            return "reset by the route" + exc.details.removeprefix("tunnel reset")
        if exc.code == "INTERNAL" or exc.finished:
            return "reset by the far end (the route ended the stream)"
        return f"reset: the stream to the route failed ({exc.code.lower() or exc.details})"
    return f"reset: {type(exc).__name__}: {exc}"
