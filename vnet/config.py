"""Parsing of config.ini, in the original vnet's format.

A file has a [route] section (where the route listens, and where nodes reach
it), a [vnet] section for a node, and any number of [serve.NAME] and
[use.NAME] sections. One file may serve both the route and a node.

Pure: reads text, returns frozen dataclasses, raises ConfigError naming the
file, section and key at fault. Nothing here opens sockets or starts tasks.
"""

from __future__ import annotations

import configparser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vnet.errors import ConfigError

DEFAULT_ROUTE_IP = "127.0.0.1"
DEFAULT_ROUTE_PORT = 7749
DEFAULT_GROUP = "default"
DEFAULT_KEEPALIVE = 10
DEFAULT_BULK_WHILE_INTERACTIVE = 200
SERVEID_MAX = 999
STATIC_SERVEID_MIN = 500

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

SECRET_KEYS = frozenset({"token", "token_env", "token_file"})
ROUTE_KEYS = frozenset(
    {
        "ip",
        "port",
        "allow_insecure",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "max_nodes",
        "max_serves_per_node",
        "max_tunnels_per_node",
        "metrics",
        "keepalive",
    }
    | SECRET_KEYS
)
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
        "tls",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "tls_server_name",
        "keepalive",
        "metrics",
        "bulk_while_interactive",
    }
    | SECRET_KEYS
)
GROUP_KEYS = SECRET_KEYS
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
class GroupConfig:
    """[group.NAME]: the token that admits nodes to one group."""

    name: str
    token: str = ""
    token_env: str = ""
    token_file: str = ""


@dataclass(frozen=True)
class RouteLimits:
    """Caps that keep one node (or many) from exhausting the route."""

    max_nodes: int = 1000
    max_serves_per_node: int = 100
    max_tunnels_per_node: int = 2048


@dataclass(frozen=True)
class RouteSettings:
    """Everything the route process reads: where to listen, and who may join."""

    path: str
    listen: RouteConfig
    # A token valid for every group; token_env / token_file give it indirectly.
    token: str = ""
    token_env: str = ""
    token_file: str = ""
    groups: tuple[GroupConfig, ...] = ()
    allow_insecure: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    limits: RouteLimits = RouteLimits()
    # Where to serve Prometheus metrics, as (host, port); None: nowhere.
    metrics: tuple[str, int] | None = None
    # Seconds between keepalive pings, and to wait for an answer: a dead or
    # black-holed node is dropped within twice this.
    keepalive: int = DEFAULT_KEEPALIVE

    @property
    def has_tokens(self) -> bool:
        return _given(self.token, self.token_env, self.token_file) or any(
            _given(g.token, g.token_env, g.token_file) for g in self.groups
        )


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
    # The node's credential: one of these, or none for a route without tokens.
    token: str = ""
    token_env: str = ""
    token_file: str = ""
    # TLS to the route: tls_ca is the CA (or certificate) to trust, exactly;
    # tls_cert / tls_key a client certificate for routes that require one.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    # Seconds between keepalive pings to the route, and to wait for an
    # answer: a dead route is noticed within twice this, then reconnected.
    keepalive: int = DEFAULT_KEEPALIVE
    # Where to serve this node's Prometheus metrics, "HOST:PORT"; "": nowhere.
    metrics: str = ""
    # MB/s the node's bulk transfers may send together while another of its
    # tunnels is interactive (vnet/pacing.py); 0: no limit.
    bulk_while_interactive: int = DEFAULT_BULK_WHILE_INTERACTIVE


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


def _given(*values: str) -> bool:
    return any(values)


def resolve_secret(
    path: str,
    section: str,
    token: str,
    token_env: str,
    token_file: str,
    environ: Mapping[str, str],
    read_text: Callable[[str], str],
) -> str:
    """The secret given inline, by environment variable or by file ("" if none).

    environ and read_text are passed in so this stays free of I/O.
    """
    given = [
        k for k, v in (("token", token), ("token_env", token_env), ("token_file", token_file)) if v
    ]
    if len(given) > 1:
        raise ConfigError(path, section, given[1], f"give only one of {', '.join(given)}")
    if token_env:
        value = environ.get(token_env, "")
        if not value:
            raise ConfigError(
                path, section, "token_env", f"environment variable {token_env} is not set"
            )
        return value.strip()
    if token_file:
        try:
            value = read_text(token_file).strip()
        except OSError as exc:
            raise ConfigError(
                path, section, "token_file", f"cannot read {token_file}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                path, section, "token_file", f"{token_file} is not UTF-8 text"
            ) from None
        if not value:
            raise ConfigError(path, section, "token_file", f"{token_file} is empty")
        return value
    return token


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
        if kind in ("serve", "use", "group") and dot:
            if not suffix.strip():
                raise ConfigError(path, section, None, f"[{kind}.NAME] needs a name after the dot")
            continue
        raise ConfigError(
            path,
            section,
            None,
            "unknown section (expected [route], [vnet], [serve.NAME], [use.NAME] or [group.NAME])",
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
    tls = sec.boolean("tls", False)
    for key in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        if sec.has(key) and not tls:
            sec.fail(key, "is set but tls is not true")
    if sec.has("tls_cert") != sec.has("tls_key"):
        sec.fail(
            "tls_key" if sec.has("tls_cert") else "tls_cert", "tls_cert and tls_key go together"
        )
    return VnetConfig(
        token=sec.text("token", ""),
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
        tls=tls,
        tls_ca=sec.text("tls_ca", ""),
        tls_cert=sec.text("tls_cert", ""),
        tls_key=sec.text("tls_key", ""),
        tls_server_name=sec.text("tls_server_name", ""),
        keepalive=sec.integer("keepalive", DEFAULT_KEEPALIVE, 1, 3600),
        # Checked here, kept as written (the node parses it when it starts).
        metrics=sec.text("metrics", "") if _host_port(sec, "metrics") else "",
        name=sec.text("name", ""),
        group=sec.text("group", DEFAULT_GROUP),
        terminal=sec.boolean("terminal", False),
        startserve=sec.boolean("startserve", True),
        startuse=sec.boolean("startuse", True),
        allow_unserve=sec.boolean("allow_unserve", False),
        unserve_remote=sec.boolean("unserve_remote", False),
        unserve_num=sec.integer("unserve_num", 1, 0, 10_000),
        bulk_while_interactive=sec.integer(
            "bulk_while_interactive", DEFAULT_BULK_WHILE_INTERACTIVE, 0, 1_000_000
        ),
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


def _host_port(sec: _Section, key: str) -> tuple[str, int] | None:
    if not sec.has(key):
        return None
    host, _, port = sec.values[key].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        sec.fail(key, f"{sec.values[key]!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_route_config(path: str, text: str | None) -> RouteSettings:
    """The route's settings; text None means no file, so the defaults.

    Only [route] and [group.NAME] matter to the route; the other sections of
    a shared file are checked for their kind only.
    """
    if text is None:
        return RouteSettings(path=path, listen=RouteConfig())
    parser = _parser(path, text)
    listen = _route(path, parser, required=True)
    sec = _Section(path, "route", parser["route"], ROUTE_KEYS)
    if sec.has("tls_cert") != sec.has("tls_key"):
        sec.fail(
            "tls_key" if sec.has("tls_cert") else "tls_cert", "tls_cert and tls_key go together"
        )
    if sec.has("tls_client_ca") and not sec.has("tls_cert"):
        sec.fail("tls_client_ca", "needs tls_cert and tls_key (client certificates need TLS)")
    groups = []
    for section in parser.sections():
        if section.startswith("group."):
            gsec = _Section(path, section, parser[section], GROUP_KEYS)
            groups.append(
                GroupConfig(
                    name=section.partition(".")[2],
                    token=gsec.text("token", ""),
                    token_env=gsec.text("token_env", ""),
                    token_file=gsec.text("token_file", ""),
                )
            )
    defaults = RouteLimits()
    metrics = _host_port(sec, "metrics")
    return RouteSettings(
        metrics=metrics,
        keepalive=sec.integer("keepalive", DEFAULT_KEEPALIVE, 1, 3600),
        path=path,
        listen=listen,
        token=sec.text("token", ""),
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
        groups=tuple(groups),
        allow_insecure=sec.boolean("allow_insecure", False),
        tls_cert=sec.text("tls_cert", ""),
        tls_key=sec.text("tls_key", ""),
        tls_client_ca=sec.text("tls_client_ca", ""),
        limits=RouteLimits(
            max_nodes=sec.integer("max_nodes", defaults.max_nodes, 1, 1_000_000),
            max_serves_per_node=sec.integer(
                "max_serves_per_node", defaults.max_serves_per_node, 1, 999
            ),
            max_tunnels_per_node=sec.integer(
                "max_tunnels_per_node", defaults.max_tunnels_per_node, 1, 1_000_000
            ),
        ),
    )


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
