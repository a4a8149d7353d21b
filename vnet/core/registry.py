"""The route's registry: nodes (vnets), their serves, and serveid allocation.

Pure: no I/O, no clocks. The route's servicer owns one Registry and turns
what it returns into control events.

serveid rules, from the original vnet:
- 1-999; 0 asks for one to be assigned (from the dynamic range).
- 500-999 are static: kept as asked, or refused if another node of the group
  holds it (the first keeps serving).
- 1-499 are dynamic: kept when free, otherwise replaced by a free one and the
  node is told.
- Unique within a group; groups are separate namespaces.

After a route restart, serveids and vnetids that returning nodes claim are held for them
(vnet.core.claims): fresh ones are taken only outside the claimed set.

Indexed by group and by node, so what one group does costs the size of that group (or of
that node), never of the route: ListVnets reads each node's serve count, kept on change.

In a route cluster the registry also holds *mirrored* serves: those of nodes on other
routes, as the cluster store reports them (vnet.route.member). They are listed, found
and counted like the route's own, so control events, ListServes and Dial need no second
table; they belong to no local node, and the store, not this registry, has already
applied the serveid rules to them (register(decided=True) takes its verdict as given).
"""

from __future__ import annotations

from dataclasses import dataclass

from vnet.core.claims import Claims
from vnet.core.config import SERVEID_MAX, STATIC_SERVEID_MIN
from vnet.core.errors import Busy, InvalidRequest, NoFreeServeId, NotFound, ServeIdTaken
from vnet.core.limits import HOST_MAX, INFO_MAX, NAME_MAX, text_problem

DYNAMIC_RANGE = range(1, STATIC_SERVEID_MIN)
# Serveids per group: all of 1-999, of which 1-499 the route assigns.
SERVEIDS_PER_GROUP = SERVEID_MAX


@dataclass(frozen=True)
class Vnet:
    """A joined node."""

    vnetid: str
    name: str
    group: str


@dataclass(frozen=True)
class Serve:
    """A registered serve."""

    serveid: int
    vnetid: str
    name: str
    ip: str
    port: int
    info: str = ""
    type: str = "tcp"
    # Registered on another node's request (unserve), not from a config.
    unserve: bool = False


@dataclass(frozen=True)
class Registration:
    """What register() did."""

    serve: Serve
    reassigned: bool
    # The caller's own serve that this one replaced (same serveid), if any,
    # or (decided) the mirrored serve of a node on another route it displaced.
    replaced: Serve | None = None


class Registry:
    """Every group's nodes and serves."""

    def __init__(self, claims: Claims | None = None) -> None:
        self._vnets: dict[str, Vnet] = {}
        self._serves: dict[str, dict[int, Serve]] = {}
        # Indexes, kept on change: each group's nodes, each node's serveids.
        self._group_vnets: dict[str, dict[str, Vnet]] = {}
        self._own: dict[str, set[int]] = {}
        # A group's nodes in ListVnets order, made again only after a change.
        self._sorted: dict[str, list[Vnet]] = {}
        self._next_vnet = 1
        self.claims = claims
        # Bumped on every change to a group's nodes or serves: answers made from the group
        # (ListVnets, ListServes) can be kept until it moves.
        self._version: dict[str, int] = {}
        # (group, serveid) -> the route holding it: serves mirrored from other routes.
        self._mirrored: dict[tuple[str, int], str] = {}

    def version(self, group: str) -> int:
        return self._version.get(group, 0)

    def _changed(self, group: str) -> None:
        self._version[group] = self._version.get(group, 0) + 1

    def touch(self, group: str) -> None:
        """Something the group's answers show changed outside the registry (a node of
        the group on another route of a cluster): List answers are made again."""
        self._changed(group)

    def _held_vnetid(self, vnetid: str) -> bool:
        return self.claims is not None and self.claims.vnetid_held(vnetid)

    # --- nodes -------------------------------------------------------------

    @staticmethod
    def valid_vnetid(vnetid: str) -> bool:
        return vnetid.isascii() and vnetid.isdigit() and len(vnetid) <= 6

    def add_vnet(self, name: str, group: str, wanted: str = "", claimed: bool = False) -> Vnet:
        """A new node; `wanted` is its old vnetid, given back when free (and, unless it is
        the caller's own claim, not held for a node returning after a restart)."""
        check_vnet_fields(name, group)
        if (
            wanted
            and self.valid_vnetid(wanted)
            and wanted not in self._vnets
            and (claimed or not self._held_vnetid(wanted))
        ):
            vnetid = wanted
        else:
            vnetid = f"{self._next_vnet:02d}"
            while vnetid in self._vnets or self._held_vnetid(vnetid):
                self._next_vnet += 1
                vnetid = f"{self._next_vnet:02d}"
            self._next_vnet += 1
        vnet = Vnet(vnetid=vnetid, name=name, group=group)
        self._vnets[vnetid] = vnet
        self._group_vnets.setdefault(group, {})[vnetid] = vnet
        self._sorted.pop(group, None)
        self._changed(group)
        return vnet

    def remove_vnet(self, vnetid: str) -> list[Serve]:
        """Forget a node; returns the serves that went with it."""
        vnet = self._vnets.pop(vnetid, None)
        if vnet is None:
            return []
        members = self._group_vnets.get(vnet.group)
        if members is not None:
            members.pop(vnetid, None)
            if not members:
                del self._group_vnets[vnet.group]
        self._sorted.pop(vnet.group, None)
        self._changed(vnet.group)
        group = self._serves.get(vnet.group, {})
        gone = [group.pop(serveid) for serveid in sorted(self._own.pop(vnetid, ()))]
        if not group:
            self._serves.pop(vnet.group, None)
        return gone

    def vnet(self, vnetid: str) -> Vnet:
        try:
            return self._vnets[vnetid]
        except KeyError:
            raise NotFound(f"no vnet {vnetid}") from None

    def vnets(self, group: str) -> list[Vnet]:
        ordered = self._sorted.get(group)
        if ordered is None:
            ordered = sorted(self._group_vnets.get(group, {}).values(), key=_vnet_order)
            self._sorted[group] = ordered
        return list(ordered)

    def vnet_count(self) -> int:
        return len(self._vnets)

    def group_size(self, group: str) -> int:
        return len(self._group_vnets.get(group, ()))

    # --- serves ------------------------------------------------------------

    def register(
        self,
        vnetid: str,
        serveid: int,
        name: str,
        ip: str,
        port: int,
        info: str = "",
        type: str = "tcp",
        unserve: bool = False,
        decided: bool = False,
    ) -> Registration:
        """Register a serve of the local node vnetid by the serveid rules; decided: the
        cluster store applied them already and serveid is its verdict, taken as is."""
        vnet = self.vnet(vnetid)
        if not 0 <= serveid <= SERVEID_MAX:
            raise InvalidRequest(f"serveid {serveid} is out of range (0-{SERVEID_MAX})")
        type = check_serve_fields(name, ip, port, info, type)
        group = self._serves.setdefault(vnet.group, {})
        holder = group.get(serveid)
        # Held for another node returning after a restart: as good as registered by it.
        held_for = None
        if decided:
            return self._decided(vnet, serveid, name, ip, port, info, type, unserve)
        if holder is None and serveid and self.claims is not None:
            held_for = self.claims.serveid_holder(vnet.group, serveid)
            if held_for == vnetid:
                held_for = None
        replaced: Serve | None = None
        reassigned = False
        if serveid == 0:
            serveid = self._free_dynamic(vnet.group, group)
        elif holder is not None and holder.vnetid == vnetid:
            replaced = holder
        elif holder is not None and serveid >= STATIC_SERVEID_MIN:
            raise ServeIdTaken(
                f"static serveid {serveid} is already registered by vnet {holder.vnetid} "
                f"({holder.name}) in this group"
            )
        elif held_for is not None and serveid >= STATIC_SERVEID_MIN:
            raise ServeIdTaken(
                f"static serveid {serveid} is held for vnet {held_for}, which had it before "
                "the route restarted"
            )
        elif holder is not None or held_for is not None:
            serveid = self._free_dynamic(vnet.group, group)
            reassigned = True
        serve = Serve(
            serveid=serveid,
            vnetid=vnetid,
            name=name,
            ip=ip,
            port=port,
            info=info,
            type=type,
            unserve=unserve,
        )
        group[serveid] = serve
        self._own.setdefault(vnetid, set()).add(serveid)
        self._changed(vnet.group)
        if self.claims is not None:
            self.claims.registered(vnet.group, serveid, vnetid)
        return Registration(serve=serve, reassigned=reassigned, replaced=replaced)

    def _decided(
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
        group = self._serves.setdefault(vnet.group, {})
        holder = group.get(serveid)
        if (
            holder is not None
            and holder.vnetid != vnet.vnetid
            and not self.mirrored(vnet.group, serveid)
        ):
            # The store let it through, so the local holder is stale: it cannot happen
            # while both agree; refusing keeps the local registry from lying.
            raise ServeIdTaken(
                f"serveid {serveid} is registered by vnet {holder.vnetid} on this route"
            )
        self._mirrored.pop((vnet.group, serveid), None)
        serve = Serve(serveid, vnet.vnetid, name, ip, port, info, type, unserve)
        group[serveid] = serve
        self._own.setdefault(vnet.vnetid, set()).add(serveid)
        self._changed(vnet.group)
        return Registration(serve=serve, reassigned=False, replaced=holder)

    # --- serves of nodes on other routes (a cluster) -----------------------

    def mirror(self, group: str, serve: Serve, route_id: str) -> Serve | None:
        """A serve of a node on route route_id; returns the mirrored serve it replaced.

        A local serve at that serveid is left alone and None returned with
        nothing mirrored, unless it is the same node's: that node has moved to
        route_id, and its stale local serve gives way (the caller ends its session).
        """
        serves = self._serves.setdefault(group, {})
        holder = serves.get(serve.serveid)
        local = holder is not None and (group, serve.serveid) not in self._mirrored
        if local and holder is not None:
            if holder.vnetid != serve.vnetid:
                return None
            self._own.get(holder.vnetid, set()).discard(serve.serveid)
        serves[serve.serveid] = serve
        self._mirrored[(group, serve.serveid)] = route_id
        self._changed(group)
        return holder

    def unmirror(self, group: str, serveid: int, vnetid: str) -> Serve | None:
        """A mirrored serve is gone from its route; None if it is not mirrored here
        (already gone, or the serveid is now a local node's)."""
        if (group, serveid) not in self._mirrored:
            return None
        serves = self._serves.get(group, {})
        serve = serves.get(serveid)
        if serve is None or serve.vnetid != vnetid:
            return None
        del serves[serveid]
        del self._mirrored[(group, serveid)]
        if not serves:
            self._serves.pop(group, None)
        self._changed(group)
        return serve

    def mirrored(self, group: str, serveid: int) -> str:
        """The route holding a mirrored serve; "" for a local one or none."""
        return self._mirrored.get((group, serveid), "")

    def mirrored_count(self) -> int:
        return len(self._mirrored)

    def groups_mirrored(self) -> list[str]:
        """The groups holding at least one mirrored serve."""
        return sorted({group for group, _ in self._mirrored})

    def unregister(self, vnetid: str, serveid: int) -> Serve:
        vnet = self.vnet(vnetid)
        group = self._serves.get(vnet.group, {})
        serve = group.get(serveid)
        if serve is None or serve.vnetid != vnetid or (vnet.group, serveid) in self._mirrored:
            raise NotFound(f"serveid {serveid} is not registered by this vnet")
        del group[serveid]
        self._own.get(vnetid, set()).discard(serveid)
        self._changed(vnet.group)
        return serve

    def find(self, group: str, serveid: int) -> Serve:
        serve = self._serves.get(group, {}).get(serveid)
        if serve is None:
            raise NotFound(f"no serveid {serveid} in this group")
        return serve

    def serves(self, group: str) -> list[Serve]:
        return sorted(self._serves.get(group, {}).values(), key=lambda s: s.serveid)

    def serve_count(self, vnetid: str) -> int:
        return len(self._own.get(vnetid, ()))

    def owns(self, vnetid: str, serveid: int) -> bool:
        return serveid in self._own.get(vnetid, ())

    def serve_total(self, group: str) -> int:
        return len(self._serves.get(group, {}))

    def groups(self) -> list[str]:
        """The groups with at least one node, sorted."""
        return sorted(self._group_vnets)

    def free_serveids(self, group: str) -> tuple[int, int]:
        """(dynamic, static) serveids not registered in the group: 499 and 500 when empty."""
        taken = self._serves.get(group, {})
        dynamic = sum(1 for s in taken if s < STATIC_SERVEID_MIN)
        return (
            len(DYNAMIC_RANGE) - dynamic,
            SERVEID_MAX - STATIC_SERVEID_MIN + 1 - (len(taken) - dynamic),
        )

    def _free_dynamic(self, group_name: str, group: dict[int, Serve]) -> int:
        if self.claims is not None:
            wait = self.claims.settling()
            if wait > 0:
                raise Busy(
                    "the route restarted and is giving nodes back their serveids; "
                    f"a new one in {wait:.1f}s",
                    wait,
                )
        held = self.claims.held_serveids(group_name) if self.claims is not None else ()
        order = DYNAMIC_RANGE
        if self.claims is not None and self.claims.top_down():
            order = DYNAMIC_RANGE[::-1]
        for candidate in order:
            if candidate not in group and candidate not in held:
                return candidate
        raise NoFreeServeId(
            f"all dynamic serveids (1-{STATIC_SERVEID_MIN - 1}) of this group are in use "
            f"(a group holds at most {SERVEIDS_PER_GROUP} serves, "
            f"{len(DYNAMIC_RANGE)} assigned by the route)"
        )


def _vnet_order(vnet: Vnet) -> tuple[int, str]:
    return (len(vnet.vnetid), vnet.vnetid)


def check_vnet_fields(name: str, group: str) -> None:
    """A joining node's name and group, as a route (alone or in a cluster) takes them."""
    _check_text("name", name, NAME_MAX)
    _check_text("group", group, NAME_MAX)
    if not group:
        raise InvalidRequest("group must not be empty")


def check_serve_fields(name: str, ip: str, port: int, info: str, type: str) -> str:
    """A registration's fields, as a route (alone or in a cluster) takes them; the
    type, "tcp" when empty."""
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"port {port} is out of range (1-65535)")
    type = type or "tcp"
    if type not in ("tcp", "udp"):
        raise InvalidRequest(f"type {type!r} is not supported (tcp or udp)")
    _check_text("name", name, NAME_MAX)
    _check_text("info", info, INFO_MAX)
    _check_text("ip", ip, HOST_MAX)
    return type


def _check_text(what: str, value: str, limit: int) -> None:
    # The same limits and wording as the config check (vnet.core.limits).
    problem = text_problem(value, limit)
    if problem:
        raise InvalidRequest(f"{what} {problem}")
