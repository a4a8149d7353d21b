"""The console's pure parts: grammar, completion, tables, save and reload diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnet.core import commands, tables
from vnet.core.commands import (
    Ask,
    CommandError,
    CompletionData,
    Exit,
    Help,
    Manage,
    Ping,
    Reload,
    Save,
    Show,
    Unserve,
    complete,
    parse,
)
from vnet.core.config import (
    NodeConfig,
    RouteEndpoint,
    ServeConfig,
    UseConfig,
    VnetConfig,
    parse_node_config,
)
from vnet.core.config_diff import diff
from vnet.core.config_save import checked, extras_of, render
from vnet.core.errors import ConfigError
from vnet.core.registry import Serve
from vnet.core.udp import Drop, UdpCounters
from vnet.node.client import VnetInfo

ROOT = Path(__file__).resolve().parent.parent

# --- parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("help", Help()),
        ("help serve", Help("serve")),
        ("reload", Reload()),
        ("reload other.ini", Reload("other.ini")),
        ("save", Save()),
        ("save 'my config.ini'", Save("my config.ini")),
        ("ping", Ping()),
        ("exit", Exit()),
        ("unserve", Unserve()),
        ("unserve 01 8888", Unserve("01", "", 8888)),
        ("unserve 01 8888 18888", Unserve("01", "", 8888, "", 18888)),
        ("unserve 01 53 5353 type=udp", Unserve("01", "", 53, "", 5353, "udp")),
        ("unserve type=udp", Unserve(type="udp")),
        ("unserve 01 localhost 8888 0", Unserve("01", "localhost", 8888, "", 0)),
        (
            "unserve 02 10.0.0.5 22 127.0.0.2 2222",
            Unserve("02", "10.0.0.5", 22, "127.0.0.2", 2222),
        ),
        ("unserve 01 ::1 8888 ::1", Unserve("01", "::1", 8888, "::1")),
        ("show serves", Show("serves")),
        ("show serves 01", Show("serves", "01")),
        ("show vnet", Show("vnet")),
        ("serve open ssh", Manage("serve", "open", "ssh")),
        ("use delete web", Manage("use", "delete", "web")),
        (
            'serve run jupyter port=8888 serveid=701 info="notebook server"',
            Manage(
                "serve",
                "run",
                "jupyter",
                (("port", "8888"), ("serveid", "701"), ("info", "notebook server")),
            ),
        ),
        (
            "use new ssh serveid=700 port=1122",
            Manage("use", "new", "ssh", (("serveid", "700"), ("port", "1122"))),
        ),
    ],
)
def test_parse(line: str, expected: commands.Command | None) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("shwo serves", "unknown command 'shwo'; did you mean 'show'? (type help for the list)"),
        ("frobnicate", "unknown command 'frobnicate' (type help for the list)"),
        ("show", "show what? (usage: show serve|use|serves|vnet|vnets|unserves)"),
        (
            "show servs",
            "show: cannot show 'servs'; did you mean 'serves'? "
            "(usage: show serve|use|serves|vnet|vnets|unserves)",
        ),
        (
            "show vnet 01",
            "show vnet: unexpected '01' (usage: show serve|use|serves|vnet|vnets|unserves)",
        ),
        ("ping now", "ping: unexpected 'now' (usage: ping)"),
        ("help me", "help: no command 'me' (type help for the list)"),
        ("serve", "serve: what to do? (usage: serve open|close|new|run|delete NAME)"),
        (
            "serve start x",
            "serve: no action 'start' (usage: serve open|close|new|run|delete NAME)",
        ),
        ("serve run", "serve run: which serve? (e.g. serve run NAME port=8888)"),
        ("use open", "use open: which use? (e.g. use open NAME)"),
        ("serve open ssh now", "serve open ssh: unexpected 'now' (usage: serve open NAME)"),
        ("show serves 01 02", "show serves: unexpected '02' (usage: show serves [VNETID])"),
        (
            "serve run x port",
            "serve run x: 'port' is not KEY=VALUE "
            "(keys: serveid, type, ip, port, name, info, udp_idle)",
        ),
        (
            "serve run x prot=1",
            "serve run x: unknown key 'prot'; did you mean 'port'? "
            "(keys: serveid, type, ip, port, name, info, udp_idle)",
        ),
        (
            "serve run x active=true",
            "serve run x: active= is not a field here "
            "(serve new makes it inactive, serve run active)",
        ),
        ("use run x serveid=1 serveid=2", "use run x: serveid= is given twice"),
        ("serve run x port=", "serve run x: port= needs a value (e.g. port=8888)"),
        (
            "serve run 'a b' port=1",
            "serve run: 'a b' cannot name a [serve.NAME] section "
            "(use letters, digits, '_', '-' and '.')",
        ),
        ('serve run x info="a', 'unclosed quote (close it, e.g. info="my notebook")'),
        (
            'serve run x port=1 info="a ; b"',
            "serve run x: info= cannot contain ' ;' or ' #' "
            "(config.ini would read the rest as a comment)",
        ),
    ],
)
def test_parse_errors_are_one_line_with_a_hint(line: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse(line)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


# --- building serves and uses --------------------------------------------------


def test_make_serve_has_the_files_defaults() -> None:
    serve = commands.make_serve("jupyter", {"port": "8888"}, active=True)
    assert serve == ServeConfig(
        key="jupyter", port=8888, serveid=0, ip="127.0.0.1", name="jupyter", info="", active=True
    )
    serve = commands.make_serve(
        "j", {"port": "8888", "serveid": "701", "info": "notebook", "name": "Jupyter"}, False
    )
    assert (serve.serveid, serve.info, serve.name, serve.active) == (
        701,
        "notebook",
        "Jupyter",
        False,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": "99999"}, "serve x: port: 99999 is out of range (1-65535)"),
        ({"port": "http"}, "serve x: port: 'http' is not a whole number"),
        (
            {"port": "1", "serveid": "1234"},
            "serve x: serveid: '1234' is not a serveid (0-999, up to 3 digits)",
        ),
        (
            {"port": "1", "type": "sctp"},
            "serve x: type: 'sctp' is not supported (tcp or udp)",
        ),
    ],
)
def test_make_serve_refuses_what_the_file_would(fields: dict[str, str], message: str) -> None:
    with pytest.raises(CommandError) as info:
        commands.make_serve("x", fields, active=True)
    assert str(info.value) == message


def test_make_use() -> None:
    use = commands.make_use("ssh", {"serveid": "700", "port": "1122"}, active=True)
    assert use == UseConfig(key="ssh", serveid=700, ip="127.0.0.1", port=1122, active=True)
    assert commands.make_use("ssh", {"serveid": "700"}, active=False).port is None
    for serveid in ("0", "000"):
        with pytest.raises(CommandError, match="serveid= is required"):
            commands.make_use("ssh", {"serveid": serveid}, active=True)


def test_what_to_ask_for() -> None:
    # Nothing given: the original's whole form, with its defaults shown.
    asks = commands.to_ask(Manage("serve", "run", "j"))
    assert [a.prompt for a in asks] == [
        "    serveid(000): ",
        "    ip(127.0.0.1): ",
        "    port: ",
        "    info: ",
    ]
    assert [a.prompt for a in commands.to_ask(Manage("use", "run", "j"))] == [
        "    serveid: ",
        "    ip(127.0.0.1): ",
        "    port(the serve's): ",
    ]
    # Some given: only the required ones still missing.
    assert commands.to_ask(Manage("serve", "run", "j", (("serveid", "701"),))) == (
        Ask("port", required=True),
    )
    assert commands.to_ask(Manage("serve", "run", "j", (("port", "1"),))) == ()
    assert commands.missing_required(Manage("use", "new", "j", (("port", "1"),))) == ("serveid",)


# --- completion ----------------------------------------------------------------

DATA = CompletionData(
    serves={"ssh": True, "jupyter": False},
    uses={"web": True, "rdp": False},
    serveids=((700, "ssh on vnet 01"), (701, "web on vnet 02")),
    vnetids=(("01", "home"), ("02", "office")),
)


def texts(before: str, data: CompletionData = DATA) -> list[str]:
    return [c.text for c in complete(before, data).candidates]


def test_complete_command_words() -> None:
    assert texts("") == list(commands.COMMANDS)
    assert texts("s") == ["serve", "show", "save"]
    assert texts("sh") == ["show"]
    assert texts("help s") == ["serve", "show", "save"]
    assert complete("sh", DATA).word == "sh"


def test_complete_sub_words() -> None:
    assert texts("serve ") == ["open", "close", "new", "run", "delete"]
    assert texts("use c") == ["close"]
    assert texts("show ") == ["serve", "use", "serves", "vnet", "vnets", "unserves"]
    assert texts("show v") == ["vnet", "vnets"]


def test_complete_local_names_by_what_the_action_needs() -> None:
    assert texts("serve open ") == ["jupyter"]  # only inactive ones can open
    assert texts("serve close ") == ["ssh"]
    assert texts("serve delete ") == ["jupyter", "ssh"]
    assert texts("use open ") == ["rdp"]
    assert texts("use delete w") == ["web"]
    assert texts("serve run ") == []  # a new name


def test_complete_fields_and_values() -> None:
    assert texts("serve run j ") == [
        "serveid=",
        "type=",
        "ip=",
        "port=",
        "name=",
        "info=",
        "udp_idle=",
    ]
    assert texts("serve run j port=1 i") == ["ip=", "info="]
    assert texts("use run j ") == ["serveid=", "type=", "ip=", "port=", "udp_idle=", "udp_flows="]
    assert texts("use run j type=") == ["type=tcp", "type=udp"]
    assert texts("use run j serveid=") == ["serveid=700", "serveid=701"]
    assert texts("use run j serveid=70") == ["serveid=700", "serveid=701"]
    assert [c.meta for c in complete("use run j serveid=", DATA).candidates] == [
        "ssh on vnet 01",
        "web on vnet 02",
    ]
    assert texts("use run j ip=") == ["ip=127.0.0.1"]
    assert texts("serve open ssh ") == []


def test_complete_vnetids_paths_and_quotes() -> None:
    assert texts("show serves ") == ["01", "02"]
    assert texts("unserve ") == ["01", "02"]
    assert texts("unserve 01 53 t") == ["type=tcp", "type=udp"]
    assert complete("reload ", DATA).path
    assert complete("save conf", DATA) == commands.Completions("conf", (), path=True)
    assert not complete("reload x ", DATA).path
    # Inside an open quote there is nothing to offer.
    assert complete('serve run j info="my n', DATA) == commands.Completions("")
    assert texts('serve run j info="my notebook" p') == ["port="]


def test_complete_with_nothing_cached() -> None:
    empty = CompletionData()
    assert texts("serve open ", empty) == []
    assert texts("use run j serveid=", empty) == []
    assert texts("show serves ", empty) == []


# --- tables --------------------------------------------------------------------


def test_serves_table_like_the_original() -> None:
    serves = [
        Serve(701, "02", "jupyter", "127.0.0.1", 8888, "notebook"),
        Serve(700, "01", "ssh", "127.0.0.1", 22, "home-ssh"),
        Serve(5, "01", "web", "10.0.0.12", 80),
    ]
    assert tables.serves_table(serves) == [
        "serveid  vnet  name     type  ip         port  info",
        "005      01    web      tcp   10.0.0.12  80",
        "700      01    ssh      tcp   127.0.0.1  22    home-ssh",
        "701      02    jupyter  tcp   127.0.0.1  8888  notebook",
        "- 2 vnet(s), 3 serve(s) registered -",
    ]
    assert tables.serves_table(serves, "02")[-1] == "- 1 vnet(s), 1 serve(s) registered -"
    assert tables.serves_table([]) == [
        "serveid  vnet  name  type  ip  port  info",
        "- 0 vnet(s), 0 serve(s) registered -",
    ]


def test_vnets_table_marks_this_node() -> None:
    vnets = [
        VnetInfo("10", "lab", "g", 0),
        VnetInfo("02", "office", "g", 0),
        VnetInfo("01", "home", "g", 2),
    ]
    assert tables.vnets_table(vnets, own="02", group="g") == [
        "vnet  name    serves",
        "01    home    2",
        "02    office  0       (this node)",
        "10    lab     0",
        "- 3 vnet(s) in group g -",
    ]


def test_local_tables() -> None:
    serves = [
        tables.ServeView("ssh", "700", "registered", "127.0.0.1", 22, "ssh", "home"),
        tables.ServeView(
            "x", "700", "error", "127.0.0.1", 1, "x", "", "static serveid 700 is taken"
        ),
    ]
    udp = UdpCounters(flows_opened=2, flows_open=1, datagrams_out=3, bytes_out=30)
    udp.drop(Drop.QUEUE_FULL, 4)
    serves.append(
        tables.ServeView(
            "dns", "053", "registered", "127.0.0.1", 53, "dns", "", type="udp", udp=udp.summary()
        )
    )
    assert tables.local_serves_table(serves) == [
        "serve  serveid  type  state       ip         port  name  info",
        "ssh    700      tcp   registered  127.0.0.1  22    ssh   home",
        "x      700      tcp   error       127.0.0.1  1     x",
        "dns    053      udp   registered  127.0.0.1  53    dns",
        "  [serve.x] static serveid 700 is taken",
        "  [serve.dns] udp flows 1 open, 2 opened; out 3 datagrams 30 bytes; "
        "in 0 datagrams 0 bytes; drops: queue_full 4, oversize 0, flow_limit 0",
        "- 3 serve(s), 2 registered -",
    ]
    uses = [
        tables.UseView("web", 701, "listening", "127.0.0.1", "18888", "web on vnet 01"),
        tables.UseView(
            "dns", 53, "listening", "127.0.0.1", "5353", "dns on vnet 01", type="udp", udp="x"
        ),
    ]
    assert tables.local_uses_table(uses) == [
        "use  serveid  type  state      ip         port   serve",
        "web  701      tcp   listening  127.0.0.1  18888  web on vnet 01",
        "dns  053      udp   listening  127.0.0.1  5353   dns on vnet 01",
        "  [use.dns] udp x",
        "- 2 use(s), 2 listening -",
    ]
    assert tables.pairs_block([("vnetid", "01"), ("group", "g")]) == ["vnetid  01", "group   g"]


def test_help() -> None:
    lines = commands.help_text()
    assert lines[0] == "commands:"
    assert sum(1 for line in lines if line.startswith("  ")) == len(commands.COMMANDS)
    serve = commands.help_text("serve")
    assert any("serve run NAME [KEY=VALUE ...]" in line for line in serve)
    assert serve[-1] == '  e.g. serve run jupyter port=8888 serveid=701 info="notebook"'
    assert commands.help_text("unserve")[-1] == (
        "  e.g. unserve 01 8888 18888, unserve 01 53 5353 type=udp"
    )


# --- save ----------------------------------------------------------------------

FULL = NodeConfig(
    path="full.ini",
    route=RouteEndpoint("10.12.140.180", 7749),
    vnet=VnetConfig(name="local-ssh", group="default-ssh", terminal=True, startserve=False),
    serves=(
        ServeConfig("ssh", 22, serveid=700, info="home ssh", name="ssh"),
        ServeConfig("auto", 8080, serveid=0, ip="10.0.0.5", name="Auto web", active=False),
    ),
    uses=(
        UseConfig("ssh", 700, port=1122),
        UseConfig("same-port", 701),
        UseConfig("off", 0, active=False),
    ),
)


def test_render_in_the_original_format() -> None:
    text = render(FULL)
    assert text.startswith(
        "[route]\nip=10.12.140.180\nport=7749\n\n"
        "[vnet]\nname=local-ssh\ngroup=default-ssh\nterminal=true\nstartserve=false\n"
        "startuse=true\nallow_unserve=false\nunserve_remote=false\nunserve_num=1\n\n"
        "[serve.ssh]\nserveid=700\ntype=tcp\nip=127.0.0.1\nport=22\nname=ssh\ninfo=home ssh\n"
        "active=true\n\n"
    )
    assert "[use.same-port]\nserveid=701\nip=127.0.0.1\nactive=true\n" in text
    assert "[use.off]\nserveid=000\nip=127.0.0.1\nactive=false\n" in text


def test_render_round_trips() -> None:
    again = parse_node_config("full.ini", render(FULL))
    assert again == FULL
    assert checked(FULL) is FULL


NODE_FILES = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "examples").rglob("*.ini")
    if "[vnet]" in p.read_text() or "[use." in p.read_text() or "[serve." in p.read_text()
)


@pytest.mark.parametrize("path", NODE_FILES)
def test_example_files_round_trip(path: str) -> None:
    text = (ROOT / path).read_text()
    config = parse_node_config(path, text)
    assert parse_node_config(path, render(config)) == config


def test_render_writes_other_fields_only_when_not_default() -> None:
    # The original's [vnet] keys always; fields it did not have only when set.
    plain = render(NodeConfig("x.ini", RouteEndpoint(), VnetConfig()))
    vnet_keys = plain.split("[vnet]\n")[1].split("\n\n")[0].splitlines()
    assert [line.partition("=")[0] for line in vnet_keys] == [
        "name",
        "group",
        "terminal",
        "startserve",
        "startuse",
        "allow_unserve",
        "unserve_remote",
        "unserve_num",
    ]
    tls = NodeConfig("x.ini", RouteEndpoint(), VnetConfig(tls=True, tls_ca="ca.pem"))
    text = render(tls)
    assert "tls=true\ntls_ca=ca.pem\n" in text
    assert parse_node_config("x.ini", text) == tls


def test_a_config_that_cannot_be_written_back_is_refused() -> None:
    bad = NodeConfig(
        "x.ini",
        RouteEndpoint(),
        VnetConfig(),
        serves=(ServeConfig("a", 1, name="same"), ServeConfig("b", 2, name="same")),
    )
    with pytest.raises(ConfigError, match=r"\[serve.b\] name: 'same' is already the name of"):
        checked(bad)
    tricky = NodeConfig(
        "x.ini", RouteEndpoint(), VnetConfig(), serves=(ServeConfig("a", 1, info="x ; y"),)
    )
    with pytest.raises(ConfigError, match="would not read back"):
        checked(tricky)


def test_saving_keeps_what_only_the_file_holds() -> None:
    shared = (
        "[route]\nip=0.0.0.0\nport=7749\ntoken_env=VNET_TOKEN ; the route's\n"
        "[group.team]\ntoken_file=/etc/vnet/team\n"
        "[vnet]\nname=a\n"
        "[serve.gone]\nport=1\n"
    )
    extras = extras_of(shared)
    assert extras == {
        "route": {"token_env": "VNET_TOKEN"},
        "group.team": {"token_file": "/etc/vnet/team"},
    }
    config = NodeConfig("s.ini", RouteEndpoint("0.0.0.0", 7749), VnetConfig(name="a"))
    text = render(config, extras)
    assert "[route]\nip=0.0.0.0\nport=7749\ntoken_env=VNET_TOKEN\n" in text
    assert "[group.team]\ntoken_file=/etc/vnet/team\n" in text
    assert "[serve.gone]" not in text  # serves belong to the node: deleted stays deleted
    assert extras_of("not an ini file") == {}


# --- reload diff ---------------------------------------------------------------


def test_diff_finds_exactly_what_changed() -> None:
    new = NodeConfig(
        path="full.ini",
        route=FULL.route,
        vnet=VnetConfig(name="renamed", group="default-ssh", terminal=False, startserve=True),
        serves=(
            ServeConfig("ssh", 22, serveid=700, info="home ssh", name="ssh", active=False),
            ServeConfig("auto", 8081, serveid=0, ip="10.0.0.5", name="Auto web", active=False),
            ServeConfig("new", 3, serveid=703),
        ),
        uses=(UseConfig("ssh", 700, port=1122), UseConfig("off", 0, active=False)),
    )
    change = diff(FULL, new)
    assert change.serves.added == ("new",)
    assert change.serves.removed == ()
    assert change.serves.changed == ("auto",)
    assert change.serves.toggled == ("ssh",)
    assert change.uses.removed == ("same-port",)
    assert change.uses.unchanged == ("ssh", "off")
    # terminal/startserve matter only at start; a new name needs a restart.
    assert change.needs_restart == ("[vnet] name",)
    assert not diff(FULL, FULL)


def test_complete_unserve_offers_the_groups_vnetids() -> None:
    assert texts("unserve ") == ["01", "02"]
    assert texts("unserve 0") == ["01", "02"]
    assert texts("unserve 01 ") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("unserve home 8888", "unserve: 'home' is not a vnetid (e.g. 01)"),
        ("unserve 01 8888 18888 extra", "unserve: unexpected 'extra'"),
        ("unserve 01 70000", "unserve: port 70000 is out of range"),
        ("unserve 01 0", "unserve: port 0 is out of range"),
    ],
)
def test_unserve_parse_errors(line: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        commands.parse(line)
    assert str(info.value).startswith(message)
