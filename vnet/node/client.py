"""The node's side of the wire: a typed client for the route's API.

The node's one gRPC module. It makes the calls, with messages vnet.wire
builds and parses, so the rest of the node sees dataclasses and VnetError,
and tunnel calls as TunnelCall (bytes, None at the end, TunnelBroken),
never protobuf messages or grpc.aio's calls and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from vnet import wire
from vnet.core.config import NodeConfig, RouteEndpoint, resolve_secret
from vnet.core.errors import RouteUnavailable, VnetError
from vnet.core.registry import Serve
from vnet.files import check_ca, check_key_pair, read_pem, read_text
from vnet.node.diagnose import Probe, probe_for

# What the calls return, made by the wire adapter; named here for the node's callers.
from vnet.wire import ControlEvent as ControlEvent
from vnet.wire import EchoAsked as EchoAsked
from vnet.wire import GoingAway as GoingAway
from vnet.wire import IdConflict as IdConflict
from vnet.wire import Joined as Joined
from vnet.wire import OpenTunnel as OpenTunnel
from vnet.wire import Registered as Registered
from vnet.wire import ServeAdded as ServeAdded
from vnet.wire import ServeChanges as ServeChanges
from vnet.wire import ServeRemoved as ServeRemoved
from vnet.wire import Snapshot as Snapshot
from vnet.wire import UnserveAsked as UnserveAsked
from vnet.wire import VnetInfo as VnetInfo
from vnet.wire.options import Options, common_options, keepalive_options

CHANNEL_OPTIONS: Options = [
    *common_options(),
    # A connection of its own: channels with equal arguments otherwise share
    # one, so a reconnect's "fresh" channel would inherit the dead link.
    ("grpc.use_local_subchannel_pool", 1),
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


def channel_options(keepalive: float, keepalive_timeout: float) -> Options:
    return [*CHANNEL_OPTIONS, *keepalive_options(keepalive, keepalive_timeout)]


class TunnelBroken(VnetError):
    """A tunnel's call failed: the route ended it with an error, or the link broke.

    code is the gRPC status's name ("UNAVAILABLE", "NOT_FOUND", ...), and
    details its text. INTERNAL is what a write meets when the route ended
    the call under it. code is "" when the call had no error to give:
    `finished` when it had already ended (cleanly) before a write came,
    else gRPC refused the operation and details say how.
    """

    def __init__(self, code: str, details: str = "", *, finished: bool = False) -> None:
        super().__init__(f"{code.lower()}: {details}" if code else details)
        self.code = code
        self.details = details
        self.finished = finished


def _broken(exc: grpc.aio.AioRpcError) -> TunnelBroken:
    return TunnelBroken(exc.code().name, exc.details() or "")


class TunnelCall:
    """One tunnel's stream to the route (Dial or Accept): frames in and out, as bytes.

    gRPC's errors come out as TunnelBroken, and the stream's clean end as
    None, so the tunnel's pumps (vnet.node.tunnel) know nothing of grpc.aio.
    """

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    async def read(self) -> bytes | None:
        """The next frame; None once the route ended the stream cleanly."""
        try:
            frame = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _broken(exc) from None
        except grpc.aio.BaseError as exc:
            raise TunnelBroken("", f"{type(exc).__name__}: {exc}") from None
        return None if frame is grpc.aio.EOF else frame

    async def write(self, frame: bytes) -> None:
        try:
            await self._call.write(frame)
        except grpc.aio.AioRpcError as exc:
            raise _broken(exc) from None
        except asyncio.InvalidStateError as exc:
            # grpc.aio's "RPC already finished": the route ended the call
            # (with OK) before this write.
            raise TunnelBroken("", str(exc), finished=True) from None
        except grpc.aio.BaseError as exc:
            raise TunnelBroken("", f"{type(exc).__name__}: {exc}") from None

    async def ended(self) -> None:
        """Until the call is over, however it ends."""
        await self._call.code()

    def cancel(self) -> None:
        """End the call now; the route resets the far end."""
        self._call.cancel()


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
    target: RouteEndpoint | None = None,
) -> RouteClient:
    """The client a node with this config uses to reach target, one of its
    routes (None: config.route). The same token and TLS settings serve every
    route; TLS checks each route's certificate for the host its entry names
    (or tls_server_name, when set)."""
    creds = credentials or NodeCredentials()
    target = target or config.route
    return RouteClient(
        target.address,
        token=creds.token,
        tls=creds.tls,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        probe=probe_for(config, creds.tls, target),
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
        # Explains a failed connection at start (see vnet.node.diagnose).
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
        self.stub = wire.route_stub(self.channel)
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
        why (vnet.node.diagnose) and give up at once with that reason; a refused
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
                wire.ping_request(), metadata=self._md(), timeout=2.0, wait_for_ready=False
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
        boot_id: str = "",
        serveids: Sequence[int] = (),
    ) -> Joined:
        """Join; `resume` is (vnetid, resume_token) of this node's last session,
        boot_id the route's boot then and serveids the ones it had registered
        (claimed back if the route has restarted since)."""
        vnetid, token = resume or ("", "")
        request = wire.join_request(name, group, vnetid, token, boot_id, serveids)
        try:
            resp = await self.stub.Join(request, metadata=self._auth, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise wire.error_of(exc) from None
        joined = wire.joined_from_pb(resp)
        self.session = joined.session
        return joined

    async def register(
        self,
        serveid: int,
        name: str,
        ip: str,
        port: int,
        info: str,
        timeout: float = 10.0,
        unserve: bool = False,
        type: str = "tcp",
    ) -> Registered:
        request = wire.register_request(serveid, name, ip, port, info, unserve, type)
        resp = await self._unary(self.stub.RegisterServe, request, timeout)
        return wire.registered_from_pb(resp)

    async def unregister(self, serveid: int, timeout: float = 10.0) -> None:
        request = wire.unregister_request(serveid)
        await self._unary(self.stub.UnregisterServe, request, timeout)

    async def list_serves(self, timeout: float = 10.0) -> list[Serve]:
        resp = await self._unary(self.stub.ListServes, wire.list_serves_request(), timeout)
        return wire.listed_serves_from_pb(resp)

    async def list_vnets(self, timeout: float = 10.0) -> list[VnetInfo]:
        resp = await self._unary(self.stub.ListVnets, wire.list_vnets_request(), timeout)
        return wire.vnets_from_pb(resp)

    async def unserve(
        self, vnetid: str, ip: str, port: int, timeout: float = 30.0, type: str = "tcp"
    ) -> Serve:
        """Ask vnet `vnetid` to offer ip:port; the serve it registered for it."""
        request = wire.unserve_request(vnetid, ip, port, type)
        resp = await self._unary(self.stub.Unserve, request, timeout)
        return wire.unserved_from_pb(resp)

    async def answer_unserve(
        self, request_id: str, serveid: int = 0, refusal: str = "", timeout: float = 10.0
    ) -> None:
        request = wire.answer_unserve_request(request_id, serveid, refusal)
        await self._unary(self.stub.AnswerUnserve, request, timeout)

    async def ping(self, timeout: float = 10.0) -> float:
        """Round trip to the route, in seconds."""
        start = time.perf_counter()
        await self._unary(self.stub.Ping, wire.ping_request(nonce=1), timeout)
        return time.perf_counter() - start

    async def ping_via(self, via: str, timeout: float = 3.0) -> bool:
        """A round trip through the route and node via and back: whether via echoed
        (False: the route answered alone, via does not echo). The caller times it."""
        answer = await self._unary(self.stub.Ping, wire.ping_request(nonce=1, via=via), timeout)
        return wire.pinged_from_pb(answer).echoed

    async def echo(self, probe: int, timeout: float = 3.0) -> None:
        """Answer an echo_asked event."""
        await self._unary(self.stub.Echo, wire.echo_request(probe), timeout)

    async def leave(self, timeout: float = 2.0) -> None:
        """End the session on purpose, so the route logs a leave, not a lost node."""
        await self._unary(self.stub.Leave, wire.leave_request(), timeout)

    async def control(self) -> AsyncIterator[ControlEvent]:
        """The control stream's events; ends by raising RouteUnavailable."""
        call = self.stub.Control(wire.control_request(), metadata=self._md())
        try:
            async for msg in call:
                event = wire.event_from_pb(msg)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as exc:
            err: VnetError = wire.error_of(exc)
            # The cause stays: an UNAUTHENTICATED here means the route no
            # longer knows the session (vnet.node.node words that).
            raise RouteUnavailable(f"control stream ended: {err}") from err
        finally:
            call.cancel()
        raise RouteUnavailable("the route closed the control stream")

    def dial(self, serveid: int, tunnel_id: str = "") -> TunnelCall:
        """A tunnel call to a serve of the group.

        tunnel_id (16 hex digits) names the tunnel in both nodes' logs; the
        route takes it unless it is malformed or in use.
        """
        extra = ((wire.MD_TUNNEL, tunnel_id),) if tunnel_id else ()
        return TunnelCall(self._dial(metadata=self._md((wire.MD_SERVEID, str(serveid)), *extra)))

    def accept(self, tunnel_id: str) -> TunnelCall:
        """A tunnel call answering an OpenTunnel."""
        return TunnelCall(self._accept(metadata=self._md((wire.MD_TUNNEL, tunnel_id))))

    def spare(self, serveid: int) -> TunnelCall:
        """An Accept call held at the route for the next Dial to serveid (vnet.node.spares)."""
        return TunnelCall(self._accept(metadata=self._md((wire.MD_SPARE, str(serveid)))))

    async def close(self) -> None:
        await self.channel.close()

    async def close_quietly(self, grace: float | None = None) -> None:
        """Close without waiting long: a channel on a dead link can take a while.

        grace: let the calls still open finish for this long first (a route
        the node left while its tunnels drain); None: cancel them now.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.close(grace), (grace or 0) + CLOSE_TIMEOUT)
