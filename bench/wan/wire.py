"""The link emulator: wire.c compiled per run with the system cc, started between two
interfaces, its counters read back."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, Child, Children

SOURCE = Path(__file__).with_name("wire.c")
_STATS = re.compile(r"^stats (\S+) (.*)$")


@dataclass(frozen=True)
class Link:
    """One access link; each direction gets the same parameters, independently."""

    rate_bps: float
    buffer_bytes: int
    delay_us: int
    loss_ppm: int = 0


def compile_wire(workdir: Path) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        raise BenchError("`cc` is not installed (Debian: apt-get install gcc)")
    out = workdir / "wire"
    done = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(out), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(f"cc could not build {SOURCE}:\n{done.stderr.strip()}")
    return out


def argv(binary: Path, a: str, b: str, link: Link, seed: int) -> list[str]:
    return [
        str(binary), a, b, f"{link.rate_bps:.0f}", str(link.buffer_bytes),
        str(link.delay_us), str(link.loss_ppm), str(seed),
    ]  # fmt: skip


def start(children: Children, name: str, ns_argv: list[str], timeout: float = 10.0) -> Child:
    """Start a wire (ns_argv: the argv, already wrapped for its namespace) and wait until its
    sockets are bound."""
    child = children.start(name, ns_argv)
    wait_for_line(child, "wire: ready", timeout)
    return child


def wait_for_line(child: Child, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in _read(child):
        if child.proc.poll() is not None:
            raise BenchError(
                f"{child.name} exited with status {child.proc.returncode}:\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} not ready after {timeout:.0f} s:\n{child.tail()}")
        time.sleep(0.02)


def _read(child: Child) -> str:
    try:
        return child.log.read_text(errors="replace")
    except OSError:
        return ""


def stop(child: Child, timeout: float = 10.0) -> dict[str, dict[str, int]]:
    """Stop the wire; its counters per direction ("A>B", "B>A")."""
    if child.proc.poll() is None:
        child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(5)
        raise BenchError(f"{child.name} did not stop on SIGTERM") from None
    return parse_stats(_read(child))


def parse_stats(text: str) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = _STATS.match(line)
        if m:
            stats[m.group(1)] = {k: int(v) for k, v in (f.split("=") for f in m.group(2).split())}
    return stats
