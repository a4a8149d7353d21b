"""Several logical tunnels on one vnet tunnel stream: the inner framing of `bench.mux`.

A prototype for issue 15, not part of vnet. One Dial/Accept tunnel between office and home
carries every logical tunnel; its data frames are vnet's own (`wire.encode_data` /
`decode_frame`), so the route relays them exactly as in production, and each frame's payload
is one or more inner frames:

    tunnel id (4 bytes) | kind (1 byte: open, data, close, reset) | length (4 bytes) | payload

A new logical tunnel is an `open` frame on the existing stream (no gRPC call); `close` ends
one direction (as vnet's fin does); `reset` ends both (home could not reach the target). While
a write is in flight, what the tunnels send meanwhile queues up and goes out as one message
with the next write; with nothing in flight a frame is written at once (no added delay).

What this prototype leaves out, and a production mux would have to rebuild inside the stream:
per-tunnel flow control (here one stream-wide bound on what is queued, so one slow tunnel
holds up every other: head-of-line blocking), interactive-vs-bulk pacing, and resets of one
logical tunnel without touching the others beyond the `reset` frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vnet import wire
from vnet.node.client import TunnelBroken, TunnelCall

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IBI")
OPEN, DATA, CLOSE, RESET = 1, 2, 3, 4
KINDS = (OPEN, DATA, CLOSE, RESET)
# One read of a local socket; vnet's pacer reads up to 512 KiB, the workloads here are small.
READ_SIZE = 64 * 1024
# At most this much in one gRPC message (vnet's limit is 4 MiB).
BATCH_BYTES = 1024 * 1024
# The stream-wide bound on what waits to be written: a tunnel's reader waits above it.
QUEUE_LIMIT = 2 * 1024 * 1024


class MuxError(Exception):
    """A batch that does not parse: truncated, or a kind this framing does not know."""


def pack(tunnel: int, kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(tunnel, kind, len(payload)) + payload


def unpack(batch: bytes | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The inner frames of one message's payload: (tunnel id, kind, payload)."""
    view = memoryview(batch)
    pos = 0
    while pos < len(view):
        if pos + HEADER.size > len(view):
            raise MuxError(f"a truncated inner header at byte {pos} of {len(view)}")
        tunnel, kind, length = HEADER.unpack_from(view, pos)
        pos += HEADER.size
        if kind not in KINDS:
            raise MuxError(f"unknown inner frame kind {kind} for tunnel {tunnel}")
        if pos + length > len(view):
            raise MuxError(f"tunnel {tunnel}'s {length}-byte frame is truncated")
        yield tunnel, kind, view[pos : pos + length]
        pos += length


@dataclass
class Logical:
    """One logical tunnel: its local socket (None while home still connects), and what came for
    it before the socket was there."""

    tunnel: int
    writer: asyncio.StreamWriter | None = None
    early: list[bytes] = field(default_factory=list)
    sent_close: bool = False
    got_close: bool = False


@dataclass
class Counters:
    """Messages written and inner frames in them: how much the batching gathered."""

    messages: int = 0
    frames: int = 0


class MuxStream:
    """One tunnel call carrying many logical tunnels, both ways.

    on_open(tunnel) is home's: an open frame arrived (office opens them itself). `fault`, for
    the test that the bench's byte check works: "flip" changes the first byte of every other
    data frame delivered.
    """

    def __init__(
        self,
        call: TunnelCall,
        on_open: Callable[[MuxStream, int], None] | None = None,
        fault: str = "",
    ) -> None:
        self.call = call
        self.on_open = on_open
        self.fault = fault
        self.tunnels: dict[int, Logical] = {}
        self.counters = Counters()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._delivered = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks = {
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._reader()),
        }
        for task in self._tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self.done.done():
            return
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(None)
        for tunnel in list(self.tunnels.values()):
            if tunnel.writer is not None:
                tunnel.writer.transport.abort()
        self.tunnels.clear()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.call.cancel()

    # --- out: queue, and one writer that takes all that queued while its last write ran ------

    def send(self, tunnel: int, kind: int, payload: bytes = b"") -> None:
        frame = pack(tunnel, kind, payload)
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        if self._pending_bytes > QUEUE_LIMIT:
            self._room.clear()
        self._wake.set()

    async def send_data(self, tunnel: int, payload: bytes) -> None:
        """Queue a data frame; wait while the stream has more than QUEUE_LIMIT queued (the one
        back-pressure there is: it holds up every tunnel's reader, not only this one's)."""
        self.send(tunnel, DATA, payload)
        if not self._room.is_set():
            await self._room.wait()

    async def _writer(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending
            if self._pending_bytes <= BATCH_BYTES:
                # The usual case: all that queued while the last write ran, in one message.
                self._pending, size = [], self._pending_bytes
            else:
                size, take = 0, 0
                while take < len(batch) and (not take or size + len(batch[take]) <= BATCH_BYTES):
                    size += len(batch[take])
                    take += 1
                batch, self._pending = batch[:take], batch[take:]
            self._pending_bytes -= size
            if self._pending_bytes <= QUEUE_LIMIT // 2:
                self._room.set()
            self.counters.messages += 1
            self.counters.frames += len(batch)
            await self.call.write(wire.encode_data(b"".join(batch)))

    # --- in: one reader for the stream, handing each inner frame to its tunnel ---------------

    async def _reader(self) -> None:
        while (raw := await self.call.read()) is not None:
            kind, payload = wire.decode_frame(raw)
            if kind is not wire.FrameKind.DATA:
                raise TunnelBroken("", f"the mux stream ended: {kind.name} {payload!s}")
            for tunnel, inner, body in unpack(payload):  # type: ignore[arg-type]
                self._dispatch(tunnel, inner, body)

    def _dispatch(self, tunnel: int, kind: int, body: memoryview) -> None:
        if kind == OPEN:
            if self.on_open is None:
                raise MuxError(f"an open frame for tunnel {tunnel} came to the opening side")
            self.tunnels[tunnel] = Logical(tunnel)
            self.on_open(self, tunnel)
            return
        logical = self.tunnels.get(tunnel)
        if logical is None:
            # Its socket was reset meanwhile: what was still on the way is dropped.
            return
        if kind == DATA:
            data = bytes(body)
            self._delivered += 1
            if self.fault == "flip" and self._delivered % 2 == 0:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if logical.writer is None:
                logical.early.append(data)
            else:
                # No drain: waiting here would stop the stream for every tunnel.
                logical.writer.write(data)
        elif kind == CLOSE:
            logical.got_close = True
            if logical.writer is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    logical.writer.write_eof()
                self._maybe_done(logical)
        else:
            self.tunnels.pop(tunnel, None)
            if logical.writer is not None:
                logical.writer.transport.abort()

    # --- a logical tunnel's socket -------------------------------------------------------------

    def open(self, tunnel: int, writer: asyncio.StreamWriter) -> Logical:
        """Office: a new logical tunnel for an accepted socket, told to home by an open frame."""
        logical = self.tunnels[tunnel] = Logical(tunnel, writer)
        self.send(tunnel, OPEN)
        return logical

    def attach(self, tunnel: int, writer: asyncio.StreamWriter) -> Logical | None:
        """Home: give a logical tunnel its socket, and write what arrived before it; None
        when the tunnel was reset meanwhile."""
        logical = self.tunnels.get(tunnel)
        if logical is None:
            writer.close()
            return None
        logical.writer = writer
        for data in logical.early:
            writer.write(data)
        logical.early.clear()
        if logical.got_close:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        return logical

    async def pump(self, logical: Logical, reader: asyncio.StreamReader) -> None:
        """The socket's bytes into the stream until its end, then close (the fin)."""
        try:
            while data := await reader.read(READ_SIZE):
                if logical.tunnel not in self.tunnels:
                    return
                await self.send_data(logical.tunnel, data)
        except OSError:
            self.reset(logical.tunnel)
            return
        if logical.tunnel in self.tunnels:
            self.send(logical.tunnel, CLOSE)
            logical.sent_close = True
            self._maybe_done(logical)

    def reset(self, tunnel: int) -> None:
        """End a logical tunnel both ways: its socket reset, the far end told."""
        logical = self.tunnels.pop(tunnel, None)
        if logical is not None:
            self.send(tunnel, RESET)
            if logical.writer is not None:
                logical.writer.transport.abort()

    def _maybe_done(self, logical: Logical) -> None:
        if logical.sent_close and logical.got_close:
            self.tunnels.pop(logical.tunnel, None)
            if logical.writer is not None:
                logical.writer.close()
