"""The one module that talks to etcd, through aetcd.

aetcd (asyncio, on grpcio) gives the etcd v3 API: KV, transactions, leases,
watches. Its Client opens only an insecure channel to a single host, so
connect() is replaced here by one that opens TLS when asked (a CA, and a
client certificate for etcd's --client-cert-auth), and the endpoints of a
multi-member etcd are tried in turn: a call that finds its member
unavailable moves the next call to the next member.

Errors are translated once, here, into vnet's families: anything that means
"etcd did not answer" becomes StoreUnavailable, whose message names the store
and the member, so that a node told UNAVAILABLE knows it was the registry,
not the route, that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc

from vnet.core.errors import StoreUnavailable

logger = logging.getLogger(__name__)

# A call to etcd that has not answered in this long is reported unavailable:
# a registration then fails clearly instead of hanging the node's join.
DEFAULT_CALL_TIMEOUT = 5


@dataclass(frozen=True)
class EtcdEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class EtcdAccess:
    """How to reach etcd: its members, TLS material (PEM bytes) and user."""

    endpoints: tuple[EtcdEndpoint, ...]
    tls: bool = False
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    user: str = ""
    password: str = ""
    call_timeout: float = DEFAULT_CALL_TIMEOUT

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        return ",".join(f"{scheme}://{e}" for e in self.endpoints)


class _Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with TLS: only connect() differs, and it sets exactly the
    attributes aetcd's own connect() sets (aetcd is pinned below 1.1 for that)."""

    _is_connecting: bool

    def __init__(self, access: EtcdAccess, endpoint: EtcdEndpoint) -> None:
        super().__init__(
            host=endpoint.host,
            port=endpoint.port,
            username=access.user or None,
            password=access.password or None,
            timeout=access.call_timeout,
        )
        self._access = access

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            if self._access.tls:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=self._access.ca,
                    private_key=self._access.key,
                    certificate_chain=self._access.cert,
                )
                self.channel = grpc.aio.secure_channel(target, creds)
            else:
                self.channel = grpc.aio.insecure_channel(target)
            if self._username is not None:
                stub = aetcd.rpc.AuthStub(self.channel)
                try:
                    resp = await stub.Authenticate(
                        aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                        timeout=self._timeout,
                    )
                except aetcd.rpc.AioRpcError as exc:
                    await self.channel.close()
                    self._init_channel_attrs()
                    aetcd.exceptions._handle_exception(exc)
                self.metadata = (("token", resp.token),)
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


class Etcd:
    """A connection to etcd that moves to the next member when one is unavailable."""

    def __init__(self, access: EtcdAccess) -> None:
        if not access.endpoints:
            raise ValueError("no etcd endpoints")
        self.access = access
        self._index = 0
        self._client: _Client | None = None

    @property
    def endpoint(self) -> EtcdEndpoint:
        return self.access.endpoints[self._index]

    def client(self) -> Any:
        """The aetcd client for the current member (typed Any: aetcd has no types)."""
        if self._client is None:
            self._client = _Client(self.access, self.endpoint)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _next_member(self, failed: Any) -> None:
        # A fresh channel either way: after an UNAVAILABLE the old one sits in
        # gRPC's reconnect backoff (up to two minutes), and an auth token may
        # have expired. Only once per failed client: calls that were in flight
        # on it fail too, and must not each move on a member.
        if failed is not self._client:
            return
        await self.close()
        self._index = (self._index + 1) % len(self.access.endpoints)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable:
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this caller is being cancelled: not the store's doing
            # grpc.aio ends the calls in flight on a channel that is closed with a
            # cancel: another call found the member unavailable (_next_member). A
            # cancel let through would end a route's RPC handler as if its client
            # had gone, so gRPC would never answer that client (it waits out its
            # deadline), and it would end the watch or the catch-up of missed
            # writes for good (they retry store errors only).
            raise self.unavailable(what, "failed another call, and this one with it") from None
        except (TimeoutError, aetcd.exceptions.ConnectionTimeoutError) as exc:
            raise self.unavailable(what, "did not answer in time") from exc
        except aetcd.exceptions.ConnectionFailedError as exc:
            raise self.unavailable(what, f"cannot be reached ({exc})") from exc
        except aetcd.exceptions.UnauthenticatedError as exc:
            raise self.unavailable(what, f"refused our credentials ({exc})") from exc
        except aetcd.exceptions.ClientError as exc:
            raise self.unavailable(what, f"failed: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            raise self.unavailable(what, f"failed: {exc.code().name} {exc.details()}") from exc

    def unavailable(self, what: str, reason: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"the cluster store is unavailable: etcd at {self.access.describe()} {reason} "
            f"(member {self.endpoint}, to {what})"
        )

    async def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """client.method(*args) with its errors translated; an unavailable
        member sends the next call to the next member. An expired auth token
        (etcd's simple tokens expire when idle) is renewed once, at once."""
        for attempt in (1, 2):
            client = self.client()
            try:
                with self._translated(what):
                    return await getattr(client, method)(*args, **kwargs)
            except StoreUnavailable as exc:
                expired = isinstance(exc.__cause__, aetcd.exceptions.UnauthenticatedError)
                await self._next_member(client)
                if attempt == 1 and expired and self.access.user:
                    continue
                raise
        raise AssertionError("unreachable")

    async def watch_prefix(
        self, what: str, prefix: bytes, start_revision: int | None
    ) -> AsyncIterator[Any]:
        """Events under prefix from start_revision, with their previous values.

        Ends with StoreUnavailable when the stream breaks (etcd stopped, member
        gone): the caller resumes from the revision after the last event.
        """
        with self._translated(what):
            client = self.client()
            await client.connect()
            watch = await client.watch_prefix(prefix, start_revision=start_revision, prev_kv=True)
        try:
            with self._translated(what):
                async for event in watch:
                    yield event
            # aetcd ends a watch quietly when its client is closed (after
            # another call found the member unavailable): never a quiet end here.
            raise self.unavailable(what, "closed the watch")
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()


# aetcd's transaction builders: value, version, create, mod (compares) and
# put, get, delete (operations).
TXN: Any = aetcd.client.Transactions()


def endpoints_text(endpoints: Sequence[EtcdEndpoint]) -> str:
    return ",".join(str(e) for e in endpoints)
