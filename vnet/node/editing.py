"""The console's edits of a running node: open, close, add, delete, reload.

They keep node.config equal to what `save` would write, refuse a change that
could not be saved and started from again, and raise VnetError with a
one-line reason instead of logging failures; what succeeds is logged, like
every other event. The Node (vnet.node.node) offers them as its own methods.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from vnet.core import config_diff, config_save
from vnet.core.config import NodeConfig, ServeConfig, UseConfig
from vnet.core.errors import RouteUnavailable, VnetError
from vnet.core.registry import Serve
from vnet.node.state import NodeRequestError, ServeState
from vnet.node.uses import UseState

if TYPE_CHECKING:
    from vnet.node.node import Node

# The node's own log, as before this code moved out of vnet.node.node: its
# lines (and filters on the logger's name) stay as they were.
log = logging.getLogger("vnet.node.node")


class Editor:
    """Changes one node's serves, uses and config as the console asks."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def unserve(self, vnetid: str, ip: str, port: int, type: str = "tcp") -> Serve:
        """Ask vnet `vnetid` to offer ip:port (tcp or udp); the serve it registered."""
        self._require_route()
        serve = await self.node.client.unserve(vnetid, ip, port, type=type)
        # Known now, whether or not its serve_added has come in yet.
        self.node.remote[serve.serveid] = serve
        return serve

    async def map_unserve(self, serve: Serve, ip: str, port: int) -> UseState:
        """Map an unserve to a local port, for as long as the unserve lives.

        Not part of the config (`save` leaves it out): it ends with the offer.
        """
        key = f"unserve-{serve.vnetid}-{serve.serveid:03d}"
        if key in self.node.uses:
            raise NodeRequestError(f"[use.{key}] already maps it")
        use = UseConfig(key=key, serveid=serve.serveid, type=serve.type, ip=ip, port=port)
        state = self.node.uses[key] = UseState(use, running=True, ephemeral=True)
        error = await self.node.use_side.reconcile(state, quiet=True)
        if error:
            del self.node.uses[key]
            raise NodeRequestError(f"unserve {serve.serveid:03d}: {error}")
        return state

    def _commit(self) -> None:
        """Make node.config the config as it is now."""
        self.node.config = dataclasses.replace(
            self.node.config,
            serves=tuple(s.config for s in self.node.serves.values() if not s.unserve),
            uses=tuple(u.config for u in self.node.uses.values() if not u.ephemeral),
        )

    def _check(self, serves: tuple[ServeConfig, ...], uses: tuple[UseConfig, ...]) -> None:
        """Refuse a change that `save` could not write and the node start from again."""
        config_save.checked(dataclasses.replace(self.node.config, serves=serves, uses=uses))

    def _deactivate(self, state: ServeState | UseState, name: str) -> None:
        """`close`: mark inactive in the config and stop meaning to run."""
        if not state.running and not state.config.active:
            raise NodeRequestError(f"{name} is already closed")
        state.running = False
        state.error = ""
        state.config = dataclasses.replace(state.config, active=False)
        self._commit()

    def _require_route(self) -> None:
        if not self.node.connected:
            raise RouteUnavailable(
                f"the route is not connected ({self.node.lost or 'not started'})"
            )

    def serve(self, key: str) -> ServeState:
        try:
            return self.node.serves[key]
        except KeyError:
            raise NodeRequestError(_no_such("serve", key, self.node.serves)) from None

    def use(self, key: str) -> UseState:
        try:
            return self.node.uses[key]
        except KeyError:
            raise NodeRequestError(_no_such("use", key, self.node.uses)) from None

    async def open_serve(self, key: str) -> int:
        """Activate and register; returns the serveid the route settled on."""
        state = self.serve(key)
        if state.serveid is not None:
            raise NodeRequestError(f"[serve.{key}] is already registered as {state.serveid:03d}")
        self._require_route()
        before = state.config
        state.config = dataclasses.replace(before, active=True)
        self._commit()
        try:
            serveid = await self.node.serve_side.register(state)
        except VnetError:
            state.config = before
            self._commit()
            raise
        state.running = True
        return serveid

    async def close_serve(self, key: str) -> None:
        """Unregister and mark inactive; tunnels already open carry on."""
        state = self.serve(key)
        self._deactivate(state, f"[serve.{key}]")
        await self.node.serve_side.unregister(state)

    async def add_serve(self, serve: ServeConfig) -> int | None:
        """`serve new` (inactive) or `serve run` (active: registered now)."""
        if serve.key in self.node.serves:
            raise NodeRequestError(
                f"there is already a [serve.{serve.key}]; "
                f"serve delete {serve.key} first, or pick another name"
            )
        if serve.active:
            self._require_route()
        self._check((*self.node.config.serves, serve), self.node.config.uses)
        state = self.node.serves[serve.key] = ServeState(serve, running=serve.active)
        self._commit()
        log.info("[serve.%s] added (%s)", serve.key, "active" if serve.active else "inactive")
        if not serve.active:
            return None
        try:
            return await self.node.serve_side.register(state)
        except VnetError as exc:
            state.running = False
            raise NodeRequestError(f"[serve.{serve.key}] added but not registered: {exc}") from None

    async def delete_serve(self, key: str) -> None:
        state = self.serve(key)
        del self.node.serves[key]
        self._commit()
        await self.node.serve_side.unregister(state)
        log.info("[serve.%s] deleted", key)

    async def open_use(self, key: str) -> UseState:
        """Activate: listen now if the serve is there, else as soon as it appears."""
        state = self.use(key)
        if state.running:
            raise NodeRequestError(f"[use.{key}] is already open")
        if state.config.serveid == 0:
            raise NodeRequestError(
                f"[use.{key}] has no serveid; use delete {key}, then use run {key} serveid=N"
            )
        self._require_route()
        before = state.config
        state.config = dataclasses.replace(before, active=True)
        self._commit()
        state.running = True
        state.error = ""
        error = await self.node.use_side.reconcile(state, quiet=True)
        if error:
            state.running = False
            state.config = before
            self._commit()
            raise NodeRequestError(f"[use.{key}] {error}")
        return state

    async def close_use(self, key: str) -> None:
        """Stop listening and mark inactive; connections already accepted carry on."""
        state = self.use(key)
        self._deactivate(state, f"[use.{key}]")
        was = state.port
        async with state.lock:
            self.node.use_side.close(state)
        if was is not None:
            log.info("[use.%s] closed: stopped listening on %s:%s", key, state.config.ip, was)

    async def add_use(self, use: UseConfig) -> UseState:
        """`use new` (inactive) or `use run` (active: listens when its serve is there)."""
        if use.key in self.node.uses:
            raise NodeRequestError(
                f"there is already a [use.{use.key}]; "
                f"use delete {use.key} first, or pick another name"
            )
        if use.active:
            self._require_route()
        self._check(self.node.config.serves, (*self.node.config.uses, use))
        state = self.node.uses[use.key] = UseState(use, running=use.active)
        self._commit()
        log.info("[use.%s] added (%s)", use.key, "active" if use.active else "inactive")
        if use.active:
            error = await self.node.use_side.reconcile(state, quiet=True)
            if error:
                state.running = False
                raise NodeRequestError(f"[use.{use.key}] added but {error}")
        return state

    async def delete_use(self, key: str) -> None:
        state = self.use(key)
        del self.node.uses[key]
        self._commit()
        # A reconcile already queued by a control event must not listen again.
        state.running = False
        async with state.lock:
            self.node.use_side.close(state)
        log.info("[use.%s] deleted", key)

    async def reload(self, new: NodeConfig) -> tuple[config_diff.ConfigDiff, list[str]]:
        """Apply only what differs from new; returns the diff and what failed.

        Unchanged serves and uses, and their open connections, are not touched.
        """
        change = config_diff.diff(self.node.config, new)
        for what in change.needs_restart:
            log.warning("%s changed: it takes effect when the node restarts", what)
        problems: list[str] = []
        by_key = {s.key: s for s in new.serves}
        # Removed first: that frees static serveids and ports for the rest.
        for key in change.serves.removed:
            await self.node.serve_side.unregister(self.node.serves.pop(key))
            log.info("[serve.%s] removed", key)
        for key in change.serves.changed:
            await self.node.serve_side.unregister(self.node.serves.pop(key))
        for key in (*change.serves.changed, *change.serves.added, *change.serves.toggled):
            state = self.node.serves.get(key)
            if state is None:
                state = self.node.serves[key] = ServeState(by_key[key])
            elif not by_key[key].active:
                await self.node.serve_side.unregister(state)
            state.config = by_key[key]
            state.running = state.config.active
            if (
                state.running
                and state.serveid is None
                and await self.node.register_logged(state) is None
            ):
                problems.append(f"[serve.{key}] not registered: {state.error}")
        # Keep the file's order.
        self.node.serves = {s.key: self.node.serves[s.key] for s in new.serves}
        uses_by_key = {u.key: u for u in new.uses}
        for key in (*change.uses.removed, *change.uses.changed):
            old = self.node.uses.pop(key)
            old.running = False  # as in delete_use
            async with old.lock:
                self.node.use_side.close(old)
            if key in change.uses.removed:
                log.info("[use.%s] removed", key)
        for key in (*change.uses.changed, *change.uses.added, *change.uses.toggled):
            use = uses_by_key[key]
            ustate = self.node.uses.setdefault(key, UseState(use))
            ustate.config = use
            ustate.running = use.active and use.serveid != 0
            error = await self.node.use_side.reconcile(ustate)
            if error:
                problems.append(f"[use.{key}] {error}")
        ordered = {u.key: self.node.uses[u.key] for u in new.uses}
        self.node.uses.clear()
        self.node.uses.update(ordered)  # in place: node.use_side holds this dict
        self.node.config = new
        return change, problems


def _no_such(kind: str, key: str, names: dict[str, Any]) -> str:
    known = ", ".join(names) or "none yet"
    return f"no {kind} named {key!r} ({kind}s: {known})"
