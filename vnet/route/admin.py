"""The route's admin operations: list, kick, close, drain, reload; audit and count.

One implementation under both of its faces, the gRPC service
vnetrpc.v1.Admin (vnet.route.admin_rpc) and the web dashboard
(vnet.route.dashboard): each checks the caller with `auth` and calls these.
The rules (who is an admin, the audit line, the records listed) are
vnet.core.admin; what a reload changes is decided from the old and new
token tables (vnet.core.auth) and limits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import fields

from vnet.core.admin import (
    AdminAuth,
    DrainReport,
    KickReport,
    NodeRow,
    ReloadReport,
    ServeRow,
    Throughput,
    TunnelRow,
    audit_line,
    group_totals,
)
from vnet.core.budget import MIB
from vnet.core.config import RouteLimits, RouteSettings
from vnet.core.errors import NotFound, Refused
from vnet.route.link import Link
from vnet.route.security import RouteSecurity
from vnet.route.service import RouteServicer
from vnet.wire import route_messages as msg

log = logging.getLogger(__name__)
# The audit trail, on a logger of its own so it can be routed apart.
audit_log = logging.getLogger("vnet.audit")

DRAINING = "the route is draining: it accepts no new nodes or tunnels"
KICKED = "kicked by an admin"
REVOKED = "its token was revoked by a reload"
DEFAULT_DRAIN_GRACE = 30.0
SAMPLE_EVERY = 2.0

# What a reload reads again: a new file's settings, or every problem in it.
Reloader = Callable[[], "tuple[RouteSettings, RouteSecurity] | list[str]"]

# Settings a running route cannot change: a reload says they need a restart.
_RESTART_ONLY: tuple[tuple[str, str, Callable[[RouteSettings], object]], ...] = (
    ("route", "ip", lambda s: s.listen.ip),
    ("route", "port", lambda s: s.listen.port),
    ("route", "tls_cert", lambda s: s.tls_cert),
    ("route", "tls_key", lambda s: s.tls_key),
    ("route", "tls_client_ca", lambda s: s.tls_client_ca),
    ("route", "keepalive", lambda s: s.keepalive),
    ("route", "metrics", lambda s: s.metrics),
    ("admin", "web", lambda s: s.admin.web),
    # Joining or leaving a cluster, or moving to another store, is a new start.
    ("cluster", "*", lambda s: s.cluster),
)


class RouteAdmin:
    """The admin side of one running route."""

    def __init__(
        self,
        servicer: RouteServicer,
        security: RouteSecurity,
        settings: RouteSettings | None = None,
        reloader: Reloader | None = None,
    ) -> None:
        self.servicer = servicer
        self.auth = AdminAuth(security.admin_token, security.admin_names)
        self.settings = settings
        self.reloader = reloader
        # (action, result) -> count, for the metrics endpoint.
        self.actions: collections.Counter[tuple[str, str]] = collections.Counter()
        self.throughput = Throughput()
        self._drain: asyncio.Task[DrainReport] | None = None
        self._reloading = asyncio.Lock()

    # --- audit -------------------------------------------------------------

    def audited(self, who: str, action: str, target: str, result: str) -> None:
        """One audit line and one count per admin action."""
        outcome = "ok" if result.startswith("ok") else "failed"
        self.actions[(action, outcome)] += 1
        audit_log.info("%s", audit_line(who, action, target, result))

    # --- listing -----------------------------------------------------------

    def _links(self) -> list[Link]:
        links = list(self.servicer.sessions.values())
        return sorted(links, key=lambda link: (len(link.vnet.vnetid), link.vnet.vnetid))

    def nodes(self) -> list[NodeRow]:
        registry = self.servicer.registry
        rows = []
        for link in self._links():
            sent, received = link.bytes_from_node, link.bytes_to_node
            for splice in link.splices:
                if splice.ends and splice.ends[0] is link:
                    sent += splice.bytes_to_serve
                    received += splice.bytes_to_dialer
                else:
                    sent += splice.bytes_to_dialer
                    received += splice.bytes_to_serve
            vnet = link.vnet
            rows.append(
                NodeRow(
                    vnetid=vnet.vnetid,
                    name=vnet.name,
                    group=vnet.group,
                    peer=link.peer,
                    tls_identity=link.identity,
                    joined_at_ms=link.joined_at_ms,
                    serves=registry.serve_count(vnet.vnetid),
                    tunnels=len(link.splices),
                    bytes_from_node=sent,
                    bytes_to_node=received,
                )
            )
        return rows

    def serves(self, unserves_only: bool = False) -> list[ServeRow]:
        groups = sorted({link.vnet.group for link in self.servicer.sessions.values()})
        return [
            ServeRow(group, serve)
            for group in groups
            for serve in self.servicer.registry.serves(group)
            if serve.unserve or not unserves_only
        ]

    def tunnels(self) -> list[TunnelRow]:
        now = asyncio.get_running_loop().time()
        rows = []
        for splice in sorted(self.servicer.splices, key=lambda s: s.opened_at):
            dialer, server = splice.ends if len(splice.ends) == 2 else (None, None)
            rows.append(
                TunnelRow(
                    tunnel_id=splice.tunnel_id,
                    group=dialer.vnet.group if dialer is not None else "",
                    serveid=splice.serveid,
                    dial_vnetid=dialer.vnet.vnetid if dialer is not None else "",
                    serve_vnetid=server.vnet.vnetid if server is not None else "",
                    bytes_to_serve=splice.bytes_to_serve,
                    bytes_to_dialer=splice.bytes_to_dialer,
                    age_ms=int((now - splice.opened_at) * 1000),
                    state="half-closed" if splice.half_closed else "open",
                )
            )
        return rows

    @property
    def draining(self) -> bool:
        return bool(self.servicer.refusing)

    # --- actions -----------------------------------------------------------

    def kick(self, vnetid: str, who: str) -> KickReport:
        try:
            session = self.servicer.table.of_vnet(vnetid)
            link = None if session is None else self.servicer.sessions.get(session)
            if link is None:
                raise NotFound(f"no vnet {vnetid} is joined")
        except NotFound as exc:
            self.audited(who, "kick", vnetid, str(exc))
            raise
        report = KickReport(
            name=link.vnet.name,
            group=link.vnet.group,
            tunnels_reset=len(link.splices),
            serves_withdrawn=self.servicer.registry.serve_count(vnetid),
        )
        self.servicer.end_session(link, KICKED)
        self.audited(who, "kick", vnetid, "ok")
        return report

    def close_tunnel(self, tunnel_id: str, who: str) -> None:
        for splice in self.servicer.splices:
            if splice.tunnel_id == tunnel_id:
                splice.abort("closed by an admin")
                self.audited(who, "close", tunnel_id, "ok")
                return
        self.audited(who, "close", tunnel_id, "no such tunnel")
        raise NotFound(f"no tunnel {tunnel_id} is open")

    async def drain(self, grace: float, who: str, undo: bool = False) -> DrainReport:
        """Refuse new joins and tunnels; wait up to grace for the open ones; reset the rest."""
        if undo:
            self.servicer.refusing = ""
            if self._drain is not None:
                self._drain.cancel()
            self.audited(who, "undrain", "", "ok")
            return DrainReport(draining=False, empty=not self.servicer.splices)
        self.servicer.refusing = DRAINING
        log.info("draining: %d tunnel(s) open, grace %.1fs", len(self.servicer.splices), grace)
        if self.servicer.member is not None:
            # In a cluster the joined nodes have somewhere to go: told, they join another
            # route now, while their tunnels here get the grace.
            event = msg.going_away_event(DRAINING, int((grace or DEFAULT_DRAIN_GRACE) * 1000))
            for link in self._links():
                link.push(event)
        # One drain at a time; a second caller waits for the same one.
        if self._drain is None or self._drain.done():
            self._drain = asyncio.ensure_future(self._drained(grace or DEFAULT_DRAIN_GRACE))
        try:
            report = await asyncio.shield(self._drain)
        except asyncio.CancelledError:
            if self._drain.cancelled():
                # Undone meanwhile.
                self.audited(who, "drain", "", "undone")
                return DrainReport(draining=False, empty=not self.servicer.splices)
            raise
        finished = report.tunnels_at_start - report.tunnels_reset
        self.audited(who, "drain", "", f"ok: {finished} finished, {report.tunnels_reset} reset")
        return report

    async def _drained(self, grace: float) -> DrainReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        open_now = list(self.servicer.splices)
        waits = [s.closed_future() for s in open_now]
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=grace)
            for waiting in unfinished:
                waiting.cancel()
        left = list(self.servicer.splices)
        for splice in left:
            splice.abort("the route is draining and the grace is over")
        waited = int((loop.time() - started) * 1000)
        log.info(
            "drained: %d tunnel(s) finished, %d reset after %.1fs; the route is empty",
            len(open_now) - len(left),
            len(left),
            waited / 1000,
        )
        return DrainReport(
            draining=True,
            tunnels_at_start=len(open_now),
            tunnels_reset=len(left),
            empty=True,
            waited_ms=waited,
        )

    async def reload(self, who: str) -> ReloadReport:
        """Read the config file again; apply credentials and limits, or change nothing."""
        async with self._reloading:
            if self.reloader is None:
                self.audited(who, "reload", "", "no config file")
                raise Refused("this route was started without a config file: nothing to reload")
            # The files are small and capped (vnet.files), but off the loop all the same.
            loaded = await asyncio.to_thread(self.reloader)
            if isinstance(loaded, list):
                self.audited(who, "reload", "", f"refused: {len(loaded)} problem(s)")
                log.warning("reload refused, nothing changed: %s", "; ".join(loaded))
                raise Refused("nothing changed: " + "\n".join(loaded))
            settings, security = loaded
            report = self._apply(settings, security)
            self.audited(
                who, "reload", "", f"ok: {len(report.changes)} change(s), {len(report.ended)} ended"
            )
            return report

    def _apply(self, settings: RouteSettings, security: RouteSecurity) -> ReloadReport:
        s = self.servicer
        changes = s.admission.tokens.changes(security.tokens)
        auth = AdminAuth(security.admin_token, security.admin_names)
        changes.extend(self.auth.changed(auth))
        changes.extend(_limit_changes(s.limits, settings.limits))
        needs_restart = []
        if self.settings is not None:
            for section, key, get in _RESTART_ONLY:
                if get(self.settings) != get(settings):
                    where = f"[{section}]" if key == "*" else f"[{section}] {key}"
                    needs_restart.append(f"{where} changed: needs a restart")
        # Everything at once, with no await in between: no call sees half of it.
        s.admission.tokens = security.tokens
        self.auth = auth
        s.limits = settings.limits
        s.table.max_nodes = settings.limits.max_nodes
        s.budget.total = settings.limits.tunnel_memory * MIB
        s.budget.per_node = settings.limits.tunnel_memory_per_node * MIB
        ended = []
        for link in self._links():
            if not security.tokens.admits_digest(link.credential, link.vnet.group):
                ended.append(
                    f"vnet {link.vnet.vnetid} ({link.vnet.name}) in group {link.vnet.group}"
                )
                s.end_session(link, REVOKED)
        self.settings = settings
        for line in changes:
            log.info("reload: %s", line)
        for line in needs_restart:
            log.warning("reload: %s", line)
        return ReloadReport(tuple(changes), tuple(ended), tuple(needs_restart))

    # --- throughput ----------------------------------------------------------

    def sample(self) -> None:
        self.throughput.record(time.monotonic(), group_totals(self.nodes()))

    async def keep_sampling(self) -> None:
        """Feed the throughput history (the dashboard's charts) every few seconds."""
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


def _limit_changes(old: RouteLimits, new: RouteLimits) -> list[str]:
    return [
        f"[route] {f.name} {getattr(old, f.name)} -> {getattr(new, f.name)}"
        for f in fields(RouteLimits)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
