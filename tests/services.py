"""Real TCP services that tests put behind tunnels, and clients for them.

Each listens on 127.0.0.1 port 0. Data is deterministic so either end can
check it by hash without keeping a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vnet.node.tunnel import reset_socket

HEADER = struct.Struct("!QQ")
BLOCK = 1 << 20


def pattern(size: int, seed: int = 0) -> bytes:
    """size deterministic pseudo-random bytes (not compressible, not repetitive)."""
    return random.Random(f"{seed}:{size}").randbytes(size)


# What the tests' services hold open until their close(): a test that fails
# before its own close() would leave a listening socket to the session's loop,
# whose close at the end of the run then fails an unrelated last test with a
# ResourceWarning. tests/conftest.py closes what is left after every test.
_left_open: list[tuple[object, Callable[[], None]]] = []


def track(thing: object, close: Callable[[], None]) -> None:
    """close() ends thing if its test did not (it failed first)."""
    _left_open.append((thing, close))


def untrack(thing: object) -> None:
    _left_open[:] = [(t, c) for t, c in _left_open if t is not thing]


def close_left_open() -> int:
    """Close every service a test started and did not close; how many there were."""
    left = [close for _, close in _left_open]
    _left_open.clear()
    for close in left:
        close()
    return len(left)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def send_all(writer: asyncio.StreamWriter, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), BLOCK):
        writer.write(view[start : start + BLOCK])
        await writer.drain()


async def read_exactly_or_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF; raises ConnectionResetError on a reset."""
    chunks = []
    while True:
        chunk = await reader.read(BLOCK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@dataclass
class Server:
    """A started asyncio server and what it saw."""

    server: asyncio.base_events.Server
    received: list[bytes] = field(default_factory=list)
    connections: int = 0
    # Connections a service holds open on purpose; closed with the server.
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def __post_init__(self) -> None:
        track(self, self._abandon)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    def _abandon(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:  # tcp_relay's, before it listens
            self.server.close()

    async def close(self) -> None:
        untrack(self)
        self._abandon()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)


async def exchange_server() -> Server:
    """Reads a header (up, down); sends `down` bytes of pattern(down) while it
    reads the client's bytes until EOF; then answers with the SHA-256 of what
    it read, and closes. So the answer comes only after the client's EOF."""
    holder: list[Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder[0].connections += 1
        try:
            up, down = HEADER.unpack(await reader.readexactly(HEADER.size))
            sender = asyncio.create_task(send_all(writer, pattern(down)))
            hasher = hashlib.sha256()
            got = 0
            while chunk := await reader.read(BLOCK):
                hasher.update(chunk)
                got += len(chunk)
            await sender
            writer.write(hasher.digest())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=4 * BLOCK, backlog=4096)
    holder.append(Server(server))
    return holder[0]


async def exchange(port: int, up: int, down: int, timeout: float = 60.0) -> None:
    """Client of exchange_server: checks both directions byte for byte."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * BLOCK)
        data = pattern(up, seed=1)

        async def send() -> None:
            writer.write(HEADER.pack(up, down))
            await send_all(writer, data)
            writer.write_eof()

        sender = asyncio.create_task(send())
        answer = await read_exactly_or_eof(reader)
        await sender
        writer.close()
        assert len(answer) == down + 32, f"got {len(answer)} bytes, expected {down + 32}"
        assert digest(answer[:down]) == digest(pattern(down)), "downstream bytes differ"
        assert answer[down:] == digest(data), "the service read different bytes"


async def first_fin_server() -> Server:
    """Sends a greeting and shuts down its write side first, then reads the
    client's bytes until EOF and records them."""
    holder: list[Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello, then silence")
        await writer.drain()
        writer.write_eof()
        data = await read_exactly_or_eof(reader)
        holder[0].received.append(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=4 * BLOCK)
    holder.append(Server(server))
    return holder[0]


async def echo_server() -> Server:
    """Echoes until EOF, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(BLOCK):
                writer.write(chunk)
                await writer.drain()
            writer.close()
        except ConnectionError:
            writer.close()

    return Server(await asyncio.start_server(handle, "127.0.0.1", 0))


async def endless_source_server() -> Server:
    """Sends pattern bytes until the client goes away."""
    block = pattern(BLOCK)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(block)
                await writer.drain()
        except ConnectionError:
            writer.close()

    return Server(await asyncio.start_server(handle, "127.0.0.1", 0))


async def echo_round_trip(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        got = await read_exactly_or_eof(reader)
        writer.close()
        return got


async def read_until_reset(reader: asyncio.StreamReader) -> None:
    """Read on; returns only if the connection was reset (not a clean EOF)."""
    try:
        while await reader.read(BLOCK):
            pass
    except ConnectionResetError:
        return
    raise AssertionError("clean EOF where a reset was expected: truncation would look complete")


async def tcp_relay(
    target_port: int, source_ip: str | None = None
) -> tuple[Server, Callable[[], None]]:
    """A TCP relay to 127.0.0.1:target_port.

    source_ip: the address its connections to the target come from (so the
    target sees another peer while everything stays on loopback). kill():
    the connections open now stop forwarding but stay open, like a link that
    died without a FIN or RST; later ones work normally.
    """
    relay = Server(None)  # type: ignore[arg-type]
    alive: list[list[bool]] = []

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, live: list[bool]
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if live[0]:
                    writer.write(data)
                    await writer.drain()
        if live[0]:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = (source_ip, 0) if source_ip else None
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", target_port, local_addr=local
        )
        relay.writers.extend((writer, up_writer))
        live = [True]
        alive.append(live)
        await asyncio.gather(pipe(reader, up_writer, live), pipe(up_reader, writer, live))

    def kill() -> None:
        for live in alive:
            live[0] = False

    relay.server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return relay, kill


async def resetting_server(read: int = 1000, send: int = 0) -> Server:
    """Reads up to `read` bytes, sends `send` bytes, then resets the connection
    (SO_LINGER 0 + close = RST) while the client may still be sending."""
    holder: list[Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder[0].connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read(read)
            if send:
                writer.write(pattern(send))
                await writer.drain()
        reset_socket(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    holder.append(Server(server))
    return holder[0]


async def send_until_reset(port: int, timeout: float = 10.0) -> None:
    """Connect and send until the connection is reset; fails on a clean EOF."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        block = pattern(65536)
        try:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                while not writer.is_closing() and not reader.at_eof():
                    writer.write(block)
                    await writer.drain()
            await read_until_reset(reader)
        finally:
            writer.close()


async def echo_ok(port: int, size: int) -> bool:
    """One echo of size bytes through 127.0.0.1:port comes back whole, within 2 s."""
    writer = None
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = pattern(size, seed=port)
            writer.write(body)
            writer.write_eof()
            return await read_exactly_or_eof(reader) == body
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()


async def ping_until(port: int, rounds: list[int], stop: asyncio.Event) -> None:
    """1-byte round trips to an echo service at port until stop, counted in rounds[0];
    each must come back intact."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            writer.write(b"p")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(1), 10) == b"p"
            rounds[0] += 1
    finally:
        writer.close()
