"""[route] routes=: the routes a node may join, and every way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import Procs, command
from vnet.core.config import (
    RouteEndpoint,
    check_node_config,
    parse_node_config,
    parse_route_config,
    read_routes,
)
from vnet.core.config_diff import diff
from vnet.core.config_save import checked, render


def _errors(text: str) -> list[str]:
    return [str(e) for e in check_node_config("n.ini", text).problems.errors]


def test_routes_in_order_with_v6_and_names() -> None:
    config = parse_node_config(
        "n.ini", "[route]\nroutes = 10.0.0.1:7749, [2001:db8::1]:7750 ,route-b.example.net:443\n"
    )
    assert config.targets == (
        RouteEndpoint("10.0.0.1", 7749),
        RouteEndpoint("2001:db8::1", 7750),
        RouteEndpoint("route-b.example.net", 443),
    )
    assert [t.address for t in config.targets][1] == "[2001:db8::1]:7750"


def test_ip_and_port_alone_stay_one_route() -> None:
    config = parse_node_config("n.ini", "[route]\nip=10.1.2.3\nport=7000\n")
    assert config.routes == ()
    assert config.targets == (RouteEndpoint("10.1.2.3", 7000),)


def test_a_shared_file_the_route_listens_on_ip_and_port() -> None:
    text = "[route]\nip=127.0.0.1\nport=7001\nroutes=127.0.0.1:7001,127.0.0.1:7002\n"
    assert parse_route_config("s.ini", text).listen == RouteEndpoint("127.0.0.1", 7001)
    assert [t.port for t in parse_node_config("s.ini", text).targets] == [7001, 7002]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a:1, ,b:2", "entry 2 is empty (give HOST:PORT, comma-separated)"),
        ("a:1,", "entry 2 is empty (give HOST:PORT, comma-separated)"),
        ("route-a", "the entry, 'route-a', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("a:1,b:0", "entry 2, 'b:0', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("a:1,b:65536", "entry 2, 'b:65536', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("a:x", "the entry, 'a:x', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("::1:7749", "the entry, '::1:7749', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("[a.b]:7749", "the entry, '[a.b]:7749', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("bad_host!:1", "the entry, 'bad_host!:1', is not HOST:PORT ([V6]:PORT for IPv6)"),
        ("a:1,b:2,A:1", "'A:1' is named twice (entries 1 and 3)"),
        ("[::1]:5,[0:0::1]:5", "'[0:0::1]:5' is named twice (entries 1 and 2)"),
        ("r.example.:5,r.example:5", "'r.example:5' is named twice (entries 1 and 2)"),
    ],
)
def test_bad_routes_name_the_file_section_and_key(value: str, why: str) -> None:
    assert read_routes(value) == ((), why)
    assert _errors(f"[vnet]\nname=n\n[route]\nroutes={value}\n") == [
        f"n.ini:4: [route] routes: {why}"
    ]


def test_the_same_port_on_two_hosts_is_two_routes() -> None:
    routes, problem = read_routes("127.0.0.1:7749,127.0.0.2:7749")
    assert (len(routes), problem) == (2, "")


def test_without_routes_ip_is_still_required() -> None:
    assert _errors("[route]\nport=7749\n") == ["n.ini:1: [route] ip: is required"]
    assert _errors("[route]\nroutes=\n") == [
        "n.ini:1: [route] ip: is required",
        "n.ini:1: [route] port: is required",
    ]


def test_routes_survive_save_and_need_a_restart_when_changed() -> None:
    text = "[route]\nroutes=127.0.0.1:7001, [::1]:7002\n[vnet]\nname=n\n"
    config = parse_node_config("n.ini", text)
    assert checked(config) == config
    assert "routes=127.0.0.1:7001, [::1]:7002" in render(config)
    other = parse_node_config("n.ini", text.replace("7002", "7003"))
    assert diff(config, other).needs_restart == ("[route] routes",)


async def test_check_and_start_report_bad_routes_alike(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "bad.ini").write_text("[route]\nroutes=127.0.0.1:7001,127.0.0.1:7001\n")
    said = "bad.ini:2: [route] routes: '127.0.0.1:7001' is named twice (entries 1 and 2)"
    rc, out, err = await procs.run(command("vnet"), "--check", "bad.ini")
    assert (rc, out, err) == (1, "", f"vnet: {said}\nvnet: bad.ini: 1 problem(s)\n")
    rc, out, err = await procs.run(command("vnet"), "bad.ini")
    assert (rc, out) == (1, "")
    assert f"vnet: {said}" in err.splitlines()
    assert "Traceback" not in err
    (tmp_path / "good.ini").write_text("[route]\nroutes=127.0.0.1:7001, 127.0.0.1:7002\n")
    rc, out, err = await procs.run(command("vnet"), "--check", "good.ini")
    assert (rc, err) == (0, "")
    assert out.startswith("vnet: good.ini: ok\n")
    # The route takes a shared file's routes= as the node's, not as an unknown key.
    (tmp_path / "shared.ini").write_text(
        "[route]\nip=127.0.0.1\nport=7001\nroutes=127.0.0.1:7001, 127.0.0.1:7002\n"
    )
    rc, out, err = await procs.run(command("vnet-route"), "--check", "shared.ini")
    assert (rc, err) == (0, "")
