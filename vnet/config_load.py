"""Loading a config for a start: one function per program, shared by `--check`.

`vnet-route --check` and `vnet --check` call exactly what the real start
calls before it binds or connects: read the file (vnet.files), check it in
one pass (vnet.core.config, protected mode included), then read every token and
certificate it names. Every problem is collected, with its file, line,
section and key; the start refuses on any error, `--check` prints them all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from vnet.core.auth import insecure_reason
from vnet.core.config import (
    Checked,
    NodeConfig,
    RouteSettings,
    check_node_config,
    check_route_config,
    resolve_secret,
)
from vnet.core.errors import ConfigError
from vnet.files import check_ca, check_key_pair, read_config_text, read_pem, read_text

if TYPE_CHECKING:
    from vnet.node.client import NodeCredentials
    from vnet.route.security import RouteSecurity

T = TypeVar("T")
DEFAULTS = "(defaults)"


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What a start runs with (None when there is any error), and every problem."""

    path: str
    value: T | None
    errors: tuple[ConfigError, ...] = ()
    warnings: tuple[ConfigError, ...] = ()


def _placed(checked: Checked[Any], exc: ConfigError) -> ConfigError:
    """exc with the line of the key that named the file, when the file says."""
    if exc.line is not None or exc.path != checked.problems.path:
        return exc
    line = checked.line_of(exc.section, exc.key)
    return ConfigError(exc.path, exc.section, exc.key, exc.reason, line)


def _finish(checked: Checked[Any], extra: list[ConfigError], value: T | None) -> Loaded[T]:
    errors = checked.problems.in_order()
    seen = {str(e) for e in errors}
    for exc in extra:
        placed = _placed(checked, exc)
        if str(placed) not in seen:
            seen.add(str(placed))
            errors.append(placed)
    return Loaded(
        path=checked.problems.path,
        value=None if errors else value,
        # File order, as the check found them and as an editor shows them.
        errors=tuple(sorted(errors, key=lambda e: e.line or 0)),
        warnings=tuple(checked.problems.warnings),
    )


def _text(path: str) -> tuple[str | None, ConfigError | None]:
    try:
        return read_config_text(path), None
    except ConfigError as exc:
        return None, exc


def load_route(
    path: str, explicit: bool = True, environ: Mapping[str, str] | None = None
) -> Loaded[tuple[RouteSettings, RouteSecurity]]:
    """The route's settings and credentials, as its start needs them.

    explicit False (no CONFIG argument): a missing ./config.ini means the
    defaults, 127.0.0.1:7749.
    """
    from vnet.route.security import load_security

    if not explicit and not os.path.exists(path):
        checked = check_route_config(DEFAULTS, None)
    else:
        text, unreadable = _text(path)
        if unreadable is not None:
            return Loaded(path, None, (unreadable,))
        checked = check_route_config(path, text)
    settings = checked.config
    extra: list[ConfigError] = []
    security = load_security(settings, environ, problems=extra)
    if settings.cluster is not None:
        from vnet.cluster.credentials import load_cluster

        # Read for the start and --check alike: the start joins the store with them.
        cluster, problems = load_cluster(settings, os.environ if environ is None else environ)
        extra.extend(problems)
        security = dataclasses.replace(security, cluster=cluster)
    if checked.ok and not extra:
        extra.extend(_route_tls(settings))
    if checked.ok and not extra:
        # Protected mode on what was actually read, as well as on what the
        # file says (vnet.core.config): both must agree before the route binds.
        reason = insecure_reason(
            settings.listen.ip,
            has_tokens=security.tokens.enabled,
            client_certs=security.tls is not None and security.tls.client_ca is not None,
            allow_insecure=settings.allow_insecure,
        )
        if reason:
            extra.append(ConfigError(settings.path, "route", "ip", reason))
    return _finish(checked, extra, (settings, security))


def _route_tls(settings: RouteSettings) -> list[ConfigError]:
    """The route's TLS files must work together: checked before binding, since
    gRPC reports a key that does not match its certificate only as "Failed to
    bind to address", with BoringSSL lines."""
    if not settings.tls_cert:
        return []
    try:
        check_key_pair(settings.path, "route", settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            check_ca(settings.path, "route", "tls_client_ca", settings.tls_client_ca)
    except ConfigError as exc:
        return [exc]
    return []


def load_node(
    path: str, environ: Mapping[str, str] | None = None
) -> Loaded[tuple[NodeConfig, NodeCredentials]]:
    """The node's config and credentials, as its start needs them."""
    from vnet.node.client import load_credentials

    text, unreadable = _text(path)
    if unreadable is not None:
        return Loaded(path, None, (unreadable,))
    checked = check_node_config(path, text or "")
    config = checked.config
    env = os.environ if environ is None else environ
    extra = _node_files(config, env)
    credentials = None
    if checked.ok and not extra:
        try:
            credentials = load_credentials(config, env)
        except ConfigError as exc:
            extra.append(exc)
    return _finish(checked, extra, None if credentials is None else (config, credentials))


def _node_files(config: NodeConfig, env: Mapping[str, str]) -> list[ConfigError]:
    """Every problem with the token and TLS files the node names, not only the first.

    load_credentials (vnet.node.client) stops at the first; this reads them all
    with the same functions, so that `--check` can list every missing file.
    """
    v = config.vnet
    found: list[ConfigError] = []
    try:
        resolve_secret(config.path, "vnet", v.token, v.token_env, v.token_file, env, read_text)
    except ConfigError as exc:
        found.append(exc)
    if v.tls:
        for key, file in (("tls_ca", v.tls_ca), ("tls_cert", v.tls_cert), ("tls_key", v.tls_key)):
            if file:
                try:
                    read_pem(config.path, "vnet", key, file)
                except ConfigError as exc:
                    found.append(exc)
    return found
