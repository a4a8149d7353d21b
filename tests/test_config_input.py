"""Hostile or broken config input: every problem reported, nothing hangs, nothing crashes.

Pure checks of vnet.core.config, plus the shared loader (vnet.config_load) on real
files: character devices, FIFOs, huge files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import vnet.core.config
from vnet import config_load
from vnet.core.config import check_node_config, check_route_config, parse_node_config
from vnet.core.errors import ConfigError, InvalidRequest
from vnet.core.limits import HOST_MAX, INFO_MAX, NAME_MAX, host_problem, text_problem
from vnet.core.registry import Registry
from vnet.files import TOKEN_MAX_BYTES, read_config_text, read_pem, read_text

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "[route]\nip=127.0.0.1\nport=7749\n"


def errors(text: str) -> list[str]:
    return [str(e) for e in check_node_config("c.ini", text).problems.in_order()]


def route_errors(text: str) -> list[str]:
    return [str(e) for e in check_route_config("r.ini", text).problems.in_order()]


# --- digits --------------------------------------------------------------------


@pytest.mark.parametrize(
    "digits",
    ["٧٧٤٩", "７７４９", "७७४९", "7749\u0663", "²"],  # Arabic-Indic, full-width, Devanagari
)
def test_only_ascii_digits_are_numbers(digits: str) -> None:
    assert errors(f"[route]\nip=127.0.0.1\nport={digits}\n") == [
        f"c.ini:3: [route] port: {digits!r} is not a whole number"
    ]
    assert errors(ROUTE + f"[serve.s]\nport=22\nserveid={digits}\n") == [
        f"c.ini:6: [serve.s] serveid: {digits!r} is not a serveid (0-999, up to 3 digits)"
    ]
    assert route_errors(f"[route]\nip=127.0.0.1\nport=1\nmax_nodes={digits}\n") == [
        f"r.ini:4: [route] max_nodes: {digits!r} is not a whole number"
    ]


def test_a_number_of_5000_digits_is_out_of_range_not_a_traceback() -> None:
    # int() refuses strings over 4300 digits with a ValueError.
    assert errors(f"[route]\nip=a\nport={'9' * 5000}\n") == [
        f"c.ini:3: [route] port: {'9' * 40!r}... (5000 characters) is out of range (1-65535)"
    ]
    assert parse_node_config("c.ini", f"[route]\nip=a\nport={'0' * 5000}22\n").route.port == 22


# --- names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "code"), [("\x00", "0000"), ("\u202e", "202E"), ("\x1b", "001B"), ("\u200b", "200B")]
)
def test_names_must_be_printable(char: str, code: str) -> None:
    why = f"contains a control or invisible character (U+{code})"
    assert errors(ROUTE + f"[vnet]\nname=a{char}b\n") == [f"c.ini:5: [vnet] name: {why}"]
    assert errors(ROUTE + f"[vnet]\ngroup=a{char}b\n") == [f"c.ini:5: [vnet] group: {why}"]
    assert errors(ROUTE + f"[serve.s]\nport=22\nname=a{char}b\n") == [
        f"c.ini:6: [serve.s] name: {why}"
    ]
    assert errors(ROUTE + f"[serve.s]\nport=22\ninfo=a{char}b\n") == [
        f"c.ini:6: [serve.s] info: {why}"
    ]
    # The section's name is escaped where it is shown, so the terminal is not garbled.
    shown = repr(f"serve.a{char}b")[1:-1]
    assert errors(ROUTE + f"[serve.a{char}b]\nport=22\n") == [
        f"c.ini:4: [{shown}]: the name after the dot {why}"
    ]


def test_long_names_fail_at_check_not_at_run_time() -> None:
    long_serve = "s" * 5000
    [problem] = errors(ROUTE + f"[serve.{long_serve}]\nport=22\n")
    assert problem.endswith(f"the name after the dot is longer than {NAME_MAX} characters (5000)")
    assert len(problem) < 300  # the 5,000 characters are not repeated
    ten_mb = "n" * 10_000_000
    [problem] = errors(ROUTE + f"[vnet]\nname={ten_mb}\n")
    assert problem == f"c.ini:5: [vnet] name: is longer than {NAME_MAX} characters (10000000)"
    [problem] = errors(ROUTE + f"[serve.s]\nport=22\ninfo={'i' * (INFO_MAX + 1)}\n")
    assert problem == f"c.ini:6: [serve.s] info: is longer than {INFO_MAX} characters (257)"
    # At the limits: accepted.
    config = parse_node_config(
        "c.ini", ROUTE + f"[vnet]\nname={'n' * NAME_MAX}\n[serve.s]\nport=1\ninfo={'i' * 256}\n"
    )
    assert len(config.vnet.name) == NAME_MAX


def test_the_route_and_the_check_share_the_limits() -> None:
    """What the config refuses, the route refuses, with the same words."""
    registry = Registry()
    for name in ("a\u202eb", "x" * (NAME_MAX + 1)):
        with pytest.raises(InvalidRequest) as refused:
            registry.add_vnet(name, "g")
        assert str(refused.value) == f"name {text_problem(name, NAME_MAX)}"
        assert errors(ROUTE + f"[vnet]\nname={name}\n") == [
            f"c.ini:5: [vnet] name: {text_problem(name, NAME_MAX)}"
        ]
    vnet = registry.add_vnet("ok", "g")
    long_host = "h" * 63 + "." + "h" * 63  # a host name longer than a name, well under HOST_MAX
    assert registry.register(vnet.vnetid, 0, "s", long_host, 22).serve.ip == long_host
    assert errors(ROUTE + f"[serve.s]\nport=22\nip={long_host}\n") == []


# --- addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "good",
    ["127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1%eth0", "localhost", "a", "vnet.example.org",
     "vnet.example.org.", "my_host", "xn--fiqs8s.example"],
)  # fmt: skip
def test_addresses_and_host_names_are_accepted(good: str) -> None:
    assert host_problem(good) == ""


@pytest.mark.parametrize(
    "bad",
    ["999.1.1.1", "1.2.3", "10", "http://x", "[::1]", "a b", "-x.org", "x-.org", "a..b",
     "例子.测试", "1.2.3.4:80", "h" * 64 + ".org", "x" * (HOST_MAX + 1)],
)  # fmt: skip
def test_bad_addresses_are_refused(bad: str) -> None:
    assert host_problem(bad) != ""
    for text in (
        f"[route]\nip={bad}\nport=1\n",
        ROUTE + f"[serve.s]\nport=22\nip={bad}\n",
        ROUTE + f"[use.u]\nserveid=700\nip={bad}\n",
        *([] if bad == "[::1]" else [ROUTE + f"[vnet]\nmetrics={bad}:9750\n"]),
    ):
        [problem] = errors(text)
        assert "ip: " in problem or "metrics: " in problem
    assert route_errors(f"[route]\nip={bad}\nport=1\n")[0].startswith("r.ini:2: [route] ip: ")


# --- one pass ----------------------------------------------------------------------


def test_2001_clashing_serves_are_checked_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = vnet.core.config.read_ini

    def counted(
        text: str, problems: vnet.core.config.Problems
    ) -> dict[str, vnet.core.config.Section]:
        calls.append(1)
        return real(text, problems)

    monkeypatch.setattr(vnet.core.config, "read_ini", counted)
    text = ROUTE + "".join(f"[serve.s{n}]\nport=22\nserveid=700\n" for n in range(2001))
    found = errors(text)
    assert len(calls) == 1
    # Every clash, not the first 500.
    assert len(found) == 2000
    assert found[0] == "c.ini:9: [serve.s1] serveid: 700 is already used by [serve.s0]"
    assert found[-1].startswith(f"c.ini:{3 + 2001 * 3}: [serve.s2000] serveid: 700")


def test_every_problem_once_in_file_order() -> None:
    text = (
        "junk=1\n[route]\nip=http://x\nport=٧\n[vnet]\nname=a\x00\nname=b\nterminal=maybe\n"
        "[serve.a\nport=1\n[serve.b]\nport=70000\n"
    )
    assert errors(text) == [
        "c.ini:1: a key outside any [section]",
        "c.ini:3: [route] ip: 'http://x' is not an IP address or host name",
        "c.ini:4: [route] port: '٧' is not a whole number",
        "c.ini:6: [vnet] name: contains a control or invisible character (U+0000)",
        "c.ini:7: [vnet] name: key appears twice (first at line 6)",
        "c.ini:8: [vnet] terminal: 'maybe' is not true or false",
        "c.ini:9: '[serve.a' is not a [SECTION] header",
        "c.ini:12: [serve.b] port: 70000 is out of range (1-65535)",
    ]


def test_the_original_syntax_still_reads() -> None:
    text = (
        "\ufeff[route] ; comment\r\nIP = 127.0.0.1 # comment\r\nport: 7749\r\n"
        "[serve.x]\r\n  port=22\r\ninfo=a;b#c ; the comment\r\n"
    )
    config = parse_node_config("c.ini", text)
    assert (config.route.ip, config.route.port) == ("127.0.0.1", 7749)
    assert (config.serves[0].port, config.serves[0].info) == (22, "a;b#c")


def test_tokens_must_be_printable_ascii() -> None:
    assert route_errors("[route]\nip=127.0.0.1\nport=1\ntoken=caf\u00e9\n")[0] == (
        "r.ini:4: [route] token: contains characters other than printable ASCII "
        "(a token travels in a gRPC header)"
    )


# --- protected mode --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ("ip=0.0.0.0\n", True),
        ("ip=::\n", True),
        ("ip=0.0.0.0\ntoken=\n", True),
        ("ip=vnet.example.org\n", True),
        ("ip=0.0.0.0\ntoken=t\n", False),
        ("ip=0.0.0.0\ntls_cert=c\ntls_key=k\ntls_client_ca=ca\n", False),
        ("ip=0.0.0.0\nallow_insecure=true\n", False),
        ("ip=127.0.0.1\n", False),
        ("ip=::1\n", False),
    ],
)
def test_protected_mode_is_part_of_the_check(extra: str, refused: bool) -> None:
    checked = check_route_config("r.ini", f"[route]\nport=1\n{extra}")
    assert any("refusing to listen" in str(e) for e in checked.problems.errors) == refused
    insecure = "allow_insecure" in extra
    assert [w.key for w in checked.problems.warnings] == (["allow_insecure"] if insecure else [])


# --- files ------------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "fifo", "dir"])
def test_files_that_are_not_regular_are_refused_at_once(
    device: str, fifo: str, tmp_path: Path
) -> None:
    path = {"fifo": fifo, "dir": str(tmp_path)}.get(device, device)
    kind = {"fifo": "a FIFO (named pipe)", "dir": "a directory"}.get(device, "a character device")
    with pytest.raises(OSError, match=re.escape(f"is {kind}, not a regular file")):
        read_text(path)
    with pytest.raises(ConfigError) as info:
        read_pem("r.ini", "route", "tls_cert", path)
    assert (
        str(info.value)
        == f"r.ini: [route] tls_cert: cannot read {path}: is {kind}, not a regular file"
    )
    with pytest.raises(ConfigError, match=re.escape(f"is {kind}, not a regular file")):
        read_config_text(path)


def test_files_over_the_cap_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.token"
    big.write_bytes(b"t" * (TOKEN_MAX_BYTES + 1))
    with pytest.raises(OSError, match="is larger than 64 KiB, too large for a token"):
        read_text(str(big))
    big.write_bytes(b"t" * TOKEN_MAX_BYTES)
    assert len(read_text(str(big))) == TOKEN_MAX_BYTES
    with pytest.raises(OSError, match="contains a NUL"):
        read_text("a\x00b")


def test_the_loader_names_file_line_section_and_key(fifo: str, tmp_path: Path) -> None:
    node = tmp_path / "node.ini"
    node.write_text(
        ROUTE + f"[vnet]\ntoken_file=/dev/urandom\ntls=true\ntls_ca={fifo}\ntls_cert=/dev/zero\n"
        "tls_key=/nope\n"
    )
    loaded = config_load.load_node(str(node))
    assert loaded.value is None
    assert [(e.line, e.key) for e in loaded.errors] == [
        (5, "token_file"),
        (7, "tls_ca"),
        (8, "tls_cert"),
        (9, "tls_key"),
    ]
    route = tmp_path / "route.ini"
    route.write_text(f"[route]\nip=127.0.0.1\nport=1\n[group.g]\ntoken_file={fifo}\n")
    [problem] = config_load.load_route(str(route)).errors
    assert str(problem) == (
        f"{route}:5: [group.g] token_file: cannot read {fifo}: is a FIFO (named pipe), "
        "not a regular file"
    )


def test_shipped_examples_pass_the_start_s_own_validation() -> None:
    examples = sorted((ROOT / "examples").rglob("*.ini"))
    assert any(p.name == "route.ini" for p in examples)
    for path in examples:
        text = path.read_text()
        if "[vnet]" in text or "[serve." in text or "[use." in text:
            loaded = config_load.load_node(str(path), environ={})
        else:
            loaded = config_load.load_route(str(path), environ={})
        assert loaded.errors == (), path
        assert loaded.value is not None


def test_odd_file_names_are_escaped_in_messages(tmp_path: Path) -> None:
    node = tmp_path / "node.ini"
    node.write_text(ROUTE + "[vnet]\ntoken_file=a\x00b\u202ec\n")
    [problem] = config_load.load_node(str(node)).errors
    assert str(problem) == (
        f"{node}:5: [vnet] token_file: cannot read 'a\\x00b\\u202ec': "
        "the path contains a NUL character"
    )


def test_the_ssh_example_route_starts_as_shipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's scenario: the real entry point gets as far as binding."""
    from vnet import cli

    started: list[object] = []

    def record(main: Coroutine[Any, Any, int]) -> int:
        main.close()
        started.append(main)
        return 0

    monkeypatch.setattr(cli, "_run", record)
    route = str(ROOT / "examples" / "ssh" / "route.ini")
    assert cli.route_main(["--check", route]) == 0
    assert cli.route_main([route]) == 0
    assert len(started) == 1
    for node in ("home.ini", "office.ini"):
        assert cli.node_main([str(ROOT / "examples" / "ssh" / node)]) == 0
    assert len(started) == 3
    assert "refusing" not in capsys.readouterr().err
