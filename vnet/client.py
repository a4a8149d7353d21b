"""The node's side of the wire: a typed client for the route's API.

Wraps the generated stub so the rest of the node sees dataclasses and
VnetError, never protobuf messages or grpc.aio errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from vnet import wire
from vnet.config import NodeConfig, resolve_secret
from vnet.diagnose import Probe, probe_for
from vnet.errors import RouteUnavailable, VnetError
from vnet.files import check_ca, check_key_pair, read_pem, read_text
from vnet.pacing import STREAM_WINDOW
from vnet.registry import Serve
from vnetrpc.v1 import route_pb2 as pb
from vnetrpc.v1 import route_pb2_grpc as pb_grpc

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024 + 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024 + 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A connection of its own: channels with equal arguments otherwise share
    # one, so a reconnect's "fresh" channel would inherit the dead link.
    ("grpc.use_local_subchannel_pool", 1),
    # Fixed stream windows, not BDP-grown ones (vnet/pacing.py STREAM_WINDOW).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW),
]
CLOSE_TIMEOUT = 5.0
# A refused or unreachable route is looked at again after this (seconds)
# before a starting node gives up: it may be starting too.
RETRY_TRANSIENT = 0.5
# The probe that explains a connect timeout gets this long (seconds).
PROBE_AT_TIMEOUT = 1.0
# A dead route is noticed within about KEEPALIVE + KEEPALIVE_TIMEOUT seconds.
KEEPALIVE = 10.0
KEEPALIVE_TIMEOUT = 10.0


def channel_options(keepalive: float, keepalive_timeout: float) -> list[tuple[str, Any]]:
    return [
        *CHANNEL_OPTIONS,
        ("grpc.keepalive_time_ms", int(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        # Any ping in flight (a BDP probe too) must be answered this soon, or
        # a link that died during one goes unnoticed for the 60 s default.
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
    ]


@dataclass(frozen=True)
class Joined:
    session: str
    vnetid: str
    group: str
    boot_id: str
    # Lets this node take its session over after a lost connection.
    resume_token: str = ""


@dataclass(frozen=True)
class Registered:
    serve: Serve
    reassigned: bool


@dataclass(frozen=True)
class VnetInfo:
    vnetid: str
    name: str
    group: str
    serves: int


@dataclass(frozen=True)
class Snapshot:
    serves: tuple[Serve, ...]


@dataclass(frozen=True)
class ServeAdded:
    serve: Serve


@dataclass(frozen=True)
class ServeRemoved:
    serveid: int
    vnetid: str


@dataclass(frozen=True)
class OpenTunnel:
    tunnel_id: str
    serveid: int
    from_vnetid: str


@dataclass(frozen=True)
class GoingAway:
    reason: str
    grace: float


@dataclass(frozen=True)
class UnserveAsked:
    request_id: str
    from_vnetid: str
    ip: str
    port: int


ControlEvent = Snapshot | ServeAdded | ServeRemoved | OpenTunnel | GoingAway | UnserveAsked


def _event(msg: pb.ControlEvent) -> ControlEvent | None:
    kind = msg.WhichOneof("event")
    if kind == "snapshot":
        return Snapshot(tuple(wire.serves_from_pb(msg.snapshot.serves)))
    if kind == "serve_added":
        return ServeAdded(wire.serve_from_pb(msg.serve_added))
    if kind == "serve_removed":
        return ServeRemoved(msg.serve_removed.serveid, msg.serve_removed.vnetid)
    if kind == "open_tunnel":
        ot = msg.open_tunnel
        return OpenTunnel(ot.tunnel_id, ot.serveid, ot.from_vnetid)
    if kind == "unserve_asked":
        ua = msg.unserve_asked
        return UnserveAsked(ua.request_id, ua.from_vnetid, ua.ip, ua.port)
    if kind == "going_away":
        return GoingAway(msg.going_away.reason, msg.going_away.grace_ms / 1000)
    return None  # an event kind from a newer route: ignore it


@dataclass(frozen=True)
class ClientTls:
    """PEM material for a TLS connection to the route."""

    # The CA (or self-signed certificate) to trust, exactly; None: the system's.
    root_ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    # The name the route's certificate must carry, when not the address's host.
    server_name: str = ""


@dataclass(frozen=True)
class NodeCredentials:
    """What a node presents to the route."""

    token: str = ""
    tls: ClientTls | None = None


def load_credentials(
    config: NodeConfig,
    environ: Mapping[str, str] | None = None,
) -> NodeCredentials:
    """Read the node's token and TLS files; ConfigError names the key at fault."""
    v = config.vnet
    env = os.environ if environ is None else environ
    token = resolve_secret(config.path, "vnet", v.token, v.token_env, v.token_file, env, read_text)
    if not v.tls:
        return NodeCredentials(token=token)

    def pem(key: str, path: str) -> bytes | None:
        return read_pem(config.path, "vnet", key, path) if path else None

    tls = ClientTls(
        root_ca=pem("tls_ca", v.tls_ca),
        cert_chain=pem("tls_cert", v.tls_cert),
        private_key=pem("tls_key", v.tls_key),
        server_name=v.tls_server_name,
    )
    # Checked here, not left to gRPC: it would say only "Invalid private key"
    # or "Handshake failed" among BoringSSL lines.
    if v.tls_ca:
        check_ca(config.path, "vnet", "tls_ca", v.tls_ca)
    if v.tls_cert:
        check_key_pair(config.path, "vnet", v.tls_cert, v.tls_key)
    return NodeCredentials(token=token, tls=tls)


def client_for(
    config: NodeConfig,
    credentials: NodeCredentials | None = None,
    keepalive: float = KEEPALIVE,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> RouteClient:
    """The client a node with this config uses to reach its route."""
    creds = credentials or NodeCredentials()
    return RouteClient(
        config.route.address,
        token=creds.token,
        tls=creds.tls,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        probe=probe_for(config, creds.tls),
    )


class RouteClient:
    """One channel to the route, and the calls a node makes on it."""

    def __init__(
        self,
        address: str,
        token: str = "",
        tls: ClientTls | None = None,
        keepalive: float = KEEPALIVE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        probe: Probe | None = None,
    ) -> None:
        self.address = address
        # Explains a failed connection at start (see vnet.diagnose).
        self._probe = probe
        options = channel_options(keepalive, keepalive_timeout)
        self._auth: tuple[tuple[str, str], ...] = (
            ((wire.MD_AUTH, f"Bearer {token}"),) if token else ()
        )
        if tls is None:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=tls.root_ca,
                private_key=tls.private_key,
                certificate_chain=tls.cert_chain,
            )
            self.channel = grpc.aio.secure_channel(address, credentials, options=options)
        self.stub = pb_grpc.RouteServiceStub(self.channel)
        self.session = ""
        # Tunnel calls pass frames as bytes: vnet.wire encodes them by hand.
        self._dial = self.channel.stream_stream(wire.DIAL_METHOD)
        self._accept = self.channel.stream_stream(wire.ACCEPT_METHOD)

    def _md(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return ((wire.MD_SESSION, self.session), *self._auth, *extra)

    async def _unary(self, method: Any, request: Any, timeout: float) -> Any:
        """One unary call with this session; gRPC errors become VnetError, once, here."""
        try:
            return await method(request, metadata=self._md(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_of(exc) from None

    async def connect(self, timeout: float, fail_fast: bool = False) -> None:
        """Wait until the channel is ready, at most `timeout` seconds.

        fail_fast (a node starting): as soon as the channel fails, find out
        why (vnet.diagnose) and give up at once with that reason; a refused
        or unreachable route is looked at once more first. Without it (a
        node reconnecting), wait out the timeout as gRPC retries.
        """
        if fail_fast and self._probe is not None:
            await self._connect_or_explain(timeout, self._probe)
            return
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise RouteUnavailable(
                f"cannot reach the route at {self.address}: {await self._last_error()}"
            ) from None

    async def _connect_or_explain(self, timeout: float, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        ready = grpc.ChannelConnectivity.READY
        state = self.channel.get_state(try_to_connect=True)
        while state is not ready:
            wait = deadline - loop.time()
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                found = await probe(max(0.1, min(PROBE_AT_TIMEOUT, wait)))
                early = loop.time() - started < RETRY_TRANSIENT
                settled = not (found is None or (found.transient and early))
                if found is not None and settled and self.channel.get_state() is not ready:
                    raise RouteUnavailable(
                        f"cannot reach the route at {self.address}: {found.reason}"
                    )
                # gRPC keeps a failed channel in TRANSIENT_FAILURE while it
                # retries: look again after a while, not only on a change.
                wait = min(deadline - loop.time(), RETRY_TRANSIENT)
            if deadline - loop.time() <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.wait_for_state_change(state), max(wait, 0.0))
            state = self.channel.get_state(try_to_connect=True)
        if state is ready:
            return
        found = await probe(PROBE_AT_TIMEOUT)
        why = found.reason if found else await self._last_error()
        raise RouteUnavailable(f"cannot reach the route at {self.address}: {why}")

    async def _last_error(self) -> str:
        """Why the channel is not ready, as gRPC saw it (refused, TLS, ...)."""
        try:
            await self.stub.Ping(
                pb.PingRequest(), metadata=self._md(), timeout=2.0, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.details() or exc.code().name)
        return "it answered only just now"

    async def join(
        self,
        name: str,
        group: str,
        timeout: float = 10.0,
        resume: tuple[str, str] | None = None,
    ) -> Joined:
        """Join; `resume` is (vnetid, resume_token) of this node's last session."""
        vnetid, token = resume or ("", "")
        request = pb.JoinRequest(name=name, group=group, resume_vnetid=vnetid, resume_token=token)
        try:
            resp = await self.stub.Join(request, metadata=self._auth, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_of(exc) from None
        self.session = resp.session
        return Joined(resp.session, resp.vnetid, resp.group, resp.boot_id, resp.resume_token)

    async def register(
        self,
        serveid: int,
        name: str,
        ip: str,
        port: int,
        info: str,
        timeout: float = 10.0,
        unserve: bool = False,
    ) -> Registered:
        request = pb.RegisterServeRequest(
            serveid=serveid, name=name, type="tcp", ip=ip, port=port, info=info, unserve=unserve
        )
        resp = await self._unary(self.stub.RegisterServe, request, timeout)
        return Registered(wire.serve_from_pb(resp.serve), resp.reassigned)

    async def unregister(self, serveid: int, timeout: float = 10.0) -> None:
        request = pb.UnregisterServeRequest(serveid=serveid)
        await self._unary(self.stub.UnregisterServe, request, timeout)

    async def list_serves(self, timeout: float = 10.0) -> list[Serve]:
        resp = await self._unary(self.stub.ListServes, pb.ListServesRequest(), timeout)
        return wire.serves_from_pb(resp.serves)

    async def list_vnets(self, timeout: float = 10.0) -> list[VnetInfo]:
        resp = await self._unary(self.stub.ListVnets, pb.ListVnetsRequest(), timeout)
        return [VnetInfo(v.vnetid, v.name, v.group, v.serves) for v in resp.vnets]

    async def unserve(self, vnetid: str, ip: str, port: int, timeout: float = 30.0) -> Serve:
        """Ask vnet `vnetid` to offer ip:port; the serve it registered for it."""
        request = pb.UnserveRequest(vnetid=vnetid, ip=ip, port=port)
        resp = await self._unary(self.stub.Unserve, request, timeout)
        return wire.serve_from_pb(resp.serve)

    async def answer_unserve(
        self, request_id: str, serveid: int = 0, refusal: str = "", timeout: float = 10.0
    ) -> None:
        request = pb.AnswerUnserveRequest(request_id=request_id, serveid=serveid, refusal=refusal)
        await self._unary(self.stub.AnswerUnserve, request, timeout)

    async def ping(self, timeout: float = 10.0) -> float:
        """Round trip to the route, in seconds."""
        start = time.perf_counter()
        await self._unary(self.stub.Ping, pb.PingRequest(nonce=1), timeout)
        return time.perf_counter() - start

    async def leave(self, timeout: float = 2.0) -> None:
        """End the session on purpose, so the route logs a leave, not a lost node."""
        await self._unary(self.stub.Leave, pb.LeaveRequest(), timeout)

    async def control(self) -> AsyncIterator[ControlEvent]:
        """The control stream's events; ends by raising RouteUnavailable."""
        call = self.stub.Control(pb.ControlRequest(), metadata=self._md())
        try:
            async for msg in call:
                event = _event(msg)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as exc:
            err: VnetError = wire.error_of(exc)
            # The cause stays: an UNAUTHENTICATED here means the route no
            # longer knows the session (vnet.node words that).
            raise RouteUnavailable(f"control stream ended: {err}") from err
        finally:
            call.cancel()
        raise RouteUnavailable("the route closed the control stream")

    def dial(self, serveid: int, tunnel_id: str = "") -> Any:
        """A raw tunnel call to a serve of the group.

        tunnel_id (16 hex digits) names the tunnel in both nodes' logs; the
        route takes it unless it is malformed or in use.
        """
        extra = ((wire.MD_TUNNEL, tunnel_id),) if tunnel_id else ()
        return self._dial(metadata=self._md((wire.MD_SERVEID, str(serveid)), *extra))

    def accept(self, tunnel_id: str) -> Any:
        """A raw tunnel call answering an OpenTunnel."""
        return self._accept(metadata=self._md((wire.MD_TUNNEL, tunnel_id)))

    async def close(self) -> None:
        await self.channel.close()

    async def close_quietly(self) -> None:
        """Close without waiting long: a channel on a dead link can take a while."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.close(), CLOSE_TIMEOUT)
