"""A route as a member of a cluster: the servicer's registry kept in the shared store.

With a [cluster] section the route's servicer gets a Member. Every id it hands
out is decided by the store (vnet.cluster.store: compare-and-swap in etcd, the
single route's serveid rules), then written into the route's own registry, so
that the servicer's handlers, its fan-out and its List answers work as they do
alone. The serves of nodes on the other routes come in by a watch and are
mirrored into the same registry (Registry.mirror), so a node sees the whole
group's serves in its control stream and can Dial any of them; locate() tells
the data plane which route to relay such a Dial to.

A node that resumes (its session was on a route that died, or on this one) is
known by its resume secret, whose record the store keeps for resume_ttl: it
gets its vnetid back, and its serveids, since a serve held by the same vnetid
is its own. When the store fences this route (its lease lost), the route stops
admitting and tells its nodes to go, so they move to a route that can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from vnet.cluster.store import Change, ClusterStore
from vnet.core.cluster_keys import NodeRecord, RouteRecord, ServeRecord, SessionRecord
from vnet.core.errors import NotFound, StoreUnavailable, VnetError
from vnet.core.registry import Registration, Vnet

if TYPE_CHECKING:
    from vnet.route.link import Link
    from vnet.route.service import RouteServicer

log = logging.getLogger(__name__)

# After the watch breaks (etcd gone), the first retry waits this long, doubling
# up to WATCH_RETRY_MAX: quick back after a blip, a few calls a minute in an outage.
WATCH_RETRY = 0.2
WATCH_RETRY_MAX = 5.0


class Member:
    """The servicer's link to the cluster store (one per route)."""

    def __init__(self, make_store: Callable[[], ClusterStore], servicer: RouteServicer) -> None:
        # A fenced store stays fenced: rejoining takes a new one, with new leases.
        self._make_store = make_store
        self.store = make_store()
        self.servicer = servicer
        self.route_id = self.store.route_id
        # route_id -> its advertise address, for locate(); kept by the watch.
        self.routes: dict[str, str] = {}
        # vnetid -> where it is, for the group's nodes on the other routes.
        self.nodes: dict[str, NodeRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._fence_watcher: asyncio.Task[None] | None = None
        # Serve events from the other routes, applied (metrics).
        self.events = 0
        # Writes the store missed while out of reach, made when it is back (_catch_up).
        self._unremoved: set[str] = set()
        self._unwithdrawn: set[tuple[Vnet, int]] = set()
        self._catching_up: asyncio.Task[None] | None = None
        # Per group: this route's registrations go to the store one at a time.
        self._locks: dict[str, asyncio.Lock] = {}

    # --- start and stop ----------------------------------------------------

    async def start(self) -> None:
        """Mirror the other routes' serves, then follow them; watch for a fence."""
        revision = await self._snapshot()
        self._watcher = asyncio.create_task(self._follow(revision), name="cluster-watch")
        self._fence_watcher = asyncio.create_task(self._on_fence(), name="cluster-fence")

    async def close(self) -> None:
        """Stop following; the store's own close revokes this route's entries."""
        for task in (self._watcher, self._fence_watcher, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._watcher, self._fence_watcher, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, VnetError):
                    await task
        await self.store.close(revoke=True)

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """A store write the handler does not wait for (a node gone, its serves)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, what))

    def _done(self, task: asyncio.Task[None], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), VnetError):
            # The route's lease takes its entries with it at worst: logged, not lost.
            log.warning("cluster: could not %s: %s", what, task.exception())

    # --- joining -----------------------------------------------------------

    async def vnetid_for(self, name: str, group: str, resume_vnetid: str, resume: str) -> str:
        """The joining node's vnetid, decided by the store.

        A node that presents the resume secret of a session the store knows
        (on any route) and the vnetid of that session gets it back, moved to
        this route; any other gets a new one, unique in the cluster.
        """
        if resume_vnetid and resume:
            record = await self.store.load_session(resume)
            if (
                record is not None
                and record.vnet.vnetid == resume_vnetid
                and record.vnet.group == group
            ):
                vnet = Vnet(resume_vnetid, name, group)
                await self.store.take_over_vnet(vnet)
                # The old secret has done its work; the new session gets its own.
                self.spawn(self.store.drop_session(resume), "drop a used session")
                return vnet.vnetid
        return (await self.store.add_vnet(name, group)).vnetid

    async def joined(self, link: Link, resume: str, drop: Callable[[Link, str], None]) -> None:
        """Keep the new session's record, so the node can resume on any route; a
        session the store could not record is ended (drop) and the Join fails."""
        try:
            await self.store.save_session(resume, SessionRecord(link.vnet))
        except VnetError:
            drop(link, "the cluster store could not record its session")
            raise

    def left(self, vnet: Vnet, resume_digest: bytes, said_so: bool) -> None:
        """The node's session here ended: its entries go (unless it moved meanwhile).

        Its session record stays for resume_ttl, so that it can resume on
        another route, unless it said it was leaving.
        """
        if self.store.fenced.is_set():
            return  # nothing can be written; the lost lease takes the node's entries
        self.spawn(self._remove(vnet.vnetid), f"remove vnet {vnet.vnetid}")
        digest = resume_digest.hex()
        if said_so:
            self.spawn(self.store.drop_session_digest(digest), "drop a session")
        else:
            loop = asyncio.get_running_loop()
            loop.call_later(
                self.store.resume_ttl,
                lambda: self.spawn(self.store.drop_session_digest(digest), "drop a session"),
            )

    async def _remove(self, vnetid: str) -> None:
        # It may have joined here again meanwhile (a reconnect): then it stays.
        if self.servicer.table.of_vnet(vnetid) is not None:
            return
        try:
            await self.store.remove_vnet(vnetid)
        except VnetError:
            # The store is out of reach (etcd down, the lease alive): the entries would
            # stay while this route lives, holding the node's serveids in the group.
            self._unremoved.add(vnetid)
            self._catch_up_later()
            raise
        self._unremoved.discard(vnetid)

    # --- serves ------------------------------------------------------------

    async def register(
        self,
        vnet: Vnet,
        serveid: int,
        name: str,
        ip: str,
        port: int,
        info: str,
        type: str,
        unserve: bool,
    ) -> Registration:
        """The store applies the serveid rules across the cluster; then the route's
        registry takes its verdict (the caller tells the group)."""
        # One registration of a group at a time from this route: concurrent ones would
        # all pick the same lowest free serveid and lose the compare-and-swap to each
        # other in turn; between routes the contenders are only as many as the routes.
        async with self._group_lock(vnet.group):
            decided = await self.store.register(vnet, serveid, name, ip, port, info, type, unserve)
        registry = self.servicer.registry
        try:
            local = registry.register(
                vnet.vnetid,
                decided.serve.serveid,
                name,
                ip,
                port,
                info,
                type,
                unserve=unserve,
                decided=True,
            )
        except NotFound:
            # The node went while the store was writing: take the serve back out.
            self.spawn(self.unregister(vnet, decided.serve.serveid), "withdraw a gone node's serve")
            raise
        return Registration(local.serve, decided.reassigned, local.replaced or decided.replaced)

    def _group_lock(self, group: str) -> asyncio.Lock:
        lock = self._locks.get(group)
        if lock is None:
            lock = self._locks[group] = asyncio.Lock()
        return lock

    async def unregister(self, vnet: Vnet, serveid: int) -> None:
        """Withdraw a serve from the store; one the store cannot be told of now is
        withdrawn once it can (the route has withdrawn it already)."""
        try:
            await self.store.unregister(vnet, serveid)
        except NotFound:
            pass
        except VnetError as exc:
            log.warning(
                "cluster: serveid %s of vnet %s stays in the store until it can be withdrawn: %s",
                serveid,
                vnet.vnetid,
                exc,
            )
            self._unwithdrawn.add((vnet, serveid))
            self._catch_up_later()
            return
        self._unwithdrawn.discard((vnet, serveid))

    def _catch_up_later(self) -> None:
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._keep_catching_up())
            self._tasks.add(self._catching_up)
            self._catching_up.add_done_callback(self._tasks.discard)

    async def _keep_catching_up(self) -> None:
        """Try the missed writes again, with backoff, until none is left (or the route is
        fenced: then its lease takes its entries with it)."""
        wait = WATCH_RETRY
        while (self._unremoved or self._unwithdrawn) and not self.store.fenced.is_set():
            await asyncio.sleep(wait)
            wait = min(wait * 2, WATCH_RETRY_MAX)
            with contextlib.suppress(VnetError):
                await self._catch_up()

    async def _catch_up(self) -> None:
        """What could not be written while the store was out of reach: departed nodes,
        withdrawn serves."""
        for vnetid in sorted(self._unremoved):
            await self._remove(vnetid)
        registry = self.servicer.registry
        for vnet, serveid in sorted(self._unwithdrawn, key=lambda x: (x[0].vnetid, x[1])):
            if not registry.owns(vnet.vnetid, serveid):  # not registered again meanwhile
                await self.unregister(vnet, serveid)
            else:
                self._unwithdrawn.discard((vnet, serveid))

    # --- the other routes ----------------------------------------------------

    def locate(self, group: str, serveid: int) -> str | None:
        """Where to relay a Dial to serveid: the advertise address of the route its
        node is on, when that is another route; None for a local serve or none."""
        route_id = self.servicer.registry.mirrored(group, serveid)
        if not route_id:
            return None
        found = self.routes.get(route_id)
        if found is None:
            self.spawn(self._read_routes(), "read the routes")
        return found

    def locate_vnet(self, group: str, vnetid: str) -> str | None:
        """Where a node of the group on another route is (its route's address); None
        when it is not on another route (here, or nowhere)."""
        record = self.nodes.get(vnetid)
        if record is None or record.vnet.group != group:
            return None
        return self.routes.get(record.route_id)

    def with_remote(self, group: str, local: list[tuple[Vnet, int]]) -> list[tuple[Vnet, int]]:
        """ListVnets' nodes: this route's, then the group's nodes on the other routes,
        each with its serve count (from the mirrored serves)."""
        remote = [r.vnet for r in self.nodes.values() if r.vnet.group == group]
        if not remote:
            return local
        counts: dict[str, int] = {}
        registry = self.servicer.registry
        for serve in registry.serves(group):
            if registry.mirrored(group, serve.serveid):
                counts[serve.vnetid] = counts.get(serve.vnetid, 0) + 1
        here = {v.vnetid for v, _ in local}
        merged = local + [(v, counts.get(v.vnetid, 0)) for v in remote if v.vnetid not in here]
        return sorted(merged, key=lambda pair: (len(pair[0].vnetid), pair[0].vnetid))

    async def _read_routes(self) -> None:
        self.routes = {r.route_id: r.advertise for r in await self.store.routes()}

    async def _snapshot(self) -> int:
        snap = await self.store.snapshot()
        registry = self.servicer.registry
        self.routes = {r.route_id: r.advertise for r in snap.routes}
        touched = {r.vnet.group for r in self.nodes.values()}
        self.nodes = {r.vnet.vnetid: r for r in snap.nodes if r.route_id != self.route_id}
        for group in touched | {r.vnet.group for r in self.nodes.values()}:
            registry.touch(group)
        # What is mirrored now but no longer in the store went while the watch was down.
        seen: set[tuple[str, int]] = set()
        for record in snap.serves:
            if record.route_id == self.route_id:
                continue
            seen.add((record.group, record.serve.serveid))
            self._apply_serve("added", record)
        self._forget_mirrored(keep=seen)
        return snap.revision

    async def _follow(self, revision: int) -> None:
        """Apply the other routes' changes; after a break, start from a fresh snapshot."""
        wait = WATCH_RETRY
        start = revision + 1
        while True:
            try:
                async for change in self.store.changes(start):
                    self._apply(change)
                    start = change.revision + 1
                    wait = WATCH_RETRY
                raise StoreUnavailable("the cluster store's watch ended")
            except VnetError as exc:
                log.warning("cluster: the watch on the store broke (%s); retrying", exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, WATCH_RETRY_MAX)
            try:
                start = await self._snapshot() + 1
            except VnetError as exc:
                log.debug("cluster: snapshot failed: %s", exc)

    def _apply(self, change: Change) -> None:
        record = change.record
        if isinstance(record, RouteRecord):
            if change.kind == "added":
                self.routes[record.route_id] = record.advertise
            elif self.routes.get(record.route_id) == record.advertise:
                del self.routes[record.route_id]
        elif isinstance(record, NodeRecord):
            self._apply_node(change.kind, record)
        elif record.route_id != self.route_id:
            self._apply_serve(change.kind, record)

    def _apply_node(self, kind: str, record: NodeRecord) -> None:
        vnetid = record.vnet.vnetid
        old = self.nodes.get(vnetid)
        if kind == "added" and record.route_id != self.route_id:
            self.nodes[vnetid] = record
            # Taken over by another route (the node resumed there): its session here,
            # if this route has not noticed the lost connection yet, is stale.
            self.servicer.moved_away(vnetid, record.route_id)
        elif old is not None and (kind == "added" or old.route_id == record.route_id):
            # Now on this route, or gone from the route it was on.
            del self.nodes[vnetid]
        else:
            return
        self.servicer.registry.touch(record.vnet.group)
        if old is not None and old.vnet.group != record.vnet.group:
            self.servicer.registry.touch(old.vnet.group)

    def _apply_serve(self, kind: str, record: ServeRecord) -> None:
        registry = self.servicer.registry
        fanout = self.servicer.fanout
        serve, group = record.serve, record.group
        self.events += 1
        if kind == "added":
            before = registry.mirrored(group, serve.serveid)
            replaced = registry.mirror(group, serve, record.route_id)
            if replaced is None and not registry.mirrored(group, serve.serveid):
                log.warning(
                    "cluster: group %s serveid %s is vnet %s's on route %s, but a node of "
                    "this route holds it; kept here",
                    group,
                    serve.serveid,
                    serve.vnetid,
                    record.route_id,
                )
                return
            if replaced is not None and not before:
                # The node of a local serve is now on another route: this session is stale.
                self.servicer.moved_away(replaced.vnetid, record.route_id)
            if replaced is not None and replaced != serve:
                fanout.removed(replaced, group)
            if replaced != serve:
                fanout.added(serve, group)
        else:
            gone = registry.unmirror(group, serve.serveid, serve.vnetid)
            if gone is not None:
                fanout.removed(gone, group)

    # --- fencing -----------------------------------------------------------

    async def _on_fence(self) -> None:
        """Fenced: refuse, send the nodes away, forget the other routes' serves (they
        can no longer be followed); then rejoin the store once it lets this route in."""
        while True:
            await self.store.fenced.wait()
            why = (
                f"route {self.route_id} lost its lease in the cluster store: "
                "it no longer admits; connect to another route"
            )
            self.servicer.refusing = why
            for link in list(self.servicer.sessions.values()):
                self.servicer.end_session(link, why)
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, VnetError):
                    await self._watcher
                self._watcher = None
            self._forget_mirrored()
            await self._rejoin()
            if self.servicer.refusing == why:  # an admin's drain meanwhile stays
                self.servicer.refusing = ""
            log.info("cluster: route %s rejoined the store and admits again", self.route_id)

    def _forget_mirrored(self, keep: set[tuple[str, int]] | None = None) -> None:
        """Take the mirrored serves out (and tell the groups), but those in keep."""
        registry, fanout = self.servicer.registry, self.servicer.fanout
        for group in registry.groups_mirrored():
            for serve in registry.serves(group):
                if (
                    registry.mirrored(group, serve.serveid)
                    and (keep is None or (group, serve.serveid) not in keep)
                    and registry.unmirror(group, serve.serveid, serve.vnetid) is not None
                ):
                    fanout.removed(serve, group)

    async def _rejoin(self) -> None:
        """A new store (new leases) once etcd answers and the old lease has expired
        (until then the route id is still held: RouteIdTaken), with backoff."""
        wait = WATCH_RETRY
        while True:
            await asyncio.sleep(wait)
            wait = min(wait * 2, WATCH_RETRY_MAX)
            store = self._make_store()
            try:
                await store.start()
            except VnetError as exc:
                log.debug("cluster: rejoining the store failed: %s", exc)
                await store.close(revoke=False)
                continue
            old, self.store = self.store, store
            await old.close(revoke=False)
            try:
                revision = await self._snapshot()
            except VnetError as exc:
                log.debug("cluster: reading the store after rejoining failed: %s", exc)
                continue  # the new store is fenced in its turn if this goes on
            self._watcher = asyncio.create_task(self._follow(revision), name="cluster-watch")
            return
