"""bench/datapath.py end to end, with tiny figures: a real route, each variant's home and office,
every echoed frame compared byte for byte (a mismatch or reset fails the run). No timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_current_and_the_threaded_data_paths_echo_through_a_real_route() -> None:
    # aio: the node's TunnelCall; cq-2t: a call on its own completion queue, two threads.
    argv = [sys.executable, "-m", "bench.datapath", "--repeat", "1", "--pings", "30"]
    argv += ["--tunnels", "4", "--seconds", "0.2", "--variants", "aio,cq-2t"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| aio ", "| cq-2t "))]
    # One row per variant in each of the three tables.
    assert len(rows) == 6, done.stdout


def test_an_unknown_variant_is_named() -> None:
    argv = [sys.executable, "-m", "bench.datapath", "--variants", "aio,uvloop-magic"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "uvloop-magic" in done.stdout
