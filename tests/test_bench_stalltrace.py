"""bench.wan --stalls: what it records when a real process stands still."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.wan import stalltrace

REPO = Path(__file__).resolve().parent.parent

# A process that stands still three ways: its event loop blocked for 60 ms, a full garbage
# collection over two million objects, and one C call holding the GIL for a while (the
# ticking thread cannot run meanwhile).
STALLING = """
import asyncio, gc, time
async def main():
    await asyncio.sleep(0.05)
    time.sleep(0.06)
    await asyncio.sleep(0.05)
    garbage = [(i,) for i in range(2_000_000)]
    gc.collect()
    del garbage
    sum(range(20_000_000))
    await asyncio.sleep(0.05)
asyncio.run(main())
"""


def _records(tmp_path: Path, env_extra: dict[str, str]) -> list[list[str]]:
    env = dict(os.environ)
    sitedir = Path(stalltrace.__file__).parent / "stalls"
    env["PYTHONPATH"] = os.pathsep.join([str(sitedir), str(REPO)])
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", STALLING], env=env, cwd=tmp_path, timeout=60, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    return [
        line.split()
        for log in tmp_path.glob("stalls-*.log")
        for line in log.read_text().splitlines()
    ]


def test_a_child_records_its_loop_gc_and_thread_stalls(tmp_path: Path) -> None:
    lines = _records(tmp_path, {stalltrace.ENV: str(tmp_path)})
    kinds = {fields[1] for fields in lines}
    assert {"loop", "gc", "thread"} <= kinds, lines
    loop = [float(f[2]) for f in lines if f[1] == "loop"]
    # The loop stood still for at least the 60 ms of the blocking sleep.
    assert max(loop) >= 50, lines
    assert any(f[1] == "gc" and f[3] == "gen2" for f in lines), lines
    # Every record is "MONOTONIC KIND MS [DETAIL]".
    for fields in lines:
        float(fields[0]), float(fields[2])


def test_without_the_variable_nothing_is_recorded(tmp_path: Path) -> None:
    assert _records(tmp_path, {}) == []
