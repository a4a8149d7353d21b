"""The JavaScript client in examples/node-client against a real route and node.

It is written from the .proto alone, in another language, so these tests
check that the protocol is usable as documented: join, the control stream,
ListServes, and Dial tunnels with in-band fin/reset, byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, wait_until
from tests.procs import Proc, Procs
from tests.services import (
    BLOCK,
    digest,
    endless_source_server,
    exchange,
    exchange_server,
    first_fin_server,
    pattern,
    read_exactly_or_eof,
    read_until_reset,
    send_all,
)
from vnet.core.auth import PenaltyPolicy, TokenTable
from vnet.core.config import ServeConfig
from vnet.node.client import NodeCredentials
from vnet.node.node import NodeTimeouts
from vnet.route.server import RouteSecurity, RunningRoute

pytestmark = pytest.mark.e2e

CLIENT_DIR = Path(__file__).resolve().parent.parent / "examples" / "node-client"
CLIENT = CLIENT_DIR / "client.js"
# A fresh install takes a few seconds; the bound is for a slow registry.
NPM_TIMEOUT = 120.0
# Written into node_modules after a good install: the lock file's hash, so a
# second run with the same lock installs nothing.
STAMP = CLIENT_DIR / "node_modules" / ".vnet-installed"
# What npm says when it cannot reach the registry (as opposed to a broken
# package.json, which must fail the test).
OFFLINE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|ENETUNREACH|EHOSTUNREACH"
    r"|network|request to \S+ failed"
)
LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$", re.MULTILINE)


def _install() -> None:
    """npm ci (npm install without a lock), at most once per lock file."""
    lock = CLIENT_DIR / "package-lock.json"
    want = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else ""
    if want and STAMP.exists() and STAMP.read_text() == want:
        return
    # --ignore-scripts: the dependencies need no install step, and an offline
    # machine must not run one half-way.
    args = ["npm", "ci" if want else "install", "--ignore-scripts", "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(
            args,
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
            env={**os.environ, "npm_config_fetch_retries": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"`{' '.join(args)}` took over {NPM_TIMEOUT:.0f} s: npm registry unreachable?")
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if OFFLINE.search(output):
            pytest.skip(f"`{' '.join(args)}` cannot reach the npm registry:\n{output[-2000:]}")
        pytest.fail(f"`{' '.join(args)}` failed ({done.returncode}):\n{output[-4000:]}")
    if want:
        STAMP.write_text(want)


@pytest.fixture(scope="module")
def node_bin() -> str:
    """The node binary, with the client's dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the JavaScript client (examples/node-client)")
    _install()
    return node


def client_args(node: str, port: int, *args: str, group: str = "g") -> list[str]:
    return [node, str(CLIENT), "--route", f"127.0.0.1:{port}", "--group", group, *args]


async def start_client(
    procs: Procs, name: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[Proc, int]:
    """Starts the client mapping a serve; returns it and its local port."""
    started = await procs.start(name, *args, env=env)
    await started.wait_for_line("listening on ", timeout=TIMEOUT)
    match = LISTENING.search(started.output())
    assert match, started.output()
    return started, int(match.group(1))


async def test_list_shows_the_groups_serves(
    node_bin: str, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    service = await exchange_server()
    await make_node(
        "home",
        serves=(ServeConfig(key="web", port=service.port, serveid=701, info="home web"),),
    )
    rc, out, err = await procs.run(*client_args(node_bin, route.port, "--list"), timeout=TIMEOUT)
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["serveid", "vnetid", "name", "type", "address", "info"]
    assert [row.split(maxsplit=5) for row in rows] == [
        ["701", "01", "web", "tcp", f"127.0.0.1:{service.port}", "home web"]
    ]
    # Another group's serves are not listed.
    rc, out, err = await procs.run(
        *client_args(node_bin, route.port, "--list", group="other"), timeout=TIMEOUT
    )
    assert rc == 0, err
    assert out.splitlines()[1:] == []
    await service.close()


async def test_bytes_cross_byte_exact_both_ways(
    node_bin: str, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    service = await exchange_server()
    await make_node("home", serves=(ServeConfig(key="x", port=service.port, serveid=701),))
    client, port = await start_client(
        procs, "client", client_args(node_bin, route.port, "--serveid", "701")
    )
    # The client sends its EOF first and the service keeps sending after it:
    # the half-close in the client-to-service direction.
    await exchange(port, up=1 << 20, down=1 << 20, timeout=TIMEOUT)
    # Several at once, each on its own stream.
    await asyncio.gather(
        *(exchange(port, up=(1 << 20) + i, down=(2 << 20) - i, timeout=TIMEOUT) for i in range(4))
    )
    await exchange(port, up=0, down=0, timeout=TIMEOUT)
    assert service.connections == 6
    assert await client.stop() == 0
    await service.close()


async def test_service_half_closes_first(
    node_bin: str, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    service = await first_fin_server()
    await make_node("home", serves=(ServeConfig(key="f", port=service.port, serveid=702),))
    _, port = await start_client(
        procs, "client", client_args(node_bin, route.port, "--serveid", "702")
    )
    body = pattern(3 << 20, seed=5)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The service's EOF arrives while our direction is still open...
        assert await read_exactly_or_eof(reader) == b"hello, then silence"
        # ...and our bytes still reach it afterwards, all of them.
        writer.write(body)
        await writer.drain()
        writer.write_eof()
        await wait_until(lambda: service.received, "the service to read our EOF")
        writer.close()
    assert service.received == [body]
    await service.close()


async def test_resets_reach_the_local_connection(
    node_bin: str, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    source = await endless_source_server()
    home = await make_node("home", serves=(ServeConfig(key="s", port=source.port, serveid=703),))
    _, port = await start_client(
        procs, "client", client_args(node_bin, route.port, "--serveid", "703")
    )
    _, missing = await start_client(
        procs, "missing", client_args(node_bin, route.port, "--serveid", "704")
    )
    async with asyncio.timeout(TIMEOUT):
        # No such serve: Dial fails at once, and the connection is reset, not closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", missing)
        await read_until_reset(reader)
        writer.close()
        # The serving node goes away mid-transfer: a reset, never a clean EOF.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(4 << 20)
        await home.stop()
        await read_until_reset(reader)
        writer.close()
    await source.close()


async def test_with_a_token(
    node_bin: str, make_route: MakeRoute, make_node: MakeNode, procs: Procs
) -> None:
    secured = await make_route(
        stop_grace=0.2,
        security=RouteSecurity(
            tokens=TokenTable(per_group={"team": "team-token"}),
            penalty=PenaltyPolicy(max_failures=10_000),
        ),
    )
    service = await exchange_server()
    await make_node(
        "home",
        "team",
        route=secured,
        serves=(ServeConfig(key="x", port=service.port, serveid=705),),
        timeouts=NodeTimeouts(connect=TIMEOUT),
        credentials=NodeCredentials(token="team-token"),
    )
    # Without the token, or with a wrong one: refused, and it says so.
    for extra in ([], ["--token", "guess"]):
        rc, out, err = await procs.run(
            *client_args(node_bin, secured.port, "--list", *extra, group="team"),
            timeout=TIMEOUT,
        )
        assert (rc, out) == (1, ""), err
        assert "UNAUTHENTICATED" in err
    rc, out, err = await procs.run(
        *client_args(node_bin, secured.port, "--list", "--token", "team-token", group="team"),
        timeout=TIMEOUT,
    )
    assert rc == 0, err
    assert out.splitlines()[1].split()[:3] == ["705", "01", "x"]
    # From the environment, for the tunnels too: each Dial carries the token.
    _, port = await start_client(
        procs,
        "client",
        client_args(node_bin, secured.port, "--serveid", "705", group="team"),
        env={"VNET_TOKEN": "team-token"},
    )
    await exchange(port, up=1 << 20, down=1 << 20, timeout=TIMEOUT)
    await service.close()


class Valve:
    """A service whose client picks, by its first byte, what it does:
    b"S" sends without end, b"K" reads nothing until released, anything else
    echoes until EOF. It counts what it sent, so a test can see how much data
    went towards a reader that stopped."""

    def __init__(self) -> None:
        self.sent = 0
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = pattern(BLOCK, seed=9)
        try:
            mode = await reader.readexactly(1)
            if mode == b"S":
                while True:
                    writer.write(block)
                    await writer.drain()
                    self.sent += len(block)
            elif mode == b"K":
                await self.release.wait()
            else:
                while chunk := await reader.read(BLOCK):
                    writer.write(chunk)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def close(self) -> None:
        self.release.set()
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), TIMEOUT)


async def echo_both_ways(port: int, data: bytes) -> None:
    """Sends data to the Valve's echo while reading the echo; checks it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(b"E")
        await send_all(writer, data)
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = await read_exactly_or_eof(reader)
    await sender
    writer.close()
    assert digest(got) == digest(data), f"echo differs ({len(got)} of {len(data)} bytes)"


async def test_stalled_ends_hold_data_back_without_stalling_others(
    node_bin: str, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    valve = Valve()
    await make_node("home", serves=(ServeConfig(key="v", port=await valve.start(), serveid=701),))
    _, port = await start_client(
        procs, "client", client_args(node_bin, route.port, "--serveid", "701")
    )
    block = pattern(BLOCK, seed=3)
    pushed = 0

    async def push_into_the_sink() -> None:
        nonlocal pushed
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"K")
        try:
            for _ in range(1024):
                writer.write(block)
                await writer.drain()
                pushed += len(block)
        finally:
            writer.close()

    async with asyncio.timeout(60):
        # Downstream: the service sends to a local reader that stops reading.
        stalled_reader, stalled_writer = await asyncio.open_connection("127.0.0.1", port)
        stalled_writer.write(b"S")
        await stalled_reader.readexactly(BLOCK)
        # Upstream: we send 1 GiB to a service that reads nothing.
        pusher = asyncio.create_task(push_into_the_sink())
        # Meanwhile other connections through the same client go on. While
        # they run, data that nothing held back would pile up in the client.
        for i in range(16):
            await echo_both_ways(port, pattern(8 << 20, seed=i))
        # What the buffers on the way hold (socket buffers, HTTP/2 windows,
        # 16 messages in each grpc-js stream); well under what went through.
        assert valve.sent < 96 << 20, f"{valve.sent >> 20} MiB sent to a reader that stopped"
        assert pushed < 96 << 20, f"{pushed >> 20} MiB went to a service that reads nothing"
        # The stalled tunnel still works once its reader resumes.
        await stalled_reader.readexactly(16 << 20)
        stalled_writer.close()
        pusher.cancel()
    await valve.close()
