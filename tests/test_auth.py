"""The pure parts of authentication: tokens, penalties, protected mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnet.core.auth import (
    PenaltyBox,
    PenaltyPolicy,
    TokenTable,
    insecure_reason,
    is_loopback,
    peer_address,
)
from vnet.core.config import resolve_secret
from vnet.core.errors import ConfigError
from vnet.files import read_text


def test_no_tokens_admits_everyone() -> None:
    table = TokenTable()
    assert not table.enabled
    assert table.admits("", "any")


def test_group_and_global_tokens() -> None:
    table = TokenTable("all", {"a": "ta", "b": "tb"})
    assert table.admits("all", "a")
    assert table.admits("all", "zzz")
    assert table.admits("ta", "a")
    assert not table.admits("ta", "b")
    assert not table.admits("tb", "a")
    assert not table.admits("", "a")
    assert not table.admits("ta ", "a")


def test_empty_presented_token_never_matches_an_unset_one() -> None:
    table = TokenTable("", {"a": "ta"})
    assert not table.admits("", "b")
    assert not table.admits("", "a")


def test_penalty_after_max_failures_then_recovery() -> None:
    box = PenaltyBox(PenaltyPolicy(max_failures=3, window=60, penalty=10))
    for t in (0.0, 1.0):
        box.failure("1.2.3.4", t)
        assert box.blocked_for("1.2.3.4", t) == 0
    box.failure("1.2.3.4", 2.0)
    assert box.blocked_for("1.2.3.4", 2.0) == pytest.approx(10)
    assert box.blocked_for("1.2.3.4", 11.0) == pytest.approx(1)
    assert box.blocked_for("5.6.7.8", 3.0) == 0  # others unaffected
    assert box.blocked_for("1.2.3.4", 12.5) == 0


def test_failures_outside_the_window_do_not_add_up() -> None:
    box = PenaltyBox(PenaltyPolicy(max_failures=3, window=10, penalty=10))
    box.failure("a", 0)
    box.failure("a", 5)
    box.failure("a", 20)  # a new window
    assert box.blocked_for("a", 20) == 0


def test_table_is_bounded() -> None:
    box = PenaltyBox(PenaltyPolicy(max_entries=100))
    for i in range(1000):
        box.failure(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(box) == 100


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[::ffff:127.0.0.1]:1", "::ffff:127.0.0.1"),
        ("unix:/tmp/x", "unix:/tmp/x"),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("::ffff:10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_protected_mode() -> None:
    assert insecure_reason("0.0.0.0", False, False, False).startswith(
        "refusing to listen on 0.0.0.0 without a token"
    )
    assert insecure_reason("0.0.0.0", True, False, False) == ""
    assert insecure_reason("0.0.0.0", False, True, False) == ""
    assert insecure_reason("0.0.0.0", False, False, True) == ""
    assert insecure_reason("127.0.0.1", False, False, False) == ""


def test_secrets_from_env_and_file() -> None:
    def read(path: str) -> str:
        if path == "/secret":
            return "from-file\n"
        raise FileNotFoundError(2, "No such file or directory")

    env = {"TOK": "from-env"}
    assert resolve_secret("c.ini", "vnet", "inline", "", "", env, read) == "inline"
    assert resolve_secret("c.ini", "vnet", "", "TOK", "", env, read) == "from-env"
    assert resolve_secret("c.ini", "vnet", "", "", "/secret", env, read) == "from-file"
    with pytest.raises(ConfigError, match=r"c.ini: \[vnet\] token_env: environment variable"):
        resolve_secret("c.ini", "vnet", "", "NOPE", "", env, read)
    with pytest.raises(ConfigError, match=r"token_file: cannot read /nope: No such file"):
        resolve_secret("c.ini", "vnet", "", "", "/nope", env, read)
    with pytest.raises(ConfigError, match=r"token_env: give only one of token, token_env"):
        resolve_secret("c.ini", "vnet", "a", "TOK", "", env, read)


def test_a_token_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.token").write_bytes(b"\xff\xfe bad")
    bad = str(tmp_path / "bad.token")
    with pytest.raises(ConfigError, match=r"c.ini: \[vnet\] token_file: .*bad.token is not UTF-8"):
        resolve_secret("c.ini", "vnet", "", "", bad, {}, read_text)


def test_admits_somewhere() -> None:
    table = TokenTable("", {"a": "ta", "b": "tb"})
    assert table.admits_somewhere("tb")
    assert not table.admits_somewhere("tc")
    assert not table.admits_somewhere("")
    assert TokenTable().admits_somewhere("")
