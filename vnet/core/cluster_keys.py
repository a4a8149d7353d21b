"""The route cluster's registry in etcd: its key layout, its records and its rules.

Pure: no I/O, no clocks. vnet.cluster.store carries these out against etcd
(transactions, leases, watches); everything that decides *what* is written
where, and who wins, lives here so it can be tested without a store.

Key layout, under a prefix (default "vnet/", so several clusters can share
one etcd); every value is a JSON object:

    {p}routes/{route_id}            the route: advertise address    lease: route
    {p}vnetid-next                  the next vnetid to hand out     no lease
    {p}nodes/{vnetid}               a joined node: name, group,     lease: route
                                    the route it is on
    {p}serves/{group}/{serveid}     a serve: the Serve fields and   lease: route
                                    the route its node is on
    {p}sessions/{digest}            a resumable session: vnetid,    lease: sessions
                                    name, group, serveids

{group} is percent-encoded (a group name may hold "/"); {serveid} is three
digits, so a range read lists a group's serves in serveid order. {digest} is
the SHA-256 of the node's resume secret: the store never holds the secret.

Each route keeps two leases alive. The route lease (short: lease_ttl) holds
what exists only while the route does: when the route dies its nodes and
serves vanish within the TTL and the other routes' watches report them
removed. The sessions lease (long: resume_ttl) holds the sessions, so a node
whose route died can resume on another route with its vnetid and serveids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from vnet.core.cluster_config import DEFAULT_PREFIX
from vnet.core.config import SERVEID_MAX, STATIC_SERVEID_MIN
from vnet.core.errors import InvalidRequest, NoFreeServeId
from vnet.core.registry import DYNAMIC_RANGE, Serve, Vnet


@dataclass(frozen=True)
class Keys:
    """Every key of one cluster, under its prefix."""

    prefix: str = DEFAULT_PREFIX

    def route(self, route_id: str) -> bytes:
        return f"{self.prefix}routes/{route_id}".encode()

    def routes(self) -> bytes:
        return f"{self.prefix}routes/".encode()

    def vnetid_next(self) -> bytes:
        return f"{self.prefix}vnetid-next".encode()

    def node(self, vnetid: str) -> bytes:
        return f"{self.prefix}nodes/{vnetid}".encode()

    def nodes(self) -> bytes:
        return f"{self.prefix}nodes/".encode()

    def serve(self, group: str, serveid: int) -> bytes:
        return f"{self.prefix}serves/{quote(group, safe='')}/{serveid:03d}".encode()

    def group_serves(self, group: str) -> bytes:
        return f"{self.prefix}serves/{quote(group, safe='')}/".encode()

    def serves(self) -> bytes:
        return f"{self.prefix}serves/".encode()

    def session(self, resume_secret: str) -> bytes:
        return self.session_digest(hashlib.sha256(resume_secret.encode()).hexdigest())

    def session_digest(self, digest: str) -> bytes:
        """The session key by the secret's SHA-256 in hex (the route keeps only that)."""
        return f"{self.prefix}sessions/{digest}".encode()

    def kind_of(self, key: bytes) -> str:
        """ "route", "node" or "serve" for those keys; "" for any other (sessions, the counter)."""
        text = key.decode(errors="replace")
        for kind, head in (("route", "routes/"), ("node", "nodes/")):
            if text.startswith(self.prefix + head) and len(text) > len(self.prefix + head):
                return kind
        return "serve" if self.serve_key_parts(key) is not None else ""

    def serve_key_parts(self, key: bytes) -> tuple[str, int] | None:
        """(group, serveid) of a serve key; None for any other key."""
        text = key.decode(errors="replace")
        head = f"{self.prefix}serves/"
        if not text.startswith(head):
            return None
        group, slash, serveid = text[len(head) :].rpartition("/")
        if not slash or not serveid.isdigit():
            return None
        return unquote(group), int(serveid)


def prefix_end(prefix: bytes) -> bytes:
    """The end of etcd's range [prefix, end) that holds exactly the keys under prefix."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


# --- records ---------------------------------------------------------------


@dataclass(frozen=True)
class RouteRecord:
    """A live route: where the other routes reach it."""

    route_id: str
    advertise: str


@dataclass(frozen=True)
class NodeRecord:
    """Which route a node is on."""

    vnet: Vnet
    route_id: str


@dataclass(frozen=True)
class ServeRecord:
    """A serve and the route its node is on (where a Dial for it must go)."""

    serve: Serve
    group: str
    route_id: str


@dataclass(frozen=True)
class SessionRecord:
    """What a node needs back when it resumes on another route."""

    vnet: Vnet
    serveids: tuple[int, ...] = ()


def _dump(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load(raw: bytes, what: str) -> dict[str, object]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"the store holds a malformed {what} record") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"the store holds a malformed {what} record")
    return obj


def _str(obj: Mapping[str, object], key: str, what: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"the store holds a malformed {what} record ({key})")
    return value


def _int(obj: Mapping[str, object], key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"the store holds a malformed {what} record ({key})")
    return value


def encode_route(record: RouteRecord) -> bytes:
    return _dump({"route_id": record.route_id, "advertise": record.advertise})


def decode_route(raw: bytes) -> RouteRecord:
    obj = _load(raw, "route")
    return RouteRecord(_str(obj, "route_id", "route"), _str(obj, "advertise", "route"))


def _vnet_fields(vnet: Vnet) -> dict[str, object]:
    return {"vnetid": vnet.vnetid, "name": vnet.name, "group": vnet.group}


def _vnet_of(obj: Mapping[str, object], what: str) -> Vnet:
    return Vnet(_str(obj, "vnetid", what), _str(obj, "name", what), _str(obj, "group", what))


def encode_node(record: NodeRecord) -> bytes:
    return _dump({**_vnet_fields(record.vnet), "route": record.route_id})


def decode_node(raw: bytes) -> NodeRecord:
    obj = _load(raw, "node")
    return NodeRecord(_vnet_of(obj, "node"), _str(obj, "route", "node"))


def encode_serve(record: ServeRecord) -> bytes:
    s = record.serve
    return _dump(
        {
            "serveid": s.serveid,
            "vnetid": s.vnetid,
            "name": s.name,
            "ip": s.ip,
            "port": s.port,
            "info": s.info,
            "type": s.type,
            "unserve": s.unserve,
            "group": record.group,
            "route": record.route_id,
        }
    )


def decode_serve(raw: bytes) -> ServeRecord:
    obj = _load(raw, "serve")
    unserve = obj.get("unserve", False)
    serve = Serve(
        serveid=_int(obj, "serveid", "serve"),
        vnetid=_str(obj, "vnetid", "serve"),
        name=_str(obj, "name", "serve"),
        ip=_str(obj, "ip", "serve"),
        port=_int(obj, "port", "serve"),
        info=_str(obj, "info", "serve"),
        type=_str(obj, "type", "serve") or "tcp",
        unserve=unserve is True,
    )
    return ServeRecord(serve, _str(obj, "group", "serve"), _str(obj, "route", "serve"))


def encode_session(record: SessionRecord) -> bytes:
    return _dump({**_vnet_fields(record.vnet), "serveids": list(record.serveids)})


def decode_session(raw: bytes) -> SessionRecord:
    obj = _load(raw, "session")
    ids = obj.get("serveids", [])
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise InvalidRequest("the store holds a malformed session record (serveids)")
    return SessionRecord(_vnet_of(obj, "session"), tuple(ids))


# --- the rules -------------------------------------------------------------


def format_vnetid(number: int) -> str:
    """Like the single route's registry: two digits at least ("01", "02", ... "100")."""
    return f"{number:02d}"


def next_vnetid_number(raw: bytes | None) -> int:
    """The counter's value (absent: the first vnetid, 1)."""
    if raw is None:
        return 1
    text = raw.decode(errors="replace")
    if not text.isdigit():
        raise InvalidRequest("the store's vnetid counter is malformed")
    return max(1, int(text))


def wanted_vnetid(wanted: str) -> str:
    """A node's old vnetid as it may be asked back ("" when it cannot be)."""
    if wanted and wanted.isascii() and wanted.isdigit() and len(wanted) <= 6:
        return wanted
    return ""


@dataclass(frozen=True)
class ServeClaim:
    """What to try for a registration, given who holds the asked serveid now."""

    # The serveid to write (compare-and-swap on its key).
    serveid: int
    # The asked serveid was taken and this one is given instead (dynamic only).
    reassigned: bool
    # The caller's own serve, held under this serveid, is replaced.
    replaces_own: bool


def claim_serveid(
    asked: int, vnetid: str, holder: Serve | None, taken: Iterable[int]
) -> ServeClaim | None:
    """The serveid rules of vnet.core.registry, for a store shared by routes.

    holder: who holds `asked` in the group now; taken: every serveid of the
    group. None: a static serveid held by another node (the first keeps it).
    Raises NoFreeServeId when the dynamic range is full.
    """
    if not 0 <= asked <= SERVEID_MAX:
        raise InvalidRequest(f"serveid {asked} is out of range (0-{SERVEID_MAX})")
    if asked == 0:
        return ServeClaim(free_dynamic(taken), reassigned=False, replaces_own=False)
    if holder is None:
        return ServeClaim(asked, reassigned=False, replaces_own=False)
    if holder.vnetid == vnetid:
        return ServeClaim(asked, reassigned=False, replaces_own=True)
    if asked >= STATIC_SERVEID_MIN:
        return None
    return ServeClaim(free_dynamic(taken), reassigned=True, replaces_own=False)


def free_dynamic(taken: Iterable[int]) -> int:
    """The lowest dynamic serveid nobody holds."""
    used = set(taken)
    for candidate in DYNAMIC_RANGE:
        if candidate not in used:
            return candidate
    raise NoFreeServeId(f"all dynamic serveids (1-{STATIC_SERVEID_MIN - 1}) are in use")


# --- the lease -------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTiming:
    """When a route refreshes its lease, and when it must consider itself fenced.

    The route is fenced once `fence_after` seconds have passed since the last
    keepalive etcd acknowledged: a little before etcd itself can expire the
    lease (ttl after that acknowledgement), so that a route cut off from etcd
    stops admitting before the other routes may have taken its nodes' ids.
    """

    ttl: int

    @property
    def refresh_every(self) -> float:
        return self.ttl / 3

    @property
    def fence_after(self) -> float:
        # One refresh interval of margin, at least half a second.
        return max(self.ttl / 2, self.ttl - max(0.5, self.refresh_every))

    def fenced(self, last_ack: float, now: float) -> bool:
        return now - last_ack >= self.fence_after
