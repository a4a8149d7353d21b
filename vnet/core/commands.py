"""The console's language: parsing, completion and tables.

Pure: no prompt_toolkit, asyncio, grpc or sockets. The console adapter
(vnet.console.prompt) feeds it lines and the text before the cursor; the executor
(vnet.console.executor) runs what parse() returns against the node.

New serves and uses are built by the same parser as config.ini, so a
console-made serve obeys exactly the rules (and defaults) of the file.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vnet.core.config import (
    SERVE_KEYS,
    SERVEID_MAX,
    USE_KEYS,
    NodeConfig,
    ServeConfig,
    UseConfig,
    parse_node_config,
)
from vnet.core.errors import ConfigError, VnetError

# --- the grammar ---------------------------------------------------------------

# word -> (usage, what it does); in the order help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("help [COMMAND]", "list the commands, or explain one"),
    "reload": (
        "reload [FILE]",
        "re-read the config file and apply only what changed",
    ),
    "serve": ("serve open|close|new|run|delete NAME", "this node's serves (help serve)"),
    "use": ("use open|close|new|run|delete NAME", "this node's uses (help use)"),
    "show": ("show serve|use|serves|vnet|vnets|unserves", "show this node, or ask the route"),
    "ping": ("ping", "round trip to the route, in ms"),
    "unserve": (
        "unserve VNETID [IP] PORT [LOCAL_IP] [LOCAL_PORT] [type=udp]",
        "reach a service another node has not registered",
    ),
    "save": ("save [FILE]", "write the configuration as it is now to a file"),
    "exit": ("exit", "stop this node and leave"),
}

Kind = Literal["serve", "use"]
ACTIONS: dict[Kind, dict[str, str]] = {
    "serve": {
        "open": "activate an inactive serve and register it at the route",
        "close": "unregister a serve and mark it inactive",
        "new": "create a serve, inactive",
        "run": "create a serve, active, and register it",
        "delete": "unregister a serve and remove it",
    },
    "use": {
        "open": "activate an inactive use and listen",
        "close": "stop listening and mark the use inactive",
        "new": "create a use, inactive",
        "run": "create a use, active, and listen",
        "delete": "stop listening and remove the use",
    },
}
CREATE = ("new", "run")

SHOW: dict[str, str] = {
    "serve": "this node's serves",
    "use": "this node's uses",
    "serves": "the serves registered in the group (asks the route)",
    "vnet": "this node",
    "vnets": "the nodes of the group (asks the route)",
    "unserves": "what this node offers on other nodes' request, and when each lapses",
}

# Inline fields of `serve new|run` and `use new|run`: the keys of the file's
# sections, except active (which the action decides). Keys the config learns
# later become fields here too.
FIELD_HELP: dict[Kind, dict[str, str]] = {
    "serve": {
        "serveid": "1-999, 500+ static; 000: the route assigns one",
        "type": "tcp (default) or udp",
        "ip": "where the service is (127.0.0.1)",
        "port": "the service's port (required)",
        "name": "shown in listings (default: NAME)",
        "info": "free text",
        "udp_idle": "type=udp: seconds a flow may be silent (60)",
    },
    "use": {
        "serveid": "the serve to map (required)",
        "type": "tcp (default) or udp: the serve's type",
        "ip": "where to listen (127.0.0.1)",
        "port": "where to listen (default: the serve's port)",
        "udp_idle": "type=udp: seconds a flow may be silent (60)",
        "udp_flows": "type=udp: flows (client addresses) at once (256)",
    },
}


def field_keys(kind: Kind) -> tuple[str, ...]:
    """The inline keys of kind, documented ones first."""
    keys = (SERVE_KEYS if kind == "serve" else USE_KEYS) - {"active"}
    known = [k for k in FIELD_HELP[kind] if k in keys]
    return (*known, *sorted(keys - set(known)))


@dataclass(frozen=True)
class Ask:
    """One field the console asks for when `new`/`run` lacks it."""

    key: str
    # Shown in parentheses and taken on an empty answer, as in the original.
    default: str = ""
    required: bool = False

    @property
    def prompt(self) -> str:
        return f"    {self.key}({self.default}): " if self.default else f"    {self.key}: "


# The original's prompts and defaults (serveid 000: the route assigns one).
FORMS: dict[Kind, tuple[Ask, ...]] = {
    "serve": (
        Ask("serveid", "000"),
        Ask("ip", "127.0.0.1"),
        Ask("port", required=True),
        Ask("info"),
    ),
    "use": (
        Ask("serveid", required=True),
        Ask("ip", "127.0.0.1"),
        Ask("port", "the serve's"),
    ),
}

NAME_RE = re.compile(r"\w[\w.-]*")
_EXAMPLES = defaultdict(
    lambda: "KEY=VALUE",
    serveid="serveid=701",
    type="type=tcp",
    ip="ip=127.0.0.1",
    port="port=8888",
    name="name=jupyter",
    info='info="my notebook"',
)


class CommandError(VnetError):
    """A line the console cannot run as typed: one line to show, with a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# --- parsed commands -----------------------------------------------------------


@dataclass(frozen=True)
class Help:
    topic: str = ""


@dataclass(frozen=True)
class Reload:
    path: str | None = None


@dataclass(frozen=True)
class Save:
    path: str | None = None


@dataclass(frozen=True)
class Manage:
    """serve|use ACTION NAME [KEY=VALUE ...]"""

    kind: Kind
    action: str
    name: str
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def values(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def words(self) -> str:
        return f"{self.kind} {self.action} {self.name}"


@dataclass(frozen=True)
class Show:
    what: str
    # `show serves VNETID` lists one node's serves.
    vnetid: str = ""


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Unserve:
    """unserve VNETID [IP] PORT [LOCAL_IP] [LOCAL_PORT] [type=udp]; what is not given is asked."""

    vnetid: str = ""
    ip: str = ""
    port: int | None = None
    local_ip: str = ""
    local_port: int | None = None
    type: str = "tcp"


@dataclass(frozen=True)
class Exit:
    pass


Command = Help | Reload | Save | Manage | Show | Ping | Unserve | Exit


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse(line: str) -> Command | None:
    """One console line; None for a blank one. Raises CommandError."""
    try:
        words = shlex.split(line)
    except ValueError:
        raise CommandError("unclosed quote", 'close it, e.g. info="my notebook"') from None
    if not words:
        return None
    verb, args = words[0], words[1:]
    if verb not in COMMANDS:
        raise CommandError(
            f"unknown command {verb!r}{_did_you_mean(verb, list(COMMANDS))}",
            "type help for the list",
        )
    if verb == "help":
        _at_most(verb, args, 1)
        if args and args[0] not in COMMANDS:
            raise CommandError(
                f"help: no command {args[0]!r}{_did_you_mean(args[0], list(COMMANDS))}",
                "type help for the list",
            )
        return Help(args[0] if args else "")
    if verb in ("reload", "save"):
        _at_most(verb, args, 1)
        path = args[0] if args else None
        return Reload(path) if verb == "reload" else Save(path)
    if verb in ("ping", "exit"):
        _at_most(verb, args, 0)
        return Ping() if verb == "ping" else Exit()
    if verb == "unserve":
        return _parse_unserve(args)
    if verb == "show":
        return _parse_show(args)
    kind: Kind = "serve" if verb == "serve" else "use"
    return _parse_manage(kind, args)


def _parse_unserve(args: list[str]) -> Unserve:
    """Addresses and ports told apart by form: a port is all digits."""
    usage = f"usage: {COMMANDS['unserve'][0]}"
    kinds = [a for a in args if a.startswith("type=")]
    args = [a for a in args if not a.startswith("type=")]
    kind = kinds[-1].removeprefix("type=").lower() if kinds else "tcp"
    if kind not in ("tcp", "udp"):
        raise CommandError(f"unserve: type {kind!r} is not supported (tcp or udp)", usage)
    if not args:
        return Unserve(type=kind)
    vnetid, rest = args[0], args[1:]
    if not vnetid.isdigit():
        raise CommandError(f"unserve: {vnetid!r} is not a vnetid (e.g. 01)", usage)
    found: dict[str, str] = {}
    for key, is_port in (("ip", False), ("port", True), ("local_ip", False), ("local_port", True)):
        if rest and rest[0].isdigit() == is_port:
            found[key] = rest.pop(0)
    if rest:
        raise CommandError(f"unserve: unexpected {rest[0]!r}", usage)

    def port(key: str, low: int) -> int | None:
        if key not in found:
            return None
        value = int(found[key])
        if not low <= value <= 65535:
            raise CommandError(f"unserve: {key.replace('_', ' ')} {value} is out of range", usage)
        return value

    return Unserve(
        vnetid=vnetid,
        ip=found.get("ip", ""),
        port=port("port", 1),
        local_ip=found.get("local_ip", ""),
        # 0: any free port, for scripts that read which one from the output.
        local_port=port("local_port", 0),
        type=kind,
    )


def _at_most(where: str, args: list[str], n: int, usage: str = "") -> None:
    if len(args) > n:
        usage = usage or COMMANDS[where][0]
        raise CommandError(f"{where}: unexpected {args[n]!r}", f"usage: {usage}")


def _parse_show(args: list[str]) -> Show:
    usage = f"usage: {COMMANDS['show'][0]}"
    if not args:
        raise CommandError("show what?", usage)
    what = args[0]
    if what not in SHOW:
        raise CommandError(f"show: cannot show {what!r}{_did_you_mean(what, list(SHOW))}", usage)
    if what == "serves":
        _at_most("show serves", args[1:], 1, "show serves [VNETID]")
        return Show(what, args[1] if len(args) > 1 else "")
    _at_most(f"show {what}", args[1:], 0, COMMANDS["show"][0])
    return Show(what)


def _parse_manage(kind: Kind, args: list[str]) -> Manage:
    actions = ACTIONS[kind]
    usage = f"usage: {kind} {'|'.join(actions)} NAME"
    if not args:
        raise CommandError(f"{kind}: what to do?", usage)
    action = args[0]
    if action not in actions:
        raise CommandError(
            f"{kind}: no action {action!r}{_did_you_mean(action, list(actions))}", usage
        )
    if len(args) < 2:
        example = f"{kind} {action} NAME"
        if action in CREATE:
            example += " port=8888" if kind == "serve" else " serveid=701"
        raise CommandError(f"{kind} {action}: which {kind}?", f"e.g. {example}")
    name = args[1]
    rest = args[2:]
    if action not in CREATE:
        _at_most(f"{kind} {action} {name}", rest, 0, f"{kind} {action} NAME")
        return Manage(kind, action, name)
    if not NAME_RE.fullmatch(name):
        raise CommandError(
            f"{kind} {action}: {name!r} cannot name a [{kind}.NAME] section",
            "use letters, digits, '_', '-' and '.'",
        )
    return Manage(kind, action, name, _parse_fields(kind, f"{kind} {action} {name}", rest))


def _parse_fields(kind: Kind, where: str, words: list[str]) -> tuple[tuple[str, str], ...]:
    keys = field_keys(kind)
    seen: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise CommandError(f"{where}: {word!r} is not KEY=VALUE", f"keys: {', '.join(keys)}")
        if key == "active":
            raise CommandError(
                f"{where}: active= is not a field here",
                f"{kind} new makes it inactive, {kind} run active",
            )
        if key not in keys:
            raise CommandError(
                f"{where}: unknown key {key!r}{_did_you_mean(key, keys)}",
                f"keys: {', '.join(keys)}",
            )
        if key in seen:
            raise CommandError(f"{where}: {key}= is given twice")
        seen[key] = check_value(where, key, value)
        if not seen[key]:
            raise CommandError(f"{where}: {key}= needs a value", f"e.g. {_EXAMPLES[key]}")
    return tuple(seen.items())


def check_value(where: str, key: str, value: str) -> str:
    """A field's value as it will be written to the file; refuses what cannot be."""
    value = value.strip()
    if any(ord(ch) < 32 for ch in value):
        raise CommandError(f"{where}: {key}= contains control characters")
    if re.search(r"\s[;#]", value):
        raise CommandError(
            f"{where}: {key}= cannot contain ' ;' or ' #'",
            "config.ini would read the rest as a comment",
        )
    return value


def to_ask(command: Manage) -> tuple[Ask, ...]:
    """What to ask for before creating: the whole form when no field was given
    (as the original did), else only the required ones still missing."""
    form = FORMS[command.kind]
    given = command.values
    if not given:
        return form
    return tuple(a for a in form if a.required and a.key not in given)


def missing_required(command: Manage) -> tuple[str, ...]:
    given = command.values
    return tuple(a.key for a in FORMS[command.kind] if a.required and a.key not in given)


def make_serve(name: str, fields: Mapping[str, str], active: bool) -> ServeConfig:
    """A [serve.NAME] as config.ini would give it; raises CommandError."""
    config = _as_file("serve", name, fields, active)
    return config.serves[0]


def make_use(name: str, fields: Mapping[str, str], active: bool) -> UseConfig:
    """A [use.NAME] as config.ini would give it; raises CommandError."""
    if fields.get("serveid", "").strip("0") == "":
        raise CommandError(
            f"use {name}: serveid= is required (1-{SERVEID_MAX}); a use without one stays off",
            "e.g. serveid=701",
        )
    config = _as_file("use", name, fields, active)
    return config.uses[0]


def _as_file(kind: Kind, name: str, fields: Mapping[str, str], active: bool) -> NodeConfig:
    body = "".join(f"{k}={check_value(kind, k, v)}\n" for k, v in fields.items())
    text = (
        "[route]\nip=127.0.0.1\nport=1\n"
        f"[{kind}.{name}]\n{body}active={'true' if active else 'false'}\n"
    )
    try:
        return parse_node_config("(console)", text)
    except ConfigError as exc:
        where = f"{exc.key}: " if exc.key else ""
        raise CommandError(f"{kind} {name}: {where}{exc.reason}") from None


# --- completion ----------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    text: str
    meta: str = ""


@dataclass(frozen=True)
class Completions:
    """What may replace `word` (the partial word before the cursor)."""

    word: str
    candidates: tuple[Candidate, ...] = ()
    # The word is a file name: the adapter completes it from the filesystem.
    path: bool = False


@dataclass(frozen=True)
class CompletionData:
    """A snapshot of what completion may offer; never fetched while completing."""

    # name -> running, for this node's serves and uses.
    serves: Mapping[str, bool] = field(default_factory=dict)
    uses: Mapping[str, bool] = field(default_factory=dict)
    # The group's serves, as (serveid, description).
    serveids: Sequence[tuple[int, str]] = ()
    # The group's nodes, as (vnetid, name).
    vnetids: Sequence[tuple[str, str]] = ()


def split_partial(before: str) -> tuple[list[str], str] | None:
    """Complete words and the partial word at the cursor; None inside a quote."""
    lexer = shlex.shlex(before, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        words = list(lexer)
    except ValueError:
        return None
    if not before or before[-1].isspace():
        return words, ""
    return words[:-1], words[-1] if words else ""


def complete(before: str, data: CompletionData) -> Completions:
    """The candidates for the word at the cursor, given the text before it."""
    split = split_partial(before)
    if split is None:
        return Completions("")
    words, word = split
    return Completions(
        word,
        tuple(c for c in _candidates(words, word, data) if c.text.startswith(word)),
        _is_path(words),
    )


def _is_path(words: list[str]) -> bool:
    return len(words) == 1 and words[0] in ("reload", "save")


def _candidates(words: list[str], word: str, data: CompletionData) -> list[Candidate]:
    if not words:
        return [Candidate(w, what) for w, (_, what) in COMMANDS.items()]
    verb, n = words[0], len(words)
    if verb == "help" and n == 1:
        return [Candidate(w, what) for w, (_, what) in COMMANDS.items()]
    if verb == "show" and n == 1:
        return [Candidate(w, what) for w, what in SHOW.items()]
    if verb == "show" and n == 2 and words[1] == "serves":
        return [Candidate(v, name) for v, name in data.vnetids]
    if verb == "unserve" and word.startswith("t"):
        return [Candidate("type=tcp", "the default"), Candidate("type=udp", "a UDP service")]
    if verb == "unserve" and n == 1:
        return [Candidate(v, name) for v, name in data.vnetids]
    if verb not in ("serve", "use"):
        return []
    kind: Kind = "serve" if verb == "serve" else "use"
    if n == 1:
        return [Candidate(a, what) for a, what in ACTIONS[kind].items()]
    action = words[1]
    names = data.serves if kind == "serve" else data.uses
    if n == 2:
        return _names(action, names)
    if action not in CREATE:
        return []
    return _fields(kind, words[3:], word, data)


def _names(action: str, names: Mapping[str, bool]) -> list[Candidate]:
    if action == "open":
        return [Candidate(n, "inactive") for n, on in sorted(names.items()) if not on]
    if action == "close":
        return [Candidate(n, "active") for n, on in sorted(names.items()) if on]
    if action == "delete":
        return [Candidate(n) for n in sorted(names)]
    return []  # new/run take a new name


def _fields(kind: Kind, given: list[str], word: str, data: CompletionData) -> list[Candidate]:
    key, eq, _ = word.partition("=")
    if eq:
        if key == "serveid" and kind == "use":
            return [Candidate(f"serveid={sid:03d}", what) for sid, what in data.serveids]
        if key == "ip":
            return [Candidate("ip=127.0.0.1", "this machine")]
        if key == "type":
            return [Candidate("type=tcp", "the default"), Candidate("type=udp", "datagrams")]
        return []
    used = {w.partition("=")[0] for w in given}
    return [
        Candidate(f"{k}=", FIELD_HELP[kind].get(k, "")) for k in field_keys(kind) if k not in used
    ]


# --- tables --------------------------------------------------------------------


def help_text(topic: str = "") -> list[str]:
    if not topic:
        width = max(len(usage) for usage, _ in COMMANDS.values())
        return [
            "commands:",
            *(f"  {usage.ljust(width)}  {what}" for usage, what in COMMANDS.values()),
            "Tab completes, Up recalls earlier lines, Ctrl-D leaves.",
        ]
    usage, what = COMMANDS[topic]
    lines = [f"{usage}: {what}"]
    if topic in ("serve", "use"):
        kind: Kind = "serve" if topic == "serve" else "use"
        for action, does in ACTIONS[kind].items():
            fields = " [KEY=VALUE ...]" if action in CREATE else ""
            lines.append(f"  {kind} {action} NAME{fields}: {does}")
        lines.append("  fields of new/run (asked for when missing):")
        lines.extend(f"    {k}=  {FIELD_HELP[kind].get(k, '')}" for k in field_keys(kind))
        example = (
            'serve run jupyter port=8888 serveid=701 info="notebook"'
            if kind == "serve"
            else "use run jupyter serveid=701 port=18888"
        )
        lines.append(f"  e.g. {example}")
    elif topic == "show":
        lines.extend(f"  show {w}: {what}" for w, what in SHOW.items())
        lines.append("  show serves VNETID: one node's serves")
    elif topic == "reload":
        lines.append(
            "  FILE defaults to the file the node started from; serves and uses that did"
            " not change keep running, with their connections"
        )
    elif topic == "save":
        lines.append(
            "  FILE defaults to the file the node started from; comments are not kept."
            " Nothing is written unless you save."
        )
    elif topic == "unserve":
        lines.extend(
            [
                "  asks node VNETID to offer IP:PORT (IP defaults to 127.0.0.1), then maps it",
                "  to LOCAL_IP:LOCAL_PORT here (defaults: 127.0.0.1 and the same port);",
                "  what is not given is asked. The other node decides: allow_unserve,",
                "  loopback only unless unserve_remote, at most unserve_num. An unserve",
                "  lapses 3 minutes after it was made if never used, else 1 minute after",
                "  its last connection closes; the mapping ends with it and is not saved.",
                "  type=udp asks for a UDP service instead.",
                "  e.g. unserve 01 8888 18888, unserve 01 53 5353 type=udp",
            ]
        )
    return lines
