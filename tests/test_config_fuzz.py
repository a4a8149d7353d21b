"""Property-based tests of the config check (Hypothesis): random and mutated files.

Never a traceback, never a hang, and `--check` exits non-zero exactly when
the real start refuses the file. The start is the real entry point
(vnet.cli.route_main / node_main) up to the point where it would bind or
connect: there `_run` is replaced by one that records the start and runs
nothing. Deterministic: derandomized, no example database.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnet import cli
from vnet.core.config import (
    GROUP_KEYS,
    ROUTE_KEYS,
    SERVE_KEYS,
    USE_KEYS,
    VNET_KEYS,
    check_node_config,
    check_route_config,
)
from vnet.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Scratch files the generated configs point at: real files, a FIFO with no
# writer, devices. Made once, at import, so that examples can name them.
_SCRATCH = tempfile.mkdtemp(prefix="vnet-fuzz-")
atexit.register(shutil.rmtree, _SCRATCH, True)
FIFO = os.path.join(_SCRATCH, "fifo")
os.mkfifo(FIFO)
TOKEN = os.path.join(_SCRATCH, "good.token")
Path(TOKEN).write_text("a-good-token\n")
EMPTY = os.path.join(_SCRATCH, "empty.token")
Path(EMPTY).write_text("")
MISSING = os.path.join(_SCRATCH, "missing")

SEEDS = [
    *(p.read_text() for p in sorted((ROOT / "examples").rglob("*.ini"))),
    "[route]\nip=127.0.0.1\nport=7749\n[vnet]\nname=n\ngroup=g\ntoken=t\n"
    "[serve.a]\nserveid=700\nport=22\nname=a\ninfo=i\n[use.b]\nserveid=701\nport=2222\n",
    "[route]\nip=0.0.0.0\nport=7749\ntoken=t\nmax_nodes=10\nkeepalive=5\n"
    "metrics=127.0.0.1:9749\n[group.g]\ntoken=u\n",
]
HOSTILE = [
    "", "0", "000", "700", "701", "1", "22", "7749", "٧٧٤٩", "７７４９", "99999", "9" * 5000,
    "-1", "a\x00b", "a\u202eb", "x" * 70, "n" * 300, "999.1.1.1", "http://x", "0.0.0.0", "::",
    "127.0.0.1", "::1", "localhost", "vnet.example.org", "true", "false", "maybe", "tcp", "udp",
    "/dev/zero", "/dev/urandom", FIFO, MISSING, TOKEN, EMPTY, _SCRATCH, "[::1]:9750",
    "127.0.0.1:9750", "VNET_FUZZ_UNSET", "caf\u00e9", " ; comment", "#", "=", "[", "]", "a;b",
]  # fmt: skip
KEYS = sorted(ROUTE_KEYS | VNET_KEYS | SERVE_KEYS | USE_KEYS | GROUP_KEYS) + ["serverid", "IP"]
SECTIONS = ["route", "vnet", "serve.a", "serve.b", "use.a", "use.b", "group.g", "bogus", "serve."]

_line = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(HOSTILE)),
    st.builds(lambda s: f"[{s}]", st.sampled_from(SECTIONS)),
    st.text(max_size=30),
)
_mutation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 40), _line),
    st.tuples(st.just("delete"), st.integers(0, 40), st.none()),
    st.tuples(st.just("duplicate"), st.integers(0, 40), st.none()),
    st.tuples(st.just("replace"), st.integers(0, 40), _line),
)


def _mutate(seed: str, mutations: list[tuple[str, int, str | None]]) -> str:
    lines = seed.split("\n")
    for op, at, line in mutations:
        i = at % (len(lines) + 1)
        if op == "insert":
            lines.insert(i, line or "")
        elif lines and op == "delete":
            lines.pop(i % len(lines))
        elif lines and op == "duplicate":
            lines.insert(i, lines[i % len(lines)])
        elif lines and op == "replace":
            lines[i % len(lines)] = line or ""
    return "\n".join(lines)


mutated_files = st.builds(_mutate, st.sampled_from(SEEDS), st.lists(_mutation, max_size=8))
random_files = st.lists(_line, max_size=20).map("\n".join)
any_files = st.one_of(mutated_files, random_files, st.text(max_size=200))


def _bounded(problem: ConfigError) -> None:
    # A 5,000-character value or a NUL is not echoed as it is.
    assert len(str(problem)) < 1000
    assert "\x00" not in str(problem)
    assert "\u202e" not in str(problem)


@FUZZ
@given(any_files)
def test_the_check_never_raises(text: str) -> None:
    node = check_node_config("c.ini", text)
    route = check_route_config("c.ini", text)
    for problem in [*node.problems.errors, *route.problems.errors, *node.problems.warnings]:
        assert problem.path == "c.ini"
        _bounded(problem)


@contextlib.contextmanager
def _stopped_before_binding(started: list[bool]) -> Iterator[None]:
    """cli._run, which would run the route or node, records the start instead."""
    real = cli._run

    def record(main: Coroutine[Any, Any, int]) -> int:
        main.close()
        started.append(True)
        return cli.EXIT_OK

    cli._run = record  # type: ignore[assignment]
    try:
        yield
    finally:
        cli._run = real  # type: ignore[assignment]


def _exit(main: Any, *args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    assert "Traceback" not in err.getvalue()
    return rc, err.getvalue()


@pytest.mark.timeout(120)
@FUZZ
@given(mutated_files)
def test_check_fails_exactly_when_the_start_refuses(text: str) -> None:
    with tempfile.TemporaryDirectory(dir=_SCRATCH) as tmp:
        path = os.path.join(tmp, "c.ini")
        Path(path).write_text(text, encoding="utf-8")
        for main in (cli.route_main, cli.node_main):
            started: list[bool] = []
            with _stopped_before_binding(started):
                check, check_err = _exit(main, "--check", path)
                start, start_err = _exit(main, path)
            assert check in (cli.EXIT_OK, cli.EXIT_ERROR)
            assert (check == cli.EXIT_OK) == bool(started), (main.__name__, check_err, start_err)
            assert (start == cli.EXIT_OK) == bool(started)
            if started:
                continue
            # The same problems, in the same words; --check adds the count.
            problems = [line for line in check_err.splitlines() if ": warning: " not in line]
            assert problems[:-1] == start_err.splitlines()


def test_the_fuzzing_reaches_both_outcomes() -> None:
    """A guard: the mutations above produce files that start and files that do not."""
    good = SEEDS[-1]
    assert check_route_config("c.ini", good).ok
    assert not check_route_config("c.ini", _mutate(good, [("insert", 3, "port=٧٧٤٩")])).ok
