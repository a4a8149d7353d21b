"""Real commands as child processes: start with a log file, wait for a line, signal, stop, reap.

One implementation for the synchronous bench and the asyncio tests and soak: the children are
`subprocess.Popen`s, and the asyncio side waits by polling their exit status and their log
with a deadline, so neither kind of caller blocks the other's way of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
POLL = 0.02  # a poll interval, not a synchronisation: every wait checks its condition
KILL_WAIT = 10.0  # SIGKILL cannot be refused; a child still there after this is stuck in the kernel
_taken: set[int] = set()


class HarnessError(Exception):
    """A child exited before it logged what was awaited, never logged it, or would not die."""


def command(name: str) -> str:
    """A console script of this venv (vnet, vnet-route, grpcurl), else the one on PATH."""
    script = BIN / name
    if script.exists():
        return str(script)
    return shutil.which(name) or str(script)


def unbuffered_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a Python child whose log lines are awaited: unbuffered,
    so a line is in the log file as soon as the child has written it."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A currently free port outside the ephemeral range, never handed out twice by this process.

    A run opens thousands of short connections; a listener on an ephemeral port could collide
    with one of their local ports, or with a lingering TIME_WAIT, between choosing and binding
    (or between a process's kill and its restart on the same port).
    """
    lo, hi = ephemeral_range()
    pools = [(20000, lo - 1)] if lo > 21000 else []
    if hi < 64535:
        pools.append((hi + 1, 65535))
    for _ in range(500):
        if not pools:
            break
        start, end = random.choice(pools)
        port = random.randint(start, end)
        if port in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        _taken.add(port)
        return port
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = int(probe.getsockname()[1])
    _taken.add(port)
    return port


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB; 0 when it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors of a process; -1 when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass
class Child:
    """One started command and the file its stdout and stderr go to."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    session: bool = False  # its own session: signals go to its whole process group

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited (reaping it), else None."""
        return self.proc.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15, indent: str = "") -> str:
        text = self.output().splitlines()
        return "\n".join(f"{indent}{line}" for line in text[-lines:]) or f"{indent}(empty log)"

    def send(self, sig: int) -> None:
        """Signal it (its group, with its own session), only while it is unreaped: until then
        its pid, which is also its group id, cannot belong to an unrelated process."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.session:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)

    def logged(self, text: str) -> bool:
        """Whether its log holds text yet; HarnessError once it exited without it."""
        if text in self.output():
            return True
        if (rc := self.proc.poll()) is not None:
            raise HarnessError(
                f"{self.name} exited with status {rc} before it logged {text!r}; its output:\n"
                f"{self.tail(40, '    ')}"
            )
        return False

    async def wait_for_line(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.logged(text):
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{self.name} never logged {text!r} within {timeout:g} s; its output:\n"
                    f"{self.tail(40, '    ')}"
                )
            await asyncio.sleep(POLL)

    async def wait(self, timeout: float) -> int | None:
        """Its exit status, once it exits within timeout; None while it still runs."""
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL)
        return rc

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int:
        """sig, then SIGKILL when it is still running after grace; its exit status."""
        self.send(sig)
        if await self.wait(grace) is None:
            self.send(signal.SIGKILL)
            if await self.wait(KILL_WAIT) is None:
                raise HarnessError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        rc = self.proc.poll()
        assert rc is not None
        return rc


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    session: bool = False,
) -> Child:
    """Start argv in cwd with stdin closed and stdout and stderr into log (truncated).

    With session, the child gets its own session (and process group): a Ctrl-C in the
    terminal then reaches only the caller, which stops its children itself, in order; and a
    signal to the child reaches the processes it forked too.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=session,
        )
    return Child(name, list(argv), proc, log, session)


def stop_all(children: Sequence[Child], grace: float = 5.0) -> None:
    """Synchronously: SIGTERM to every child at once, up to grace for all of them together,
    then SIGKILL to those left, each reaped (bounded) before this returns."""
    for child in children:
        child.send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        child.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(2.0)
