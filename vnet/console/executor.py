"""Runs console commands against a node: the engine behind the console and `vnet -c`.

No prompt_toolkit here: output goes through the `out` and `err` callables
(one line each), and `ask` (None when nobody can answer, as with -c) asks
for a missing field. Every failure ends as one line on `err`, never a
traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from vnet.core import commands, config_save, tables
from vnet.core.commands import (
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
)
from vnet.core.config import NodeConfig, parse_node_config
from vnet.core.config_diff import ConfigDiff, SectionDiff
from vnet.core.errors import ConfigError, NotFound, RouteUnavailable, VnetError
from vnet.core.tables import ServeView, UseView
from vnet.core.unserve import UNUSED_TTL
from vnet.files import read_config_text
from vnet.node.node import Node, lost_words

log = logging.getLogger(__name__)

Write = Callable[[str], None]
Ask = Callable[[str], Awaitable[str]]

# Background refreshes must never hold the console up for long.
REFRESH_TIMEOUT = 5.0


class Outcome(enum.Enum):
    OK = 0
    FAILED = 1
    USAGE = 2
    EXIT = 3


@dataclass
class Status:
    """What the toolbar and completion show between refreshes (never fetched on demand)."""

    ping_ms: float | None = None
    pinged_at: float | None = None
    vnets: tuple[tuple[str, str], ...] = ()
    error: str = ""


async def refresh(node: Node, status: Status) -> None:
    """One background round: ping the route and list the group's nodes."""
    if not node.connected:
        return
    try:
        status.ping_ms = await node.client.ping(timeout=REFRESH_TIMEOUT) * 1000
        status.pinged_at = time.monotonic()
        vnets = await node.client.list_vnets(timeout=REFRESH_TIMEOUT)
    except VnetError as exc:
        # Joined, so UNAUTHENTICATED means the route forgot the session (it restarted).
        status.error = lost_words(exc, joined=True)
        return
    status.error = ""
    status.vnets = tuple((v.vnetid, v.name) for v in vnets)


def completion_data(node: Node, status: Status) -> CompletionData:
    """A snapshot for the completer, from local state only."""
    vnetids = dict(status.vnets)
    for serve in node.remote.values():
        vnetids.setdefault(serve.vnetid, "")
    return CompletionData(
        serves={k: s.running for k, s in node.serves.items()},
        uses={k: u.running for k, u in node.uses.items()},
        serveids=tuple(
            (
                s.serveid,
                f"{s.name} on vnet {s.vnetid}" + (f" ({s.type})" if s.type != "tcp" else ""),
            )
            for s in sorted(node.remote.values(), key=lambda s: s.serveid)
        ),
        vnetids=tuple(sorted(vnetids.items())),
    )


def read_config(path: str) -> NodeConfig:
    """Parse a node config file; ConfigError names the file and what is wrong."""
    return parse_node_config(path, read_config_text(path))


def write_config(path: str, config: NodeConfig) -> None:
    """Replace path with config, atomically, keeping what only the file holds."""
    extras: config_save.Extras = {}
    with contextlib.suppress(OSError, UnicodeDecodeError), open(config.path, encoding="utf-8") as f:
        extras = config_save.extras_of(f.read())
    text = config_save.render(config_save.checked(config), extras)
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        # A config may hold a token: readable by its owner only, unless it was otherwise.
        mode = 0o600
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".vnet-save-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _config_reason(exc: ConfigError) -> str:
    where = f"[{exc.section}] " if exc.section else ""
    key = f"{exc.key}: " if exc.key else ""
    return f"{where}{key}{exc.reason}"


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def _vnetid(text: str) -> str:
    """A vnetid as the route writes it (two digits at least): `show serves 1` means 01."""
    return text.zfill(2) if text.isdigit() else text


def _head(line: str) -> str:
    """The command's words, for the start of an error line."""
    words = line.split()
    if not words:
        return ""
    n = 3 if words[0] in ("serve", "use") else 2 if words[0] in ("show", "help") else 1
    return " ".join(words[:n])


class Executor:
    """Runs one line at a time against a node."""

    def __init__(
        self,
        node: Node,
        out: Write,
        err: Write,
        ask: Ask | None = None,
        status: Status | None = None,
    ) -> None:
        self.node = node
        self.out = out
        self.err = err
        self.ask = ask
        self.status = status or Status()

    async def run(self, line: str) -> Outcome:
        head = _head(line)
        try:
            command = commands.parse(line)
            if command is None:
                return Outcome.OK
            return await self._dispatch(command)
        except CommandError as exc:
            self.err(str(exc))
            return Outcome.USAGE
        except ConfigError as exc:
            self.err(f"{head}: {_config_reason(exc)}")
        except VnetError as exc:
            self.err(f"{head}: {lost_words(exc, joined=bool(self.node.vnetid))}")
        except OSError as exc:
            self.err(f"{head}: {exc.strerror or exc}")
        except (EOFError, KeyboardInterrupt):
            self.err(f"{head}: cancelled")
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback at the prompt
            log.debug("%s failed", head, exc_info=True)
            self.err(f"{head}: internal error: {exc!r}")
        return Outcome.FAILED

    async def _dispatch(self, command: commands.Command) -> Outcome:
        if isinstance(command, Help):
            self._lines(commands.help_text(command.topic))
        elif isinstance(command, Exit):
            return Outcome.EXIT
        elif isinstance(command, Unserve):
            await self._unserve(command)
        elif isinstance(command, Ping):
            await self._ping()
        elif isinstance(command, Show):
            await self._show(command)
        elif isinstance(command, Reload):
            return await self._reload(command.path)
        elif isinstance(command, Save):
            path = command.path or self.node.config.path
            try:
                write_config(path, self.node.config)
            except OSError as exc:
                raise VnetError(f"cannot save to {path}: {_os_reason(exc)}") from None
            self.out(f"saved {path}")
        elif isinstance(command, Manage):
            await self._manage(command)
        return Outcome.OK

    def _lines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.out(line)

    def _connected(self) -> None:
        if not self.node.connected:
            raise RouteUnavailable(
                f"the route is not connected ({self.node.lost or 'not started'})"
            )

    async def _ping(self) -> None:
        self._connected()
        ms = await self.node.client.ping() * 1000
        self.status.ping_ms, self.status.pinged_at = ms, time.monotonic()
        self.out(f"ping {self.node.route_address}: {ms:.2f} ms")

    async def _show(self, command: Show) -> None:
        node = self.node
        if command.what == "serve":
            self._lines(tables.local_serves_table(serve_views(node)))
        elif command.what == "use":
            self._lines(tables.local_uses_table(use_views(node)))
        elif command.what == "vnet":
            self._lines(tables.pairs_block(vnet_pairs(node)))
        elif command.what == "serves":
            self._connected()
            serves = await node.client.list_serves()
            vnetid = _vnetid(command.vnetid)
            # A node with no serves is there all the same: ask before saying it is not.
            if vnetid and not any(s.vnetid == vnetid for s in serves):
                vnets = await node.client.list_vnets()
                if not any(v.vnetid == vnetid for v in vnets):
                    raise NotFound(f"no vnet {command.vnetid} in this group")
            self._lines(tables.serves_table(serves, vnetid))
        elif command.what == "unserves":
            self._lines(tables.unserves_table(unserve_rows(node)))
        else:
            self._connected()
            vnets = await node.client.list_vnets()
            self.status.vnets = tuple((v.vnetid, v.name) for v in vnets)
            self._lines(tables.vnets_table(vnets, node.vnetid, node.group))

    async def _reload(self, path: str | None) -> Outcome:
        path = path or self.node.config.path
        try:
            config = read_config(path)
        except ConfigError as exc:
            # Name the file: it may not be the one the node started from.
            if exc.section is None and exc.key is None:
                raise VnetError(f"cannot read {path}: {exc.reason}") from None
            raise VnetError(f"{path}: {_config_reason(exc)}") from None
        for warning in config.warnings:
            self.out(f"warning: {warning}")
        change, problems = await self.node.reload(config)
        self.out(f"reloaded {path}: {_summary(change)}")
        for what in change.needs_restart:
            self.out(f"  {what} changed: takes effect when the node restarts")
        for problem in problems:
            self.err(f"reload: {problem}")
        return Outcome.FAILED if problems else Outcome.OK

    async def _manage(self, command: Manage) -> None:
        node, kind, name = self.node, command.kind, command.name
        if command.action == "open":
            await (node.open_serve(name) if kind == "serve" else node.open_use(name))
        elif command.action == "close":
            await (node.close_serve(name) if kind == "serve" else node.close_use(name))
        elif command.action == "delete":
            await (node.delete_serve(name) if kind == "serve" else node.delete_use(name))
        else:
            fields = await self._complete_fields(command)
            active = command.action == "run"
            if kind == "serve":
                await node.add_serve(commands.make_serve(name, fields, active))
            else:
                await node.add_use(commands.make_use(name, fields, active))

    async def _unserve(self, command: Unserve) -> None:
        """As the original: ask what is missing, request, then map it here."""
        self._connected()
        vnetid, ip, port = command.vnetid, command.ip, command.port
        if not vnetid:
            vnetid = await self._required("to vnetid: ", "unserve: a vnetid is required")
        if port is None:
            ip = ip or await self._optional("ip(127.0.0.1): ")
            port = _port(await self._required("port: ", "unserve: a port is required"), 1)
        ip = ip or "127.0.0.1"
        udp = "/udp" if command.type == "udp" else ""
        self.out(
            f"asking vnet {vnetid} for its unregistered {ip}:{port}{udp} ... "
            f"(an unserve lapses after {UNUSED_TTL / 60:g} min unused)"
        )
        serve = await self.node.unserve(vnetid, ip, port, command.type)
        self.out(f"vnet {vnetid} offers it as serveid {tables.serveid_text(serve.serveid)}")
        local_ip, local_port = command.local_ip, command.local_port
        if local_port is None and self.ask is not None:
            local_ip = local_ip or await self._optional("ip(127.0.0.1): ")
            answer = await self._optional(f"port({port}): ")
            local_port = _port(answer, 0) if answer else None
        state = await self.node.map_unserve(
            serve, local_ip or "127.0.0.1", port if local_port is None else local_port
        )
        self.out(
            f"mapped {state.config.ip}:{state.port} -> serveid "
            f"{tables.serveid_text(serve.serveid)} ({ip}:{port} on vnet {vnetid}); "
            "it ends when the unserve does"
        )

    async def _required(self, prompt: str, missing: str) -> str:
        if self.ask is None:
            raise CommandError(missing, f"usage: {commands.COMMANDS['unserve'][0]}")
        answer = (await self.ask(prompt)).strip()
        if not answer:
            raise CommandError(missing)
        return answer

    async def _optional(self, prompt: str) -> str:
        return (await self.ask(prompt)).strip() if self.ask is not None else ""

    async def _complete_fields(self, command: Manage) -> dict[str, str]:
        fields = command.values
        if self.ask is None:
            missing = commands.missing_required(command)
            if missing:
                raise CommandError(
                    f"{command.words}: {', '.join(m + '=' for m in missing)} is required",
                    f"give it inline, e.g. {command.words} {_example(command.kind)}",
                )
            return fields
        for ask in commands.to_ask(command):
            answer = (await self.ask(ask.prompt)).strip()
            if answer:
                fields[ask.key] = commands.check_value(command.words, ask.key, answer)
            elif ask.required:
                raise CommandError(f"{command.words}: {ask.key} is required")
        return fields


def _port(text: str, low: int) -> int:
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise CommandError(f"unserve: {text!r} is not a port ({low}-65535)")
    return int(text)


def unserve_rows(node: Node) -> list[list[str]]:
    """This node's offers for `show unserves`, with the time left on each."""
    now = asyncio.get_running_loop().time()
    rows = []
    for offer in sorted(node.unserves.offers.values(), key=lambda o: o.serveid):
        at = offer.lapses_at(node.unserves.unused_ttl, node.unserves.linger)
        lapses = "while in use" if at is None else f"in {max(at - now, 0):.0f}s"
        rows.append(
            [
                tables.serveid_text(offer.serveid),
                offer.requester,
                offer.ip,
                str(offer.port),
                str(offer.open),
                lapses,
            ]
        )
    return rows


def _example(kind: str) -> str:
    return "port=8888" if kind == "serve" else "serveid=701"


def _summary(change: ConfigDiff) -> str:
    parts: list[str] = []

    def add(kind: str, diff: SectionDiff) -> None:
        for label, names in (
            ("added", diff.added),
            ("removed", diff.removed),
            ("restarted", diff.changed),
            ("opened or closed", diff.toggled),
        ):
            if names:
                parts.append(f"{kind} {label}: {', '.join(names)}")

    add("serve", change.serves)
    add("use", change.uses)
    same = len(change.serves.unchanged) + len(change.uses.unchanged)
    if not parts:
        return f"no changes ({same} unchanged)"
    return "; ".join(parts) + f" ({same} unchanged)"


def serve_views(node: Node) -> list[ServeView]:
    views = []
    for key, s in node.serves.items():
        if s.serveid is not None:
            state = "registered"
        elif s.error:
            state = "error"
        else:
            state = "inactive" if not s.running else "starting"
        serveid = s.serveid if s.serveid is not None else s.config.serveid
        views.append(
            ServeView(
                key=key,
                serveid=tables.serveid_text(serveid) if serveid else "auto",
                state=state,
                ip=s.config.ip,
                port=s.config.port,
                name=s.config.name,
                info=s.config.info,
                error=s.error if s.serveid is None else "",
                type=s.config.type,
                udp=s.udp.summary() if s.config.type == "udp" else "",
            )
        )
    return views


def use_views(node: Node) -> list[UseView]:
    views = []
    for key, u in node.uses.items():
        serve = node.remote.get(u.config.serveid)
        if u.listening:
            state = "listening"
        elif not u.running:
            state = "inactive"
        elif serve is None:
            state = "waiting"
        else:
            state = "error"
        if u.port is not None:
            port = str(u.port)
        else:
            port = str(u.config.port) if u.config.port is not None else "(serve's)"
        views.append(
            UseView(
                key=key,
                serveid=u.config.serveid,
                state=state,
                ip=u.config.ip,
                port=port,
                target=f"{serve.name} on vnet {serve.vnetid}" if serve else "",
                error=u.error if state == "error" else "",
                type=u.config.type,
                udp=u.udp_counters.summary() if u.config.type == "udp" else "",
            )
        )
    return views


def vnet_pairs(node: Node) -> list[tuple[str, str]]:
    cfg = node.config
    route = node.route_address + (
        " (connected)" if node.connected else f" (not connected: {node.lost or 'not started'})"
    )
    registered = sum(1 for s in node.serves.values() if s.serveid is not None)
    listening = sum(1 for u in node.uses.values() if u.listening)
    # With several routes, the ones it may fail over to, in order.
    several = [("routes", ", ".join(t.address for t in cfg.routes))] if cfg.routes else []
    return [
        ("vnetid", node.vnetid or "-"),
        ("name", cfg.vnet.name),
        ("group", node.group or cfg.vnet.group),
        ("route", route),
        *several,
        ("config", cfg.path),
        ("terminal", _flag(cfg.vnet.terminal)),
        ("startserve", _flag(cfg.vnet.startserve)),
        ("startuse", _flag(cfg.vnet.startuse)),
        ("serves", f"{len(node.serves)} ({registered} registered)"),
        ("uses", f"{len(node.uses)} ({listening} listening)"),
    ]


def _flag(value: bool) -> str:
    return "true" if value else "false"


async def run_script(node: Node, lines: Sequence[str], out: Write, err: Write) -> int:
    """`vnet CONFIG -c LINE ...`: join (starting nothing), run each line, leave.

    Stops at the first failure. Returns 0, 1 (a command failed, or the route
    cannot be reached) or 2 (a line is not a valid command).
    """
    try:
        try:
            await node.start(autostart=False)
        except VnetError as exc:
            err(f"vnet: {exc}")
            return 1
        executor = Executor(node, out, lambda line: err(f"vnet: {line}"))
        for line in lines:
            outcome = await executor.run(line)
            if outcome is Outcome.EXIT:
                break
            if outcome is not Outcome.OK:
                return 2 if outcome is Outcome.USAGE else 1
        return 0
    finally:
        await node.stop()
