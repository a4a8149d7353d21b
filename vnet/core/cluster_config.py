"""[cluster]: a route that shares its registry with other routes, in etcd.

Pure, like the rest of the config: read into a frozen dataclass, every
problem reported with its line. No [cluster] section: the single route with
its in-memory registry, exactly as before.

    [cluster]
    etcd = https://10.0.0.5:2379,https://10.0.0.6:2379,https://10.0.0.7:2379
    route_id = route-a
    advertise = route-a.example.net:7750     # where the other routes reach this one
    token_file = /etc/vnet/cluster.token     # the routes' token with each other (required)
    peer_tls_cert = ...  peer_tls_key = ...  peer_tls_ca = ...   # optional: mutual TLS on top
    etcd_tls_ca = ...  etcd_tls_cert = ...  etcd_tls_key = ...   # etcd's own TLS
    etcd_user = vnet  etcd_password_file = ...                   # etcd's own auth
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from vnet.core.config_section import SectionReader, token_problem
from vnet.core.errors import ConfigError
from vnet.core.ini import Problems, Section
from vnet.core.limits import host_problem, quoted_if_odd, shown

DEFAULT_PREFIX = "vnet/"
DEFAULT_ETCD_PORT = 2379
DEFAULT_LEASE_TTL = 10
DEFAULT_RESUME_TTL = 60
ROUTE_ID_MAX = 64
_ROUTE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class ClusterSettings:
    """[cluster]; None in RouteSettings when the section is absent."""

    # etcd's client URLs as written: http:// or https://, one per member.
    etcd: tuple[str, ...] = ()
    route_id: str = ""
    # Where the other routes reach this one (HOST:PORT): never a wildcard.
    advertise: tuple[str, int] | None = None
    # The routes' credential with each other: never a node's token.
    token: str = ""
    token_env: str = ""
    token_file: str = ""
    # Mutual TLS between routes: this route's certificate and the CA of its peers'.
    peer_tls_cert: str = ""
    peer_tls_key: str = ""
    peer_tls_ca: str = ""
    # etcd's own TLS (https:// URLs): a CA, and a client certificate if etcd
    # requires one (--client-cert-auth).
    etcd_tls_ca: str = ""
    etcd_tls_cert: str = ""
    etcd_tls_key: str = ""
    # etcd's own authentication (etcdctl auth enable): a user and its password.
    etcd_user: str = ""
    etcd_password: str = ""
    etcd_password_env: str = ""
    etcd_password_file: str = ""
    # Keys live under this prefix, so that several clusters can share one etcd.
    prefix: str = DEFAULT_PREFIX
    # Seconds: a dead route's nodes and serves vanish within lease_ttl; a
    # session can be resumed on another route for resume_ttl.
    lease_ttl: int = DEFAULT_LEASE_TTL
    resume_ttl: int = DEFAULT_RESUME_TTL

    @property
    def etcd_tls(self) -> bool:
        return bool(self.etcd) and self.etcd[0].startswith("https://")

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        return tuple(e for e in (parse_etcd_url(u)[1] for u in self.etcd) if e is not None)

    @property
    def has_token(self) -> bool:
        return bool(self.token or self.token_env or self.token_file)

    @property
    def has_peer_tls(self) -> bool:
        return bool(self.peer_tls_cert or self.peer_tls_key or self.peer_tls_ca)


CLUSTER_KEYS = frozenset(f.name for f in fields(ClusterSettings))


def parse_etcd_url(url: str) -> tuple[str, tuple[str, int] | None]:
    """(problem, (host, port)): an etcd client URL, http:// or https://, no path."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return f"{shown(url)} is not an http:// or https:// URL", None
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "@" in rest:
        return f"{shown(url)}: give only the scheme, host and port", None
    if rest.startswith("["):
        host, bracket, port = rest[1:].partition("]")
        port = port[1:] if port.startswith(":") else port
        if not bracket:
            return f"{shown(url)} is not a URL", None
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:
        host, port = rest, ""
    if not host or host_problem(host):
        return f"{shown(url)}: the host {host_problem(host) or 'is missing'}", None
    if not port:
        return "", (host, DEFAULT_ETCD_PORT)
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return f"{shown(url)}: {shown(port)} is not a port", None
    return "", (host, int(port))


def read_cluster(problems: Problems, section: Section | None) -> ClusterSettings | None:
    """The [cluster] section (absent: None, the single route)."""
    if section is None:
        return None
    sec = SectionReader(problems, "cluster", section, CLUSTER_KEYS)
    urls = tuple(u.strip() for u in sec.text("etcd", "").split(",") if u.strip())
    if sec.require("etcd"):
        for url in urls:
            problem, _ = parse_etcd_url(url)
            if problem:
                sec.fail("etcd", problem)
        if len({u.partition("://")[0] for u in urls}) > 1:
            sec.fail("etcd", "mixes http:// and https://: one etcd cluster has one scheme")
    route_id = sec.text("route_id", "")
    if sec.require("route_id") and (
        len(route_id) > ROUTE_ID_MAX or not set(route_id) <= _ROUTE_ID_CHARS
    ):
        sec.fail(
            "route_id",
            f"{shown(route_id)}: use up to {ROUTE_ID_MAX} letters, digits, '.', '_' or '-'",
        )
    advertise = sec.host_port("advertise")
    wildcard = advertise is not None and advertise[0] in ("0.0.0.0", "::", "*")
    if sec.require("advertise") and wildcard:
        sec.fail("advertise", "must be an address the other routes can reach, not a wildcard")
    sec.one_secret()
    token = sec.token("token")
    peer = ("peer_tls_cert", "peer_tls_key", "peer_tls_ca")
    given = [k for k in peer if sec.has(k)]
    if given and len(given) < 3:
        missing = [k for k in peer if k not in given]
        sec.fail(missing[0], f"{', '.join(peer)} go together (mutual TLS between routes)")
    has_token = any(sec.has(k) for k in ("token", "token_env", "token_file"))
    if not has_token:
        # The peer service shares the nodes' port, where a client certificate cannot
        # tell a route from a node: peer calls are admitted by this token, with or
        # without mutual TLS on top.
        sec.fail(
            None,
            "routes need a token with each other: set token= (or token_env=, token_file=), "
            "never a node's token; peer_tls_cert, peer_tls_key and peer_tls_ca add mutual TLS",
        )
    tls = bool(urls) and urls[0].startswith("https://")
    for key in ("etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key"):
        if sec.has(key) and not tls:
            sec.fail(key, "is for https:// etcd URLs")
    sec.pair("etcd_tls_cert", "etcd_tls_key")
    passwords = [
        k for k in ("etcd_password", "etcd_password_env", "etcd_password_file") if sec.has(k)
    ]
    if len(passwords) > 1:
        sec.fail(passwords[1], f"give only one of {', '.join(passwords)}")
    if sec.has("etcd_user") and not passwords:
        sec.fail("etcd_user", "needs a password: etcd_password, etcd_password_env or _file")
    elif passwords and not sec.has("etcd_user"):
        sec.fail(passwords[0], "needs etcd_user (the etcd user it is the password of)")
    password = sec.text("etcd_password", "")
    if password and token_problem(password):
        sec.fail("etcd_password", token_problem(password))
    prefix = sec.text("prefix", DEFAULT_PREFIX)
    if not (prefix.isascii() and prefix.isprintable()) or " " in prefix or len(prefix) > 128:
        sec.fail("prefix", f"{shown(prefix)}: printable ASCII without spaces, up to 128")
        prefix = DEFAULT_PREFIX
    lease_ttl = sec.integer("lease_ttl", DEFAULT_LEASE_TTL, 2, 300)
    resume_ttl = sec.integer("resume_ttl", max(DEFAULT_RESUME_TTL, lease_ttl), 2, 86_400)
    if resume_ttl < lease_ttl:
        sec.fail("resume_ttl", f"must be at least lease_ttl ({lease_ttl})")
    settings = ClusterSettings(
        etcd=urls,
        route_id=route_id,
        advertise=advertise,
        token=token,
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
        peer_tls_cert=sec.text("peer_tls_cert", ""),
        peer_tls_key=sec.text("peer_tls_key", ""),
        peer_tls_ca=sec.text("peer_tls_ca", ""),
        etcd_tls_ca=sec.text("etcd_tls_ca", ""),
        etcd_tls_cert=sec.text("etcd_tls_cert", ""),
        etcd_tls_key=sec.text("etcd_tls_key", ""),
        etcd_user=sec.text("etcd_user", ""),
        etcd_password=password,
        etcd_password_env=sec.text("etcd_password_env", ""),
        etcd_password_file=sec.text("etcd_password_file", ""),
        prefix=prefix if prefix.endswith("/") else prefix + "/",
        lease_ttl=lease_ttl,
        resume_ttl=resume_ttl,
    )
    return settings


def resolve_password(
    path: str,
    settings: ClusterSettings,
    environ: Mapping[str, str],
    read_text: Callable[[str], str],
) -> str:
    """etcd's password, given inline, by environment variable or by file."""
    if settings.etcd_password_env:
        name = settings.etcd_password_env
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(
                path,
                "cluster",
                "etcd_password_env",
                f"environment variable {quoted_if_odd(name)} is not set",
            )
        return value
    if settings.etcd_password_file:
        name = quoted_if_odd(settings.etcd_password_file)
        try:
            value = read_text(settings.etcd_password_file).strip()
        except OSError as exc:
            raise ConfigError(
                path, "cluster", "etcd_password_file", f"cannot read {name}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                path, "cluster", "etcd_password_file", f"{name} is not UTF-8 text"
            ) from None
        if not value:
            raise ConfigError(path, "cluster", "etcd_password_file", f"{name} is empty")
        return value
    return settings.etcd_password
