"""Parsing of config.ini, in the original vnet's format.

A file has a [route] section (where the route listens, and where nodes reach
it), a [vnet] section for a node, and any number of [serve.NAME] and
[use.NAME] sections. One file may serve both the route and a node.

Pure: reads text, returns frozen dataclasses, raises ConfigError naming the
file, section and key at fault. Nothing here opens sockets or starts tasks.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass, field

from vnet.errors import ConfigError

DEFAULT_ROUTE_IP = "127.0.0.1"
DEFAULT_ROUTE_PORT = 7749
DEFAULT_GROUP = "default"
SERVEID_MAX = 999
STATIC_SERVEID_MIN = 500

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

ROUTE_KEYS = frozenset({"ip", "port"})
VNET_KEYS = frozenset(
    {
        "name",
        "group",
        "terminal",
        "startserve",
        "startuse",
        "allow_unserve",
        "unserve_remote",
        "unserve_num",
    }
)
SERVE_KEYS = frozenset({"serveid", "type", "ip", "port", "name", "info", "active"})
USE_KEYS = frozenset({"serveid", "type", "ip", "port", "active"})


@dataclass(frozen=True)
class RouteConfig:
    """[route]: where the route listens, and where nodes connect."""

    ip: str = DEFAULT_ROUTE_IP
    port: int = DEFAULT_ROUTE_PORT

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class VnetConfig:
    """[vnet]: this node's identity and behaviour."""

    name: str = ""
    group: str = DEFAULT_GROUP
    terminal: bool = False
    startserve: bool = True
    startuse: bool = True
    allow_unserve: bool = False
    unserve_remote: bool = False
    unserve_num: int = 1


@dataclass(frozen=True)
class ServeConfig:
    """[serve.KEY]: a local TCP service this node registers at the route."""

    key: str
    port: int
    serveid: int = 0
    ip: str = "127.0.0.1"
    name: str = ""
    info: str = ""
    active: bool = True


@dataclass(frozen=True)
class UseConfig:
    """[use.KEY]: a serve of the group mapped to a local listening port.

    port None means "the serve's own port", known once the serve appears.
    serveid 0 means the use is disabled.
    """

    key: str
    serveid: int
    ip: str = "127.0.0.1"
    port: int | None = None
    active: bool = True


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node reads from its file."""

    path: str
    route: RouteConfig
    vnet: VnetConfig
    serves: tuple[ServeConfig, ...] = ()
    uses: tuple[UseConfig, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)


def is_static_serveid(serveid: int) -> bool:
    """500-999 are static: the route never changes them."""
    return serveid >= STATIC_SERVEID_MIN


# --- reading -----------------------------------------------------------------


def _parser(path: str, text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"),
        interpolation=None,
        strict=True,
        empty_lines_in_values=False,
    )
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(path, exc.section, None, "section appears twice") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, exc.section, exc.option, "key appears twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            path, None, None, f"line {exc.lineno}: a key outside any [section]"
        ) from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(path, None, None, first) from None
    _check_section_kinds(path, parser)
    return parser


def _check_section_kinds(path: str, parser: configparser.ConfigParser) -> None:
    for section in parser.sections():
        kind, dot, suffix = section.partition(".")
        if section in ("route", "vnet"):
            continue
        if kind in ("serve", "use") and dot:
            if not suffix.strip():
                raise ConfigError(path, section, None, f"[{kind}.NAME] needs a name after the dot")
            continue
        raise ConfigError(
            path,
            section,
            None,
            "unknown section (expected [route], [vnet], [serve.NAME] or [use.NAME])",
        )


class _Section:
    """Typed access to one section's keys, with errors that name the key."""

    def __init__(self, path: str, name: str, values: Mapping[str, str], allowed: frozenset[str]):
        self.path = path
        self.name = name
        self.values = {k: v.strip() for k, v in values.items()}
        for key in self.values:
            if key not in allowed:
                self.fail(key, f"unknown key (known: {', '.join(sorted(allowed))})")

    def fail(self, key: str | None, reason: str) -> ConfigError:
        raise ConfigError(self.path, self.name, key, reason)

    def has(self, key: str) -> bool:
        return self.values.get(key, "") != ""

    def text(self, key: str, default: str) -> str:
        return self.values.get(key, "") or default

    def require(self, key: str) -> str:
        if not self.has(key):
            self.fail(key, "is required")
        return self.values[key]

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.values.get(key, "").lower()
        if raw == "":
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        self.fail(key, f"{self.values[key]!r} is not true or false")
        raise AssertionError("unreachable")

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.values.get(key, "")
        if raw == "":
            return default
        if not raw.isdigit():
            self.fail(key, f"{raw!r} is not a whole number")
        value = int(raw)
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low}-{high})")
        return value

    def port(self, key: str, default: int | None = None) -> int:
        if not self.has(key):
            if default is None:
                self.fail(key, "is required")
            assert default is not None
            return default
        return self.integer(key, 0, 1, 65535)

    def serveid(self) -> int:
        raw = self.values.get("serveid", "")
        if raw and (not raw.isdigit() or len(raw) > 3):
            self.fail("serveid", f"{raw!r} is not a serveid (0-{SERVEID_MAX}, up to 3 digits)")
        return self.integer("serveid", 0, 0, SERVEID_MAX)

    def tcp_only(self) -> None:
        kind = self.text("type", "tcp").lower()
        if kind != "tcp":
            self.fail("type", f"{kind!r} is not supported (vnet carries tcp only)")


def _route(path: str, parser: configparser.ConfigParser, required: bool) -> RouteConfig:
    if not parser.has_section("route"):
        if required:
            raise ConfigError(path, "route", None, "section is missing")
        return RouteConfig()
    sec = _Section(path, "route", parser["route"], ROUTE_KEYS)
    if required:
        return RouteConfig(ip=sec.require("ip"), port=sec.port("port"))
    return RouteConfig(
        ip=sec.text("ip", DEFAULT_ROUTE_IP), port=sec.port("port", DEFAULT_ROUTE_PORT)
    )


def _vnet(path: str, parser: configparser.ConfigParser) -> VnetConfig:
    values = parser["vnet"] if parser.has_section("vnet") else {}
    sec = _Section(path, "vnet", values, VNET_KEYS)
    return VnetConfig(
        name=sec.text("name", ""),
        group=sec.text("group", DEFAULT_GROUP),
        terminal=sec.boolean("terminal", False),
        startserve=sec.boolean("startserve", True),
        startuse=sec.boolean("startuse", True),
        allow_unserve=sec.boolean("allow_unserve", False),
        unserve_remote=sec.boolean("unserve_remote", False),
        unserve_num=sec.integer("unserve_num", 1, 0, 10_000),
    )


def _serve(path: str, section: str, values: Mapping[str, str]) -> ServeConfig:
    sec = _Section(path, section, values, SERVE_KEYS)
    key = section.partition(".")[2]
    sec.tcp_only()
    return ServeConfig(
        key=key,
        serveid=sec.serveid(),
        ip=sec.text("ip", "127.0.0.1"),
        port=sec.port("port"),
        name=sec.text("name", key),
        info=sec.text("info", ""),
        active=sec.boolean("active", True),
    )


def _use(path: str, section: str, values: Mapping[str, str]) -> UseConfig:
    sec = _Section(path, section, values, USE_KEYS)
    sec.tcp_only()
    return UseConfig(
        key=section.partition(".")[2],
        serveid=sec.serveid(),
        ip=sec.text("ip", "127.0.0.1"),
        port=sec.port("port") if sec.has("port") else None,
        active=sec.boolean("active", True),
    )


def parse_route_config(path: str, text: str | None) -> RouteConfig:
    """The route's settings; text None means no file, so the defaults."""
    if text is None:
        return RouteConfig()
    return _route(path, _parser(path, text), required=True)


def parse_node_config(path: str, text: str) -> NodeConfig:
    """A node's settings, checked whole before anything starts."""
    parser = _parser(path, text)
    route = _route(path, parser, required=True)
    vnet = _vnet(path, parser)
    serves: list[ServeConfig] = []
    uses: list[UseConfig] = []
    warnings: list[str] = []
    for section in parser.sections():
        if section.startswith("serve."):
            serves.append(_serve(path, section, parser[section]))
        elif section.startswith("use."):
            use = _use(path, section, parser[section])
            if use.serveid == 0:
                warnings.append(f"{path}: [{section}] serveid: not set, so this use is disabled")
            uses.append(use)
    _check_unique(path, serves, uses)
    return NodeConfig(
        path=path,
        route=route,
        vnet=vnet,
        serves=tuple(serves),
        uses=tuple(uses),
        warnings=tuple(warnings),
    )


def _check_unique(path: str, serves: list[ServeConfig], uses: list[UseConfig]) -> None:
    names: dict[str, str] = {}
    static: dict[int, str] = {}
    for serve in serves:
        section = f"serve.{serve.key}"
        if serve.name in names:
            raise ConfigError(
                path,
                section,
                "name",
                f"{serve.name!r} is already the name of [{names[serve.name]}]",
            )
        names[serve.name] = section
        if serve.serveid and serve.serveid in static:
            raise ConfigError(
                path,
                section,
                "serveid",
                f"{serve.serveid} is already used by [{static[serve.serveid]}]",
            )
        if serve.serveid:
            static[serve.serveid] = section
    listens: dict[tuple[str, int], str] = {}
    for use in uses:
        if use.port is None or use.serveid == 0:
            continue
        where = (use.ip, use.port)
        if where in listens:
            raise ConfigError(
                path,
                f"use.{use.key}",
                "port",
                f"{use.port} is already the port of [{listens[where]}]",
            )
        listens[where] = f"use.{use.key}"
