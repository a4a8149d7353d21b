"""[admin]: the credential of the route's admin API, and where its dashboard listens.

Pure, like the rest of the config: read into a frozen dataclass, every
problem reported with its line. The admin token is never a node token: a
file that gives the same value to [admin] and to [route] or a [group.NAME]
is refused, since a node could then kick every other node.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from vnet.core.auth import is_loopback
from vnet.core.config_section import SectionReader
from vnet.core.ini import Problems, Section


@dataclass(frozen=True)
class AdminSettings:
    """[admin]: one of token / token_env / token_file, client_names=, and web=HOST:PORT."""

    token: str = ""
    token_env: str = ""
    token_file: str = ""
    # Names (common name or subject alternative name) of client certificates,
    # from the route's tls_client_ca, that are admins as well as the token.
    client_names: tuple[str, ...] = ()
    # Where to serve the web dashboard, (host, port); None: nowhere.
    web: tuple[str, int] | None = None

    @property
    def has_token(self) -> bool:
        return bool(self.token or self.token_env or self.token_file)


ADMIN_KEYS = frozenset(f.name for f in fields(AdminSettings))


def read_admin(
    problems: Problems, section: Section | None, client_certs: bool = False
) -> AdminSettings:
    """The [admin] section (absent: no admin token, no dashboard).

    client_certs: the route requires client certificates (tls_client_ca), so
    client_names can name some.
    """
    sec = SectionReader(problems, "admin", section, ADMIN_KEYS)
    if section is None:
        return AdminSettings()
    sec.one_secret()
    names = tuple(n.strip() for n in sec.text("client_names", "").split(",") if n.strip())
    if names and not client_certs:
        sec.fail(
            "client_names",
            "needs client certificates: set [route] tls_client_ca (with tls_cert and tls_key)",
        )
    for name in names:
        if not name.isprintable() or len(name) > 253:
            sec.fail("client_names", f"{name[:40]!r} is not a certificate name")
    settings = AdminSettings(
        token=sec.token("token"),
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
        client_names=names,
        web=sec.host_port("web"),
    )
    if settings.web is not None:
        reason = web_reason(settings.web[0], settings.has_token)
        if reason:
            sec.fail("web", reason)
    return settings


def web_reason(host: str, has_token: bool) -> str:
    """Why the dashboard must not listen on host ("" when it may).

    Sign-in is by the admin token, so there must be one, even on loopback: a
    reverse proxy on the same machine (for TLS) would otherwise hand the
    dashboard to whoever reaches the proxy.
    """
    if has_token:
        return ""
    where = "" if is_loopback(host) else f" (and {host} is reachable from other machines)"
    return (
        f"the dashboard signs in with the admin token, and there is none{where}: "
        "set [admin] token= (or token_env=, token_file=)"
    )


def same_as_node_token(admin: str, node_tokens: dict[str, str]) -> str:
    """The section whose node token equals the admin token ("" when none does)."""
    if not admin:
        return ""
    for section, token in node_tokens.items():
        if token and token == admin:
            return section
    return ""
