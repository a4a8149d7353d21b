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
    """[admin]: one of token / token_env / token_file, and web=HOST:PORT."""

    token: str = ""
    token_env: str = ""
    token_file: str = ""
    # Where to serve the web dashboard, (host, port); None: nowhere.
    web: tuple[str, int] | None = None

    @property
    def has_token(self) -> bool:
        return bool(self.token or self.token_env or self.token_file)


ADMIN_KEYS = frozenset(f.name for f in fields(AdminSettings))


def read_admin(problems: Problems, section: Section | None) -> AdminSettings:
    """The [admin] section (absent: no admin token, no dashboard)."""
    sec = SectionReader(problems, "admin", section, ADMIN_KEYS)
    if section is None:
        return AdminSettings()
    sec.one_secret()
    settings = AdminSettings(
        token=sec.token("token"),
        token_env=sec.text("token_env", ""),
        token_file=sec.text("token_file", ""),
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
