"""vnetrpc.v1.Admin: the gRPC face of the route's admin operations (vnet.route.admin).

Every method checks the caller first, the same way: a penalised address is
refused before anything else, then the admin token (vnet.core.admin); a
wrong one counts towards the address's penalty like a wrong node token.
A node's token is never an admin token. Refusals are audited too.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from vnet.core.auth import peer_address
from vnet.core.errors import Forbidden, Unauthenticated
from vnet.route import rpc as route_rpc
from vnet.route.admin import RouteAdmin
from vnet.route.admission import bearer, cert_names
from vnet.wire.admin_messages import ADMIN_METHODS, admin_handlers

log = logging.getLogger(__name__)

Context = Any  # grpc.aio.ServicerContext: untyped (grpc has no stubs here)


class AdminRpc:
    """Handlers for vnetrpc.v1.Admin over one RouteAdmin."""

    def __init__(self, admin: RouteAdmin) -> None:
        self.admin = admin

    def _admin(self, context: Context, action: str) -> str:
        """Who the caller is (for the audit line), once it is known to be an admin."""
        admission = self.admin.servicer.admission
        address = peer_address(context.peer() or "")
        admission.not_penalised(address)
        try:
            how = self.admin.auth.check(bearer(context), address, cert_names(context))
        except Unauthenticated:
            admission.failed(address)
            self.admin.audited(f"?@{address}", action, "", "refused: bad admin credentials")
            raise
        except Forbidden:
            self.admin.audited(f"?@{address}", action, "", "refused: not loopback, no admin token")
            raise
        return f"{'admin' if how == 'token' else how}@{address}"

    async def ListNodes(self, request: None, context: Context) -> Any:
        self._admin(context, "list-nodes")
        return self.admin.nodes()

    async def ListServes(self, request: None, context: Context) -> Any:
        self._admin(context, "list-serves")
        return self.admin.serves()

    async def ListTunnels(self, request: None, context: Context) -> Any:
        self._admin(context, "list-tunnels")
        return self.admin.tunnels()

    async def ListUnserves(self, request: None, context: Context) -> Any:
        self._admin(context, "list-unserves")
        return self.admin.serves(unserves_only=True)

    async def Kick(self, vnetid: str, context: Context) -> Any:
        return self.admin.kick(vnetid, self._admin(context, "kick"))

    async def CloseTunnel(self, tunnel_id: str, context: Context) -> Any:
        self.admin.close_tunnel(tunnel_id, self._admin(context, "close"))

    async def Drain(self, request: tuple[float, bool], context: Context) -> Any:
        grace, undo = request
        return await self.admin.drain(grace, self._admin(context, "drain"), undo=undo)

    async def Reload(self, request: None, context: Context) -> Any:
        return await self.admin.reload(self._admin(context, "reload"))

    def handlers(self) -> grpc.GenericRpcHandler:
        rejected = self.admin.servicer.rejected
        return admin_handlers(
            {name: route_rpc.translated(getattr(self, name), rejected) for name in ADMIN_METHODS}
        )
