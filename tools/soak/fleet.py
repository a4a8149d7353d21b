"""The fleet: the route and the nodes as real processes (on harness.procs), one log file per
incarnation, with what the soak needs to judge them: who was killed when, who died unasked,
peak RSS, open fds, and the route's open tunnels."""

from __future__ import annotations

import asyncio
import collections
import math
import signal
import time
from pathlib import Path

from harness.procs import (
    HOST,
    Child,
    HarnessError,
    command,
    fd_count,
    rss_kib,
    spawn,
    unbuffered_env,
)

OFFICES = ("office-a", "office-b")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # on SIGTERM the route gives open tunnels 5 s before it resets them


class SoakError(Exception):
    """The soak cannot run: a process would not start, or the first connections failed."""


async def tunnels_open(metrics_port: int) -> int:
    """The route's vnet_tunnels_open gauge; -1 when it cannot be read."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(HOST, metrics_port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = await reader.read()
            writer.close()
    except OSError:  # TimeoutError included
        return -1
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("vnet_tunnels_open "):
            return int(float(line.split()[1]))
    return -1


class Fleet:
    """The route and the nodes as real processes, one log file per incarnation."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: dict[str, Child] = {}  # role -> its current incarnation
        self.asked: dict[str, bool] = {}  # role -> we signalled it, so its exit is not a crash
        self.started: collections.Counter[str] = collections.Counter()
        self.crashes: list[str] = []
        self.peak_rss: dict[str, tuple[int, int]] = {}  # role -> (KiB, pid)
        self.kills: list[tuple[str, float]] = []
        self.spawns: list[tuple[str, float]] = []

    def killed(self, role: str, start: float, end: float) -> bool:
        """Whether a connection that began at `start` and ended at `end` (seen from this
        process) may have had a killed `role` as its peer: one was killed before the end, and
        the connection began before its replacement was even spawned. Not "after the kill":
        a process dies a moment after SIGKILL, and the kernel completes connections to it
        in the meantime."""
        for at in (at for r, at in self.kills if r == role and at <= end):
            replaced = min((t for r, t in self.spawns if r == role and t > at), default=math.inf)
            if start <= replaced:
                return True
        return False

    def start(self, role: str) -> Child:
        self.started[role] += 1
        self.spawns.append((role, time.monotonic()))
        name = f"{role}-{self.started[role]}"
        program = "vnet-route" if role.startswith("route") else "vnet"
        # Its own session: Ctrl-C in the terminal reaches only the soak, which then stops the
        # children itself, in order.
        child = spawn(
            name,
            [command(program), f"{role}.ini"],
            self.workdir / f"{name}.log",
            self.workdir,
            unbuffered_env(),
            session=True,
        )
        self.children[role], self.asked[role] = child, False
        return child

    async def stop(self, role: str, sig: int) -> int | None:
        """Signal, wait (bounded), kill -9 as the last resort; the exit status, if any."""
        child = self.children[role]
        self.asked[role] = True
        for attempt in (sig, signal.SIGKILL):
            if child.returncode is not None:
                break
            if attempt == signal.SIGKILL:
                self.kills.append((role, time.monotonic()))
            child.send(attempt)
            await child.wait(STOP_TIMEOUT)
        return child.returncode

    async def wait_for_line(self, role: str, text: str) -> None:
        try:
            await self.children[role].wait_for_line(text, READY_TIMEOUT)
        except HarnessError as exc:
            raise SoakError(str(exc)) from None

    def fds(self) -> dict[str, int]:
        return {role: fd_count(child.pid) for role, child in self.children.items()}

    def sample(self) -> None:
        """Once a second: peak RSS, and processes that exited without being asked."""
        for role, child in self.children.items():
            if (rc := child.returncode) is not None:
                if not self.asked[role]:
                    self.asked[role] = True
                    self.crashes.append(
                        f"{role} (pid {child.pid}) exited with {rc} unasked; its log:\n"
                        f"{child.tail(15, '    ')}"
                    )
                continue
            kib = rss_kib(child.pid)
            if kib > self.peak_rss.get(role, (0, 0))[0]:
                self.peak_rss[role] = (kib, child.pid)
