"""Command-line options: --check, --log-format json, keepalive from the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.procs import Procs, command, node_ini

pytestmark = pytest.mark.e2e


async def test_check_good_files(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[vnet]\nname=n\n[serve.s]\nport=22\n"))
    rc, out, err = await procs.run(command("vnet"), "--check", "node.ini")
    space = "a group holds at most 999 serves, 499 of them assigned by the route (serveids 1-499)"
    assert (rc, out, err) == (0, f"vnet: node.ini: ok\nvnet: 1 serve(s); {space}\n", "")
    (tmp_path / "route.ini").write_text("[route]\nip=127.0.0.1\nport=7749\nkeepalive=5\n")
    rc, out, err = await procs.run(command("vnet-route"), "--check", "route.ini")
    limits = f"limits: 1000 nodes, 100 serves a node; {space}"
    assert (rc, out, err) == (0, f"vnet-route: route.ini: ok\nvnet-route: {limits}\n", "")
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
        "[use.off]\nport=81\n"
    )
    rc, out, err = await procs.run(command("vnet"), "--check", "bad.ini")
    assert rc == 1
    assert out == ""
    assert err.splitlines() == [
        "vnet: bad.ini:3: [route] port: 'x' is not a whole number",
        "vnet: bad.ini:5: [vnet] terminal: 'maybe' is not true or false",
        "vnet: bad.ini:7: [serve.a] serveid: '1234' is not a serveid (0-999, up to 3 digits)",
        "vnet: bad.ini:8: [serve.a] port: 99999 is out of range (1-65535)",
        "vnet: bad.ini:9: [serve.b] port: is required",
        "vnet: bad.ini:16: [use.y] port: 80 is already the port of [use.x]",
        "vnet: bad.ini:17: [bogus.z]: unknown section "
        "(expected [route], [vnet], [admin], [cluster], [serve.NAME], [use.NAME] "
        "or [group.NAME])",
        "vnet: warning: bad.ini:19: [use.off] serveid: not set, so this use is disabled",
        "vnet: bad.ini: 7 problem(s)",
    ]
    # The real start refuses with the same lines (less the summary).
    rc, out, err = await procs.run(command("vnet"), "bad.ini")
    assert rc == 1
    assert [line for line in err.splitlines() if "warning" not in line.lower()] == [
        line for line in (await procs.run(command("vnet"), "--check", "bad.ini"))[2].splitlines()
    ][:7]


async def test_check_shows_warnings_and_still_passes(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[use.later]\nport=2222\n"))
    rc, out, err = await procs.run(command("vnet"), "--check", "node.ini")
    assert (rc, out) == (0, "vnet: node.ini: ok\n")
    assert (
        err == "vnet: warning: node.ini:4: [use.later] serveid: not set, so this use is disabled\n"
    )


async def test_check_reads_token_files_too(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[vnet]\ntoken_file=missing.token\n"))
    rc, _, err = await procs.run(command("vnet"), "--check", "node.ini")
    assert rc == 1
    assert err.startswith("vnet: node.ini:5: [vnet] token_file: cannot read missing.token")


async def test_check_reports_every_missing_file(procs: Procs, tmp_path: Path) -> None:
    # The README's production route: three files, none of them here.
    (tmp_path / "route.ini").write_text(
        "[route]\nip=0.0.0.0\nport=7749\ntls_cert=/etc/vnet/route.pem\n"
        "tls_key=/etc/vnet/route.key\n[group.home]\ntoken_file=/etc/vnet/home.token\n"
    )
    rc, _, err = await procs.run(command("vnet-route"), "--check", "route.ini")
    assert rc == 1
    assert err.splitlines() == [
        "vnet-route: route.ini:4: [route] tls_cert: cannot read /etc/vnet/route.pem: "
        "No such file or directory",
        "vnet-route: route.ini:5: [route] tls_key: cannot read /etc/vnet/route.key: "
        "No such file or directory",
        "vnet-route: route.ini:7: [group.home] token_file: cannot read /etc/vnet/home.token: "
        "No such file or directory",
        "vnet-route: route.ini: 3 problem(s)",
    ]


async def test_check_refuses_what_protected_mode_refuses(procs: Procs, tmp_path: Path) -> None:
    for n, route in enumerate(["ip=0.0.0.0", "ip=::", "ip=0.0.0.0\ntoken="]):
        (tmp_path / f"r{n}.ini").write_text(f"[route]\n{route}\nport=7749\n")
        rc, out, err = await procs.run(command("vnet-route"), "--check", f"r{n}.ini")
        assert (rc, out) == (1, ""), route
        assert f"r{n}.ini:2: [route] ip: refusing to listen on" in err


async def test_check_and_start_give_a_syntax_error_its_line(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "node.ini").write_text(node_ini(7749, "[vnet]\nname=n\n[serve.s\nport=22\n"))
    for args in (("--check", "node.ini"), ("node.ini",)):
        rc, _, err = await procs.run(command("vnet"), *args)
        assert rc == 1
        assert err.splitlines()[0] == "vnet: node.ini:6: '[serve.s' is not a [SECTION] header"


async def test_check_reports_duplicates_and_goes_on(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "dup.ini").write_text(
        "[route]\nip=127.0.0.1\nport=1\n[serve.a]\nport=22\n[serve.a]\nport=23\n"
        "[use.u]\nserveid=abc\n"
    )
    rc, _, err = await procs.run(command("vnet"), "--check", "dup.ini")
    assert rc == 1
    assert err.splitlines() == [
        "vnet: dup.ini:6: [serve.a]: section appears twice (first at line 4)",
        "vnet: dup.ini:9: [use.u] serveid: 'abc' is not a serveid (0-999, up to 3 digits)",
        "vnet: dup.ini: 2 problem(s)",
    ]


@pytest.mark.parametrize(
    ("program", "check", "key", "target"),
    [
        ("vnet", True, "token_file", "/dev/urandom"),
        ("vnet-route", False, "token_file", "/dev/urandom"),
        ("vnet-route", True, "tls_cert", "/dev/zero"),
        ("vnet", False, "token_file", "fifo"),
    ],
)
async def test_hostile_files_are_refused_at_once(
    procs: Procs, tmp_path: Path, program: str, check: bool, key: str, target: str
) -> None:
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would wait for ever
    if program == "vnet":
        tls = "tls=true\n" if key.startswith("tls") else ""
        text = node_ini(7749, f"[vnet]\n{tls}{key}={target}\n")
        section = "vnet"
    else:
        pair = "tls_key=route.key\n" if key == "tls_cert" else ""
        text = f"[route]\nip=127.0.0.1\nport={free_port()}\n{key}={target}\n{pair}"
        section = "route"
    (tmp_path / "c.ini").write_text(text)
    args = ("--check", "c.ini") if check else ("c.ini",)
    rc, out, err = await procs.run(command(program), *args, timeout=20)
    assert rc == 1
    assert "Traceback" not in err
    assert f"[{section}] {key}: cannot read {target}: is a " in err
    assert "not a regular file" in err


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
