"""Parsing of config.ini, in the original vnet's format.

A file has a [route] section (where the route listens, and where nodes reach
it: ip and port, or for a node several routes in routes=), a [vnet] section
for a node, and any number of [serve.NAME] and [use.NAME] sections. One
file may serve both the route and a node.

Pure: reads text, returns frozen dataclasses. check_node_config and
check_route_config find every problem in one pass (vnet.core.ini), each a
ConfigError naming the file, line, section and key; `--check` and the real
start both use them (through vnet.config_load), so they cannot disagree.
parse_node_config / parse_route_config raise the first problem instead.
Nothing here opens files or sockets or starts tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Generic, TypeVar

from vnet.core.admin_config import AdminSettings, read_admin
from vnet.core.auth import insecure_reason
from vnet.core.budget import DEFAULT_PER_NODE_MIB, DEFAULT_TOTAL_MIB
from vnet.core.cluster_config import ClusterSettings, read_cluster
from vnet.core.config_section import SectionReader, token_problem

# Where the rest of vnet has always found them.
from vnet.core.endpoints import DEFAULT_ROUTE_IP as DEFAULT_ROUTE_IP
from vnet.core.endpoints import DEFAULT_ROUTE_PORT as DEFAULT_ROUTE_PORT
from vnet.core.endpoints import RouteEndpoint as RouteEndpoint
from vnet.core.endpoints import read_routes as read_routes
from vnet.core.errors import ConfigError
from vnet.core.ini import Problems, Section, label, read_ini
from vnet.core.limits import INFO_MAX, NAME_MAX, SPARES_MAX, quoted_if_odd, shown, text_problem
from vnet.core.limits import SERVEID_MAX as SERVEID_MAX

DEFAULT_GROUP = "default"
DEFAULT_KEEPALIVE = 10
DEFAULT_BULK_WHILE_INTERACTIVE = 200
# ms of queueing delay the node lets its bulk tunnels build on the path while
# another tunnel is interactive (vnet/core/queueing.py); 0 turns the governor off.
DEFAULT_QUEUE_TARGET_MS = 12
# UDP (vnet/core/udp.py): seconds a flow may stay silent both ways, flows
# one use may hold, and flows one node may hold (uses and serves together).
DEFAULT_UDP_IDLE = 60
DEFAULT_UDP_FLOWS_PER_USE = 256
DEFAULT_UDP_FLOWS = 1024
DEFAULT_SPARES = 2
UDP_IDLE_MAX = 86_400
STATIC_SERVEID_MIN = 500


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
    # MiB of tunnel data the route may hold in stalled writes, in total and of
    # one sending node's (vnet/core/budget.py); past them stalled tunnels are reset.
    tunnel_memory: int = DEFAULT_TOTAL_MIB
    tunnel_memory_per_node: int = DEFAULT_PER_NODE_MIB


@dataclass(frozen=True)
class RouteSettings:
    """Everything the route process reads: where to listen, and who may join."""

    path: str
    listen: RouteEndpoint
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
    # [admin]: the admin API's token and the dashboard (vnet.core.admin_config).
    admin: AdminSettings = AdminSettings()
    # [cluster]: the registry shared with other routes in etcd
    # (vnet.core.cluster_config); None: this route alone, as before.
    cluster: ClusterSettings | None = None

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
    # tunnels is interactive (vnet/core/pacing.py); 0: no limit.
    bulk_while_interactive: int = DEFAULT_BULK_WHILE_INTERACTIVE
    # ms of queueing delay the bulk tunnels may add on the path while another
    # tunnel is interactive (vnet/core/queueing.py); 0: not governed.
    queue_target_ms: int = DEFAULT_QUEUE_TARGET_MS
    # UDP flows this node may hold at once, its uses' and its serves' together.
    udp_flows: int = DEFAULT_UDP_FLOWS
    # Accept streams held open at the route per TCP serve, for the next Dials
    # to take without the open_tunnel round trip (vnet/node/spares.py); 0: none.
    spares: int = DEFAULT_SPARES


@dataclass(frozen=True)
class ServeConfig:
    """[serve.KEY]: a local TCP or UDP service this node registers at the route."""

    key: str
    port: int
    serveid: int = 0
    type: str = "tcp"
    ip: str = "127.0.0.1"
    name: str = ""
    info: str = ""
    active: bool = True
    # type=udp: seconds a flow may be silent both ways before it ends.
    udp_idle: int = DEFAULT_UDP_IDLE


@dataclass(frozen=True)
class UseConfig:
    """[use.KEY]: a serve of the group mapped to a local listening port.

    port None means "the serve's own port", known once the serve appears.
    serveid 0 means the use is disabled.
    """

    key: str
    serveid: int
    # Must be the serve's type (checked when the serve appears).
    type: str = "tcp"
    ip: str = "127.0.0.1"
    port: int | None = None
    active: bool = True
    # type=udp: seconds a flow may be silent both ways before it ends, and
    # how many flows (client addresses) this use carries at once.
    udp_idle: int = DEFAULT_UDP_IDLE
    udp_flows: int = DEFAULT_UDP_FLOWS_PER_USE


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node reads from its file."""

    path: str
    route: RouteEndpoint
    vnet: VnetConfig
    serves: tuple[ServeConfig, ...] = ()
    uses: tuple[UseConfig, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # [route] routes=: the routes this node may join, tried in this order
    # (vnet.node.node fails over between them); (): the one at route.
    routes: tuple[RouteEndpoint, ...] = ()

    @property
    def targets(self) -> tuple[RouteEndpoint, ...]:
        """The routes the node tries, in order: routes=, else ip and port."""
        return self.routes or (self.route,)


def _keys(
    *records: type, drop: frozenset[str] = frozenset(), add: frozenset[str] = frozenset()
) -> frozenset[str]:
    """The keys a section accepts: the fields of the records it is read into."""
    return frozenset(f.name for r in records for f in fields(r)) - drop | add


# The key schema of each section, derived from the dataclasses above, so a
# new setting is one field (plus its reading in the parser below).
SECRET_KEYS = frozenset({"token", "token_env", "token_file"})
ROUTE_KEYS = _keys(
    RouteEndpoint,
    RouteSettings,
    RouteLimits,
    # Read into other records, or not keys at all.
    drop=frozenset({"path", "listen", "groups", "limits", "admin"}),
    # A node's (NodeConfig.routes); the route itself listens on ip and port.
    add=frozenset({"routes"}),
)
VNET_KEYS = _keys(VnetConfig)
GROUP_KEYS = _keys(GroupConfig, drop=frozenset({"name"}))
SERVE_KEYS = _keys(ServeConfig, drop=frozenset({"key"}))
USE_KEYS = _keys(UseConfig, drop=frozenset({"key"}))


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
    env_name, file_name = quoted_if_odd(token_env), quoted_if_odd(token_file)
    given = [
        k for k, v in (("token", token), ("token_env", token_env), ("token_file", token_file)) if v
    ]
    if len(given) > 1:
        raise ConfigError(path, section, given[1], f"give only one of {', '.join(given)}")
    if token_env:
        value = environ.get(token_env, "").strip()
        if not value:
            raise ConfigError(
                path, section, "token_env", f"environment variable {env_name} is not set"
            )
        return _token(path, section, "token_env", value, f"environment variable {env_name}")
    if token_file:
        try:
            value = read_text(token_file).strip()
        except OSError as exc:
            raise ConfigError(
                path, section, "token_file", f"cannot read {file_name}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                path, section, "token_file", f"{file_name} is not UTF-8 text"
            ) from None
        if not value:
            raise ConfigError(path, section, "token_file", f"{file_name} is empty")
        return _token(path, section, "token_file", value, file_name)
    return token


def _token(path: str, section: str, key: str, value: str, source: str) -> str:
    problem = token_problem(value)
    if problem:
        raise ConfigError(path, section, key, f"the token in {source} {problem}")
    return value


def is_static_serveid(serveid: int) -> bool:
    """500-999 are static: the route never changes them."""
    return serveid >= STATIC_SERVEID_MIN


# --- reading -----------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Checked(Generic[T]):
    """A config and every problem found in it.

    When problems.errors is not empty, config was built with stand-ins for
    the bad values: use it only to check further, never to run.
    """

    config: T
    problems: Problems
    # Where each (section, key) was written, for problems found later (a
    # token file that cannot be read); key None: the section's header.
    lines: Mapping[tuple[str, str | None], int]

    @property
    def ok(self) -> bool:
        return not self.problems.errors

    def line_of(self, section: str | None, key: str | None) -> int | None:
        if section is None:
            return None
        return self.lines.get((section, key), self.lines.get((section, None)))


def _where(sections: Mapping[str, Section]) -> dict[tuple[str, str | None], int]:
    lines: dict[tuple[str, str | None], int] = {}
    for sec in sections.values():
        lines[(sec.name, None)] = sec.line
        for key, entry in sec.entries.items():
            lines[(sec.name, key)] = entry.line
    return lines


def _check_section_kinds(sections: Mapping[str, Section], problems: Problems) -> list[Section]:
    """The sections of a known kind; the others are reported."""
    known = []
    for sec in sections.values():
        kind, dot, suffix = sec.name.partition(".")
        if sec.name in ("route", "vnet", "admin", "cluster"):
            known.append(sec)
        elif kind in ("serve", "use", "group") and dot:
            if not suffix.strip():
                problems.error(
                    sec.line, sec.name, None, f"[{kind}.NAME] needs a name after the dot"
                )
                continue
            problem = text_problem(suffix, NAME_MAX)
            if problem:
                problems.error(sec.line, sec.name, None, f"the name after the dot {problem}")
            known.append(sec)
        else:
            problems.error(
                sec.line,
                sec.name,
                None,
                "unknown section "
                "(expected [route], [vnet], [admin], [cluster], [serve.NAME], [use.NAME] "
                "or [group.NAME])",
            )
    return known


def _route(
    problems: Problems, sections: Mapping[str, Section], node: bool = False
) -> tuple[RouteEndpoint, SectionReader]:
    """[route], required in a file: the route listens on ip and port, and its
    nodes reach it there, unless a node's file names its routes in routes=."""
    section = sections.get("route")
    sec = SectionReader(problems, "route", section, ROUTE_KEYS)
    if section is None:
        problems.error(None, "route", None, "section is missing")
        return RouteEndpoint(), sec
    if node and sec.has("routes"):
        # ip and port, if given too, are where a route sharing this file listens.
        ip = sec.host("ip", DEFAULT_ROUTE_IP)
        return RouteEndpoint(ip=ip, port=sec.port("port", DEFAULT_ROUTE_PORT)), sec
    sec.require("ip")
    return RouteEndpoint(ip=sec.host("ip", DEFAULT_ROUTE_IP), port=sec.port("port")), sec


def _routes(sec: SectionReader) -> tuple[RouteEndpoint, ...]:
    if not sec.has("routes"):
        return ()
    routes, problem = read_routes(sec.values["routes"])
    if problem:
        sec.fail("routes", problem)
    return routes


def _vnet(problems: Problems, section: Section | None) -> VnetConfig:
    sec = SectionReader(problems, "vnet", section, VNET_KEYS)
    tls = sec.boolean("tls", False)
    for key in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        if sec.has(key) and not tls:
            sec.fail(key, "is set but tls is not true")
    sec.pair("tls_cert", "tls_key")
    sec.one_secret()
    metrics = sec.host_port("metrics")
    return VnetConfig(
        token=sec.token("token"),
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
        tls=tls,
        tls_ca=sec.text("tls_ca", ""),
        tls_cert=sec.text("tls_cert", ""),
        tls_key=sec.text("tls_key", ""),
        tls_server_name=sec.host("tls_server_name", ""),
        keepalive=sec.integer("keepalive", DEFAULT_KEEPALIVE, 1, 3600),
        # Checked here, kept as written (the node parses it when it starts).
        metrics=sec.text("metrics", "") if metrics else "",
        name=sec.name_text("name", ""),
        group=sec.name_text("group", DEFAULT_GROUP),
        terminal=sec.boolean("terminal", False),
        startserve=sec.boolean("startserve", True),
        startuse=sec.boolean("startuse", True),
        allow_unserve=sec.boolean("allow_unserve", False),
        unserve_remote=sec.boolean("unserve_remote", False),
        unserve_num=sec.integer("unserve_num", 1, 0, 10_000),
        bulk_while_interactive=sec.integer(
            "bulk_while_interactive", DEFAULT_BULK_WHILE_INTERACTIVE, 0, 1_000_000
        ),
        queue_target_ms=sec.integer("queue_target_ms", DEFAULT_QUEUE_TARGET_MS, 0, 10_000),
        udp_flows=sec.integer("udp_flows", DEFAULT_UDP_FLOWS, 1, 100_000),
        spares=sec.integer("spares", DEFAULT_SPARES, 0, SPARES_MAX),
    )


def _serve(problems: Problems, section: Section) -> ServeConfig:
    sec = SectionReader(problems, section.name, section, SERVE_KEYS)
    key = section.name.partition(".")[2]
    return ServeConfig(
        key=key,
        serveid=sec.serveid(),
        type=sec.transport(),
        udp_idle=sec.integer("udp_idle", DEFAULT_UDP_IDLE, 1, UDP_IDLE_MAX),
        ip=sec.host("ip", "127.0.0.1"),
        port=sec.port("port"),
        # The name defaults to the section's, checked with the section.
        name=sec.name_text("name", key),
        info=sec.name_text("info", "", INFO_MAX),
        active=sec.boolean("active", True),
    )


def _use(problems: Problems, section: Section) -> UseConfig:
    sec = SectionReader(problems, section.name, section, USE_KEYS)
    return UseConfig(
        key=section.name.partition(".")[2],
        serveid=sec.serveid(),
        type=sec.transport(),
        udp_idle=sec.integer("udp_idle", DEFAULT_UDP_IDLE, 1, UDP_IDLE_MAX),
        udp_flows=sec.integer("udp_flows", DEFAULT_UDP_FLOWS_PER_USE, 1, 100_000),
        ip=sec.host("ip", "127.0.0.1"),
        port=sec.port("port") if sec.has("port") else None,
        active=sec.boolean("active", True),
    )


def check_route_config(path: str, text: str | None) -> Checked[RouteSettings]:
    """The route's settings and every problem in them; text None: no file, the defaults.

    Only [route] and [group.NAME] matter to the route; the other sections of
    a shared file are checked for their kind only. Protected mode is checked
    here too: a route that would refuse to start must not pass `--check`.
    """
    problems = Problems(path)
    if text is None:
        return Checked(RouteSettings(path=path, listen=RouteEndpoint()), problems, {})
    sections = read_ini(text, problems)
    known = _check_section_kinds(sections, problems)
    listen, sec = _route(problems, sections)
    sec.pair("tls_cert", "tls_key")
    if sec.has("tls_client_ca") and not sec.has("tls_cert"):
        sec.fail("tls_client_ca", "needs tls_cert and tls_key (client certificates need TLS)")
    sec.one_secret()
    groups = []
    for section in known:
        if section.name.startswith("group."):
            gsec = SectionReader(problems, section.name, section, GROUP_KEYS)
            gsec.one_secret()
            groups.append(
                GroupConfig(
                    name=section.name.partition(".")[2],
                    token=gsec.token("token"),
                    token_env=gsec.text("token_env", ""),
                    token_file=gsec.text("token_file", ""),
                )
            )
    defaults = RouteLimits()
    memory = sec.integer("tunnel_memory", defaults.tunnel_memory, 8, 1_000_000)
    settings = RouteSettings(
        metrics=sec.host_port("metrics"),
        keepalive=sec.integer("keepalive", DEFAULT_KEEPALIVE, 1, 3600),
        admin=read_admin(problems, sections.get("admin"), client_certs=sec.has("tls_client_ca")),
        cluster=read_cluster(problems, sections.get("cluster")),
        path=path,
        listen=listen,
        token=sec.token("token"),
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
            tunnel_memory=memory,
            tunnel_memory_per_node=sec.integer(
                "tunnel_memory_per_node",
                min(defaults.tunnel_memory_per_node, memory),
                4,
                1_000_000,
            ),
        ),
    )
    if settings.limits.tunnel_memory_per_node > memory:
        sec.fail(
            "tunnel_memory_per_node",
            f"must not exceed tunnel_memory ({settings.limits.tunnel_memory})",
        )
    _protected_mode(settings, sec)
    return Checked(settings, problems, _where(sections))


def _protected_mode(settings: RouteSettings, sec: SectionReader) -> None:
    if "ip" not in sec.values:
        return  # reported as required already
    client_certs = bool(settings.tls_client_ca and settings.tls_cert)
    reason = insecure_reason(
        settings.listen.ip,
        has_tokens=settings.has_tokens,
        client_certs=client_certs,
        allow_insecure=False,
    )
    if reason and not settings.allow_insecure:
        sec.fail("ip", reason)
    elif reason:
        sec.problems.warn(
            sec.lines.get("allow_insecure"),
            "route",
            "allow_insecure",
            f"true: anyone who can reach {settings.listen.ip} can use every node's services",
        )


def parse_route_config(path: str, text: str | None) -> RouteSettings:
    """The route's settings; raises the first problem (see check_route_config)."""
    checked = check_route_config(path, text)
    checked.problems.raise_first()
    return checked.config


def check_node_config(path: str, text: str) -> Checked[NodeConfig]:
    """A node's settings and every problem in them, checked whole before anything starts."""
    problems = Problems(path)
    sections = read_ini(text, problems)
    known = _check_section_kinds(sections, problems)
    route, route_sec = _route(problems, sections, node=True)
    routes = _routes(route_sec)
    vnet = _vnet(problems, sections.get("vnet"))
    serves: list[ServeConfig] = []
    uses: list[UseConfig] = []
    for section in known:
        if section.name.startswith("serve."):
            serves.append(_serve(problems, section))
        elif section.name.startswith("use."):
            use = _use(problems, section)
            given = section.entries.get("serveid")
            # Not set, or 0/000; a bad value is an error, reported already.
            if given is None or given.value.strip("0") == "":
                line = (given or section).line
                problems.warn(line, section.name, "serveid", "not set, so this use is disabled")
            uses.append(use)
        elif section.name.startswith("group."):
            # A route's section in a shared file: its keys are the route's to check.
            pass
    _check_unique(problems, sections, serves, uses)
    config = NodeConfig(
        path=path,
        route=route,
        vnet=vnet,
        serves=tuple(serves),
        uses=tuple(uses),
        warnings=tuple(str(w) for w in problems.warnings),
        routes=routes,
    )
    return Checked(config, problems, _where(sections))


def parse_node_config(path: str, text: str) -> NodeConfig:
    """A node's settings; raises the first problem (see check_node_config)."""
    checked = check_node_config(path, text)
    checked.problems.raise_first()
    return checked.config


def _check_unique(
    problems: Problems,
    sections: Mapping[str, Section],
    serves: list[ServeConfig],
    uses: list[UseConfig],
) -> None:
    """Serve names, serveids and use ports: one dict each, so linear in the file."""

    def line(section: str, key: str) -> int | None:
        sec = sections.get(section)
        return sec.entries.get(key, sec).line if sec else None

    names: dict[str, str] = {}
    static: dict[int, str] = {}
    for serve in serves:
        section = f"serve.{serve.key}"
        if serve.name in names:
            problems.error(
                line(section, "name"),
                section,
                "name",
                f"{shown(serve.name)} is already the name of [{label(names[serve.name])}]",
            )
        else:
            names[serve.name] = section
        if serve.serveid and serve.serveid in static:
            problems.error(
                line(section, "serveid"),
                section,
                "serveid",
                f"{serve.serveid} is already used by [{label(static[serve.serveid])}]",
            )
        elif serve.serveid:
            static[serve.serveid] = section
    # A UDP use and a TCP use may listen on the same port: they are
    # different sockets to the kernel.
    listens: dict[tuple[str, int, str], str] = {}
    for use in uses:
        if use.port is None or use.serveid == 0:
            continue
        where = (use.ip, use.port, use.type)
        section = f"use.{use.key}"
        if where in listens:
            problems.error(
                line(section, "port"),
                section,
                "port",
                f"{use.port} is already the port of [{label(listens[where])}]",
            )
        else:
            listens[where] = section
