"""A node's side of unserve: answering requests, dialling offers, lapsing them.

The rules are vnet.core.unserve (pure); this is the I/O around them, on behalf
of one Node (it registers offers as the node's serves, so the node's
accepting side finds them like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from vnet.core.config import ServeConfig
from vnet.core.errors import NotFound, VnetError
from vnet.core.unserve import LINGER, UNUSED_TTL, Offer, address_refusal, refusal
from vnet.node.client import UnserveAsked

if TYPE_CHECKING:
    from vnet.node.node import Node

log = logging.getLogger(__name__)


async def resolve(ip: str, port: int) -> list[str]:
    """Every address ip stands for ([] when it does not resolve)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(ip, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Unserves:
    """The offers this node made on request, by serveid."""

    def __init__(self, node: Node, unused_ttl: float = UNUSED_TTL, linger: float = LINGER):
        self.node = node
        # Replaceable so tests can give names addresses without a DNS server.
        self.resolve: Callable[[str, int], Awaitable[list[str]]] = resolve
        self.unused_ttl = unused_ttl
        self.linger = linger
        self.offers: dict[int, Offer] = {}

    def key(self, serveid: int) -> str:
        return f"unserve-{serveid:03d}"

    async def answer(self, asked: UnserveAsked) -> None:
        node = self.node
        where = f"{asked.ip}:{asked.port}" + ("/udp" if asked.type == "udp" else "")
        addresses = await self.resolve(asked.ip, asked.port)
        reason = refusal(node.config.vnet, asked.ip, addresses, len(self.offers))
        if reason:
            log.info("vnet %s asked for %s: refused, %s", asked.from_vnetid, where, reason)
            await self._answer(asked, refusal=reason)
            return
        try:
            reg = await node.client.register(
                0,
                f"unserve-{asked.port}",
                asked.ip,
                asked.port,
                f"unserve for vnet {asked.from_vnetid}",
                unserve=True,
                type=asked.type,
            )
        except VnetError as exc:
            await self._answer(asked, refusal=f"could not register it: {exc}")
            return
        serveid = reg.serve.serveid
        loop = asyncio.get_running_loop()
        self.offers[serveid] = Offer(
            serveid, asked.ip, asked.port, asked.from_vnetid, created=loop.time()
        )
        node.add_unserve_state(
            ServeConfig(
                key=self.key(serveid),
                port=asked.port,
                type=asked.type,
                ip=asked.ip,
                name=reg.serve.name,
                info=reg.serve.info,
            ),
            serveid,
        )
        log.info(
            "vnet %s asked for %s: offered as unserve %03d (withdrawn after %.0fs unused)",
            asked.from_vnetid,
            where,
            serveid,
            self.unused_ttl,
        )
        if not await self._answer(asked, serveid=serveid):
            await self.withdraw(serveid, "the request was gone before the answer")

    async def _answer(self, asked: UnserveAsked, serveid: int = 0, refusal: str = "") -> bool:
        try:
            await self.node.client.answer_unserve(asked.request_id, serveid, refusal)
        except VnetError as exc:
            log.info("could not answer vnet %s: %s", asked.from_vnetid, exc)
            return False
        return True

    async def dial_address(self, serveid: int) -> tuple[str, str]:
        """(address, "") to connect to for an offer, or ("", why not).

        Resolved and checked again now and the checked address is the one
        dialled, so a name cannot be pointed elsewhere in between.
        """
        offer = self.offers[serveid]
        addresses = await self.resolve(offer.ip, offer.port)
        reason = address_refusal(self.node.config.vnet, offer.ip, addresses)
        return ("", reason) if reason else (addresses[0], "")

    def opened(self, serveid: int) -> None:
        if (offer := self.offers.get(serveid)) is not None:
            offer.opened()

    def closed(self, serveid: int) -> None:
        if (offer := self.offers.get(serveid)) is not None:
            offer.closed(asyncio.get_running_loop().time())

    async def withdraw(self, serveid: int, why: str) -> None:
        offer = self.offers.pop(serveid, None)
        if offer is None:
            return
        state = self.node.serves.pop(self.key(serveid), None)
        if state is not None and state.serveid is not None and self.node.connected:
            with contextlib.suppress(NotFound, VnetError):
                await self.node.client.unregister(serveid)
        log.info("unserve %03d (%s:%s) withdrawn: %s", serveid, offer.ip, offer.port, why)

    def forget(self) -> None:
        """The route went away with the registrations: the offers lapse with it."""
        for serveid in list(self.offers):
            self.offers.pop(serveid)
            self.node.serves.pop(self.key(serveid), None)

    async def lapse_forever(self) -> None:
        """Withdraw offers when their time is up."""
        tick = min(max(min(self.unused_ttl, self.linger) / 4, 0.02), 5.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for offer in list(self.offers.values()):
                at = offer.lapses_at(self.unused_ttl, self.linger)
                if at is not None and at <= now:
                    if offer.used:
                        why = f"{self.linger:.0f}s after its last connection"
                    else:
                        why = f"not used within {self.unused_ttl:.0f}s"
                    await self.withdraw(offer.serveid, why)
