"""What one idle bidi stream costs a bare grpc.aio server: the floor under vnet's route.

The route holds two streams per tunnel (Dial and Accept). This measures a server with
nothing of vnet in it: a raw bidi handler (no (de)serializers, like the route's) that
echoes and otherwise waits in read(), on uvloop as the route runs. A client process opens
streams that each exchange one message and then stay open; the server's VmRSS growth per
stream is the least any route built on grpc.aio can pay per stream.

    python -m bench.floor [--streams 1000,5000]

The server is this process; the client is a child (`python -m bench.floor --client`) that
reads the port and then how many streams to open from stdin, and says on stdout when they
are open.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

SERVICE = "floor.Bench"
METHOD = f"/{SERVICE}/Stream"
# The client waits at most this long for an answer; the server for the client's lines.
TIMEOUT = 120.0
# Streams opened at once, as bench/idle.py opens tunnels.
BATCH = 64


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _echo(_: object, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    while True:
        message = await context.read()
        if message is grpc.aio.EOF:
            return
        await context.write(message)


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    if not line:
        raise RuntimeError("the floor client exited early")
    return line.decode().strip()


async def _serve(sizes: Sequence[int]) -> dict[int, float]:
    # The client starts first: forking once gRPC's threads run makes gRPC complain.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.floor",
        "--client",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 << 20)])
    handler = grpc.stream_stream_rpc_method_handler(_echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Stream": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    per_stream: dict[int, float] = {}
    try:
        proc.stdin.write(f"{port}\n".encode())
        await proc.stdin.drain()
        # One stream first, so one-off costs (the connection, the first call) are not counted.
        if await _line(proc) != "ready":
            raise RuntimeError("the floor client did not start")
        base = rss_kib()
        opened = 0
        for size in sorted(sizes):
            proc.stdin.write(f"{size - opened}\n".encode())
            await proc.stdin.drain()
            if await _line(proc) != "open":
                raise RuntimeError("the floor client could not open its streams")
            opened = size
            per_stream[size] = (rss_kib() - base) / size
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await server.stop(0)
    return per_stream


async def _client() -> None:
    loop = asyncio.get_running_loop()
    port = int(await loop.run_in_executor(None, sys.stdin.readline))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    method = channel.stream_stream(METHOD)
    calls = []

    async def one() -> None:
        call = method()
        await call.write(b"x")
        if await call.read() != b"x":
            raise RuntimeError("the echo answered wrong")
        calls.append(call)

    async with asyncio.timeout(TIMEOUT):
        await one()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        async with asyncio.timeout(TIMEOUT):
            for start in range(0, int(line), BATCH):
                await asyncio.gather(*(one() for _ in range(min(BATCH, int(line) - start))))
        print("open", flush=True)


def measure(sizes: Sequence[int]) -> dict[int, float]:
    """KiB of server VmRSS per idle stream, at each number of streams open."""
    import uvloop

    result: dict[int, float] = uvloop.run(_serve(sizes))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--streams", default="1000,5000", help="counts of idle streams to measure at")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        import uvloop

        uvloop.run(_client())
        return 0
    sizes = [int(x) for x in args.streams.split(",") if x.strip()]
    for size, kib in measure(sizes).items():
        print(f"bare grpc.aio server, {size:,} idle bidi streams: {kib:.1f} KiB per stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
