"""The admin API against the real commands: reload (SIGHUP and CLI), drain, kick, grpcurl.

A real `vnet-route` and real `vnet` nodes as subprocesses, live tunnels to
echo services, and bytes compared on the tunnels that must survive.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, free_port, wait_until
from tests.procs import Proc, Procs, command, node_ini
from tests.services import echo_round_trip, echo_server, read_until_reset

pytestmark = pytest.mark.e2e

ADMIN = "adm-secret-1"


def route_ini(port: int, body: str) -> str:
    return f"[route]\nip=127.0.0.1\nport={port}\n{body}[admin]\ntoken={ADMIN}\n"


async def admin(procs: Procs, route_port: int, *args: str) -> tuple[int, str, str]:
    env_cmd = ("env", f"VNET_ADMIN_TOKEN={ADMIN}", command("vnet-route"), "admin")
    return await procs.run(*env_cmd, "--route", f"127.0.0.1:{route_port}", *args)


class Held:
    """A connection through a use, kept open: echoes must keep coming back intact."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Held:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        held = cls(reader, writer)
        await held.echo(b"hello")
        return held

    async def echo(self, data: bytes) -> None:
        self.writer.write(data)
        got = await asyncio.wait_for(self.reader.readexactly(len(data)), TIMEOUT)
        assert got == data

    async def finish(self) -> None:
        """A clean end: EOF our way, the echo's EOF back."""
        self.writer.write_eof()
        assert await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""
        self.writer.close()

    async def reset(self) -> None:
        await asyncio.wait_for(read_until_reset(self.reader), TIMEOUT)
        self.writer.close()


async def pair(
    procs: Procs, tmp: Path, route_port: int, group: str, token: str, echo_port: int
) -> tuple[int, list[Proc]]:
    """A serving and a using node in group: the use's port once it listens, and the two."""
    use = free_port()
    creds = f"group={group}\ntoken={token}\n"
    (tmp / f"{group}-home.ini").write_text(
        node_ini(
            route_port,
            f"[vnet]\nname={group}-home\n{creds}[serve.echo]\nserveid=701\nport={echo_port}\n",
        )
    )
    (tmp / f"{group}-office.ini").write_text(
        node_ini(
            route_port, f"[vnet]\nname={group}-office\n{creds}[use.echo]\nserveid=701\nport={use}\n"
        )
    )
    home = await procs.start(f"{group}-home", command("vnet"), f"{group}-home.ini")
    office = await procs.start(f"{group}-office", command("vnet"), f"{group}-office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{use}", TIMEOUT)
    return use, [home, office]


async def test_reload_revokes_one_group_token_and_leaves_the_other_group_alone(
    procs: Procs, tmp_path: Path
) -> None:
    echo = await echo_server()
    port = free_port()
    ini = tmp_path / "route.ini"
    ini.write_text(route_ini(port, "[group.a]\ntoken=A1\n[group.b]\ntoken=B1\n"))
    route = await procs.start("route", command("vnet-route"), "route.ini")
    await route.wait_for_line("route listening on")
    use_a, nodes_a = await pair(procs, tmp_path, port, "a", "A1", echo.port)
    use_b, _ = await pair(procs, tmp_path, port, "b", "B1", echo.port)
    held_a, held_b = await Held.open(use_a), await Held.open(use_b)

    # Group a's token changes; SIGHUP reloads it.
    ini.write_text(route_ini(port, "[group.a]\ntoken=A2\n[group.b]\ntoken=B1\n"))
    route.send(signal.SIGHUP)
    await route.wait_for_line("reload: [group.a] token changed", TIMEOUT)
    # a's sessions ended (their tunnel reset); b's tunnel goes on, byte for byte.
    await held_a.reset()
    await held_b.echo(b"still here " * 5000)
    # Revoked: they cannot come back with A1. Stopped once they have tried, so
    # their retries do not add up to a penalty for 127.0.0.1, where all of us are.
    for node in nodes_a:
        await node.wait_for_line(
            "reconnect attempt 1 failed: invalid or missing credentials", TIMEOUT
        )
        await node.stop()
    await route.wait_for_line("vnet.audit: admin who=SIGHUP action=reload", TIMEOUT)
    # The new token works at once.
    (tmp_path / "a-new.ini").write_text(
        node_ini(port, "[vnet]\nname=a-new\ngroup=a\ntoken=A2\n[serve.x]\nserveid=702\nport=9\n")
    )
    fresh = await procs.start("a-new", command("vnet"), "a-new.ini")
    await fresh.wait_for_line("joined route", TIMEOUT)

    # A bad file changes nothing, and says why with its file, line, section and key.
    ini.write_text(route_ini(port, "[group.a]\ntoken=A2\n[group.b]\ntokn=B2\n"))
    rc, out, err = await admin(procs, port, "reload")
    assert rc == 1, out
    assert "nothing changed: route.ini:7: [group.b] tokn: unknown key" in err, err
    await held_b.echo(b"untouched")
    rc, out, err = await admin(procs, port, "--json", "nodes")
    assert rc == 0, err
    names = {n["name"] for n in json.loads(out)}
    assert names == {"b-home", "b-office", "a-new"}
    await held_b.finish()
    await echo.close()


async def test_drain_lets_open_tunnels_finish_and_refuses_new_ones_then_kick(
    procs: Procs, tmp_path: Path
) -> None:
    echo = await echo_server()
    port = free_port()
    (tmp_path / "route.ini").write_text(route_ini(port, "token=N1\n"))
    route = await procs.start("route", command("vnet-route"), "route.ini")
    await route.wait_for_line("route listening on")
    use, _ = await pair(procs, tmp_path, port, "default", "N1", echo.port)
    held = await Held.open(use)
    drain = asyncio.ensure_future(admin(procs, port, "drain", "--grace", "60"))
    await route.wait_for_line("draining: 1 tunnel(s) open", TIMEOUT)
    # A new connection is refused (reset at once); the open one goes on.
    reader, writer = await asyncio.open_connection("127.0.0.1", use)
    writer.write(b"new")
    await asyncio.wait_for(read_until_reset(reader), TIMEOUT)
    writer.close()
    await held.echo(b"finishing " * 10_000)
    await held.finish()
    rc, out, err = await asyncio.wait_for(drain, 2 * TIMEOUT)
    assert rc == 0, err
    assert "1 tunnel(s) finished, 0 reset; the route is empty" in out, out
    await route.wait_for_line('action=drain target=- result="ok: 1 finished, 0 reset"')

    rc, out, err = await admin(procs, port, "drain", "--undo")
    assert rc == 0, err
    assert "not draining" in out
    payload = b"after the drain " * 1000
    assert await echo_round_trip(use, payload) == payload

    # Kick the serving node: its tunnel is reset; it rejoins by itself.
    held = await Held.open(use)
    rc, out, err = await admin(procs, port, "--json", "nodes")
    home = next(n for n in json.loads(out) if n["name"] == "default-home")
    rc, out, err = await admin(procs, port, "kick", home["vnetid"])
    assert rc == 0, err
    assert f"kicked vnet {home['vnetid']} (default-home)" in out
    assert "1 tunnel(s) reset, 1 serve(s) withdrawn" in out
    await held.reset()

    async def back() -> bool:
        try:
            return await echo_round_trip(use, b"back", timeout=2.0) == b"back"
        except (OSError, TimeoutError):
            return False

    await wait_until(back, "the kicked node to rejoin", interval=0.2)
    rc, out, err = await admin(procs, port, "tunnels")
    assert rc == 0, err
    assert out.strip().endswith("- 0 tunnel(s) open -"), out
    await echo.close()


async def test_grpcurl_lists_and_calls_the_admin_service(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "route.ini").write_text(route_ini(port, ""))
    route = await procs.start("route", command("vnet-route"), "route.ini")
    await route.wait_for_line("route listening on")
    grpcurl = command("grpcurl")
    rc, out, err = await procs.run(grpcurl, "-plaintext", f"127.0.0.1:{port}", "list")
    assert rc == 0, err
    assert "vnetrpc.v1.Admin" in out.split()
    rc, out, err = await procs.run(
        grpcurl, "-plaintext", "-H", f"authorization: Bearer {ADMIN}",
        f"127.0.0.1:{port}", "vnetrpc.v1.Admin/ListNodes",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out) == {}
    rc, out, err = await procs.run(
        grpcurl, "-plaintext", f"127.0.0.1:{port}", "vnetrpc.v1.Admin/ListNodes"
    )
    assert rc != 0
    assert "Unauthenticated" in err, err
