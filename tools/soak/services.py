"""The exchange and echo services behind home, inside the soak process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from harness.procs import HOST
from tools.soak.load import HEADER, MAX_SIZE, MIB, READ, Lost, Source, discard, receive, send_view
from vnet.node.tunnel import reset_socket


class Services:
    """The exchange and echo services behind home, in this process."""

    def __init__(
        self,
        src: Source,
        killed: Callable[[str, float, float], bool],
        clock: Callable[[], float],
    ) -> None:
        self.src, self.killed, self.clock = src, killed, clock
        self.lost: list[str] = []
        self.cut = 0  # upstreams cut short by home's kill -9 (the kernel's FIN)
        self.servers: list[asyncio.Server] = []

    async def start(self) -> tuple[int, int]:
        for handler in (self._exchange, self._echo):
            self.servers.append(await asyncio.start_server(handler, HOST, 0, limit=4 * MIB))
        exchange, echo = (int(s.sockets[0].getsockname()[1]) for s in self.servers)
        return exchange, echo

    async def close(self) -> None:
        for server in self.servers:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Header (up, down, offsets); sends `down` bytes while it reads until EOF; then the
        SHA-256 of what it read. It knows what the client sent, so it checks that too."""
        accepted = time.monotonic()
        sender: asyncio.Task[None] | None = None
        try:
            up, down, up_at, down_at = HEADER.unpack(await reader.readexactly(HEADER.size))
            if max(up, down) > MAX_SIZE or max(up_at + up, down_at + down) > len(self.src.data):
                self.lost.append(f"{self.clock():.1f}s exchange service: garbled header")
                reset_socket(writer)
                return
            sender = asyncio.create_task(send_view(writer, self.src.slice(down_at, down)))
            got, digest, _ = await receive(self.src, reader, up_at, up, asyncio.Event())
            await sender
            if got != up or digest != self.src.digest(up_at, up):
                # A clean EOF after too few bytes: a real service would have taken them as
                # all there is. Expected only when home itself died: the kernel closes a
                # killed process's sockets with a FIN.
                if got < up and self.killed("home", accepted, time.monotonic()):
                    self.cut += 1
                else:
                    self.lost.append(
                        f"{self.clock():.1f}s exchange service: clean EOF after {got} of {up} bytes"
                    )
                reset_socket(writer)
                return
            writer.write(digest)
            await writer.drain()
            writer.close()
        except Lost as exc:
            self.lost.append(f"{self.clock():.1f}s exchange service: {exc}")
            reset_socket(writer)
        except (OSError, asyncio.IncompleteReadError):
            reset_socket(writer)
        finally:
            if sender is not None:
                discard(sender)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(READ):
                writer.write(chunk)
                await writer.drain()
            writer.close()
        except OSError:
            reset_socket(writer)
