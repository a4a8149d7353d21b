"""What one node asks of another through the route: to offer a service it has not
registered (unserve, from the original vnet), and to echo a probe (a Ping timed
through it, vnet/route/probes.py). The route passes each on as a control event to
the asked node and waits, bounded, for its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vnet.core.errors import InvalidRequest, NotFound, Refused, Unanswered
from vnet.core.limits import HOST_MAX
from vnet.core.registry import Registry, Serve
from vnet.route.link import Link
from vnet.route.probes import Probes
from vnet.route.steer import Steering
from vnet.wire import route_messages as msg

# Logged as the servicer's: the same lines as before this module.
log = logging.getLogger("vnet.route.service")


class Between:
    """Requests between two nodes of a group, and the answers they wait for."""

    def __init__(
        self,
        peer: Callable[[Link, str], Link],
        registry: Registry,
        unserve_timeout: float,
        echo_timeout: float,
        ids: Callable[[], str],
        clock: Callable[[], float],
    ) -> None:
        # peer(link, vnetid): the live node vnetid of link's group, or NotFound.
        self._peer = peer
        self._registry = registry
        self._unserve_timeout = unserve_timeout
        self._ids = ids
        self._clock = clock
        self.probes = Probes(echo_timeout)
        # The connections toward nodes that probes pass through (vnet/core/steering.py).
        self.steering = Steering()
        # Unserve requests waiting for the asked node: id -> (asked, answer).
        self.unserves: dict[str, tuple[Link, asyncio.Future[msg.UnserveAnswer]]] = {}

    async def ping_via(self, link: Link, vnetid: str) -> bool:
        """A round trip from link through vnetid's node: whether it echoed."""
        via = self._peer(link, vnetid)
        asked = self.probes.ask(link, via, self._clock())
        if asked is None:
            return False
        number, done = asked
        self.steering.probed(via.peer)
        via.push(msg.echo_asked_event(number))
        return await self.probes.wait(link, via, number, done)

    async def unserve(self, link: Link, request: msg.UnserveAsk) -> Serve:
        """Ask request.vnetid's node to offer ip:port; the serve it registered for it."""
        asked = self._peer(link, request.vnetid)
        if asked is link:
            raise InvalidRequest("that is this node: serve it with serve run instead")
        if not 1 <= request.port <= 65535:
            raise InvalidRequest(f"port {request.port} is out of range (1-65535)")
        ip = request.ip or "127.0.0.1"
        if len(ip) > HOST_MAX or any(ord(ch) <= 32 for ch in ip):
            raise InvalidRequest("ip is not an address or host name")
        if request.type not in ("tcp", "udp"):
            raise InvalidRequest(f"type {request.type!r} is not supported (tcp or udp)")
        request_id = self._ids()
        answer: asyncio.Future[msg.UnserveAnswer] = asyncio.get_running_loop().create_future()
        self.unserves[request_id] = (asked, answer)
        asked.push(
            msg.unserve_asked_event(request_id, link.vnet.vnetid, ip, request.port, request.type)
        )
        log.info(
            "vnet %s asks vnet %s to offer %s:%s",
            link.vnet.vnetid,
            asked.vnet.vnetid,
            ip,
            request.port,
        )
        try:
            reply = await asyncio.wait_for(answer, self._unserve_timeout)
        except TimeoutError:
            raise Unanswered(f"vnet {asked.vnet.vnetid} did not answer in time") from None
        finally:
            self.unserves.pop(request_id, None)
        if reply.refusal or not reply.serveid:
            raise Refused(f"vnet {asked.vnet.vnetid} refused: {reply.refusal or 'no reason'}")
        serve = self._registry.find(asked.vnet.group, reply.serveid)
        if serve.vnetid != asked.vnet.vnetid or not serve.unserve or serve.type != request.type:
            raise Refused(f"vnet {asked.vnet.vnetid} answered with a serve that is not its unserve")
        return serve

    def answer_unserve(self, link: Link, request: msg.UnserveAnswer) -> None:
        """link's answer to an unserve_asked event."""
        waiting = self.unserves.get(request.request_id)
        if waiting is None or waiting[0] is not link:
            raise NotFound("no such unserve request waiting for this vnet")
        if not waiting[1].done():
            waiting[1].set_result(request)
