"""The interactive console of `[vnet] terminal=true`, on prompt_toolkit.

An adapter only: the language is vnet.core.commands and the work vnet.console.executor.
It runs on the node's own event loop, so tunnels keep flowing while someone
types. Completion reads a snapshot of local state and of what a background
task last fetched, never the network. Logs print above the prompt without
breaking the line being typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from vnet.console.executor import Executor, Outcome, Status, Write, completion_data, refresh
from vnet.core import commands
from vnet.core.commands import CompletionData
from vnet.core.errors import RouteUnavailable
from vnet.node.node import Node

log = logging.getLogger(__name__)

PROMPT = ">: "  # the original's
# How often the background task pings the route and lists its nodes.
REFRESH_INTERVAL = 10.0
_LEVEL_STYLE = {logging.WARNING: "ansiyellow", logging.ERROR: "ansired"}


def history_path(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/vnet/history, by default ~/.local/state/vnet/history."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vnet" / "history"


def open_history(path: Path) -> History:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError as exc:
        log.warning("history is not kept: cannot write %s: %s", path, exc.strerror or exc)
        return InMemoryHistory()
    return FileHistory(str(path))


class VnetCompleter(Completer):
    """prompt_toolkit's view of commands.complete()."""

    def __init__(self, data: Callable[[], CompletionData]) -> None:
        self._data = data
        self._paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        before = document.text_before_cursor
        result = commands.complete(before, self._data())
        # Replace exactly what was typed; a quoted or escaped word is left alone.
        if not before.endswith(result.word):
            return
        if result.path:
            sub = Document(result.word, len(result.word))
            yield from self._paths.get_completions(sub, complete_event)
            return
        for candidate in result.candidates:
            yield Completion(
                candidate.text,
                start_position=-len(result.word),
                display_meta=candidate.meta or None,
            )


class ConsoleLogHandler(logging.Handler):
    """Prints records above the prompt (print_formatted_text does, while a prompt runs)."""

    def __init__(self, output: Output | None = None) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            style = _LEVEL_STYLE.get(record.levelno, "")
            if record.levelno > logging.ERROR:
                style = "ansired bold"
            print_formatted_text(FormattedText([(style, text)]), output=self.output)
        except Exception:  # noqa: BLE001 - logging must never break the console
            self.handleError(record)


@contextlib.contextmanager
def console_logging(output: Output | None = None) -> Iterator[ConsoleLogHandler]:
    """Route log records above the prompt instead of straight to the terminal."""
    root = logging.getLogger()
    terminal = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    # Handlers writing to the terminal would tear the prompt; others (files,
    # pytest's capture) stay.
    moved = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in terminal]
    handler = ConsoleLogHandler(output)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for h in moved:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for h in moved:
            root.addHandler(h)


class Console:
    """One interactive session against a started node."""

    def __init__(
        self,
        node: Node,
        *,
        input: Input | None = None,
        output: Output | None = None,
        history: History | None = None,
        out: Write | None = None,
        err: Write | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.node = node
        self.output = output
        self.status = Status()
        self.refresh_interval = refresh_interval
        self.session: PromptSession[str] = PromptSession(
            PROMPT,
            completer=VnetCompleter(lambda: completion_data(node, self.status)),
            history=history if history is not None else open_history(history_path()),
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self.toolbar,
            # Redraws the toolbar, so the connection state and ping stay current.
            refresh_interval=1.0,
            input=input,
            output=output,
        )
        # Answers to "port: " are not commands: no completion, no shared history.
        self._fields: PromptSession[str] = PromptSession(input=input, output=output)
        self.executor = Executor(
            node, out or self._print, err or self._print_error, ask=self._ask, status=self.status
        )

    def _print(self, line: str) -> None:
        print_formatted_text(line, output=self.output)

    def _print_error(self, line: str) -> None:
        print_formatted_text(FormattedText([("ansired", line)]), output=self.output)

    def toolbar(self) -> str:
        node, status = self.node, self.status
        state = "connected" if node.connected else "route lost" if node.lost else "not connected"
        ping = f"{status.ping_ms:.1f} ms" if status.ping_ms is not None else "-"
        return (
            f" route {node.route_address} | {state} | vnet {node.vnetid or '-'}"
            f" ({node.name}) | group {node.group or node.config.vnet.group} | ping {ping} "
        )

    async def _ask(self, prompt: str) -> str:
        return await self._fields.prompt_async(
            prompt, handle_sigint=False, set_exception_handler=False
        )

    async def _refresh_forever(self) -> None:
        while True:
            await refresh(self.node, self.status)
            await asyncio.sleep(self.refresh_interval)

    async def _watch_route(self) -> None:
        with contextlib.suppress(RouteUnavailable):
            await self.node.wait()
        log.error(
            "the route went away (%s); local commands still work, exit leaves",
            self.node.lost or "control stream ended",
        )

    async def run(self) -> None:
        """Read and run lines until exit or Ctrl-D."""
        background = [
            asyncio.create_task(self._refresh_forever()),
            asyncio.create_task(self._watch_route()),
        ]
        try:
            with console_logging(self.output):
                node = self.node
                self._print(
                    f"vnet {node.vnetid} ({node.name}) in group {node.group}, "
                    f"route {node.route_address}: type help for the commands"
                )
                await self._loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                # Our own SIGINT/SIGTERM handlers stay; Ctrl-C at the prompt is a key.
                line = await self.session.prompt_async(
                    handle_sigint=False, set_exception_handler=False
                )
            except KeyboardInterrupt:
                continue  # Ctrl-C drops the line, as in a shell
            except EOFError:
                return  # Ctrl-D
            if await self.executor.run(line) is Outcome.EXIT:
                return


async def run_console(node: Node) -> None:
    await Console(node).run()
