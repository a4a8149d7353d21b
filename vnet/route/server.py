"""The route: a grpc.aio server that keeps the registry and splices tunnels.

This module starts and stops the server (address, TLS, health, reflection,
keepalive, metrics); the servicer it runs is vnet.route.service.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vnet import wire
from vnet.cluster.credentials import ClusterCredentials
from vnet.cluster.store import ClusterStore, RouteIdTaken
from vnet.core.config import RouteEndpoint, RouteLimits, RouteSettings
from vnet.core.errors import VnetError
from vnet.metrics import MetricsServer, serve_metrics
from vnet.route import rpc as route_rpc
from vnet.route.admin import Reloader, RouteAdmin
from vnet.route.admin_rpc import AdminRpc
from vnet.route.ending import go_away, reap_half_closed
from vnet.route.member import Member
from vnet.route.peer import PeerAccess
from vnet.route.security import RouteSecurity
from vnet.route.service import RouteServicer, RouteTimeouts
from vnet.wire.admin_messages import ADMIN_SERVICE
from vnet.wire.options import NODE_PING_FLOOR_MS, common_options, keepalive_options
from vnet.wire.peer_messages import PEER_SERVICE

log = logging.getLogger(__name__)

# Waiting for an old lease on this route's id: its TTL plus this, trying this often.
ID_WAIT_SLACK = 2.0
ID_RETRY = 0.5

# New calls C-core may hold for the servicer: two per tunnel being set up.
PENDING_CALLS = 20_000

__all__ = ["RouteSecurity", "RouteServicer", "RouteTimeouts", "RunningRoute", "start_route"]


@dataclass
class RunningRoute:
    """A started route; stop() ends it."""

    server: grpc.aio.Server
    servicer: RouteServicer
    port: int
    health: health.aio.HealthServicer

    admin: RouteAdmin
    reaper: asyncio.Task[None] | None = None
    expirer: asyncio.Task[None] | None = None
    sampler: asyncio.Task[None] | None = None
    metrics: MetricsServer | None = None
    # The web dashboard, when [admin] web= is set (vnet.route.dashboard).
    dashboard: Any = None
    # The cluster store's member, when [cluster] is set (vnet.route.member).
    member: Member | None = None

    async def stop(self, reason: str = "route stopping") -> None:
        """Graceful: NOT_SERVING, tell the nodes, a grace for tunnels, then reset."""
        await self.health.enter_graceful_shutdown()
        if self.dashboard is not None:
            await self.dashboard.stop()
        await go_away(self.servicer, reason)
        for timer in (self.reaper, self.expirer, self.sampler):
            if timer is not None:
                timer.cancel()
        await self.servicer.close()
        if self.member is not None:
            # Revoked, not left to expire: the other routes see the serves go at once.
            await self.member.close()
        # What is left (control streams) ends now: the nodes were told.
        await self.server.stop(0.2)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)


async def join_cluster(servicer: RouteServicer, cluster: ClusterCredentials) -> Member:
    """Join the cluster's store and mirror the other routes' serves.

    Raises OSError with the store's words when that fails (etcd unreachable,
    the route_id held by a live route): the route does not start half-joined.
    """
    settings = cluster.settings
    assert settings.advertise is not None  # required by [cluster]'s check
    host, port = settings.advertise

    def make_store() -> ClusterStore:
        return ClusterStore(
            cluster.etcd,
            settings.route_id,
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            prefix=settings.prefix,
            lease_ttl=settings.lease_ttl,
            resume_ttl=settings.resume_ttl,
        )

    member = Member(make_store, servicer)
    # A route restarted after a crash finds its own old lease still holding its id:
    # it waits that lease out (a live twin would keep it, and is then refused).
    deadline = time.monotonic() + settings.lease_ttl + ID_WAIT_SLACK
    try:
        while True:
            try:
                await member.store.start()
                break
            except RouteIdTaken:
                if time.monotonic() > deadline:
                    raise
                log.info(
                    "cluster: route_id %s is still held (a crashed run's lease?); waiting "
                    "up to %.0f s for it to expire",
                    settings.route_id,
                    deadline - time.monotonic(),
                )
                await member.store.close(revoke=False)
                await asyncio.sleep(ID_RETRY)
                member.store = make_store()
        await member.start()
    except VnetError as exc:
        await member.close()
        raise OSError(f"cannot join the route cluster: {exc}") from None
    servicer.member = member
    servicer.locate = member.locate
    servicer.locate_vnet = member.locate_vnet
    servicer.peers.access = PeerAccess.of(cluster, servicer.security)
    return member


def _check_bindable(config: RouteEndpoint) -> None:
    """Fail with the OS's reason before gRPC does: it only logs a vague line."""
    try:
        infos = socket.getaddrinfo(
            config.ip, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {config.address}: {exc.strerror}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            # gRPC sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as exc:
                raise OSError(f"cannot listen on {config.address}: {exc.strerror or exc}") from None


async def start_route(
    config: RouteEndpoint,
    timeouts: RouteTimeouts | None = None,
    security: RouteSecurity | None = None,
    limits: RouteLimits | None = None,
    metrics: tuple[str, int] | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    settings: RouteSettings | None = None,
    reloader: Reloader | None = None,
    web: tuple[str, int] | None = None,
) -> RunningRoute:
    """Start a route listening on config's address (port 0 picks a free one).

    metrics is where to serve Prometheus metrics (host, port), if anywhere;
    clock is the servicer's (RouteServicer), which tests may move themselves.
    settings and reloader are the file it started from and how to read it
    again (the admin API's Reload, SIGHUP); web is where to serve the
    dashboard (host, port), if anywhere.
    Raises OSError when an address cannot be bound.
    """
    _check_bindable(config)
    servicer = RouteServicer(timeouts, security, limits, clock)
    admin = RouteAdmin(servicer, servicer.security, settings, reloader)
    tls = servicer.security.tls
    server = grpc.aio.server(
        options=[
            # Two routes on one port would silently share it.
            ("grpc.so_reuseport", 0),
            # A connection must finish its HTTP/2 (and TLS) handshake this soon.
            ("grpc.server_handshake_timeout_ms", int(servicer.timeouts.join * 1000)),
            *common_options(),
            # Find dead or black-holed nodes: ping idle connections, and give
            # up on them when a ping goes unanswered.
            *keepalive_options(servicer.timeouts.keepalive, servicer.timeouts.keepalive_timeout),
            # Nodes ping as often as this; any stricter and the route would
            # answer them with GOAWAY too_many_pings.
            ("grpc.http2.min_ping_interval_without_data_ms", NODE_PING_FLOOR_MS),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", NODE_PING_FLOOR_MS),
            # grpc.aio takes new calls from C-core one per loop turn, so a
            # burst of Dials and Accepts waits in C-core's queue; past its
            # defaults (1,000 soft, 3,000 hard) calls were dropped: a
            # 2,000-connection burst lost an Accept now and then.
            ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING_CALLS),
        ]
    )
    # Registered, not generic: C-core then keeps a queue of new calls per method, and
    # grpc.aio takes one call from each queue per turn of its loop, where all generic calls
    # share one queue. In a join storm thousands of Joins, Controls and RegisterServes wait
    # there; a Ping (a Dial, an Accept) no longer waits behind them (docs/DESIGN.md,
    # "Control plane").
    server.add_registered_method_handlers(wire.SERVICE, route_rpc.method_table(servicer))
    server.add_generic_rpc_handlers((AdminRpc(admin).handlers(), servicer.peers.handlers()))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            wire.SERVICE,
            ADMIN_SERVICE,
            PEER_SERVICE,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        if tls is None:
            port = server.add_insecure_port(config.address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.private_key, tls.cert_chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {config.address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {config.address}: address in use or unavailable")
    member = None
    if servicer.security.cluster is not None:
        # Before the server takes a call: every id it hands out comes from the store.
        member = await join_cluster(servicer, servicer.security.cluster)
    try:
        await server.start()
    except BaseException:
        if member is not None:
            await member.close()
        raise
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(wire.SERVICE, serving)
    log.info(
        "route listening on %s:%s (boot %s)%s%s",
        config.ip,
        port,
        servicer.boot_id,
        " with TLS" if tls else "",
        "" if servicer.security.tokens.enabled else ", no token: anyone who reaches it may join",
    )
    running = RunningRoute(
        server=server,
        servicer=servicer,
        port=port,
        health=health_servicer,
        admin=admin,
        member=member,
    )
    running.reaper = asyncio.create_task(reap_half_closed(servicer))
    running.expirer = asyncio.create_task(servicer.expire_uncontrolled())
    if web is not None:
        # The dashboard's charts; a route without one samples nothing.
        running.sampler = asyncio.create_task(admin.keep_sampling())
        from vnet.route.dashboard import Dashboard

        dashboard = Dashboard(admin)
        try:
            await dashboard.start(*web)
        except OSError:
            await running.stop()
            raise
        running.dashboard = dashboard
    if metrics is not None:
        try:
            running.metrics = serve_metrics(servicer, *metrics, admin=admin)
        except OSError as exc:
            await running.stop()
            raise OSError(
                f"cannot serve metrics on {metrics[0]}:{metrics[1]}: {exc.strerror or exc}"
            ) from None
    return running
