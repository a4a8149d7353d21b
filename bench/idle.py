"""Memory per idle tunnel (vnet only): what holding many quiet connections costs.

Opens connections through vnet's echo use port until N are open; each sends one byte and
reads it back, which proves the tunnel reached the target, and then stays open and silent.
The route's (and the nodes') VmRSS is read before the first and at each N; the growth divided
by the tunnels open is the cost of one idle tunnel. All are closed at the end, and the run
waits (bounded) for vnet to tear them down before anything else is measured.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.client import Address
from bench.paths import BenchPath
from bench.procs import BenchError, Children
from harness.procs import fd_count, rss_kib

# Tunnels set up at once: enough to keep vnet busy, few enough for office's listen backlog.
BATCH = 64
ROLES = ("vnet route", "vnet office", "vnet home")


@dataclass
class IdleResult:
    # (tunnels wanted, tunnels open, {role: KiB per tunnel})
    rows: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def route_kib(self, wanted: int) -> float | None:
        for size, reached, per in self.rows:
            if size == wanted and reached == size:
                return per["vnet route"]
        return None

    def table(self) -> tuple[list[str], list[list[str]]]:
        header = ["idle tunnels", "open", *(f"{r.removeprefix('vnet ')} KiB/tunnel" for r in ROLES)]
        body = [
            [f"{size:,}", f"{reached:,}", *(f"{per[r]:.1f}" for r in ROLES)]
            for size, reached, per in self.rows
        ]
        return header, body


def _open_batch(addr: Address, count: int, into: list[socket.socket]) -> None:
    batch: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(addr, timeout=30)
            batch.append(sock)
            sock.sendall(b"i")
        for sock in batch:
            if sock.recv(1) != b"i":
                raise BenchError("an idle tunnel's echo did not come back")
    finally:
        # Kept even on failure, so they are counted and closed with the others.
        into.extend(batch)


def _settle(pids: dict[str, int], base_fds: dict[str, int], timeout: float) -> bool:
    """Wait until office and home hold no more fds than before the test (tunnels torn down)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(fd_count(pids[r]) <= base_fds[r] + 8 for r in ("vnet office", "vnet home")):
            return True
        time.sleep(0.2)
    return False


def run(
    path: BenchPath, sizes: Sequence[int], children: Children, say: Callable[[str], None]
) -> IdleResult:
    pids = {role: path.processes[role] for role in ROLES}
    base = {role: rss_kib(pid) for role, pid in pids.items()}
    base_fds = {role: fd_count(pid) for role, pid in pids.items()}
    result = IdleResult()
    socks: list[socket.socket] = []
    confirmed = 0  # tunnels whose echo came back
    started = time.monotonic()
    try:
        for size in sorted(sizes):
            failure = None
            # 5 ms per tunnel is ~7x slower than vnet sets them up here: far slower is a bug.
            deadline = time.monotonic() + max(60.0, size * 0.005)
            try:
                while len(socks) < size:
                    children.check()
                    if time.monotonic() > deadline:
                        raise BenchError(f"opening {size} idle tunnels took too long")
                    _open_batch(path.echo, min(BATCH, size - len(socks)), socks)
                    confirmed = len(socks)
            except (OSError, BenchError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            reached = confirmed
            per = {r: (rss_kib(pids[r]) - base[r]) / max(1, reached) for r in ROLES}
            result.rows.append((size, reached, per))
            say(
                f"idle {size:>6,}: {reached:,} open after {time.monotonic() - started:.0f} s, "
                f"route +{per['vnet route']:.1f} KiB/tunnel"
            )
            if failure is not None:
                result.notes.append(
                    f"idle tunnels: stopped at about {reached:,} of {size:,} ({failure})"
                )
                break
    finally:
        for sock in socks:
            sock.close()
    children.check()
    if not _settle(pids, base_fds, max(60.0, len(socks) * 0.01)):
        result.notes.append("idle tunnels: vnet had not released every socket 60 s after close")
    say(f"idle tunnels closed after {time.monotonic() - started:.0f} s")
    return result
