"""The plain-relay baseline: one asyncio process forwarding TCP, nothing else.

`python -m bench.relay --map LISTEN_PORT:TARGET_HOST:TARGET_PORT [--map ...]`

It does what a vnet tunnel does minus gRPC: accept, connect to the target, copy bytes both ways
with large reads, pass half-close through, and reset the other side on errors. The gap between
this and direct TCP is the price of any user-space hop in Python; the gap between this and vnet
is what gRPC, the route's extra hop and the node processes add.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from bench.target import run
from vnet.node.tunnel import reset_socket

# The same read size that measured well for a one-hop asyncio relay; StreamReader.read() never
# returns more than its limit, so the limit must be larger.
CHUNK = 256 * 1024
LIMIT = 4 * CHUNK
CONNECT_TIMEOUT = 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _handle(
    host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        t_reader, t_writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=LIMIT), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError):
        reset_socket(writer)
        return
    pumps = {
        asyncio.create_task(_pipe(reader, t_writer)),
        asyncio.create_task(_pipe(t_reader, writer)),
    }
    failed = False
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        failed = any(t.exception() is not None for t in done)
    finally:
        if failed:
            for task in pumps:
                task.cancel()
            reset_socket(writer)
            reset_socket(t_writer)
        for w in (writer, t_writer):
            w.close()
        await asyncio.gather(*pumps, return_exceptions=True)


def _parse_map(text: str) -> tuple[int, str, int]:
    listen, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if not (listen.isdigit() and host and port.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not LISTEN_PORT:HOST:PORT")
    return int(listen), host, int(port)


async def serve(bind: str, maps: list[tuple[int, str, int]]) -> None:
    servers = []
    for listen, host, port in maps:

        async def handler(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, host: str = host, port: int = port
        ) -> None:
            await _handle(host, port, r, w)

        servers.append(await asyncio.start_server(handler, bind, listen, limit=LIMIT, backlog=4096))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--map", type=_parse_map, action="append", required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.bind, args.map))
    return 0


if __name__ == "__main__":
    sys.exit(main())
