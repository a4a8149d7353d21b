"""Command-line options: --check, --log-format json, keepalive from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.procs import Procs, command, node_ini

pytestmark = pytest.mark.e2e


async def test_check_good_files(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[vnet]\nname=n\n[serve.s]\nport=22\n"))
    rc, out, err = await procs.run(command("vnet"), "--check", "node.ini")
    assert (rc, out, err) == (0, "vnet: node.ini: ok\n", "")
    (tmp_path / "route.ini").write_text("[route]\nip=127.0.0.1\nport=7749\nkeepalive=5\n")
    rc, out, err = await procs.run(command("vnet-route"), "--check", "route.ini")
    assert (rc, out, err) == (0, "vnet-route: route.ini: ok\n", "")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, _ = await procs.run(command("vnet-route"), "--check", cwd=empty)
    assert rc == 0
    assert "would run on its defaults" in out


async def test_check_prints_every_problem(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "bad.ini").write_text(
        "[route]\nip=127.0.0.1\nport=x\n[vnet]\nterminal=maybe\n"
        "[serve.a]\nserveid=1234\nport=99999\n[serve.b]\nip=1.1.1.1\n"
        "[use.x]\nserveid=5\nport=80\n[use.y]\nserveid=6\nport=80\n[bogus.z]\nk=v\n"
    )
    rc, out, err = await procs.run(command("vnet"), "--check", "bad.ini")
    assert rc == 1
    assert out == ""
    assert err.splitlines() == [
        "vnet: bad.ini: [bogus.z]: unknown section "
        "(expected [route], [vnet], [serve.NAME], [use.NAME] or [group.NAME])",
        "vnet: bad.ini: [route] port: 'x' is not a whole number",
        "vnet: bad.ini: [vnet] terminal: 'maybe' is not true or false",
        "vnet: bad.ini: [serve.a] serveid: '1234' is not a serveid (0-999, up to 3 digits)",
        "vnet: bad.ini: [serve.a] port: 99999 is out of range (1-65535)",
        "vnet: bad.ini: [serve.b] port: is required",
        "vnet: bad.ini: [use.y] port: 80 is already the port of [use.x]",
        "vnet: bad.ini: 7 problem(s)",
    ]


async def test_check_reads_token_files_too(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[vnet]\ntoken_file=missing.token\n"))
    rc, _, err = await procs.run(command("vnet"), "--check", "node.ini")
    assert rc == 1
    assert err.startswith("vnet: node.ini: [vnet] token_file: cannot read missing.token")


async def test_check_reports_duplicates_and_goes_on(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "dup.ini").write_text(
        "[route]\nip=127.0.0.1\nport=1\n[serve.a]\nport=22\n[serve.a]\nport=23\n"
        "[use.u]\nserveid=abc\n"
    )
    rc, _, err = await procs.run(command("vnet"), "--check", "dup.ini")
    assert rc == 1
    assert err.splitlines() == [
        "vnet: dup.ini: [serve.a]: section appears twice",
        "vnet: dup.ini: [use.u] serveid: 'abc' is not a serveid (0-999, up to 3 digits)",
        "vnet: dup.ini: 2 problem(s)",
    ]


async def test_json_logs_are_one_object_per_line(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "route.ini").write_text(f"[route]\nip=127.0.0.1\nport={port}\n")
    route = await procs.start("route", command("vnet-route"), "route.ini", "--log-format", "json")
    await route.wait_for_line("route listening on")
    (tmp_path / "node.ini").write_text(
        node_ini(port, "[vnet]\nname=n\nkeepalive=3\n[serve.s]\nport=22\nserveid=700\n")
    )
    node = await procs.start("node", command("vnet"), "node.ini", "--log-format", "json")
    await node.wait_for_line("registered as serveid 700")
    await node.stop()
    await route.stop()
    for proc in (route, node):
        lines = proc.output().splitlines()
        assert lines
        for line in lines:
            entry = json.loads(line)
            assert set(entry) >= {"time", "level", "logger", "message"}
    messages = [json.loads(line)["message"] for line in node.output().splitlines()]
    assert "[serve.s] registered as serveid 700 -> 127.0.0.1:22" in messages


async def test_json_tunnel_lines_carry_vnetid_serveid_and_tunnel(
    procs: Procs, tmp_path: Path
) -> None:
    from tests.services import echo_round_trip, echo_server

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
    json_debug = ("--log-format", "json", "--log-level", "debug")
    home = await procs.start("home", command("vnet"), "home.ini", *json_debug)
    office = await procs.start("office", command("vnet"), "office.ini", *json_debug)
    await office.wait_for_line(f"listening on 127.0.0.1:{use}")
    assert await echo_round_trip(use, b"hello") == b"hello"
    await office.wait_for_line(": closed")
    await home.wait_for_line(": closed")

    def vnetid(proc: object) -> str:
        for line in proc.output().splitlines():  # type: ignore[attr-defined]
            message = json.loads(line)["message"]
            if message.startswith("joined route"):
                return str(message.split(" as vnet ")[1].split()[0])
        raise AssertionError("no join logged")

    for proc, peer in ((office, vnetid(home)), (home, vnetid(office))):
        closed = [
            entry
            for entry in map(json.loads, proc.output().splitlines())
            if entry["message"].endswith(": closed")
        ]
        assert closed, proc.output()
        assert closed[0]["vnetid"] == peer
        assert closed[0]["serveid"] == 700
        assert len(closed[0]["tunnel"]) == 16
    # Both ends name the same tunnel.
    tunnel_ids = {
        json.loads(line)["tunnel"]
        for proc in (office, home)
        for line in proc.output().splitlines()
        if "tunnel" in json.loads(line)
    }
    assert len(tunnel_ids) == 1
    await echo.close()
