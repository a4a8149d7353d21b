"""The registry a cluster of routes shares, kept in etcd.

One ClusterStore per route. start() claims the route's id under the route
lease; from then on every node and serve this route writes is attached to
that lease, which a task keeps alive. Allocation is by transaction
(compare-and-swap): two routes racing for one id both read it free, both
write "if still absent", and etcd lets exactly one through; the other reads
again and follows the same rules as the single route's registry
(vnet.core.cluster_keys.claim_serveid).

When the lease cannot be refreshed for longer than LeaseTiming.fence_after
(etcd unreachable, or etcd says the lease is gone), the route is fenced:
`fenced` is set and every write raises Fenced. A fenced store stays fenced;
the route decides what to do (stop admitting, let its nodes move).

The key layout and the rules are in vnet.core.cluster_keys; the etcd calls
and their errors in vnet.cluster.etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vnet.cluster.etcd import TXN, Etcd, EtcdAccess
from vnet.core.cluster_config import DEFAULT_LEASE_TTL, DEFAULT_PREFIX, DEFAULT_RESUME_TTL
from vnet.core.cluster_keys import (
    Keys,
    LeaseTiming,
    NodeRecord,
    RouteRecord,
    ServeRecord,
    SessionRecord,
    claim_serveid,
    decode_node,
    decode_route,
    decode_serve,
    decode_session,
    encode_node,
    encode_route,
    encode_serve,
    encode_session,
    format_vnetid,
    next_vnetid_number,
    wanted_vnetid,
)
from vnet.core.errors import Fenced, NotFound, ServeIdTaken, VnetError
from vnet.core.registry import (
    Registration,
    Serve,
    Vnet,
    check_serve_fields,
    check_vnet_fields,
)

logger = logging.getLogger(__name__)

# Compare-and-swap rounds before giving up: each lost round means another
# route wrote the same keys meanwhile, so a few rounds settle any real race.
CAS_ROUNDS = 16
# vnetid numbers a route reserves from the cluster's counter at a time.
VNETID_BLOCK = 16


class RouteIdTaken(VnetError):
    """Another live route holds this route_id (its lease has not expired)."""


@dataclass(frozen=True)
class ServeEvent:
    """A serve another route added or removed (a watch event)."""

    kind: str  # "added" or "removed"
    record: ServeRecord
    revision: int


@dataclass(frozen=True)
class Change:
    """A route, node or serve of another route appearing or going (a watch event)."""

    kind: str  # "added" or "removed"
    record: RouteRecord | NodeRecord | ServeRecord
    revision: int


@dataclass(frozen=True)
class Snapshot:
    """The other routes' routes, nodes and serves, and the revision to watch from."""

    routes: list[RouteRecord]
    nodes: list[NodeRecord]
    serves: list[ServeRecord]
    revision: int


class ClusterStore:
    """The shared registry, as one route sees it."""

    def __init__(
        self,
        access: EtcdAccess,
        route_id: str,
        advertise: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl: int = DEFAULT_LEASE_TTL,
        resume_ttl: int = DEFAULT_RESUME_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.etcd = Etcd(access)
        self.route_id = route_id
        self.advertise = advertise
        self.keys = Keys(prefix)
        self.timing = LeaseTiming(lease_ttl)
        self.resume_ttl = resume_ttl
        self._clock = clock
        self.fenced = asyncio.Event()
        self._lease = 0
        self._sessions_lease = 0
        self._last_ack = 0.0
        self._keepalive: asyncio.Task[None] | None = None
        # This route's reserved vnetid numbers not handed out yet (_next_number).
        self._block: list[int] = []
        self._block_lock = asyncio.Lock()

    # --- the route's lease -------------------------------------------------

    async def start(self) -> None:
        """Grant the leases, claim this route's id, and keep the leases alive.

        Raises RouteIdTaken when a live route holds the id, StoreUnavailable
        when etcd does not answer.
        """
        lease = await self.etcd.call("grant the route lease", "lease", self.timing.ttl)
        sessions = await self.etcd.call("grant the sessions lease", "lease", self.resume_ttl)
        self._lease, self._sessions_lease = lease.id, sessions.id
        self._last_ack = self._clock()
        key = self.keys.route(self.route_id)
        record = encode_route(RouteRecord(self.route_id, self.advertise))
        won, _ = await self.etcd.call(
            "claim the route id",
            "transaction",
            compare=[TXN.create(key) == 0],
            success=[TXN.put(key, record, self._lease)],
            failure=[],
        )
        if not won:
            await self._revoke()
            raise RouteIdTaken(
                f"route_id {self.route_id} is held by a live route in the cluster store; "
                f"if that route is gone, its lease expires within {self.timing.ttl} s"
            )
        self._keepalive = asyncio.create_task(self._keep_alive(), name="cluster-lease")
        logger.info(
            "cluster: route %s joined the store at %s (lease %x, ttl %s s)",
            self.route_id,
            self.etcd.access.describe(),
            self._lease,
            self.timing.ttl,
        )

    async def close(self, revoke: bool = True) -> None:
        """Stop; revoke: remove this route's entries at once (not after the TTL).

        The sessions lease is left to expire (resume_ttl): the nodes of a route
        that stops can still resume, with their vnetids, on another route.
        """
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if revoke and not self.fenced.is_set() and self._lease:
            with contextlib.suppress(VnetError):
                await self.etcd.call("revoke a lease", "revoke_lease", self._lease)
        await self.etcd.close()

    async def _revoke(self) -> None:
        for lease in (self._lease, self._sessions_lease):
            if lease:
                await self.etcd.call("revoke a lease", "revoke_lease", lease)

    async def _keep_alive(self) -> None:
        while not self.fenced.is_set():
            await asyncio.sleep(self.timing.refresh_every)
            try:
                gone = False
                for lease in (self._lease, self._sessions_lease):
                    reply = await self.etcd.call("refresh the lease", "refresh_lease", lease)
                    gone = gone or reply is None or reply.TTL <= 0
                if gone:
                    self._fence("etcd says the lease has expired")
                    return
                self._last_ack = self._clock()
            except VnetError as exc:
                logger.warning("cluster: lease refresh failed: %s", exc)
                if "lease not found" in str(exc):
                    self._fence("etcd says the lease has expired")
                    return
                if self.timing.fenced(self._last_ack, self._clock()):
                    self._fence(f"no refresh for {self.timing.fence_after:.1f} s")
                    return

    def _fence(self, why: str) -> None:
        logger.error("cluster: route %s is fenced (%s): it stops admitting", self.route_id, why)
        self.fenced.set()

    def _live(self) -> None:
        # Checked before every write, and the clock too: the keepalive task
        # may not have run yet when etcd has been gone for the whole TTL.
        if not self.fenced.is_set() and self.timing.fenced(self._last_ack, self._clock()):
            self._fence(f"no refresh for {self.timing.fence_after:.1f} s")
        if self.fenced.is_set():
            raise Fenced(
                f"route {self.route_id} lost its lease in the cluster store "
                f"(etcd at {self.etcd.access.describe()}): it no longer admits"
            )

    async def _txn(self, what: str, compare: list[Any], success: list[Any]) -> tuple[bool, Any]:
        self._live()
        try:
            result: tuple[bool, Any] = await self.etcd.call(
                what, "transaction", compare=compare, success=success, failure=[]
            )
        except VnetError as exc:
            # A write under a lease etcd no longer has fails "lease not found".
            if "lease not found" in str(exc):
                self._fence("etcd says the lease has expired")
                self._live()
            raise
        return result

    # --- routes ------------------------------------------------------------

    async def routes(self) -> list[RouteRecord]:
        found = await self.etcd.call("list the routes", "get_prefix", self.keys.routes())
        return [decode_route(kv.value) for kv in found]

    # --- nodes -------------------------------------------------------------

    async def add_vnet(self, name: str, group: str, wanted: str = "") -> Vnet:
        """A node joined this route: a vnetid unique across the cluster.

        wanted (its old vnetid) is given back when no node holds it; otherwise
        the next number of the block this route reserved from the cluster-wide
        counter is taken (written "if the node key is absent", so a number some
        node took back as its wanted vnetid is skipped).
        """
        check_vnet_fields(name, group)
        asked = wanted_vnetid(wanted)
        if asked:
            vnet = Vnet(asked, name, group)
            key = self.keys.node(asked)
            won, _ = await self._txn(
                "claim a vnetid",
                [TXN.create(key) == 0],
                [TXN.put(key, encode_node(NodeRecord(vnet, self.route_id)), self._lease)],
            )
            if won:
                return vnet
        for _ in range(CAS_ROUNDS):
            vnet = Vnet(format_vnetid(await self._next_number()), name, group)
            key = self.keys.node(vnet.vnetid)
            won, _ = await self._txn(
                "allocate a vnetid",
                [TXN.create(key) == 0],
                [TXN.put(key, encode_node(NodeRecord(vnet, self.route_id)), self._lease)],
            )
            if won:
                return vnet
        raise self.etcd.unavailable("allocate a vnetid", "kept losing the race")

    async def _next_number(self) -> int:
        """The next number of this route's block of the counter, reserving a new block
        of VNETID_BLOCK when it is used up: a join storm contends for the counter once
        a block, not once a join (each lost round would cost every other joiner one)."""
        async with self._block_lock:
            while not self._block:
                await self._reserve_block()
            return self._block.pop(0)

    async def _reserve_block(self) -> None:
        counter = self.keys.vnetid_next()
        for _ in range(CAS_ROUNDS):
            current = await self.etcd.call("read the vnetid counter", "get", counter)
            number = next_vnetid_number(None if current is None else current.value)
            same_counter = (
                TXN.version(counter) == 0
                if current is None
                else TXN.mod(counter) == current.mod_revision
            )
            won, _ = await self._txn(
                "reserve vnetids",
                [same_counter],
                [TXN.put(counter, str(number + VNETID_BLOCK).encode())],
            )
            if won:
                # Numbers a node took back as its wanted vnetid are skipped at the write.
                self._block = list(range(number, number + VNETID_BLOCK))
                return
        raise self.etcd.unavailable("reserve vnetids", "kept losing the race")

    async def take_over_vnet(self, vnet: Vnet) -> None:
        """A node resumed here (its session proved who it is): its vnetid moves to
        this route whichever route held it, without waiting for that route's TTL."""
        key = self.keys.node(vnet.vnetid)
        record = encode_node(NodeRecord(vnet, self.route_id))
        for _ in range(CAS_ROUNDS):
            current = await self.etcd.call("read a node", "get", key)
            same = TXN.create(key) == 0 if current is None else TXN.mod(key) == current.mod_revision
            won, _ = await self._txn(
                "take a vnetid over", [same], [TXN.put(key, record, self._lease)]
            )
            if won:
                return
        raise self.etcd.unavailable("take a vnetid over", "kept losing the race")

    async def node(self, vnetid: str) -> NodeRecord:
        """Which route a node is on."""
        found = await self.etcd.call("read a node", "get", self.keys.node(vnetid))
        if found is None:
            raise NotFound(f"no vnet {vnetid}")
        return decode_node(found.value)

    async def remove_vnet(self, vnetid: str) -> list[Serve]:
        """A node left this route: it and its serves go. Nothing is removed if
        the node has meanwhile resumed on another route (its record moved)."""
        key = self.keys.node(vnetid)
        for _ in range(CAS_ROUNDS):
            current = await self.etcd.call("read a node", "get", key)
            if current is None:
                return []
            record = decode_node(current.value)
            if record.route_id != self.route_id:
                return []
            serves = [
                s
                for s, _ in await self._group(record.vnet.group)
                if s.serve.vnetid == vnetid and s.route_id == self.route_id
            ]
            won, _ = await self._txn(
                "remove a node",
                [TXN.mod(key) == current.mod_revision],
                [TXN.delete(key)]
                + [TXN.delete(self.keys.serve(s.group, s.serve.serveid)) for s in serves],
            )
            if won:
                return [s.serve for s in serves]
        raise self.etcd.unavailable("remove a node", "kept losing the race")

    # --- serves ------------------------------------------------------------

    async def _group(self, group: str) -> list[tuple[ServeRecord, int]]:
        found = await self.etcd.call(
            "list a group's serves", "get_prefix", self.keys.group_serves(group)
        )
        return [(decode_serve(kv.value), kv.mod_revision) for kv in found]

    async def register(
        self,
        vnet: Vnet,
        serveid: int,
        name: str,
        ip: str,
        port: int,
        info: str = "",
        type: str = "tcp",
        unserve: bool = False,
    ) -> Registration:
        """The single route's serveid rules, across the cluster (see claim_serveid)."""
        type = check_serve_fields(name, ip, port, info, type)
        for _ in range(CAS_ROUNDS):
            held = {r.serve.serveid: (r, rev) for r, rev in await self._group(vnet.group)}
            holder = held.get(serveid)
            claim = claim_serveid(
                serveid, vnet.vnetid, None if holder is None else holder[0].serve, held
            )
            if claim is None:
                assert holder is not None
                h = holder[0].serve
                raise ServeIdTaken(
                    f"static serveid {serveid} is already registered by vnet {h.vnetid} "
                    f"({h.name}) in this group"
                )
            serve = Serve(claim.serveid, vnet.vnetid, name, ip, port, info, type, unserve)
            key = self.keys.serve(vnet.group, claim.serveid)
            own = held.get(claim.serveid) if claim.replaces_own else None
            same = TXN.create(key) == 0 if own is None else TXN.mod(key) == own[1]
            record = ServeRecord(serve, vnet.group, self.route_id)
            won, _ = await self._txn(
                "register a serve", [same], [TXN.put(key, encode_serve(record), self._lease)]
            )
            if won:
                return Registration(
                    serve=serve,
                    reassigned=claim.reassigned,
                    replaced=None if own is None else own[0].serve,
                )
        raise self.etcd.unavailable("register a serve", "kept losing the race")

    async def unregister(self, vnet: Vnet, serveid: int) -> Serve:
        key = self.keys.serve(vnet.group, serveid)
        current = await self.etcd.call("read a serve", "get", key)
        record = None if current is None else decode_serve(current.value)
        if record is None or record.serve.vnetid != vnet.vnetid:
            raise NotFound(f"serveid {serveid} is not registered by this vnet")
        won, _ = await self._txn(
            "unregister a serve", [TXN.mod(key) == current.mod_revision], [TXN.delete(key)]
        )
        if not won:
            raise NotFound(f"serveid {serveid} is not registered by this vnet")
        return record.serve

    async def find(self, group: str, serveid: int) -> ServeRecord:
        """A serve and the route its node is on."""
        found = await self.etcd.call("read a serve", "get", self.keys.serve(group, serveid))
        if found is None:
            raise NotFound(f"no serveid {serveid} in this group")
        return decode_serve(found.value)

    async def serves(self, group: str) -> list[ServeRecord]:
        return [r for r, _ in await self._group(group)]

    # --- sessions ----------------------------------------------------------

    async def save_session(self, resume_secret: str, record: SessionRecord) -> None:
        """Kept for resume_ttl after this route stops refreshing it (it died)."""
        key = self.keys.session(resume_secret)
        await self._txn(
            "save a session", [], [TXN.put(key, encode_session(record), self._sessions_lease)]
        )

    async def load_session(self, resume_secret: str) -> SessionRecord | None:
        found = await self.etcd.call("read a session", "get", self.keys.session(resume_secret))
        return None if found is None else decode_session(found.value)

    async def drop_session(self, resume_secret: str) -> None:
        await self._txn("drop a session", [], [TXN.delete(self.keys.session(resume_secret))])

    async def drop_session_digest(self, digest: str) -> None:
        """drop_session by the secret's SHA-256 (hex): what a route keeps of it."""
        await self._txn("drop a session", [], [TXN.delete(self.keys.session_digest(digest))])

    # --- watching the other routes -----------------------------------------

    async def serves_snapshot(self) -> tuple[list[ServeRecord], int]:
        """Every serve of the cluster, and the revision to watch from after it."""
        found = await self.etcd.call("list the serves", "get_prefix", self.keys.serves())
        return [decode_serve(kv.value) for kv in found], int(found.header.revision)

    async def serve_events(
        self, start_revision: int | None = None, include_own: bool = False
    ) -> AsyncIterator[ServeEvent]:
        """Serves added and removed by the other routes, from start_revision
        (the snapshot's revision + 1, so nothing between them is missed): the
        serves of changes().

        A dead route's serves arrive as "removed" when its lease expires.
        Ends with StoreUnavailable when the watch breaks; resume from the last
        event's revision + 1.
        """
        async for change in self.changes(start_revision):
            record = change.record
            if isinstance(record, ServeRecord) and (
                include_own or record.route_id != self.route_id
            ):
                yield ServeEvent(change.kind, record, change.revision)

    async def snapshot(self) -> Snapshot:
        """The routes, nodes and serves of the cluster, read one range after the other.

        The revision is the first read's: watching from it replays what changed
        while the others were read, and a replayed change only sets a record to
        a value it had, so the end state is the same (changes() after it)."""
        serves, revision = await self.serves_snapshot()
        nodes = await self.etcd.call("list the nodes", "get_prefix", self.keys.nodes())
        return Snapshot(
            await self.routes(), [decode_node(kv.value) for kv in nodes], serves, revision
        )

    async def changes(self, start_revision: int | None) -> AsyncIterator[Change]:
        """Routes, nodes and serves added and removed, from start_revision, the
        route's own included (a node moving away from it is a change it did not make).

        Ends with StoreUnavailable when the watch breaks; resume from the last
        change's revision + 1. (A delete whose old value etcd compacted away is
        skipped: it cannot say what went.)
        """
        decode: dict[str, Callable[[bytes], Any]] = {
            "route": decode_route,
            "node": decode_node,
            "serve": decode_serve,
        }
        stream = self.etcd.watch_prefix(
            "watch the cluster", self.keys.prefix.encode(), start_revision
        )
        async for event in stream:
            what = self.keys.kind_of(event.kv.key)
            if not what:
                continue
            if event.kind == "PUT":
                yield Change("added", decode[what](event.kv.value), int(event.kv.mod_revision))
            elif event.prev_kv is not None and event.prev_kv.value:
                yield Change(
                    "removed", decode[what](event.prev_kv.value), int(event.kv.mod_revision)
                )
