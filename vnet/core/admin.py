"""The admin API's rules, with no I/O: who is an admin, the audit line, what it lists.

Who: a route with an admin token ([admin] token=) accepts exactly that
token, from anywhere; a route without one answers admin calls from loopback
addresses only (as protected mode keeps a token-less route on loopback).
Node tokens play no part. What is listed (nodes, serves, tunnels) is made of
the records here, which the gRPC adapter, the dashboard and the CLI's tables
share; the throughput history behind the dashboard's charts is here too,
fed with the time by its caller.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from vnet.core.auth import digest, is_loopback
from vnet.core.errors import Forbidden, Unauthenticated
from vnet.core.registry import Serve
from vnet.core.tables import serveid_text, table

# One answer for every failed admin authentication, so it tells nothing.
BAD_ADMIN_CREDENTIALS = "invalid or missing admin credentials"
LOOPBACK_ONLY = (
    "this route has no admin token: its admin API answers loopback addresses only "
    "(set [admin] token=, token_env= or token_file=)"
)


class AdminAuth:
    """The admin credentials: a token's digest and client certificate names, or
    neither (loopback only)."""

    def __init__(self, token: str = "", names: Iterable[str] = ()) -> None:
        self._digest = digest(token) if token else None
        self.names = frozenset(names)

    @property
    def enabled(self) -> bool:
        return self._digest is not None or bool(self.names)

    def check(self, presented: str, peer_host: str, identities: Iterable[str] = ()) -> str:
        """Who the caller is ("token", "cert:NAME" or "loopback"), or raise:
        Unauthenticated (count it as a failure) or Forbidden (no admin
        credential configured, and the caller is not on loopback).

        identities are the names of the caller's verified client certificate.
        """
        if not self.enabled:
            if not is_loopback(peer_host):
                raise Forbidden(LOOPBACK_ONLY)
            return "loopback"
        for name in identities:
            if name in self.names:
                return f"cert:{name}"
        # Fixed-length digests: the time taken does not tell how much matched.
        ok = self._digest is not None and hmac.compare_digest(digest(presented), self._digest)
        if not presented or not ok:
            raise Unauthenticated(BAD_ADMIN_CREDENTIALS)
        return "token"

    def changed(self, new: AdminAuth) -> list[str]:
        """Lines saying how the admin credentials changed (none when they did not)."""
        found = []
        if self._digest != new._digest:
            if self._digest is None:
                found.append("[admin] token added")
            else:
                found.append("[admin] token " + ("removed" if new._digest is None else "changed"))
        if self.names != new.names:
            found.append("[admin] client_names changed")
        return found


def audit_line(who: str, action: str, target: str, result: str) -> str:
    """One line per admin action: who, what, on what, and how it ended.

    Values are quoted when they hold a space or a quote, so a line splits
    back into its fields (a log shipper's key=value parser).
    """
    parts = {"who": who, "action": action, "target": target or "-", "result": result}
    return "admin " + " ".join(f"{k}={_quoted(v)}" for k, v in parts.items())


def _quoted(value: str) -> str:
    if value and not any(c in value for c in ' "=\\') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else "?" for c in escaped) + '"'


# --- what the admin lists ------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    """A joined node: who, from where, and what it moves."""

    vnetid: str
    name: str
    group: str
    peer: str
    tls_identity: str
    joined_at_ms: int
    serves: int
    tunnels: int
    bytes_from_node: int
    bytes_to_node: int


@dataclass(frozen=True)
class ServeRow:
    """A registered serve and its group."""

    group: str
    serve: Serve


@dataclass(frozen=True)
class TunnelRow:
    """An open tunnel between two nodes of a group."""

    tunnel_id: str
    group: str
    serveid: int
    dial_vnetid: str
    serve_vnetid: str
    bytes_to_serve: int
    bytes_to_dialer: int
    age_ms: int
    state: str


@dataclass(frozen=True)
class DrainReport:
    draining: bool
    tunnels_at_start: int = 0
    tunnels_reset: int = 0
    empty: bool = True
    waited_ms: int = 0


@dataclass(frozen=True)
class KickReport:
    name: str
    group: str
    tunnels_reset: int
    serves_withdrawn: int


@dataclass(frozen=True)
class ReloadReport:
    changes: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()


def as_json(row: object) -> dict[str, object]:
    """A row as JSON for scripts and the dashboard (a serve row flattened)."""
    if isinstance(row, ServeRow):
        return {"group": row.group, **asdict(row.serve)}
    assert hasattr(row, "__dataclass_fields__")
    return asdict(row)  # type: ignore[call-overload, no-any-return]


def nodes_table(rows: Sequence[NodeRow], when: Callable[[int], str] = str) -> list[str]:
    """`vnet-route admin nodes`; when formats joined_at_ms (the caller knows the zone)."""
    body = [
        [
            r.vnetid,
            r.name,
            r.group,
            r.peer,
            when(r.joined_at_ms),
            r.tls_identity or "-",
            str(r.serves),
            str(r.tunnels),
            human_bytes(r.bytes_from_node),
            human_bytes(r.bytes_to_node),
        ]
        for r in rows
    ]
    headers = ["vnet", "name", "group", "peer", "joined", "tls", "serves", "tunnels", "in", "out"]
    return [*table(headers, body), f"- {len(rows)} node(s) joined -"]


def serves_table(rows: Sequence[ServeRow]) -> list[str]:
    body = [
        [
            r.group,
            serveid_text(r.serve.serveid),
            r.serve.vnetid,
            r.serve.name,
            "unserve" if r.serve.unserve else r.serve.type,
            r.serve.ip,
            str(r.serve.port),
            r.serve.info,
        ]
        for r in rows
    ]
    headers = ["group", "serveid", "vnet", "name", "type", "ip", "port", "info"]
    return [*table(headers, body), f"- {len(rows)} serve(s) registered -"]


def tunnels_table(rows: Sequence[TunnelRow]) -> list[str]:
    body = [
        [
            r.tunnel_id,
            r.group,
            serveid_text(r.serveid),
            r.dial_vnetid,
            r.serve_vnetid,
            human_bytes(r.bytes_to_serve),
            human_bytes(r.bytes_to_dialer),
            f"{r.age_ms / 1000:.0f}s",
            r.state,
        ]
        for r in rows
    ]
    headers = ["tunnel", "group", "serveid", "from", "to", "sent", "received", "age", "state"]
    return [*table(headers, body), f"- {len(rows)} tunnel(s) open -"]


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


# --- throughput per group, for the dashboard's charts ----------------------------


class Throughput:
    """Bytes relayed per group, sampled now and then; rates over the last minutes.

    record() gets each group's running total of bytes (open and closed
    tunnels both) with the time; rates() gives, per group, bytes/s between
    consecutive samples. Bounded: samples older than `window` seconds go.
    """

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def record(self, now: float, totals: Mapping[str, int]) -> None:
        self._samples.append((now, dict(totals)))
        while self._samples and now - self._samples[0][0] > self.window:
            self._samples.popleft()

    def rates(self) -> dict[str, list[tuple[float, float]]]:
        """group -> [(time, bytes/s since the sample before)], oldest first."""
        out: dict[str, list[tuple[float, float]]] = {}
        samples = list(self._samples)
        groups = sorted({g for _, totals in samples for g in totals})
        for (t0, before), (t1, after) in zip(samples, samples[1:], strict=False):
            span = t1 - t0
            if span <= 0:
                continue
            for group in groups:
                # A total that went down (its nodes left) is a new start, not negative traffic.
                moved = max(after.get(group, 0) - before.get(group, 0), 0)
                out.setdefault(group, []).append((t1, moved / span))
        return out


def group_totals(rows: Iterable[NodeRow]) -> dict[str, int]:
    """Each group's bytes relayed so far, counted at the receiving side once."""
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.group] = totals.get(row.group, 0) + row.bytes_from_node
    return totals
