"""The client load: byte streams cut from one random block, and the clients that check them."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import struct
from dataclasses import dataclass, field

MIB = 1 << 20
MAX_SIZE = 4 * MIB
READ = MIB  # the size of vnet's own reads, so one read can take a whole tunnel frame
SEND = 256 * 1024
HEADER = struct.Struct("!QQQQ")  # up, down, offset of the up stream, offset of the down stream


class Lost(Exception):
    """A connection ended like a success with wrong or missing bytes: what must never happen."""


class Truncated(Exception):
    """A clean EOF before the whole answer: the client notices, but vnet promises a reset."""


class Source:
    """Every stream is a slice of one random block at a random offset.

    The block is longer than any transfer, so a stream never repeats within itself (a chunk
    reordered or repeated cannot match by chance) and two connections' streams differ (bytes
    crossing between tunnels are caught). Slices cost nothing: the client stays cheap.
    """

    def __init__(self, rng: random.Random) -> None:
        self.data = rng.randbytes(3 * MAX_SIZE)
        self.view = memoryview(self.data)

    def offset(self, rng: random.Random, size: int) -> int:
        return rng.randrange(len(self.data) - size + 1)

    def slice(self, offset: int, size: int) -> memoryview:
        return self.view[offset : offset + size]

    def digest(self, offset: int, size: int) -> bytes:
        return hashlib.sha256(self.slice(offset, size)).digest()


@dataclass(frozen=True)
class Spec:
    """One client connection: exchange, exchange-late-eof, echo or echo-pingpong."""

    kind: str
    up: int
    down: int = 0
    up_at: int = 0
    down_at: int = 0
    rounds: tuple[int, ...] = ()


@dataclass
class Tally:
    tried: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    moved: int = 0
    why: collections.Counter[str] = field(default_factory=collections.Counter)


def pick_size(rng: random.Random) -> int:
    """0 to 4 MiB, mostly small: many connections, and long ones for disruptions to catch."""
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.4:
        return rng.randint(1, 4096)
    if r < 0.75:
        return rng.randint(4097, 256 * 1024)
    return rng.randint(256 * 1024 + 1, MAX_SIZE)


def discard(task: asyncio.Task[None]) -> None:
    """Cancel a helper task, or mark its error as seen (the connection failed anyway)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def send_view(writer: asyncio.StreamWriter, data: memoryview) -> None:
    for start in range(0, len(data), SEND):
        writer.write(data[start : start + SEND])
        await writer.drain()


async def receive(
    src: Source, reader: asyncio.StreamReader, at: int, size: int, reached: asyncio.Event
) -> tuple[int, bytes, bytes]:
    """Reads until EOF: (bytes read, SHA-256 of the first `size`, up to 64 bytes after them).

    A failure may cut a stream short but never change it, so when the connection fails, or
    ends early, the bytes that did arrive must still be the stream's first bytes.
    """
    hasher, got, tail = hashlib.sha256(), 0, bytearray()
    try:
        while chunk := await reader.read(READ):
            view = memoryview(chunk)
            split = min(max(size - got, 0), len(view))
            hasher.update(view[:split])
            if len(tail) < 64:  # more than 32 is wrong already; no need to keep it all
                tail += view[split : split + 64]
            got += len(view)
            if got >= size:
                reached.set()
    except OSError:
        if hasher.digest() != src.digest(at, min(got, size)):
            raise Lost(f"the first {got} bytes differ, then the connection failed") from None
        raise
    if got < size and hasher.digest() != src.digest(at, got):
        raise Lost(f"the first {got} bytes differ, then EOF")
    return got, hasher.digest(), bytes(tail)


async def bulk_client(
    src: Source, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: Spec
) -> int:
    """exchange: the header, the upload while the download comes, FIN, then the service's
    SHA-256 of the upload. echo: the upload while it comes back, FIN."""
    exchange = spec.kind.startswith("exchange")
    at, size = (spec.down_at, spec.down) if exchange else (spec.up_at, spec.up)
    reached = asyncio.Event()
    if size == 0:
        reached.set()

    async def send() -> None:
        if exchange:
            writer.write(HEADER.pack(spec.up, spec.down, spec.up_at, spec.down_at))
        await send_view(writer, src.slice(spec.up_at, spec.up))
        if spec.kind == "exchange-late-eof":
            # FIN only after the whole download: the answer then follows an idle stream,
            # where the early FIN races a busy one.
            await reached.wait()
        writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        got, digest, tail = await receive(src, reader, at, size, reached)
        if not sender.done():
            raise Truncated("EOF while the client was still sending")
        await sender
    finally:
        discard(sender)
    due = size + 32 if exchange else size
    if got < due:
        raise Truncated(f"EOF after {got} of {due} bytes")
    if got > due:
        raise Lost(f"{got} bytes where {due} were due")
    if digest != src.digest(at, size):
        raise Lost("the bytes received differ")
    if exchange and tail != src.digest(spec.up_at, spec.up):
        raise Lost("the service's SHA-256 of the upload differs")
    return spec.up + size


async def pingpong_client(
    src: Source, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: Spec
) -> int:
    """Interactive echo: each piece must come back before the next goes; then FIN."""
    at = spec.up_at
    for size in spec.rounds:
        piece = src.slice(at, size)
        writer.write(piece)
        await writer.drain()
        if await reader.readexactly(size) != piece:
            raise Lost(f"the echo of the piece at {at - spec.up_at} differs")
        at += size
    writer.write_eof()
    if await reader.read(READ):
        raise Lost("bytes after the last echo")
    return 2 * spec.up
