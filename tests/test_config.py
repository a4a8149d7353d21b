"""config.ini parsing: the original's format, defaults, and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnet.core.config import (
    NodeConfig,
    RouteEndpoint,
    ServeConfig,
    UseConfig,
    VnetConfig,
    parse_node_config,
    parse_route_config,
)
from vnet.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# The original README's example, comments and all.
ORIGINAL = """\
[route] ; route端的配置
ip=127.0.0.1 ; ip地址,必填项
port=7749 ; 端口号,必填项

[vnet] ; vnet端的配置
name=xiao ; vnet名称
group=default ; 分组
terminal=true ; 是否开启命令行交互
startserve=false
startuse=false
allow_unserve=false
unserve_remote=false
unserve_num=1

[serve.xrdp] ; 远程服务配置
serveid=999
type=tcp
ip=127.0.0.1
port=3389
name=xrdp
info=Microsoft remote desktop protocol
active=false

[use.xrdp]
serveid=999
ip=127.0.0.1
port=33389
active=false
"""


def test_original_example_parses() -> None:
    config = parse_node_config("config.ini", ORIGINAL)
    assert config == NodeConfig(
        path="config.ini",
        route=RouteEndpoint("127.0.0.1", 7749),
        vnet=VnetConfig(
            name="xiao",
            group="default",
            terminal=True,
            startserve=False,
            startuse=False,
            allow_unserve=False,
            unserve_remote=False,
            unserve_num=1,
        ),
        serves=(
            ServeConfig(
                key="xrdp",
                serveid=999,
                ip="127.0.0.1",
                port=3389,
                name="xrdp",
                info="Microsoft remote desktop protocol",
                active=False,
            ),
        ),
        uses=(UseConfig(key="xrdp", serveid=999, ip="127.0.0.1", port=33389, active=False),),
    )


def test_defaults() -> None:
    config = parse_node_config(
        "c.ini",
        "[route]\nip=10.0.0.1\nport=7749\n[serve.ssh]\nport=22\n[use.web]\nserveid=701\n",
    )
    assert config.vnet == VnetConfig()
    assert config.vnet.group == "default"
    assert config.serves == (ServeConfig(key="ssh", port=22, serveid=0, name="ssh"),)
    assert config.uses == (UseConfig(key="web", serveid=701, port=None),)


def test_bulk_while_interactive_defaults_to_200_and_0_turns_it_off() -> None:
    route = "[route]\nip=a\nport=1\n"
    assert parse_node_config("c.ini", route).vnet.bulk_while_interactive == 200
    off = parse_node_config("c.ini", route + "[vnet]\nbulk_while_interactive=0\n")
    assert off.vnet.bulk_while_interactive == 0


def test_queue_target_ms_defaults_to_12_and_0_turns_the_governor_off() -> None:
    route = "[route]\nip=a\nport=1\n"
    assert parse_node_config("c.ini", route).vnet.queue_target_ms == 12
    off = parse_node_config("c.ini", route + "[vnet]\nqueue_target_ms=0\n")
    assert off.vnet.queue_target_ms == 0
    with pytest.raises(ConfigError, match=r"queue_target_ms: 20000 is out of range \(0-10000\)"):
        parse_node_config("c.ini", route + "[vnet]\nqueue_target_ms=20000\n")


def test_serveid_000_means_assign() -> None:
    config = parse_node_config("c.ini", "[route]\nip=a\nport=1\n[serve.x]\nserveid=000\nport=22\n")
    assert config.serves[0].serveid == 0


def test_use_without_serveid_is_disabled_with_a_warning() -> None:
    config = parse_node_config("c.ini", "[route]\nip=a\nport=1\n[use.x]\nport=2222\n")
    assert config.uses[0].serveid == 0
    assert config.warnings == ("c.ini:4: [use.x] serveid: not set, so this use is disabled",)


def test_route_defaults_without_a_file() -> None:
    assert parse_route_config("(defaults)", None).listen == RouteEndpoint("127.0.0.1", 7749)


def test_route_reads_only_route_section() -> None:
    assert parse_route_config("c.ini", ORIGINAL).listen == RouteEndpoint("127.0.0.1", 7749)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[vnet]\nname=x\n", "c.ini: [route]: section is missing"),
        ("[route]\nport=7749\n", "c.ini:1: [route] ip: is required"),
        ("[route]\nip=1.2.3.4\n", "c.ini:1: [route] port: is required"),
        ("[route]\nip=a\nport=http\n", "c.ini:3: [route] port: 'http' is not a whole number"),
        ("[route]\nip=a\nport=70000\n", "c.ini:3: [route] port: 70000 is out of range (1-65535)"),
        (
            "[route]\nip=a\nport=1\n[vnet]\nbulk_while_interactive=2000000\n",
            "c.ini:5: [vnet] bulk_while_interactive: 2000000 is out of range (0-1000000)",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nserveid=1000\nport=22\n",
            "c.ini:5: [serve.x] serveid: '1000' is not a serveid (0-999, up to 3 digits)",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nserveid=-1\nport=22\n",
            "c.ini:5: [serve.x] serveid: '-1' is not a serveid (0-999, up to 3 digits)",
        ),
        (
            "[route]\nip=a\nport=1\n[use.x]\nserveid=abc\n",
            "c.ini:5: [use.x] serveid: 'abc' is not a serveid (0-999, up to 3 digits)",
        ),
        ("[route]\nip=a\nport=1\n[serve.x]\nserveid=5\n", "c.ini:4: [serve.x] port: is required"),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\ntype=sctp\n",
            "c.ini:6: [serve.x] type: 'sctp' is not supported (tcp or udp)",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\nudp_idle=5\n",
            "c.ini:6: [serve.x] udp_idle: is for type=udp only",
        ),
        (
            "[route]\nip=a\nport=1\n[use.x]\nserveid=1\ntype=udp\nudp_idle=0\n",
            "c.ini:7: [use.x] udp_idle: 0 is out of range (1-86400)",
        ),
        (
            "[route]\nip=a\nport=1\n[use.x]\nserveid=5\nport=abc\n",
            "c.ini:6: [use.x] port: 'abc' is not a whole number",
        ),
        (
            "[route]\nip=a\nport=1\n[server.x]\nport=22\n",
            "c.ini:4: [server.x]: unknown section "
            "(expected [route], [vnet], [admin], [cluster], [serve.NAME], [use.NAME] "
            "or [group.NAME])",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.]\nport=22\n",
            "c.ini:4: [serve.]: [serve.NAME] needs a name after the dot",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\n[serve.x]\nport=23\n",
            "c.ini:6: [serve.x]: section appears twice (first at line 4)",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\nport=23\n",
            "c.ini:6: [serve.x] port: key appears twice (first at line 5)",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\nname=n\n[serve.y]\nport=23\nname=n\n",
            "c.ini:9: [serve.y] name: 'n' is already the name of [serve.x]",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\nserveid=700\n[serve.y]\nport=23\nserveid=700\n",
            "c.ini:9: [serve.y] serveid: 700 is already used by [serve.x]",
        ),
        (
            "[route]\nip=a\nport=1\n[use.x]\nserveid=1\nport=80\n[use.y]\nserveid=2\nport=80\n",
            "c.ini:9: [use.y] port: 80 is already the port of [use.x]",
        ),
        (
            "[route]\nip=a\nport=1\n[serve.x]\nport=22\nserverid=5\n",
            "c.ini:6: [serve.x] serverid: unknown key "
            "(known: active, info, ip, name, port, serveid, type, udp_idle)",
        ),
        (
            "[route]\nip=a\nport=1\n[vnet]\nterminal=maybe\n",
            "c.ini:5: [vnet] terminal: 'maybe' is not true or false",
        ),
        ("port=1\n[route]\nip=a\n", "c.ini:1: a key outside any [section]"),
    ],
)
def test_errors_name_file_section_key_and_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config("c.ini", text)
    assert str(info.value) == message


def test_example_configs_parse() -> None:
    for path in sorted((ROOT / "examples").rglob("*.ini")):
        text = path.read_text()
        if "[vnet]" in text or "[serve." in text or "[use." in text:
            parse_node_config(str(path), text)
        else:
            parse_route_config(str(path), text)
