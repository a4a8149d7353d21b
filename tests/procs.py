"""Running the real `vnet-route` and `vnet` commands as subprocesses: the pytest side of
harness.procs (a per-test directory, unique log names, one-shot commands, cleanup)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from harness.procs import Child, command, spawn, unbuffered_env

# A started command, as the tests name it.
Proc = Child

__all__ = ["Proc", "Procs", "command", "node_ini"]


class Procs:
    """Starts commands with their output in files; stops them all at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    async def start(
        self,
        name: str,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        # A name used again (a restarted route) gets its own log: the first
        # one's output is still evidence.
        taken = {p.name for p in self.procs}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        started = spawn(
            unique, args, self.tmp / f"{unique}.log", cwd or self.tmp, unbuffered_env(env)
        )
        self.procs.append(started)
        return started

    async def route(self, port: int, name: str = "route", extra: str = "") -> Proc:
        """`vnet-route` on 127.0.0.1:port, once it listens; its config is
        NAME.ini in tmp, [route] with `extra` lines added (tls_cert=...).

        Called again with the same port, it restarts the route there.
        """
        ini = f"{name}.ini"
        (self.tmp / ini).write_text(f"[route]\nip=127.0.0.1\nport={port}\n{extra}")
        route = await self.start(name, command("vnet-route"), ini)
        await route.wait_for_line("route listening on")
        return route

    async def run(
        self, *args: str, cwd: Path | None = None, timeout: float = 30.0
    ) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=cwd or self.tmp,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop(signal.SIGKILL)


def node_ini(route_port: int, body: str) -> str:
    return f"[route]\nip=127.0.0.1\nport={route_port}\n{body}"
