"""The services the benchmark measures against, run as their own process.

`python -m bench.target --sink-port P --echo-port Q` serves:

- sink: the client sends an 8-byte big-endian length N, then N bytes; once N bytes arrived the
  sink answers with the 8-byte count it received. One direction of bulk data, and an end
  marker that does not depend on half-close working.
- echo: every byte comes back. Used for ping-pong latency and for connection setup
  (connect, one byte each way, half-close, close).

Both run on one event loop (uvloop when installed) with buffered protocols, so the target is not
the slow part of any path it is measured through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
from collections.abc import Coroutine, Sequence
from typing import cast

HEADER = struct.Struct("!Q")
# Received bulk data is thrown away, so every sink connection can read into the same buffer:
# the loop calls get_buffer() and buffer_updated() back to back on one thread.
_SCRATCH = memoryview(bytearray(4 * 1024 * 1024))


class Sink(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.header = bytearray()
        self.expected = -1
        self.count = 0
        self.acked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        data = _SCRATCH[:nbytes]
        if self.expected < 0:
            need = HEADER.size - len(self.header)
            self.header += data[:need]
            data = data[need:]
            if len(self.header) < HEADER.size:
                return
            (self.expected,) = HEADER.unpack(self.header)
        self.count += len(data)
        if not self.acked and self.count >= self.expected and self.transport is not None:
            self.acked = True
            self.transport.write(HEADER.pack(self.count))

    def eof_received(self) -> bool:
        return False


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    # Back-pressure: a client that stops reading its echoes makes us stop reading, as a real
    # service would, instead of piling its bytes up in this process.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        # Returning False closes our side too: the client's half-close ends the connection.
        return False


async def serve(host: str, sink_port: int, echo_port: int) -> None:
    loop = asyncio.get_running_loop()
    # The connection-rate test keeps many handshakes in flight; the default backlog of 100
    # would turn bursts into SYN retransmits (a 1 s stall) rather than a measurement.
    sink = await loop.create_server(Sink, host, sink_port, backlog=4096)
    echo = await loop.create_server(Echo, host, echo_port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        sink.close()
        echo.close()


def run(coro: Coroutine[object, object, None]) -> None:
    """Run on uvloop when installed, as the vnet commands do, so baselines are comparable."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.target", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--echo-port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.sink_port, args.echo_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
