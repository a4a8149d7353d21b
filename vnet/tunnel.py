"""One tunnelled TCP connection on a node: the local socket <-> a gRPC stream.

Two pumps, one per direction. Socket EOF becomes a fin frame (the far end
shuts down its write side); a received fin shuts down ours. Anything abnormal
(a socket error, a reset frame, the stream failing or ending without fin)
resets the local socket with RST and cancels the call, which makes the route
reset the far end: a truncated transfer never looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from dataclasses import dataclass
from typing import Any

import grpc

from vnet import pacing, wire
from vnet.errors import InvalidRequest

log = logging.getLogger(__name__)

# One read of the local socket becomes one message, at most pacing.BULK_READ
# (vnet/pacing.py says when less); reads return what is there, so interactive
# traffic stays small. asyncio's StreamReader stops reading its socket once it
# holds twice its limit, so this lets a read find a whole BULK_READ waiting,
# and bounds what a tunnel whose stream is stalled buffers here to ~1 MiB
# (the limit was 2 MiB: 4 MiB per stalled tunnel).
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


class TunnelReset(Exception):
    """The far end reset the tunnel, or the stream failed."""


@dataclass
class Counters:
    """Traffic of a group of tunnels (one use), for the node's metrics."""

    opened: int = 0
    open: int = 0
    resets: int = 0
    # Payload bytes from the local socket into the tunnel, and back out.
    bytes_out: int = 0
    bytes_in: int = 0


_NO_COUNTERS = Counters()


def reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close the local connection with RST, so the application sees an error."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _upstream(
    reader: asyncio.StreamReader, call: Any, counters: Counters, pacer: pacing.Pacer
) -> None:
    loop = asyncio.get_running_loop()
    lane = pacing.Lane()
    while True:
        data = await reader.read(pacer.read_size(lane, loop.time()))
        if not data:
            break
        pacer.note(lane, len(data), loop.time())
        await call.write(wire.encode_data(data))
        counters.bytes_out += len(data)
        nbytes = len(data)
        # Not held through the next read, which may wait for minutes.
        del data
        pause = pacer.pause(lane, nbytes, loop.time())
        if pause:
            await asyncio.sleep(pause)
    # No half-close after it: the route stops reading at a fin, and the
    # extra operation cost 7% of the tunnel setup rate.
    await call.write(wire.FIN_FRAME)


async def _downstream(call: Any, writer: asyncio.StreamWriter, counters: Counters) -> None:
    got_fin = False
    while True:
        raw = await call.read()
        if raw is grpc.aio.EOF:
            break
        try:
            kind, payload = wire.decode_frame(raw)
        except InvalidRequest as exc:
            raise TunnelReset(str(exc)) from None
        if got_fin:
            raise TunnelReset("frame after fin")
        if kind is wire.FrameKind.DATA:
            writer.write(payload)  # type: ignore[arg-type]
            counters.bytes_in += len(payload)
            # Not held through the next read, which may wait for minutes.
            del raw, payload
            await writer.drain()
        elif kind is wire.FrameKind.FIN:
            got_fin = True
            if writer.can_write_eof():
                writer.write_eof()
        else:
            raise TunnelReset(f"reset by peer: {payload!s}")
    if not got_fin:
        raise TunnelReset("stream ended without fin")


async def relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    call: Any,
    label: str,
    fields: dict[str, object] | None = None,
    counters: Counters = _NO_COUNTERS,
    pacer: pacing.Pacer | None = None,
) -> bool:
    """Carry one connection over call until both directions end.

    Returns True for a clean close, False when the tunnel was reset. Never
    raises for network trouble; the reason is logged, with `fields` (vnetid,
    serveid, tunnel) as structured fields for JSON logs.
    """
    counters.opened += 1
    counters.open += 1
    up = asyncio.create_task(_upstream(reader, call, counters, pacer or pacing.Pacer()))
    down = asyncio.create_task(_downstream(call, writer, counters))
    reason = ""
    try:
        # Returns when either pump failed, or when both finished cleanly.
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                reason = _describe(exc)
                break
    except asyncio.CancelledError:
        reason = "node stopping"
        raise
    finally:
        counters.open -= 1
        extra = fields or {}
        if reason:
            counters.resets += 1
            for task in (up, down):
                task.cancel()
            call.cancel()
            reset_socket(writer)
            await asyncio.gather(up, down, return_exceptions=True)
            log.info("%s: reset (%s)", label, reason, extra=extra)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.debug("%s: closed", label, extra=extra)
    return not reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"stream failed: {exc.code().name} {exc.details() or ''}".strip()
    if isinstance(exc, TunnelReset):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def refuse(call: Any, reason: str) -> None:
    """Answer an OpenTunnel with a reset, so the dialling client closes at once."""
    try:
        await call.write(wire.encode_reset(reason))
        async for _ in call:
            pass
    except Exception:  # noqa: BLE001 - the dialler is told by the route either way
        call.cancel()
