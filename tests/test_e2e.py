"""The real commands, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, MakeNode, free_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.services import (
    Server,
    endless_source_server,
    pattern,
    read_exactly_or_eof,
    read_until_reset,
)
from vnet.node.client import RouteClient

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


async def ssh_like_server() -> Server:
    """Speaks first, like sshd, then echoes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-vnet_test\r\n")
        try:
            while chunk := await reader.read(1 << 20):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    return Server(await asyncio.start_server(handle, "127.0.0.1", 0))


async def test_original_ssh_scenario(procs: Procs, tmp_path: Path) -> None:
    sshd = await ssh_like_server()
    route_port = free_port()
    await procs.route(route_port)
    use_port = free_port()
    # The original README's two node files, pointed at loopback.
    (tmp_path / "home.ini").write_text(
        node_ini(
            route_port,
            "[vnet]\nname=remote-ssh\ngroup=default-ssh\nterminal=false\nstartserve=true\n"
            "startuse=false\nallow_unserve=true\nunserve_remote=false\nunserve_num=3\n"
            f"[serve.ssh]\nserveid=700\ntype=tcp\nip=127.0.0.1\nport={sshd.port}\nname=ssh\n"
            "info=home-ssh\nactive=true\n",
        )
    )
    (tmp_path / "office.ini").write_text(
        node_ini(
            route_port,
            "[vnet]\nname=local-ssh\ngroup=default-ssh\nterminal=true\nstartserve=false\n"
            "startuse=true\nallow_unserve=false\nunserve_remote=false\nunserve_num=3\n"
            f"[use.ssh]\nserveid=700\nip=127.0.0.1\nport={use_port}\nactive=true\n",
        )
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await home.wait_for_line("[serve.ssh] registered as serveid 700")
    await office.wait_for_line(f"[use.ssh] listening on 127.0.0.1:{use_port}")
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", use_port)
        assert await reader.readline() == b"SSH-2.0-vnet_test\r\n"
        body = pattern(1 << 20, seed=7)
        writer.write(body)
        writer.write_eof()
        assert await read_exactly_or_eof(reader) == body
        writer.close()
    assert await office.stop() == 0
    assert await home.stop() == 0
    await sshd.close()


async def test_serving_node_killed_mid_transfer_resets_the_client(
    procs: Procs, tmp_path: Path
) -> None:
    source = await endless_source_server()
    route_port = free_port()
    await procs.route(route_port)
    use_port = free_port()
    (tmp_path / "home.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=home\n[serve.src]\nserveid=701\nport={source.port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=office\n[use.src]\nserveid=701\nport={use_port}\n")
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{use_port}")
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", use_port)
        await reader.readexactly(4 << 20)
        await home.stop(signal.SIGKILL)
        await read_until_reset(reader)
        writer.close()
    # Its serves are gone for everyone else.
    watcher = RouteClient(f"127.0.0.1:{route_port}")
    try:
        await watcher.connect(TIMEOUT)
        await watcher.join("watcher", "default")

        async def no_serves() -> bool:
            return await watcher.list_serves() == []

        await wait_until(no_serves, "the route to withdraw home's serves", interval=0.02)
    finally:
        await watcher.close()
    await office.wait_for_line("[use.src] serveid 701 left; stopped listening")
    await source.close()


async def test_grpcurl_reflection_and_health(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    await procs.route(port)
    grpcurl = command("grpcurl")
    rc, out, err = await procs.run(grpcurl, "-plaintext", f"127.0.0.1:{port}", "list")
    assert rc == 0, err
    assert set(out.split()) >= {
        "vnetrpc.v1.RouteService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    rc, out, err = await procs.run(
        grpcurl, "-plaintext", f"127.0.0.1:{port}", "describe", "vnetrpc.v1.RouteService"
    )
    assert rc == 0, err
    assert "rpc Dial ( stream .vnetrpc.v1.TunnelFrame )" in out
    rc, out, err = await procs.run(
        grpcurl, "-plaintext", f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"
    )
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    # The README's join, ping and list calls, as an operator types them.
    rc, out, err = await procs.run(
        grpcurl, "-plaintext", "-d", '{"name": "me", "group": "ops"}',
        f"127.0.0.1:{port}", "vnetrpc.v1.RouteService/Join",
    )  # fmt: skip
    assert rc == 0, err
    joined = json.loads(out)
    session = ("-H", f"vnet-session: {joined['session']}")
    calls = {
        "Ping": '{"nonce": "42"}',
        "ListServes": "{}",
        "ListVnets": "{}",
    }
    answers = {}
    for method, body in calls.items():
        rc, out, err = await procs.run(
            grpcurl, "-plaintext", *session, "-d", body,
            f"127.0.0.1:{port}", f"vnetrpc.v1.RouteService/{method}",
        )  # fmt: skip
        assert rc == 0, err
        answers[method] = json.loads(out)
    assert answers["Ping"]["nonce"] == "42"
    assert answers["ListServes"] == {}
    assert answers["ListVnets"]["vnets"] == [
        {"vnetid": joined["vnetid"], "name": "me", "group": "ops"}
    ]


async def test_route_runs_with_no_config_file_on_the_default_address(
    procs: Procs, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 7749)) == 0:
            pytest.skip("127.0.0.1:7749 is in use on this machine")
    empty = tmp_path / "empty"
    empty.mkdir()
    route = await procs.start("route", command("vnet-route"), cwd=empty)
    await route.wait_for_line("route listening on 127.0.0.1:7749")
    rc, out, err = await procs.run(
        command("grpcurl"), "-plaintext", "127.0.0.1:7749", "grpc.health.v1.Health/Check"
    )
    assert json.loads(out) == {"status": "SERVING"}, err
    assert await route.stop(signal.SIGINT) == 0


async def test_second_route_on_the_same_port_exits_with_a_clear_error(
    procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    await procs.route(port)
    rc, out, err = await procs.run(command("vnet-route"), "route.ini")
    assert rc == 1
    assert err.strip().startswith(f"vnet-route: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("program", "text", "message"),
    [
        (
            "vnet",
            "[route]\nip=127.0.0.1\nport=7749\n[serve.web]\nserveid=1234\nport=80\n",
            "vnet: bad.ini:5: [serve.web] serveid: '1234' is not a serveid (0-999, up to 3 digits)",
        ),
        (
            "vnet",
            "[route]\nip=127.0.0.1\nport=seven\n",
            "vnet: bad.ini:3: [route] port: 'seven' is not a whole number",
        ),
        (
            "vnet",
            "[route]\nip=127.0.0.1\nport=7749\n[serve.web]\nip=127.0.0.1\n",
            "vnet: bad.ini:4: [serve.web] port: is required",
        ),
        (
            "vnet",
            "[route]\nip=127.0.0.1\nport=7749\n[tunnel.web]\nport=80\n",
            "vnet: bad.ini:4: [tunnel.web]: unknown section "
            "(expected [route], [vnet], [admin], [cluster], [serve.NAME], [use.NAME] "
            "or [group.NAME])",
        ),
        (
            "vnet",
            "[route]\nip=127.0.0.1\nport=7749\n[use.a]\nserveid=1\n[use.a]\nserveid=2\n",
            "vnet: bad.ini:6: [use.a]: section appears twice (first at line 4)",
        ),
        (
            "vnet-route",
            "[route]\nip=127.0.0.1\n",
            "vnet-route: bad.ini:1: [route] port: is required",
        ),
    ],
)
async def test_bad_config_exits_with_one_line(
    procs: Procs, tmp_path: Path, program: str, text: str, message: str
) -> None:
    (tmp_path / "bad.ini").write_text(text)
    rc, out, err = await procs.run(command(program), "bad.ini")
    assert rc == 1
    assert err == message + "\n"
    assert out == ""


async def test_missing_config_file(procs: Procs, tmp_path: Path) -> None:
    rc, _, err = await procs.run(command("vnet"))
    assert (rc, err) == (1, "vnet: config.ini: no such file\n")
    rc, _, err = await procs.run(command("vnet-route"), "nowhere.ini")
    assert (rc, err) == (1, "vnet-route: nowhere.ini: no such file\n")


async def test_python_m_vnet(procs: Procs, tmp_path: Path) -> None:
    python = command("python")
    rc, out, _ = await procs.run(python, "-m", "vnet", "--version")
    assert (rc, out) == (0, "vnet 0.1.0\n")
    rc, out, _ = await procs.run(python, "-m", "vnet", "route", "--help")
    assert rc == 0
    assert out.startswith("usage: vnet-route")


async def test_make_demo_check(procs: Procs) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for port in (7749, 18080, 18888):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"127.0.0.1:{port}, which the demo uses, is busy")
    rc, out, err = await procs.run("make", "-s", "demo", "ARGS=--check", cwd=ROOT, timeout=90)
    assert rc == 0, out + err
    assert "demo check: fetched http://127.0.0.1:18888/ through the tunnel" in out
    assert "OK" in out


async def test_node_exits_when_the_route_is_unreachable_in_process(make_node: MakeNode) -> None:
    from vnet.core.config import NodeConfig, RouteEndpoint, VnetConfig
    from vnet.core.errors import RouteUnavailable
    from vnet.node.node import NodeTimeouts

    port = free_port()
    node = await make_node(
        config=NodeConfig("(test)", RouteEndpoint("127.0.0.1", port), VnetConfig()),
        timeouts=NodeTimeouts(connect=0.5),
        start=False,
    )
    with pytest.raises(RouteUnavailable, match=f"cannot reach the route at 127.0.0.1:{port}"):
        await node.start()
