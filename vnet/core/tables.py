"""Tables for the console's `show` commands, aligned like the original's. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vnet.core.registry import Serve


class VnetLike(Protocol):
    """A node as the route lists it (vnet.node.client.VnetInfo)."""

    @property
    def vnetid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def serves(self) -> int: ...


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned on the widest cell, two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def serveid_text(serveid: int) -> str:
    """Three digits, as the original writes serveids."""
    return f"{serveid:03d}"


def serves_table(serves: Sequence[Serve], vnetid: str = "") -> list[str]:
    """`show serves`: the group's serves, as the original lists them."""
    shown = sorted((s for s in serves if not vnetid or s.vnetid == vnetid), key=lambda s: s.serveid)
    rows = [
        [
            serveid_text(s.serveid),
            s.vnetid,
            s.name,
            (f"unserve/{s.type}" if s.type != "tcp" else "unserve") if s.unserve else s.type,
            s.ip,
            str(s.port),
            s.info,
        ]
        for s in shown
    ]
    vnets = len({s.vnetid for s in shown})
    return [
        *table(["serveid", "vnet", "name", "type", "ip", "port", "info"], rows),
        f"- {vnets} vnet(s), {len(shown)} serve(s) registered -",
    ]


def vnets_table(vnets: Sequence[VnetLike], own: str, group: str) -> list[str]:
    """`show vnets`: the group's nodes; this node marked."""
    rows = [
        [v.vnetid, v.name, str(v.serves), "(this node)" if v.vnetid == own else ""]
        for v in sorted(vnets, key=lambda v: (len(v.vnetid), v.vnetid))
    ]
    return [
        *table(["vnet", "name", "serves", ""], rows),
        f"- {len(rows)} vnet(s) in group {group} -",
    ]


@dataclass(frozen=True)
class ServeView:
    """One of this node's serves, for `show serve`."""

    key: str
    serveid: str
    state: str
    ip: str
    port: int
    name: str
    info: str
    error: str = ""
    type: str = "tcp"
    # type=udp: its flows' counters in one line (UdpCounters.summary).
    udp: str = ""


@dataclass(frozen=True)
class UseView:
    """One of this node's uses, for `show use`."""

    key: str
    serveid: int
    state: str
    ip: str
    port: str
    target: str
    error: str = ""
    type: str = "tcp"
    udp: str = ""


def local_serves_table(views: Sequence[ServeView]) -> list[str]:
    rows = [[v.key, v.serveid, v.type, v.state, v.ip, str(v.port), v.name, v.info] for v in views]
    registered = sum(1 for v in views if v.state == "registered")
    return [
        *table(["serve", "serveid", "type", "state", "ip", "port", "name", "info"], rows),
        *(f"  [serve.{v.key}] {v.error}" for v in views if v.error),
        *(f"  [serve.{v.key}] udp {v.udp}" for v in views if v.udp),
        f"- {len(views)} serve(s), {registered} registered -",
    ]


def local_uses_table(views: Sequence[UseView]) -> list[str]:
    rows = [
        [v.key, serveid_text(v.serveid), v.type, v.state, v.ip, v.port, v.target] for v in views
    ]
    listening = sum(1 for v in views if v.state == "listening")
    return [
        *table(["use", "serveid", "type", "state", "ip", "port", "serve"], rows),
        *(f"  [use.{v.key}] {v.error}" for v in views if v.error),
        *(f"  [use.{v.key}] udp {v.udp}" for v in views if v.udp),
        f"- {len(views)} use(s), {listening} listening -",
    ]


def pairs_block(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`show vnet`: one aligned `key  value` line each."""
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs]


# --- help ----------------------------------------------------------------------


def unserves_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """`show unserves`: this node's offers made on request."""
    return [
        *table(["serveid", "for vnet", "ip", "port", "open", "lapses"], rows),
        f"- {len(rows)} unserve(s) -",
    ]
