"""The console: its completer, whole sessions against a real route and nodes,
live reload, `vnet -c`, and the real program in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import pty
import re
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import PipeInput
from prompt_toolkit.output import DummyOutput
from prompt_toolkit.output.plain_text import PlainTextOutput

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, free_port, refused, use_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.services import (
    BLOCK,
    HEADER,
    echo_round_trip,
    echo_server,
    exchange_server,
    pattern,
    read_exactly_or_eof,
)
from vnet.console.executor import Outcome, run_script
from vnet.console.prompt import Console, VnetCompleter, console_logging, history_path
from vnet.core.commands import CompletionData
from vnet.core.config import NodeConfig, RouteEndpoint, ServeConfig, VnetConfig, parse_node_config
from vnet.node.node import Node, NodeTimeouts
from vnet.route.server import RunningRoute


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the console's history out of the real home directory."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


# --- the completer -------------------------------------------------------------

DATA = CompletionData(
    serves={"jupyter": False, "ssh": True},
    uses={"web": True},
    serveids=((700, "ssh on vnet 01"),),
    vnetids=(("01", "home"),),
)


def completions(text: str, data: CompletionData = DATA) -> list[tuple[str, int, str]]:
    completer = VnetCompleter(lambda: data)
    return [
        (c.text, c.start_position, c.display_meta_text)
        for c in completer.get_completions(Document(text, len(text)), CompleteEvent())
    ]


def test_completer_replaces_the_word_at_the_cursor() -> None:
    assert completions("sh") == [("show", -2, "show this node, or ask the route")]
    assert completions("serve op") == [
        ("open", -2, "activate an inactive serve and register it at the route")
    ]
    assert completions("serve open ") == [("jupyter", 0, "inactive")]
    assert completions("use run x serveid=7") == [("serveid=700", -9, "ssh on vnet 01")]
    assert completions("show serves ") == [("01", 0, "home")]
    assert completions('serve run x info="two wo') == []


def test_completer_only_looks_at_text_before_the_cursor() -> None:
    completer = VnetCompleter(lambda: DATA)
    doc = Document("serve open ssh", cursor_position=len("serve o"))
    assert [c.text for c in completer.get_completions(doc, CompleteEvent())] == ["open"]


def test_completer_completes_file_names_for_reload_and_save(tmp_path: Path) -> None:
    (tmp_path / "office.ini").write_text("")
    (tmp_path / "other.txt").write_text("")
    found = completions(f"reload {tmp_path}/of")
    assert [text for text, _, _ in found] == ["fice.ini"]


def test_completer_never_calls_anything_but_its_snapshot() -> None:
    calls: list[int] = []

    def snapshot() -> CompletionData:
        calls.append(1)
        return DATA

    completer = VnetCompleter(snapshot)
    list(completer.get_completions(Document("serve close "), CompleteEvent()))
    assert calls == [1]


def test_history_lives_in_the_state_directory(
    state_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert history_path() == state_home / "vnet" / "history"
    assert (
        history_path({"HOME": "/home/x"})
        == Path(os.path.expanduser("~")) / ".local/state/vnet/history"
    )
    monkeypatch.delenv("XDG_STATE_HOME")
    assert history_path() == Path.home() / ".local" / "state" / "vnet" / "history"


# --- whole sessions ------------------------------------------------------------


class Session:
    """A Console on a pipe, run as a task; records each line's outcome and output."""

    def __init__(self, node: Node, pipe: PipeInput) -> None:
        self.node = node
        self.pipe = pipe
        self.out: list[str] = []
        self.err: list[str] = []
        self.outcomes: list[Outcome] = []
        self.console = Console(
            node, input=pipe, output=DummyOutput(), out=self.out.append, err=self.err.append
        )
        executor = self.console.executor
        run = executor.run

        async def recording(line: str) -> Outcome:
            outcome = await run(line)
            self.outcomes.append(outcome)
            return outcome

        executor.run = recording  # type: ignore[method-assign]
        self.task = asyncio.create_task(self.console.run())

    async def type(self, text: str) -> tuple[Outcome, list[str], list[str]]:
        """Type text (ending in a newline); wait for its line to finish; its output."""
        done, out, err = len(self.outcomes), len(self.out), len(self.err)
        self.pipe.send_text(text)
        await wait_until(lambda: len(self.outcomes) > done or self.task.done(), repr(text))
        assert not self.task.done(), f"the console ended on {text!r}"
        return self.outcomes[done], self.out[out:], self.err[err:]

    async def run(self, line: str) -> tuple[Outcome, list[str], list[str]]:
        return await self.type(line + "\n")

    async def ok(self, line: str) -> list[str]:
        outcome, out, err = await self.run(line)
        assert (outcome, err) == (Outcome.OK, []), (line, out, err)
        return out

    async def close(self) -> None:
        if not self.task.done():
            self.pipe.send_text("exit\n")
        async with asyncio.timeout(TIMEOUT):
            await self.task


@contextlib.asynccontextmanager
async def session(node: Node) -> AsyncIterator[Session]:
    with create_pipe_input() as pipe:
        s = Session(node, pipe)
        try:
            yield s
        finally:
            await s.close()


def config_of(path: Path) -> NodeConfig:
    return parse_node_config(str(path), path.read_text())


FileNode = Callable[..., contextlib.AbstractAsyncContextManager[Node]]


@pytest.fixture
def file_node(make_node: MakeNode) -> FileNode:
    """A node started from an ini file for the length of an `async with`
    (stopped at its end, so another may start from the same file)."""

    @contextlib.asynccontextmanager
    async def run(path: Path, autostart: bool = True) -> AsyncIterator[Node]:
        node = await make_node(config=config_of(path), autostart=autostart)
        try:
            yield node
        finally:
            await node.stop()

    return run


async def test_show_ping_help_and_mistakes(
    make_node: MakeNode, route: RunningRoute, tmp_path: Path, state_home: Path, file_node: FileNode
) -> None:
    web = await echo_server()
    home = await make_node(
        "home", serves=[ServeConfig("web", web.port, serveid=701, info="home web")]
    )
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(route.port, "[vnet]\nname=office\ngroup=g\nterminal=true\n"))
    async with file_node(office_ini) as office, session(office) as s:
        assert await s.ok("show serves") == [
            f"serveid  vnet  name  type  ip         {'port'.ljust(len(str(web.port)))}  info",
            f"701      {home.vnetid}    web   tcp   127.0.0.1  {web.port}  home web",
            "- 1 vnet(s), 1 serve(s) registered -",
        ]
        assert await s.ok("show vnets") == [
            "vnet  name    serves",
            f"{home.vnetid}    home    1",
            f"{office.vnetid}    office  0       (this node)",
            "- 2 vnet(s) in group g -",
        ]
        (pong,) = await s.ok("ping")
        assert re.fullmatch(rf"ping 127\.0\.0\.1:{route.port}: \d+\.\d\d ms", pong)
        assert s.console.status.ping_ms is not None
        assert (await s.ok("help"))[0] == "commands:"
        vnet = await s.ok("show vnet")
        assert f"vnetid      {office.vnetid}" in vnet
        assert f"route       127.0.0.1:{route.port} (connected)" in vnet
        # Mistakes: one line each, and the console carries on.
        assert await s.run("shwo serves") == (
            Outcome.USAGE,
            [],
            ["unknown command 'shwo'; did you mean 'show'? (type help for the list)"],
        )
        assert await s.run("serve open nothing") == (
            Outcome.FAILED,
            [],
            ["serve open nothing: no serve named 'nothing' (serves: none yet)"],
        )
        assert await s.run("unserve 99 8888") == (
            Outcome.FAILED,
            [
                "asking vnet 99 for its unregistered 127.0.0.1:8888 ... "
                "(an unserve lapses after 3 min unused)"
            ],
            ["unserve: no vnet '99' in this group"],
        )
        assert await s.run("show serves 99") == (
            Outcome.FAILED,
            [],
            ["show serves: no vnet 99 in this group"],
        )
        # A node without serves is a vnet all the same; 1 means 01.
        assert (await s.ok(f"show serves {int(office.vnetid)}"))[-1] == (
            "- 0 vnet(s), 0 serve(s) registered -"
        )
        assert (await s.ok(f"show serves {home.vnetid}"))[-1] == (
            "- 1 vnet(s), 1 serve(s) registered -"
        )
        missing = tmp_path / "no-such-dir" / "x.ini"
        assert await s.run(f"save {missing}") == (
            Outcome.FAILED,
            [],
            [f"save: cannot save to {missing}: no such file or directory"],
        )
        assert await s.run("") == (Outcome.OK, [], [])
        # The toolbar, as the prompt draws it.
        toolbar = s.console.toolbar()
        assert (
            f"route 127.0.0.1:{route.port} | connected | vnet {office.vnetid} (office)" in toolbar
        )
        assert re.search(r"group g \| ping \d+\.\d ms", toolbar)
    # History went to the state directory.
    history = (state_home / "vnet" / "history").read_text()
    assert "+show serves" in history
    assert "+shwo serves" in history
    await web.close()


async def test_serve_and_use_lifecycle_then_save(
    make_node: MakeNode, route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    web = await echo_server()
    office_ini = tmp_path / "office.ini"
    original = node_ini(route.port, "[vnet]\nname=office\ngroup=g\nterminal=true\n")
    office_ini.write_text(original)
    watcher = await make_node("watcher")
    registry = route.servicer.registry
    async with file_node(office_ini) as office, session(office) as s:
        # run: created, active, registered at once.
        await s.ok(f'serve run web port={web.port} serveid=702 info="my web"')
        assert registry.find("g", 702).info == "my web"
        await wait_until(lambda: 702 in watcher.remote, "the group to hear of serve 702")
        # A use of our own serve, on a port given inline.
        port = free_port()
        await s.ok(f"use run loop serveid=702 port={port}")
        assert await use_port(office, "loop") == port
        assert await echo_round_trip(port, b"through the route and back") == (
            b"through the route and back"
        )
        table = await s.ok("show use")
        assert table[1].split() == [
            "loop",
            "702",
            "tcp",
            "listening",
            "127.0.0.1",
            str(port),
            "web",
            "on",
            "vnet",
            office.vnetid,
        ]
        # close / open, for both kinds.
        await s.ok("use close loop")
        assert await refused(port)
        await s.ok("use open loop")
        assert await use_port(office, "loop") == port
        await s.ok("serve close web")
        assert 702 not in {x.serveid for x in registry.serves("g")}
        await wait_until(lambda: office.uses["loop"].port is None, "the use to follow its serve")
        assert (await s.ok("show serve"))[1].split()[:4] == ["web", "702", "tcp", "inactive"]
        await s.ok("serve open web")
        assert registry.find("g", 702).vnetid == office.vnetid
        await use_port(office, "loop")
        # new: created inactive; asked for the missing fields, as the original did.
        outcome, _, err = await s.type("serve new spare\n\n\n4444\nspare port\n")
        assert (outcome, err) == (Outcome.OK, [])
        spare = office.serves["spare"]
        assert (spare.config.port, spare.config.info, spare.config.serveid, spare.running) == (
            4444,
            "spare port",
            0,
            False,
        )
        # Only the missing required field is asked for once some are given.
        outcome, _, err = await s.type("use new later serveid=\n")
        assert (outcome, err) == (
            Outcome.USAGE,
            ["use new later: serveid= needs a value (e.g. serveid=701)"],
        )
        outcome, _, err = await s.type("use new later ip=127.0.0.1\n705\n")
        assert (outcome, err) == (Outcome.OK, [])
        assert office.uses["later"].config.serveid == 705
        assert not office.uses["later"].running
        # Refusals keep the config saveable: a second serve may not take 702.
        outcome, _, err = await s.run(f"serve new twin port={web.port} serveid=702")
        assert outcome is Outcome.FAILED
        assert err == ["serve new twin: [serve.twin] serveid: 702 is already used by [serve.web]"]
        outcome, _, err = await s.run("serve run web port=1")
        assert err == [
            "serve run web: there is already a [serve.web]; "
            "serve delete web first, or pick another name"
        ]
        await s.ok("serve delete spare")
        assert "spare" not in office.serves
        # Nothing was written to the file...
        assert office_ini.read_text() == original
        # ...until save, which writes a file a node can start from again.
        saved = tmp_path / "saved.ini"
        assert await s.ok(f"save {saved}") == [f"saved {saved}"]
        again = parse_node_config(str(saved), saved.read_text())
        assert again.serves == office.config.serves
        assert again.uses == office.config.uses
        assert [u.key for u in again.uses] == ["loop", "later"]
        assert again.vnet == office.config.vnet
        assert await s.ok("save") == [f"saved {office_ini}"]
        assert parse_node_config(str(office_ini), office_ini.read_text()) == office.config
    # And a node does start from it.
    async with file_node(saved) as restarted:
        assert restarted.serving.keys() == {702}
        assert await use_port(restarted, "loop") == port
    await web.close()


async def test_prompts_can_be_cancelled_and_required_answers_enforced(
    route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(route.port, "[vnet]\nname=office\ngroup=g\n"))
    async with file_node(office_ini) as office, session(office) as s:
        outcome, _, err = await s.type("serve run x\n\n\n\n")
        assert (outcome, err) == (Outcome.USAGE, ["serve run x: port is required"])
        outcome, _, err = await s.type("serve run x serveid=1\nhttp\n")
        assert outcome is Outcome.USAGE
        assert err == ["serve x: port: 'http' is not a whole number"]
        outcome, _, err = await s.type("serve run y\n\x03")  # Ctrl-C at "serveid(000): "
        assert (outcome, err) == (Outcome.FAILED, ["serve run y: cancelled"])
        assert office.serves == {}
        assert office.config.serves == ()


async def test_ctrl_d_leaves_and_ctrl_c_drops_the_line(
    route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(route.port, "[vnet]\nname=office\ngroup=g\n"))
    async with file_node(office_ini) as office:
        with create_pipe_input() as pipe:
            s = Session(office, pipe)
            pipe.send_text("show serv\x03")  # Ctrl-C: the line is dropped, not run
            await s.run("show vnet")
            assert s.outcomes == [Outcome.OK]
            pipe.send_text("\x04")  # Ctrl-D on an empty line
            async with asyncio.timeout(TIMEOUT):
                await s.task


async def test_logs_print_above_the_prompt_without_breaking_the_typed_line(
    route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(route.port, "[vnet]\nname=office\ngroup=g\n"))
    screen = io.StringIO()
    output = PlainTextOutput(screen)
    async with file_node(office_ini) as office:
        with create_pipe_input() as pipe:
            done: list[str] = []
            console = Console(office, input=pipe, output=output, out=done.append, err=done.append)
            task = asyncio.create_task(console.run())
            pipe.send_text("show se")
            await wait_until(lambda: "show se" in screen.getvalue(), "the typed text to show")
            logging.getLogger("vnet.node.node").warning("serve 703 (db) appeared on vnet 09")
            await wait_until(
                lambda: "WARNING serve 703 (db) appeared" in screen.getvalue(), "the log line"
            )
            pipe.send_text("rves\n")
            await wait_until(lambda: any("registered -" in line for line in done), "show serves")
            pipe.send_text("exit\n")
            async with asyncio.timeout(TIMEOUT):
                await task
    # The log line came out on a line of its own, and the line typed around it ran whole.
    assert any(
        line.endswith("WARNING serve 703 (db) appeared on vnet 09")
        for line in screen.getvalue().splitlines()
    )
    assert done[-1] == "- 0 vnet(s), 0 serve(s) registered -"


def test_console_logging_moves_terminal_handlers_and_restores_them() -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler()  # stderr
    root.addHandler(terminal)
    try:
        with console_logging(DummyOutput()) as handler:
            assert terminal not in root.handlers
            assert handler in root.handlers
        assert terminal in root.handlers
        assert handler not in root.handlers
    finally:
        root.removeHandler(terminal)


async def test_the_route_going_away(
    make_route: MakeRoute, tmp_path: Path, file_node: FileNode
) -> None:
    own = await make_route(stop_grace=0.2)
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(own.port, "[vnet]\nname=office\ngroup=g\n"))
    async with file_node(office_ini) as office, session(office) as s:
        await own.stop()
        await wait_until(lambda: office.lost, "the node to notice")
        assert "| route lost |" in s.console.toolbar()
        outcome, _, err = await s.run("ping")
        assert outcome is Outcome.FAILED
        assert err[0].startswith("ping: the route is not connected (")
        assert await s.ok("show serve") == [
            "serve  serveid  type  state  ip  port  name  info",
            "- 0 serve(s), 0 registered -",
        ]


# --- reload --------------------------------------------------------------------


async def test_reload_applies_only_the_differences_while_a_tunnel_carries_traffic(
    make_node: MakeNode, route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    stream = await exchange_server()
    echo = await echo_server()
    extra = await echo_server()
    home = await make_node(
        "home",
        serves=[
            ServeConfig("x", stream.port, serveid=701),
            ServeConfig("e", echo.port, serveid=702),
        ],
    )
    px, pe, pgone, pe2 = free_port(), free_port(), free_port(), free_port()
    office_ini = tmp_path / "office.ini"
    body = (
        "[vnet]\nname=office\ngroup=g\nterminal=true\n"
        f"[use.x]\nserveid=701\nport={px}\n"
        f"[use.e]\nserveid=702\nport={pe}\n"
        f"[use.gone]\nserveid=702\nport={pgone}\n"
    )
    office_ini.write_text(node_ini(route.port, body))
    async with file_node(office_ini) as office, session(office) as s:
        for key, port in (("x", px), ("e", pe), ("gone", pgone)):
            assert await use_port(office, key) == port
        x_state, x_server = office.uses["x"], office.uses["x"].server
        e_state = office.uses["e"]
        # A long exchange through use.x: upload without pause until well after the reload.
        down = 8 << 20
        reader, writer = await asyncio.open_connection("127.0.0.1", px, limit=4 * BLOCK)
        writer.write(HEADER.pack(0, down))
        sent = hashlib.sha256()
        sent_bytes = [0]
        reloaded = asyncio.Event()

        async def upload() -> None:
            chunk_no = 0
            after = 0
            while not reloaded.is_set() or after < 64:
                chunk = pattern(64 * 1024, seed=chunk_no)
                writer.write(chunk)
                await writer.drain()
                sent.update(chunk)
                sent_bytes[0] += len(chunk)
                chunk_no += 1
                after += reloaded.is_set()
                await asyncio.sleep(0)  # let the console run between writes
            writer.write_eof()

        uploading = asyncio.create_task(upload())
        downloading = asyncio.create_task(read_exactly_or_eof(reader))
        await wait_until(lambda: sent_bytes[0] >= 4 << 20, "the upload to be under way")

        # Edit the file: add a serve, remove a use, change a port.
        office_ini.write_text(
            node_ini(
                route.port,
                body.replace(f"[use.gone]\nserveid=702\nport={pgone}\n", "").replace(
                    f"port={pe}\n", f"port={pe2}\n"
                )
                + f"[serve.new]\nserveid=703\nport={extra.port}\n",
            )
        )
        before_reload = sent_bytes[0]
        out = await s.ok("reload")
        reloaded.set()
        assert out == [
            f"reloaded {office_ini}: serve added: new; use removed: gone; "
            "use restarted: e (1 unchanged)"
        ]
        assert not uploading.done(), "the upload must span the reload"
        async with asyncio.timeout(TIMEOUT * 3):
            answer = await downloading
            await uploading
        writer.close()
        assert sent_bytes[0] > before_reload
        # The unchanged tunnel: byte-exact both ways, on the one connection it began on.
        assert len(answer) == down + 32
        assert answer[:down] == pattern(down)
        assert answer[down:] == sent.digest()
        assert stream.connections == 1
        # Exactly what changed, changed.
        assert route.servicer.registry.find("g", 703).vnetid == office.vnetid
        assert office.serving.keys() == {703}
        assert "gone" not in office.uses
        assert await refused(pgone)
        assert office.uses["e"] is not e_state
        assert await use_port(office, "e") == pe2
        assert await refused(pe)
        assert await echo_round_trip(pe2, b"moved") == b"moved"
        # ...and nothing else: the same listener object for x, home untouched.
        assert office.uses["x"] is x_state
        assert x_state.server is x_server
        assert home.serving.keys() == {701, 702}
        assert office.config == parse_node_config(str(office_ini), office_ini.read_text())
        # Reloading again finds nothing to do.
        assert await s.ok("reload") == [f"reloaded {office_ini}: no changes (3 unchanged)"]
    for server in (stream, echo, extra):
        await server.close()


async def test_reload_of_a_bad_file_changes_nothing(
    route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(
        node_ini(route.port, "[vnet]\nname=office\ngroup=g\n[use.a]\nserveid=701\n")
    )
    async with file_node(office_ini) as office, session(office) as s:
        before = office.config
        office_ini.write_text(node_ini(route.port, "[use.a]\nserverid=701\n"))
        outcome, out, err = await s.run("reload")
        assert (outcome, out) == (Outcome.FAILED, [])
        assert err == [
            f"reload: {office_ini}: [use.a] serverid: unknown key "
            "(known: active, ip, port, serveid, type, udp_flows, udp_idle)"
        ]
        assert office.config is before
        outcome, _, err = await s.run(f"reload {tmp_path / 'missing.ini'}")
        assert err == [f"reload: cannot read {tmp_path / 'missing.ini'}: no such file"]


# --- vnet -c -------------------------------------------------------------------


async def test_script_runs_commands_against_the_route(
    make_node: MakeNode, route: RunningRoute, tmp_path: Path
) -> None:
    home = await make_node("home", serves=[ServeConfig("ssh", 22, serveid=700, info="home-ssh")])
    office_ini = tmp_path / "office.ini"
    # Its own serve and use are not started: a script is not the node.
    office_ini.write_text(
        node_ini(route.port, "[vnet]\nname=office\ngroup=g\n[serve.own]\nserveid=701\nport=1\n")
    )
    config = parse_node_config(str(office_ini), office_ini.read_text())
    out: list[str] = []
    err: list[str] = []
    node = await make_node(config=config, timeouts=NodeTimeouts(connect=TIMEOUT), start=False)
    rc = await run_script(node, ["show serves", "show vnets", "ping"], out.append, err.append)
    assert (rc, err) == (0, [])
    assert out[:3] == [
        "serveid  vnet  name  type  ip         port  info",
        f"700      {home.vnetid}    ssh   tcp   127.0.0.1  22    home-ssh",
        "- 1 vnet(s), 1 serve(s) registered -",
    ]
    assert out[3] == "vnet  name    serves"
    assert out[6] == "- 2 vnet(s) in group g -"
    assert re.fullmatch(r"ping .*: \d+\.\d\d ms", out[7])
    # A failing line stops the script; a bad one says so with 2.
    out.clear()
    node = await make_node(config=config, timeouts=NodeTimeouts(connect=TIMEOUT), start=False)
    rc = await run_script(node, ["serve open nope", "ping"], out.append, err.append)
    assert (rc, out, err) == (1, [], ["vnet: serve open nope: no serve named 'nope' (serves: own)"])
    node = await make_node(config=config, timeouts=NodeTimeouts(connect=TIMEOUT), start=False)
    assert await run_script(node, ["show everything"], out.append, err.append) == 2


async def test_script_when_the_route_is_down(make_node: MakeNode, tmp_path: Path) -> None:
    port = free_port()
    config = NodeConfig("(test)", RouteEndpoint("127.0.0.1", port), VnetConfig())
    err: list[str] = []
    started = time.monotonic()
    node = await make_node(config=config, timeouts=NodeTimeouts(connect=0.5), start=False)
    rc = await run_script(node, ["ping"], print, err.append)
    assert rc == 1
    assert len(err) == 1
    assert err[0].startswith(f"vnet: cannot reach the route at 127.0.0.1:{port}")
    assert time.monotonic() - started < TIMEOUT


async def run_vnet(*args: str, cwd: Path, timeout: float = 30.0) -> tuple[int, str, str, float]:
    started = time.monotonic()
    rc, out, err = await Procs(cwd).run(command("vnet"), *args, cwd=cwd, timeout=timeout)
    return rc, out, err, time.monotonic() - started


@pytest.mark.e2e
async def test_vnet_dash_c(make_node: MakeNode, route: RunningRoute, tmp_path: Path) -> None:
    home = await make_node("home", serves=[ServeConfig("ssh", 22, serveid=700, info="home-ssh")])
    (tmp_path / "office.ini").write_text(
        node_ini(route.port, "[vnet]\nname=office\ngroup=g\nterminal=true\n")
    )
    rc, out, err, _ = await run_vnet(
        "office.ini", "-c", "show serves", "-c", "show vnets", "-c", "ping", cwd=tmp_path
    )
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[:3] == [
        "serveid  vnet  name  type  ip         port  info",
        f"700      {home.vnetid}    ssh   tcp   127.0.0.1  22    home-ssh",
        "- 1 vnet(s), 1 serve(s) registered -",
    ]
    assert lines[6] == "- 2 vnet(s) in group g -"
    assert lines[7].startswith(f"ping 127.0.0.1:{route.port}: ")
    rc, out, err, _ = await run_vnet("office.ini", "-c", "show servs", cwd=tmp_path)
    assert (rc, out) == (2, "")
    assert err == (
        "vnet: show: cannot show 'servs'; did you mean 'serves'? "
        "(usage: show serve|use|serves|vnet|vnets|unserves)\n"
    )


@pytest.mark.e2e
async def test_vnet_dash_c_when_the_route_is_down(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "office.ini").write_text(node_ini(port, "[vnet]\nname=office\n"))
    rc, out, err, took = await run_vnet(
        "office.ini", "--timeout", "1", "-c", "show serves", cwd=tmp_path
    )
    assert (rc, out) == (1, "")
    assert err.count("\n") == 1, err
    assert err.startswith(f"vnet: cannot reach the route at 127.0.0.1:{port}")
    assert "Traceback" not in err
    assert took < 1 + TIMEOUT


# --- the real program in a pseudo-terminal -------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


class PtyProgram:
    """A program on a pseudo-terminal; expect() waits for text on its screen."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.raw = b""
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program has exited
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        # Answer cursor-position requests as a terminal would (row 10 of 40):
        # prompt_toolkit draws the bottom toolbar only once it knows the rows below.
        for _ in range(data.count(b"\x1b[6n")):
            os.write(self.master, b"\x1b[10;1R")
        self.raw += data
        self.changed.set()

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    async def expect(self, pattern: str, timeout: float = TIMEOUT) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not re.search(pattern, self.screen):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"never saw {pattern!r} on:\n{self.screen[-3000:]}") from None

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def wait(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"still running:\n{self.screen[-3000:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.1)
        return self.proc.returncode

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@contextlib.contextmanager
def pty_program(args: list[str], cwd: Path, env: dict[str, str]) -> Iterator[PtyProgram]:
    program = PtyProgram(args, cwd, env)
    try:
        yield program
    finally:
        program.close()


@pytest.mark.e2e
async def test_real_program_in_a_terminal(
    make_node: MakeNode, route: RunningRoute, tmp_path: Path, state_home: Path
) -> None:
    await make_node("home", serves=[ServeConfig("ssh", 22, serveid=700, info="home-ssh")])
    (tmp_path / "office.ini").write_text(
        node_ini(route.port, "[vnet]\nname=office\ngroup=g\nterminal=true\n")
    )
    env = {
        **os.environ,
        "TERM": "xterm",
        "XDG_STATE_HOME": str(state_home),
    }
    with pty_program([command("vnet"), "office.ini"], tmp_path, env) as vnet:
        await vnet.expect(r"type help for the commands")
        await vnet.expect(r">:")
        await vnet.expect(rf"route 127\.0\.0\.1:{route.port} \| connected")  # the toolbar
        vnet.type("show serves\r")
        await vnet.expect(r"- 1 vnet\(s\), 1 serve\(s\) registered -")
        assert re.search(r"700\s+\d\d\s+ssh\s+tcp\s+127\.0\.0\.1\s+22\s+home-ssh", vnet.screen)
        # Tab completion: "sh" + Tab becomes "show", so this runs `show vnets`.
        vnet.type("sh")
        await vnet.expect(r"show this node, or ask the route")  # the completion menu
        vnet.type("\t")
        await vnet.expect(r">: ?show(?! this)")
        vnet.type(" vnets\r")
        await vnet.expect(r"- 2 vnet\(s\) in group g -")
        vnet.type("exit\r")
        assert await vnet.wait() == 0
    assert "+show serves" in (state_home / "vnet" / "history").read_text()


async def test_udp_serve_and_use_from_the_console_then_save(
    route: RunningRoute, tmp_path: Path, file_node: FileNode
) -> None:
    from tests.udp_services import udp_client, udp_server

    echo = await udp_server()
    office_ini = tmp_path / "office.ini"
    office_ini.write_text(node_ini(route.port, "[vnet]\nname=office\ngroup=g\nterminal=true\n"))
    async with file_node(office_ini) as office, session(office) as s:
        await s.ok(f"serve run dns type=udp port={echo.port} serveid=753 udp_idle=30")
        assert route.servicer.registry.find("g", 753).type == "udp"
        # A tcp use of a udp serve does not listen, and says why.
        port = free_port()
        outcome, _, err = await s.run(f"use run wrong serveid=753 port={port}")
        assert outcome is Outcome.FAILED
        assert "is udp: set type=udp" in err[0]
        await s.ok("use delete wrong")
        await s.ok(f"use run dns serveid=753 type=udp port={port} udp_flows=8")
        client = await udp_client(port)
        assert await client.round_trip(b"console") == b"console"
        serves = await s.ok("show serves")
        assert serves[1].split()[:4] == ["753", office.vnetid, "dns", "udp"]
        uses = await s.ok("show use")
        assert uses[1].split()[:4] == ["dns", "753", "udp", "listening"]
        assert uses[2].startswith("  [use.dns] udp flows 1 open, 1 opened; out 1 datagrams")
        await s.ok("save")
        client.close()
    saved = config_of(office_ini)
    assert [(u.key, u.type, u.udp_flows) for u in saved.uses] == [("dns", "udp", 8)]
    assert [(v.key, v.type, v.udp_idle) for v in saved.serves] == [("dns", "udp", 30)]
    echo.close()
