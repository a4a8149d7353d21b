"""The route's web dashboard ([admin] web=HOST:PORT), served by aiohttp on the route's loop.

A page and its script (vnet/route/static/, committed: nothing is built or
fetched at install time) and a small JSON API the script polls. Sign-in is
by the admin token: the page keeps it for the tab (sessionStorage) and sends
it as "Authorization: Bearer" on every call, so there is no cookie for
another site to ride on (no CSRF), and the page works the same over plain
HTTP on loopback and behind a TLS proxy. Every call is checked like an
admin RPC (vnet.route.admin_rpc): the penalty box, then the token; the
actions go through the same RouteAdmin, so they are audited and counted
alike.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from vnet.core.admin import as_json
from vnet.core.errors import Forbidden, NotFound, Unauthenticated, VnetError
from vnet.route.admin import RouteAdmin

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
# Requests are tiny JSON bodies: refuse anything larger before reading it.
MAX_BODY = 16 * 1024

_HEADERS = {
    # Only our own script and style; no framing (clickjacking), no sniffing.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Dashboard:
    """The aiohttp application over one RouteAdmin."""

    def __init__(self, admin: RouteAdmin) -> None:
        self.admin = admin
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_headers])
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.router.add_get("/api/state", self.state)
        app.router.add_post("/api/kick", self.kick)
        app.router.add_post("/api/close", self.close)
        app.router.add_post("/api/drain", self.drain)
        return app

    async def start(self, host: str, port: int) -> int:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            self.runner = None
            raise OSError(
                f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}"
            ) from None
        # Port 0 picks one: the runner knows which.
        self.port = int(self.runner.addresses[0][1])
        shown = f"[{host}]" if ":" in host else host
        log.info("dashboard on http://%s:%s/", shown, self.port)
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- requests ------------------------------------------------------------

    def _who(self, request: web.Request, action: str) -> str:
        admission = self.admin.servicer.admission
        address = request.remote or ""
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        admission.not_penalised(address)
        try:
            self.admin.auth.check(token, address)
        except Unauthenticated:
            admission.failed(address)
            if action != "state":
                self.admin.audited(f"?@{address}", action, "", "refused: bad admin credentials")
            raise
        return f"web@{address}"

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def state(self, request: web.Request) -> web.Response:
        return await _answer(self._state, request)

    def _state(self, request: web.Request) -> dict[str, Any]:
        self._who(request, "state")
        now = time.monotonic()
        rates = {
            group: [[round(t - now, 1), round(rate, 1)] for t, rate in points]
            for group, points in self.admin.throughput.rates().items()
        }
        return {
            "nodes": [as_json(r) for r in self.admin.nodes()],
            "serves": [as_json(r) for r in self.admin.serves()],
            "tunnels": [as_json(r) for r in self.admin.tunnels()],
            "unserves": [as_json(r) for r in self.admin.serves(unserves_only=True)],
            "draining": self.admin.draining,
            "throughput": rates,
            "window": self.admin.throughput.window,
        }

    async def kick(self, request: web.Request) -> web.Response:
        async def act() -> dict[str, Any]:
            who = self._who(request, "kick")
            vnetid = str((await _body(request)).get("vnetid", ""))
            return as_json(self.admin.kick(vnetid, who))

        return await _answer_async(act)

    async def close(self, request: web.Request) -> web.Response:
        async def act() -> dict[str, Any]:
            who = self._who(request, "close")
            tunnel_id = str((await _body(request)).get("tunnel_id", ""))
            self.admin.close_tunnel(tunnel_id, who)
            return {"closed": tunnel_id}

        return await _answer_async(act)

    async def drain(self, request: web.Request) -> web.Response:
        async def act() -> dict[str, Any]:
            who = self._who(request, "drain")
            body = await _body(request)
            grace = body.get("grace", 30)
            if not isinstance(grace, int | float) or not 0 <= grace <= 3600:
                raise _BadRequest("grace must be a number of seconds, 0-3600")
            report = await self.admin.drain(float(grace), who, undo=bool(body.get("undo")))
            return as_json(report)

        return await _answer_async(act)


class _BadRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _status(exc: Exception) -> int:
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, _BadRequest):
        return 400
    return 429 if "too many failed attempts" in str(exc) else 409


async def _answer(fn: Any, request: web.Request) -> web.Response:
    try:
        return _json(fn(request))
    except (VnetError, _BadRequest) as exc:
        return _json({"error": str(exc)}, _status(exc))


async def _answer_async(fn: Any) -> web.Response:
    try:
        return _json(await fn())
    except (VnetError, _BadRequest) as exc:
        return _json({"error": str(exc)}, _status(exc))


def _json(value: object, status: int = 200) -> web.Response:
    response = web.json_response(value, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update(_HEADERS)
    return response
