"""A burst of connections at once, through the real route and nodes: none is reset.

What a browser, a build farm or a load test does: every client connects to one use at the
same moment and moves data both ways. The target is an asyncio echo server with asyncio's
default listen backlog (100), as many real services have: a serving node that dialled it
2,000 times at once would overflow that backlog and the kernel would reset handshakes.
"""

from __future__ import annotations

import asyncio
import random
import resource
from pathlib import Path

import pytest

from harness.procs import fd_count
from tests.conftest import TIMEOUT, MakeRoute, free_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.rawclient import Raw
from tests.services import echo_server, read_exactly_or_eof
from vnet import wire

# Per burst: seconds on this 2-core box; bounded generously for a loaded one.
BURST_DEADLINE = 120.0


def _payload(i: int) -> bytes:
    # Distinct per connection, so crossed tunnels cannot pass: 32-64 KiB.
    return random.Random(i).randbytes(32_768 + (i * 7919) % 32_768)


async def _one(port: int, i: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_payload(i))
        await writer.drain()
        writer.write_eof()
        return await read_exactly_or_eof(reader)
    finally:
        writer.close()


async def _burst(port: int, count: int) -> None:
    async with asyncio.timeout(BURST_DEADLINE):
        answers = await asyncio.gather(
            *(_one(port, i) for i in range(count)), return_exceptions=True
        )
    failed = [(i, a) for i, a in enumerate(answers) if isinstance(a, BaseException)]
    wrong = [i for i, a in enumerate(answers) if isinstance(a, bytes) and a != _payload(i)]
    assert not failed, f"{len(failed)} of {count} failed, e.g. {failed[:3]}"
    assert not wrong, f"{len(wrong)} of {count} came back different, e.g. conn {wrong[0]}"


@pytest.fixture
def many_files() -> None:
    # 2,000 clients and the target's 2,000 sockets live in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 8192:
        if hard != resource.RLIM_INFINITY and hard < 8192:
            pytest.skip(f"needs 8192 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))


@pytest.mark.e2e
@pytest.mark.timeout(400)
@pytest.mark.usefixtures("many_files")
async def test_bursts_of_1000_and_2000_connections_all_pass(procs: Procs, tmp_path: Path) -> None:
    echo = await echo_server()
    port, use = free_port(), free_port()
    (tmp_path / "route.ini").write_text(f"[route]\nip=127.0.0.1\nport={port}\n")
    route = await procs.start("route", command("vnet-route"), "route.ini")
    await route.wait_for_line("route listening on")
    (tmp_path / "home.ini").write_text(
        node_ini(port, f"[vnet]\nname=home\n[serve.e]\nserveid=700\nport={echo.port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(port, f"[vnet]\nname=office\n[use.e]\nserveid=700\nport={use}\n")
    )
    home = await procs.start("home", command("vnet"), "home.ini", "--log-level", "warning")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{use}")
    nodes = (home.proc.pid, office.proc.pid)
    idle = {pid: fd_count(pid) for pid in nodes}
    # Under max_tunnels_per_node (2048), so every one of them must pass.
    for count in (1000, 2000):
        await _burst(use, count)
        # The first burst's tunnels closed before the second counts against the cap.
        await wait_until(
            lambda: all(fd_count(pid) <= idle[pid] + 8 for pid in nodes), "tunnels to close", 60
        )
    assert "reset" not in home.output(), home.output()[-2000:]
    await echo.close()


async def test_a_node_working_through_a_queue_of_tunnels_loses_none(make_route: MakeRoute) -> None:
    """The accept deadline follows the node's progress, not the Dial alone: a node that
    answers open_tunnel after open_tunnel, each within the deadline of the one before,
    gets every tunnel, though the last comes long after the deadline from its Dial."""
    route = await make_route(accept=0.5, stop_grace=0.1)
    home, office = Raw(route.port), Raw(route.port)
    try:
        _, home_md, control = await home.join_and_serve(None, 700, group="g")
        joined = await office.join(None, group="g")
        dial_md = office.md(None, joined.session, vnet_serveid="700")
        dials = [office.dial(dial_md) for _ in range(6)]
        answered: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while len(answered) < len(dials):
                event = await control.read()
                if not event.HasField("open_tunnel"):
                    continue
                # A slow node, the behaviour under test: 0.2 s per tunnel, so the
                # sixth is answered ~1.2 s after its Dial (the deadline is 0.5 s).
                await asyncio.sleep(0.2)
                tunnel = event.open_tunnel.tunnel_id
                accept = home.accept(home_md + (("vnet-tunnel", tunnel),))
                # Each Accept says which tunnel it is; its Dial must hear exactly that.
                await accept.write(wire.encode_data(tunnel.encode()))
                answered.append(tunnel)
            got = [await dial.read() for dial in dials]
        assert sorted(got) == sorted(wire.encode_data(t.encode()) for t in answered)
    finally:
        await home.close()
        await office.close()
