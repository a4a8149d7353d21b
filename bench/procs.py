"""Child processes of a benchmark run, on harness.procs: the bench's own parts are its error
type, CPU accounting of process groups, readiness probes and the vnet trio's configs.

Every child gets its own session (process group) so that a Ctrl-C in the terminal reaches only
the bench, which then stops the children itself, and so that socat's per-connection forks are
stopped with their parent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.procs import HOST, Child, free_port, spawn, stop_all
from harness.procs import command as console_script

__all__ = ["HOST", "BenchError", "Child", "Children", "command", "free_port", "wait_ready"]

MAX_TUNNELS = 20_000


class BenchError(Exception):
    """A run cannot go on: a child died, a wait timed out, or a reply was wrong."""


def command(name: str, module_args: Sequence[str]) -> list[str]:
    """The installed console script (next to this interpreter, else on PATH), else
    `python -m vnet`."""
    script = console_script(name)
    if Path(script).exists():
        return [script]
    return [sys.executable, "-m", "vnet", *module_args]


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user+system, reaped children included) of a process group and its descendants.

    A group rather than a pid because socat serves each connection in a forked child; and the
    descendants too because sshd's per-connection children start sessions of their own.
    """
    stats: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, pgrp, ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # After the ")" ending the command name: state, ppid, pgrp, ..., and utime, stime,
            # cutime, cstime at indexes 11-14 (fields 14-17 of proc(5)).
            ticks = sum(int(f) for f in fields[11:15])
            stats[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), ticks)
        except (OSError, IndexError, ValueError):
            continue
    inside = {pid for pid, (_, pgrp, _) in stats.items() if pgrp == pgid}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in stats.items() if ppid in inside} - inside
        inside |= more
        grew = bool(more)
    return sum(stats[pid][2] for pid in inside) / os.sysconf("SC_CLK_TCK")


@dataclass
class Children:
    """Every process the run started; stop_all() ends each of them, whatever happened."""

    workdir: Path
    env: dict[str, str] | None = None
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        """argv as child `name`; env, if given, instead of the run's environment."""
        env = self.env if env is None else env
        child = spawn(name, argv, self.workdir / f"{name}.log", self.workdir, env, True)
        self.started.append(child)
        return child

    def get(self, name: str) -> Child:
        for child in self.started:
            if child.name == name:
                return child
        raise KeyError(name)

    def check(self) -> None:
        for child in self.started:
            rc = child.proc.poll()
            if rc is not None:
                raise BenchError(
                    f"{child.name} exited with status {rc}; last lines of its output:\n"
                    f"{child.tail()}"
                )

    def stop_all(self, grace: float = 5.0) -> None:
        # Group signals: they also reach socat's forked children, which share its group.
        stop_all(self.started, grace)


def wait_ready(
    what: str, probe: Callable[[], None], children: Children, timeout: float = 30.0
) -> float:
    """Poll probe until it succeeds, failing early when a child died; returns seconds taken."""
    start = time.monotonic()
    deadline = start + timeout
    last = "no attempt"
    while True:
        children.check()
        try:
            probe()
            return time.monotonic() - start
        except (OSError, BenchError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise BenchError(f"{what} not ready after {timeout:.0f} s (last error: {last})")
        # A poll interval, not a synchronisation: readiness is what probe() checks.
        time.sleep(0.05)


@dataclass(frozen=True)
class VnetTls:
    """TLS for a vnet trio: the route's certificate and key, and the CA the nodes trust."""

    ca: Path
    cert: Path
    key: Path


def write_vnet_configs(
    workdir: Path,
    route_port: int,
    sink: int,
    echo: int,
    use_sink: int,
    use_echo: int,
    tls: VnetTls | None = None,
) -> tuple[Path, Path, Path]:
    """route.ini, home.ini and office.ini in workdir; with tls, the route serves TLS only and
    both nodes verify it against tls.ca."""
    route = f"[route]\nip={HOST}\nport={route_port}\n"
    # The idle-tunnel test holds up to 10,000 tunnels from one node; the default cap is 2048.
    route_only = f"{route}max_tunnels_per_node={MAX_TUNNELS}\n"
    node_tls = ""
    if tls is not None:
        route_only += f"tls_cert={tls.cert}\ntls_key={tls.key}\n"
        node_tls = f"tls=true\ntls_ca={tls.ca}\n"
    home = (
        f"{route}[vnet]\nname=home\ngroup=bench\n{node_tls}"
        f"[serve.sink]\nserveid=701\nport={sink}\n"
        f"[serve.echo]\nserveid=702\nport={echo}\n"
    )
    office = (
        f"{route}[vnet]\nname=office\ngroup=bench\n{node_tls}"
        f"[use.sink]\nserveid=701\nport={use_sink}\n"
        f"[use.echo]\nserveid=702\nport={use_echo}\n"
    )
    paths = (workdir / "route.ini", workdir / "home.ini", workdir / "office.ini")
    for path, text in zip(paths, (route_only, home, office), strict=True):
        path.write_text(text)
    return paths
