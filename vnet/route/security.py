"""Loading the route's credentials: tokens from config, env or files; TLS files.

I/O at start-up only; what it returns is handed to the route's servicer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vnet.core.admin_config import same_as_node_token
from vnet.core.auth import PenaltyPolicy, TokenTable
from vnet.core.config import RouteSettings, resolve_secret
from vnet.core.errors import ConfigError
from vnet.files import read_pem, read_text

if TYPE_CHECKING:
    from vnet.cluster.credentials import ClusterCredentials


@dataclass(frozen=True)
class ServerTls:
    """PEM material for a TLS route; client_ca set means client certificates are required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None


@dataclass(frozen=True)
class RouteSecurity:
    """Who may use the route, and over what."""

    tokens: TokenTable = field(default_factory=TokenTable)
    tls: ServerTls | None = None
    penalty: PenaltyPolicy = field(default_factory=PenaltyPolicy)
    # The admin API's token ([admin]); "" (and no admin_names) means admin
    # calls from loopback only.
    admin_token: str = ""
    # Client certificate names that are admins too ([admin] client_names).
    admin_names: tuple[str, ...] = ()
    # [cluster]: the store to join and the routes' credentials; None: a lone route.
    cluster: ClusterCredentials | None = None


def load_security(
    settings: RouteSettings,
    environ: Mapping[str, str] | None = None,
    problems: list[ConfigError] | None = None,
) -> RouteSecurity:
    """Resolve the route's tokens and read its TLS files.

    Raises the first ConfigError (naming the key at fault) before anything
    starts; with problems given, appends every one there instead and returns
    what could be read, so that `--check` reports all the missing files.
    """
    env = os.environ if environ is None else environ
    found: list[ConfigError] = []

    def secret(section: str, token: str, token_env: str, token_file: str) -> str:
        try:
            return resolve_secret(
                settings.path, section, token, token_env, token_file, env, read_text
            )
        except ConfigError as exc:
            found.append(exc)
            return ""

    def pem(key: str, path: str) -> bytes:
        try:
            return read_pem(settings.path, "route", key, path)
        except ConfigError as exc:
            found.append(exc)
            return b""

    all_groups = secret("route", settings.token, settings.token_env, settings.token_file)
    per_group = {
        g.name: secret(f"group.{g.name}", g.token, g.token_env, g.token_file)
        for g in settings.groups
    }
    admin = settings.admin
    admin_token = secret("admin", admin.token, admin.token_env, admin.token_file)
    clash = same_as_node_token(
        admin_token,
        {"[route] token": all_groups} | {f"[group.{g}] token": t for g, t in per_group.items()},
    )
    if clash:
        key = "token_env" if admin.token_env else "token_file" if admin.token_file else "token"
        found.append(
            ConfigError(
                settings.path,
                "admin",
                key,
                f"the admin token is the same as {clash}: give admins a token of their own",
            )
        )
    tls = None
    # Both or neither: the config check reports a lone one.
    if settings.tls_cert and settings.tls_key:
        tls = ServerTls(
            cert_chain=pem("tls_cert", settings.tls_cert),
            private_key=pem("tls_key", settings.tls_key),
            client_ca=pem("tls_client_ca", settings.tls_client_ca)
            if settings.tls_client_ca
            else None,
        )
    if problems is not None:
        problems.extend(found)
    elif found:
        raise found[0]
    return RouteSecurity(tokens=TokenTable(all_groups, per_group), tls=tls, admin_token=admin_token)
