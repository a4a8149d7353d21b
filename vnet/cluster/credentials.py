"""[cluster]'s secrets and files, read as the route's start needs them.

vnet.config_load calls load_cluster for the start and for `--check` alike:
every token, password and PEM file [cluster] names is read here, and every
problem is returned (with its section and key), not only the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vnet.cluster.etcd import EtcdAccess, EtcdEndpoint
from vnet.core.cluster_config import ClusterSettings, resolve_password
from vnet.core.config import RouteSettings, resolve_secret
from vnet.core.errors import ConfigError
from vnet.files import check_ca, check_key_pair, read_pem, read_text


@dataclass(frozen=True)
class PeerTls:
    """Mutual TLS between routes: this route's certificate, and its peers' CA."""

    cert_chain: bytes
    private_key: bytes
    ca: bytes


@dataclass(frozen=True)
class ClusterCredentials:
    """What a clustered route needs beyond its settings: the resolved secrets."""

    settings: ClusterSettings
    etcd: EtcdAccess
    # The routes' token with each other ("" when only mutual TLS is used).
    token: str
    peer_tls: PeerTls | None


def load_cluster(
    settings: RouteSettings, environ: Mapping[str, str]
) -> tuple[ClusterCredentials | None, list[ConfigError]]:
    """[cluster]'s credentials and every problem reading them (None with any)."""
    cluster = settings.cluster
    if cluster is None:
        return None, []
    path = settings.path
    found: list[ConfigError] = []

    def attempt(fn: object, *args: object) -> object:
        try:
            return fn(*args)  # type: ignore[operator]
        except ConfigError as exc:
            found.append(exc)
            return None

    token = attempt(
        resolve_secret,
        path,
        "cluster",
        cluster.token,
        cluster.token_env,
        cluster.token_file,
        environ,
        read_text,
    )
    token = token if isinstance(token, str) else ""
    clash = _node_token_clash(settings, token, environ)
    if clash:
        key = "token_env" if cluster.token_env else "token_file" if cluster.token_file else "token"
        found.append(
            ConfigError(
                path,
                "cluster",
                key,
                f"the cluster token is the same as {clash}: routes need a token of their own "
                "(a node holding it could pose as a route)",
            )
        )
    password = attempt(resolve_password, path, cluster, environ, read_text)

    def pem(key: str, file: str) -> bytes | None:
        if not file:
            return None
        data = attempt(read_pem, path, "cluster", key, file)
        return data if isinstance(data, bytes) else None

    peer_tls = None
    if cluster.peer_tls_cert and cluster.peer_tls_key and cluster.peer_tls_ca:
        cert = pem("peer_tls_cert", cluster.peer_tls_cert)
        private = pem("peer_tls_key", cluster.peer_tls_key)
        ca = pem("peer_tls_ca", cluster.peer_tls_ca)
        if cert and private and ca:
            attempt(
                check_key_pair,
                path,
                "cluster",
                cluster.peer_tls_cert,
                cluster.peer_tls_key,
                ("peer_tls_cert", "peer_tls_key"),
            )
            attempt(check_ca, path, "cluster", "peer_tls_ca", cluster.peer_tls_ca)
            peer_tls = PeerTls(cert, private, ca)
    etcd_ca = pem("etcd_tls_ca", cluster.etcd_tls_ca)
    etcd_cert = pem("etcd_tls_cert", cluster.etcd_tls_cert)
    etcd_key = pem("etcd_tls_key", cluster.etcd_tls_key)
    if etcd_ca:
        attempt(check_ca, path, "cluster", "etcd_tls_ca", cluster.etcd_tls_ca)
    if etcd_cert and etcd_key:
        attempt(
            check_key_pair,
            path,
            "cluster",
            cluster.etcd_tls_cert,
            cluster.etcd_tls_key,
            ("etcd_tls_cert", "etcd_tls_key"),
        )
    if found:
        return None, found
    access = EtcdAccess(
        endpoints=tuple(EtcdEndpoint(h, p) for h, p in cluster.endpoints),
        tls=cluster.etcd_tls,
        ca=etcd_ca,
        cert=etcd_cert,
        key=etcd_key,
        user=cluster.etcd_user,
        password=password if isinstance(password, str) else "",
    )
    return ClusterCredentials(cluster, access, token, peer_tls), []


def _node_token_clash(settings: RouteSettings, token: str, environ: Mapping[str, str]) -> str:
    """The section whose node (or admin) token equals the cluster token ("" if none)."""
    if not token:
        return ""
    owners = [("[route] token", settings.token, settings.token_env, settings.token_file)]
    owners += [
        (f"[group.{g.name}] token", g.token, g.token_env, g.token_file) for g in settings.groups
    ]
    a = settings.admin
    owners.append(("[admin] token", a.token, a.token_env, a.token_file))
    for where, inline, env, file in owners:
        try:
            other = resolve_secret(settings.path, "", inline, env, file, environ, read_text)
        except ConfigError:
            continue  # reported where it is read for its own section
        if other and other == token:
            return where
    return ""
