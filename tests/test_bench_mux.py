"""bench/mux.py end to end, with tiny figures: a real route, each variant's home and office, real
TCP at both ends, every reply compared byte for byte by the load child. No timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.mux_proto import CLOSE, DATA, OPEN, MuxError, pack, unpack

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--repeat", "1", "--pings", "30", "--seconds", "0.2", "--hol", "30"]


def _run(*extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench.mux", *QUICK, *extra]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_one_stream_per_tunnel_and_one_shared_stream_echo_through_a_real_route() -> None:
    done = _run("--paths", "direct,aio,mux", "--idle", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    # A row per path in each of the six tables of figures, and for vnet one in the memory table.
    assert len([r for r in rows if r.startswith("| direct |")]) == 6, done.stdout
    for variant in ("aio", "mux"):
        assert len([r for r in rows if r.startswith(f"| {variant} |")]) == 7, done.stdout
    # The mux says how many inner frames went in a message (at least one); aio has no figure.
    mux_ping = next(r for r in rows if r.startswith("| mux |"))
    assert float(mux_ping.rstrip(" |").rsplit("|", 1)[1]) >= 1.0, mux_ping
    aio_ping = next(r for r in rows if r.startswith("| aio |"))
    assert aio_ping.rstrip(" |").endswith("-"), aio_ping


def test_bytes_the_mux_delivers_wrong_fail_the_run() -> None:
    # Home's mux changes the first byte of every other data frame it delivers.
    done = _run("--paths", "mux", "--idle", "0", "--fault", "flip")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "came back as other bytes" in done.stdout or "got b" in done.stdout, done.stdout


def test_an_unknown_path_is_named() -> None:
    argv = [sys.executable, "-m", "bench.mux", "--paths", "aio,mux-0,quic"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "mux-0, quic" in done.stdout


def test_inner_frames_round_trip_and_a_truncated_batch_is_refused() -> None:
    batch = pack(7, OPEN) + pack(7, DATA, b"hello") + pack(9, CLOSE)
    assert [(t, k, bytes(p)) for t, k, p in unpack(batch)] == [
        (7, OPEN, b""),
        (7, DATA, b"hello"),
        (9, CLOSE, b""),
    ]
    with pytest.raises(MuxError, match="truncated"):
        list(unpack(batch[:-3]))
    with pytest.raises(MuxError, match="kind 99"):
        list(unpack(pack(1, 99)))
