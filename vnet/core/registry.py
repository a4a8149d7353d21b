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
"""

from __future__ import annotations

from dataclasses import dataclass

from vnet.core.config import SERVEID_MAX, STATIC_SERVEID_MIN
from vnet.core.errors import InvalidRequest, NoFreeServeId, NotFound, ServeIdTaken
from vnet.core.limits import HOST_MAX, INFO_MAX, NAME_MAX, text_problem

DYNAMIC_RANGE = range(1, STATIC_SERVEID_MIN)


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
    # The caller's own serve that this one replaced (same serveid), if any.
    replaced: Serve | None = None


class Registry:
    """Every group's nodes and serves."""

    def __init__(self) -> None:
        self._vnets: dict[str, Vnet] = {}
        self._serves: dict[str, dict[int, Serve]] = {}
        self._next_vnet = 1

    # --- nodes -------------------------------------------------------------

    def add_vnet(self, name: str, group: str, wanted: str = "") -> Vnet:
        """A new node; `wanted` is its old vnetid, given back when free."""
        _check_text("name", name, NAME_MAX)
        _check_text("group", group, NAME_MAX)
        if not group:
            raise InvalidRequest("group must not be empty")
        if wanted and wanted.isdigit() and len(wanted) <= 6 and wanted not in self._vnets:
            vnetid = wanted
        else:
            vnetid = f"{self._next_vnet:02d}"
            while vnetid in self._vnets:
                self._next_vnet += 1
                vnetid = f"{self._next_vnet:02d}"
            self._next_vnet += 1
        vnet = Vnet(vnetid=vnetid, name=name, group=group)
        self._vnets[vnetid] = vnet
        return vnet

    def remove_vnet(self, vnetid: str) -> list[Serve]:
        """Forget a node; returns the serves that went with it."""
        vnet = self._vnets.pop(vnetid, None)
        if vnet is None:
            return []
        group = self._serves.get(vnet.group, {})
        gone = [s for s in group.values() if s.vnetid == vnetid]
        for serve in gone:
            del group[serve.serveid]
        if not group:
            self._serves.pop(vnet.group, None)
        return sorted(gone, key=lambda s: s.serveid)

    def vnet(self, vnetid: str) -> Vnet:
        try:
            return self._vnets[vnetid]
        except KeyError:
            raise NotFound(f"no vnet {vnetid}") from None

    def vnets(self, group: str) -> list[Vnet]:
        return sorted((v for v in self._vnets.values() if v.group == group), key=_vnet_order)

    def vnet_count(self) -> int:
        return len(self._vnets)

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
    ) -> Registration:
        vnet = self.vnet(vnetid)
        if not 0 <= serveid <= SERVEID_MAX:
            raise InvalidRequest(f"serveid {serveid} is out of range (0-{SERVEID_MAX})")
        if not 1 <= port <= 65535:
            raise InvalidRequest(f"port {port} is out of range (1-65535)")
        type = type or "tcp"
        if type not in ("tcp", "udp"):
            raise InvalidRequest(f"type {type!r} is not supported (tcp or udp)")
        _check_text("name", name, NAME_MAX)
        _check_text("info", info, INFO_MAX)
        _check_text("ip", ip, HOST_MAX)
        group = self._serves.setdefault(vnet.group, {})
        holder = group.get(serveid)
        replaced: Serve | None = None
        reassigned = False
        if serveid == 0:
            serveid = self._free_dynamic(group)
        elif holder is not None and holder.vnetid == vnetid:
            replaced = holder
        elif holder is not None and serveid >= STATIC_SERVEID_MIN:
            raise ServeIdTaken(
                f"static serveid {serveid} is already registered by vnet {holder.vnetid} "
                f"({holder.name}) in this group"
            )
        elif holder is not None:
            serveid = self._free_dynamic(group)
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
        return Registration(serve=serve, reassigned=reassigned, replaced=replaced)

    def unregister(self, vnetid: str, serveid: int) -> Serve:
        vnet = self.vnet(vnetid)
        group = self._serves.get(vnet.group, {})
        serve = group.get(serveid)
        if serve is None or serve.vnetid != vnetid:
            raise NotFound(f"serveid {serveid} is not registered by this vnet")
        del group[serveid]
        return serve

    def find(self, group: str, serveid: int) -> Serve:
        serve = self._serves.get(group, {}).get(serveid)
        if serve is None:
            raise NotFound(f"no serveid {serveid} in this group")
        return serve

    def serves(self, group: str) -> list[Serve]:
        return sorted(self._serves.get(group, {}).values(), key=lambda s: s.serveid)

    def serve_count(self, vnetid: str) -> int:
        vnet = self._vnets.get(vnetid)
        if vnet is None:
            return 0
        return sum(1 for s in self._serves.get(vnet.group, {}).values() if s.vnetid == vnetid)

    @staticmethod
    def _free_dynamic(group: dict[int, Serve]) -> int:
        for candidate in DYNAMIC_RANGE:
            if candidate not in group:
                return candidate
        raise NoFreeServeId(f"all dynamic serveids (1-{STATIC_SERVEID_MIN - 1}) are in use")


def _vnet_order(vnet: Vnet) -> tuple[int, str]:
    return (len(vnet.vnetid), vnet.vnetid)


def _check_text(what: str, value: str, limit: int) -> None:
    # The same limits and wording as the config check (vnet.core.limits).
    problem = text_problem(value, limit)
    if problem:
        raise InvalidRequest(f"{what} {problem}")
