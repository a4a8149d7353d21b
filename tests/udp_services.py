"""Real UDP services and clients for the tests: an echo server, a silent
sink, and a client socket that collects what comes back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

from tests.conftest import TIMEOUT
from tests.services import track, untrack

# Big enough for a few 65,507-byte datagrams in flight (the kernel doubles
# it and caps it at net.core.rmem_max).
RCVBUF = 4 * 1024 * 1024


class _Collect(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes, tuple[str, int]], None] | None) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.arrived = asyncio.Event()
        self._reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport is not a DatagramTransport subclass on every Python.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        # asyncio's sendto sends nothing for b"": a duplicate of the socket does.
        assert self.transport is not None
        if data:
            self.transport.sendto(data, addr)
            return
        with self.transport.get_extra_info("socket").dup() as sock:
            sock.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self.arrived.set()
        if self._reply is not None:
            self._reply(data, addr)


class UdpServer:
    """A UDP service on 127.0.0.1: echo (the default) or a sink that never answers."""

    def __init__(self, protocol: _Collect) -> None:
        self.protocol = protocol
        assert protocol.transport is not None
        self.transport = protocol.transport
        self.port = int(self.transport.get_extra_info("sockname")[1])
        track(self, self.transport.close)

    @property
    def received(self) -> list[tuple[bytes, tuple[str, int]]]:
        return self.protocol.received

    def close(self) -> None:
        untrack(self)
        self.transport.close()


async def udp_server(echo: bool = True) -> UdpServer:
    loop = asyncio.get_running_loop()
    holder: list[_Collect] = []

    def reply(data: bytes, addr: tuple[str, int]) -> None:
        holder[0].sendto(data, addr)

    _, protocol = await loop.create_datagram_endpoint(
        lambda: _Collect(reply if echo else None), local_addr=("127.0.0.1", 0)
    )
    holder.append(protocol)
    return UdpServer(protocol)


class UdpClient:
    """One client socket (one flow through a use): send, and await replies."""

    def __init__(self, protocol: _Collect, port: int) -> None:
        self.protocol = protocol
        assert protocol.transport is not None
        self.transport = protocol.transport
        self.port = port
        track(self, self.transport.close)

    @property
    def received(self) -> list[bytes]:
        return [data for data, _ in self.protocol.received]

    def send(self, data: bytes) -> None:
        self.transport.sendto(data)

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        """Until `count` datagrams have come back; fails at the deadline."""
        async with asyncio.timeout(timeout):
            while len(self.protocol.received) < count:
                self.protocol.arrived.clear()
                await self.protocol.arrived.wait()
        return self.received

    async def round_trip(self, data: bytes, timeout: float = TIMEOUT) -> bytes:
        before = len(self.protocol.received)
        self.send(data)
        return (await self.wait_for(before + 1, timeout))[before]

    def close(self) -> None:
        untrack(self)
        self.transport.close()


async def udp_client(port: int) -> UdpClient:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: _Collect(None), remote_addr=("127.0.0.1", port)
    )
    return UdpClient(protocol, port)


def numbered(seq: int, size: int) -> bytes:
    """A datagram of `size` bytes (at least 4) that says which one it is, and
    whose every byte depends on it."""
    head = seq.to_bytes(4, "big")
    body = bytes((seq * 31 + i) & 0xFF for i in range(min(size - 4, 251)))
    reps = (size - 4) // max(len(body), 1) + 1 if size > 4 else 0
    return (head + body * reps)[:size]
