"""One tunnelled TCP connection on a node: the local socket <-> a gRPC stream.

Two pumps, one per direction, and one `TunnelState` (vnet/core/tunnel_state.py)
that decides how the tunnel ends: end A is the local socket, end B the stream.
The pumps feed it what they read and carry out what it returns, so socket EOF
becomes a fin frame (the far end shuts down its write side), a received fin
shuts down ours, and anything abnormal (a socket error, a reset frame, the
stream failing or ending without fin, a frame after fin) resets the tunnel:
the local socket gets an RST and the call is cancelled, which makes the route
reset the far end, so a truncated transfer never looks complete. When it was
the local socket that failed, a reset frame saying so goes first (if no write
is under way on the call), so the far node can tell its user why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from dataclasses import dataclass

from vnet import wire
from vnet.core import pacing
from vnet.core.errors import ProtocolError
from vnet.core.tunnel_state import Do, End, Event, Kind, TunnelState
from vnet.node.client import TunnelBroken, TunnelCall

log = logging.getLogger(__name__)

# One read of the local socket becomes one message, at most pacing.BULK_READ
# (vnet/core/pacing.py says when less); reads return what is there, so interactive
# traffic stays small. asyncio's StreamReader stops reading its socket once it
# holds twice its limit, so this lets a read find a whole BULK_READ waiting,
# and bounds what a tunnel whose stream is stalled buffers here to about one
# BULK_READ (the limit was 2 MiB: 4 MiB per stalled tunnel).
READER_LIMIT = pacing.BULK_READ // 2


# Open files a node needs for this many tunnels at once (one socket each,
# plus the process's own); below it, raise_fd_limit says so.
FDS_WANTED = 8192


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard one, at process start.

    Each tunnel holds a socket on both nodes; a common soft limit of 1,024
    would fail a burst of 2,000 connections with "too many open files".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < FDS_WANTED:
        log.warning(
            "open files are limited to %d (ulimit -n), which caps the tunnels open at once; "
            "raise the hard limit for more",
            soft,
        )


# How long a reset frame for the far end may take before the call is cancelled anyway.
TELL_TIMEOUT = 2.0


class TunnelReset(Exception):
    """The far end reset the tunnel, or the stream failed."""


class LocalFailure(Exception):
    """The local socket failed (reset, broken pipe, ...): not the tunnel's doing."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    @property
    def was_reset(self) -> bool:
        # uvloop raises RuntimeError for a write on a transport it closed
        # after a read error: that is the reset (or failure) that closed it.
        return isinstance(self.error, ConnectionResetError | RuntimeError)

    def detail(self) -> str:
        err = self.error
        if isinstance(err, RuntimeError):
            # uvloop's "unable to perform operation on <TCPTransport closed=True ...>".
            return "connection lost"
        return (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).lower()


class _Sending:
    """What the upstream pump is doing to the call, so a reset frame can follow safely."""

    __slots__ = ("writing", "ended", "halted")

    def __init__(self) -> None:
        # Inside call.write: another write now would clash with it.
        self.writing = False
        # The fin went out: nothing may follow it.
        self.ended = False
        # Stop after the write under way: a reset frame is to follow it.
        self.halted = False


@dataclass
class Counters:
    """Traffic of a group of tunnels (one use), for the node's metrics."""

    opened: int = 0
    open: int = 0
    resets: int = 0
    # Payload bytes from the local socket into the tunnel, and back out.
    bytes_out: int = 0
    bytes_in: int = 0


def reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close the local connection with RST, so the application sees an error."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# What the pumps see most often, made once: a tunnel feeds one per read.
_SOCKET_DATA = Event(End.A, Kind.DATA)
_SOCKET_FIN = Event(End.A, Kind.FIN)
_STREAM_DATA = Event(End.B, Kind.DATA)
_STREAM_FIN = Event(End.B, Kind.FIN)
_STREAM_ENDED = Event(End.B, Kind.ENDED)

# The machine's reasons in this node's words, where its log has said more.
_WORDING = {"ended without fin": "reset by the route: the stream ended without fin"}


async def _upstream(
    reader: asyncio.StreamReader,
    call: TunnelCall,
    state: TunnelState,
    counters: Counters,
    pacer: pacing.Pacer,
    sending: _Sending,
    peer: str,
) -> None:
    """The local socket (end A) into the call."""
    loop = asyncio.get_running_loop()
    lane = pacing.Lane(peer=peer)
    try:
        while True:
            try:
                data = await reader.read(pacer.read_size(lane, loop.time()))
            except OSError as exc:
                # Fed to the machine by relay, which ranks it against the other pump's end.
                raise LocalFailure(exc) from None
            if not data:
                break
            actions = state.receive(_SOCKET_DATA)
            if not actions or actions[0].do is not Do.FORWARD:
                # The tunnel ended meanwhile (the other pump saw to it): nothing more goes out.
                return
            pacer.note(lane, len(data), loop.time())
            sending.writing = True
            await call.write(wire.encode_data(data))
            sending.writing = False
            counters.bytes_out += len(data)
            if sending.halted:
                return
            nbytes = len(data)
            # Not held through the next read, which may wait for minutes.
            del data
            pause = pacer.pause(lane, nbytes, loop.time())
            if pause:
                await asyncio.sleep(pause)
        for action in state.receive(_SOCKET_FIN):
            if action.do is Do.SEND_FIN:
                # No half-close after it: the route stops reading at a fin, and the
                # extra operation cost 7% of the tunnel setup rate.
                sending.writing = sending.ended = True
                await call.write(wire.FIN_FRAME)
            # CLOSE: relay closes the socket once both pumps are done.
    finally:
        # Its end ends its claim to be interactive (vnet.core.pacing.Pacer.closed).
        pacer.closed(lane)


async def _downstream(
    call: TunnelCall, writer: asyncio.StreamWriter, state: TunnelState, counters: Counters
) -> None:
    """The call (end B) into the local socket. It reads on after a fin, to
    the stream's end, so the machine sees a frame after fin."""
    while True:
        raw = await call.read()
        payload: bytes | memoryview | str = b""
        if raw is None:
            event = _STREAM_ENDED
        else:
            try:
                kind, payload = wire.decode_frame(raw)
            except ProtocolError as exc:
                event = Event(End.B, Kind.FAILED, str(exc))
            else:
                if kind is wire.FrameKind.DATA:
                    event = _STREAM_DATA
                elif kind is wire.FrameKind.FIN:
                    event = _STREAM_FIN
                else:
                    event = Event(End.B, Kind.RESET, f"reset by the far end: {payload!s}")
        for action in state.receive(event):
            if action.do is Do.FORWARD:
                try:
                    writer.write(payload)  # type: ignore[arg-type]
                    counters.bytes_in += len(payload)
                    # Not held through the next read, which may wait for minutes.
                    del raw, payload
                    await writer.drain()
                except (OSError, RuntimeError) as exc:
                    raise LocalFailure(exc) from None
            elif action.do is Do.SEND_FIN:
                if writer.can_write_eof():
                    writer.write_eof()
            elif action.do is not Do.CLOSE:
                # SEND_RESET / STOP_READING: the machine reset the tunnel;
                # relay carries it out (RST the socket, cancel the call).
                raise TunnelReset(_WORDING.get(state.reason, state.reason))
        if event is _STREAM_ENDED:
            return


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    call: TunnelCall,
    label: str,
    fields: dict[str, object] | None = None,
    counters: Counters | None = None,
    pacer: pacing.Pacer | None = None,
    local: str = "the client",
) -> bool:
    """Carry one connection over call until both directions end.

    Returns True for a clean close, False when the tunnel was reset. Never
    raises for network trouble; the reason is logged, with `fields` (vnetid,
    serveid, tunnel) as structured fields for JSON logs. `local` names the
    local end in those reasons ("the client", "the service").
    """
    # A tunnel of no use (an unserve's, a test's) counts into a throwaway of its own.
    counters = counters if counters is not None else Counters()
    counters.opened += 1
    counters.open += 1
    state = TunnelState()
    sending = _Sending()
    up = asyncio.create_task(
        _upstream(
            reader,
            call,
            state,
            counters,
            pacer or pacing.Pacer(),
            sending,
            str((fields or {}).get("vnetid", "")),
        )
    )
    down = asyncio.create_task(_downstream(call, writer, state, counters))
    reason = ""
    failure: LocalFailure | None = None
    try:
        # Returns when either pump failed, or when both finished cleanly.
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        cause = _cause(up, down)
        if cause is not None and not isinstance(cause, LocalFailure) and not down.done():
            # A write found the call over ("Internal error from Core", "RPC
            # already finished"): what the route said, a reset frame or the
            # call's status, is still to be read, and says why.
            await asyncio.wait({down}, timeout=TELL_TIMEOUT)
            cause = _cause(up, down)
        if cause is not None:
            reason = _describe(cause, local)
            if isinstance(cause, LocalFailure):
                failure = cause
                # SEND_RESET to the stream: the reset frame below, then the cancel.
                state.receive(Event(End.A, Kind.FAILED, reason))
            else:
                # A no-op when a frame already reset the machine (TunnelReset).
                state.receive(Event(End.B, Kind.FAILED, reason))
            # A failed end cannot be told; it is torn down below all the same.
            # A stream that fails after the machine closed (both fins passed
            # on) is a reset too: the route did not confirm the close, so this
            # end's data may not have arrived.
    except asyncio.CancelledError:
        reason = "reset: the node is stopping"
        state.cancel(reason)
        raise
    finally:
        counters.open -= 1
        extra = fields or {}
        if reason:
            counters.resets += 1
            reset_socket(writer)
            # A cancel of a pump inside a call operation cancels the call, so
            # the reset frame goes out before the pumps are stopped, and only
            # after the write of upstream's under way, if any (bounded: the
            # route may not be reading). A cancel landing mid-write would also
            # cut the route's relay of that frame short.
            try:
                if failure is not None and not sending.ended:
                    sending.halted = True
                    if sending.writing and not up.done():
                        await asyncio.wait({up}, timeout=TELL_TIMEOUT)
                up.cancel()
                if failure is not None and not (sending.writing or sending.ended):
                    await _tell(call, _for_the_far_end(failure, local))
            finally:
                # Also when the node stops during the waits above.
                up.cancel()
                down.cancel()
                call.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
                log.info("%s: %s", label, reason, extra=extra)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.debug("%s: closed", label, extra=extra)
    return not reason


def _cause(up: asyncio.Task[None], down: asyncio.Task[None]) -> BaseException | None:
    """Of the pumps' failures, the one that says best why the tunnel ended:
    the local socket's, then the far end's reset, then what reading the call
    said (its status), then what writing to it did."""
    ranked = []
    for task, rank in ((down, 2), (up, 3)):
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, LocalFailure):
                rank = 0
            elif isinstance(exc, TunnelReset):
                rank = 1
            ranked.append((rank, exc))
    return min(ranked, key=lambda r: r[0])[1] if ranked else None


def _describe(exc: BaseException, local: str) -> str:
    """Why the tunnel was reset, for this node's log."""
    if isinstance(exc, LocalFailure):
        if exc.was_reset:
            return f"reset by {local} ({exc.detail()})"
        return f"reset: {local}'s connection failed ({exc.detail()})"
    if isinstance(exc, TunnelReset):
        return str(exc)
    if isinstance(exc, TunnelBroken):
        details = exc.details
        if exc.code == "UNAVAILABLE" and details.startswith("tunnel reset"):
            # The route's own word (vnet.route.rpc.end_unless_told), with its reason.
            return "reset by the route" + details.removeprefix("tunnel reset")
        if exc.code == "INTERNAL" or exc.finished:
            # What a write meets when the route ended the call under it, as it
            # does when the far end reset (its reset frame, if any, is stuck
            # behind data this node's client has not read yet); or the write
            # came just after the call ended ("RPC already finished").
            return "reset by the far end (the route ended the stream)"
        if exc.code:
            return f"reset: the stream to the route failed ({exc.code.lower()}: {details})"
        return f"reset: {details}"
    return f"reset: {type(exc).__name__}: {exc}"


def _for_the_far_end(failure: LocalFailure, local: str) -> str:
    if failure.was_reset:
        return f"{local} reset the connection"
    return f"{local}'s connection failed ({failure.detail()})"


async def _tell(call: TunnelCall, reason: str) -> None:
    """Send the far end a reset frame with the reason; bounded, best effort.

    Then wait (as long again at most) for the route to end the call: a
    cancel right behind the frame could reach the route's handler before
    it has passed the frame on, and the far end would hear only that this
    end went away.
    """
    with contextlib.suppress(Exception):
        await asyncio.wait_for(call.write(wire.encode_reset(reason)), TELL_TIMEOUT)
        await asyncio.wait_for(call.ended(), TELL_TIMEOUT)


async def refuse(call: TunnelCall, reason: str) -> None:
    """Answer an OpenTunnel with a reset, so the dialling client closes at once."""
    try:
        await call.write(wire.encode_reset(reason))
        while await call.read() is not None:
            pass
    except Exception:  # noqa: BLE001 - the dialler is told by the route either way
        call.cancel()
