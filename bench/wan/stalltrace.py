"""Where a process stood still: `bench.wan --stalls` records it in every Python process.

Three records, each a line `MONOTONIC KIND MS [DETAIL]` in DIR/stalls-PID-NAME.log, on the
monotonic clock the vnet logs and the ping traces use, so they line up with both:

- `thread`: a thread sleeping 2 ms woke more than 8 ms late. The process (or the GIL, or the
  machine) was not running it: a stall whatever its cause.
- `loop`: the same on the event loop (an asyncio task sleeping 2 ms): a callback ran long.
- `gc`: a garbage collection that took over 3 ms, with its generation.

A ping that came back late next to one of these was the process's, not the link's. The
ticks cost each process 500 wake-ups a second; that is the price of seeing a 10 ms stall.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO

TICK_S = 0.002
LATE_MS = 8.0  # a tick this late is a stall: more than a scheduler's slice on a busy box
GC_MS = 3.0  # a young collection takes well under 1 ms; a full one over a big heap tens
ENV = "VNET_BENCH_STALLS"  # the directory, for child processes (read by stalls/sitecustomize)


class _Record:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.gc_began = 0.0

    def write(self, kind: str, at: float, ms: float, detail: str = "") -> None:
        with self.lock:
            self.out.write(f"{at:.3f} {kind} {ms:.1f} {detail}\n")

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_began = time.monotonic()
            return
        took = (time.monotonic() - self.gc_began) * 1000
        if took > GC_MS:
            self.write("gc", self.gc_began, took, f"gen{info.get('generation')}")

    def tick_thread(self) -> None:
        while True:
            began = time.monotonic()
            time.sleep(TICK_S)
            late = (time.monotonic() - began - TICK_S) * 1000
            if late > LATE_MS:
                self.write("thread", began, late)

    async def tick_loop(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.sleep(TICK_S)
            late = (time.monotonic() - began - TICK_S) * 1000
            if late > LATE_MS:
                self.write("loop", began, late)


_record: _Record | None = None


def _open(directory: str | Path) -> TextIO:
    words = [os.path.basename(sys.argv[0] or "python")] + sys.argv[1:3]
    name = "_".join(w.replace("/", "_").strip("-") for w in words if w)[:60]
    return open(Path(directory) / f"stalls-{os.getpid()}-{name}.log", "a", buffering=1)


def install(directory: str | Path) -> None:
    """Record this process's stalls into directory; called again (the bench's next profile),
    go on recording into the new one."""
    global _record
    if _record is not None:
        with _record.lock:
            _record.out.close()
            _record.out = _open(directory)
        return
    record = _record = _Record(_open(directory))
    gc.callbacks.append(record.on_gc)
    threading.Thread(target=record.tick_thread, name="stalltrace", daemon=True).start()
    # Every event loop the process runs, asyncio.run's and uvloop.run's alike, comes from
    # asyncio.Runner: the loop's ticker starts with its main coroutine.
    run = asyncio.Runner.run

    def traced(self: asyncio.Runner, main: Coroutine[Any, Any, Any], **kw: Any) -> Any:
        async def with_ticker() -> Any:
            ticker = asyncio.ensure_future(record.tick_loop())
            try:
                return await main
            finally:
                ticker.cancel()

        return run(self, with_ticker(), **kw)

    asyncio.Runner.run = traced  # type: ignore[method-assign,assignment]
