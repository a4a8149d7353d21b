"""A burst of connections (vnet only): N clients connect at once, each echoing a payload.

What a browser, a build farm or a load test does to a use: every client connects at the same
moment, sends its own `payload` bytes (distinct per client) through vnet's echo use, half-closes
and reads the echo back to EOF, compared byte for byte. Reported: how many came back intact,
how many were reset (or failed otherwise), the time until the last of the N got its first echoed
byte (the set-up path under load: Dial, the serving node's control event, its Accept, the
target connect) and the time until the last finished.

`python -m bench.burst` runs it alone against a fresh route and two nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Address

REPO = Path(__file__).resolve().parent.parent
SIZES = (100, 1000)
PAYLOAD = 64 * 1024
# Per connection, generous: on a loaded 2-core box 2,000 at once take seconds, not minutes.
DEADLINE = 120.0


@dataclass
class BurstResult:
    conns: int
    payload: int
    ok: int = 0
    resets: int = 0
    # Other failures (timeouts, wrong bytes), with the first few reasons.
    failed: int = 0
    reasons: list[str] = field(default_factory=list)
    # Seconds from the start of the burst.
    last_first_byte: float = 0.0
    first_byte_p50: float = 0.0
    last_done: float = 0.0


def _payload(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


async def _one(addr: Address, i: int, size: int, start: float) -> float:
    """One client; returns when its first echoed byte arrived (seconds after start)."""
    data = _payload(i, size)
    reader, writer = await asyncio.open_connection(*addr, limit=4 * size + 65536)
    sending = asyncio.ensure_future(_send(writer, data))
    try:
        got = bytearray()
        first = 0.0
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            if not got:
                first = time.perf_counter() - start
            got += chunk
        await sending
    finally:
        sending.cancel()
        writer.close()
        # A reset also fails the sender; that is counted once, by the reader.
        await asyncio.gather(sending, return_exceptions=True)
    if bytes(got) != data:
        raise ValueError(f"conn {i}: {len(got)} bytes came back, {size} were sent, or differ")
    return first


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


async def _burst(addr: Address, conns: int, size: int, deadline: float) -> BurstResult:
    res = BurstResult(conns, size)
    start = time.perf_counter()
    firsts: list[float] = []

    async def guarded(i: int) -> None:
        try:
            async with asyncio.timeout(deadline):
                firsts.append(await _one(addr, i, size, start))
            res.ok += 1
        except ConnectionResetError:
            res.resets += 1
        except (OSError, ValueError, TimeoutError) as exc:
            res.failed += 1
            if len(res.reasons) < 3:
                res.reasons.append(f"{type(exc).__name__}: {exc}")
        res.last_done = max(res.last_done, time.perf_counter() - start)

    await asyncio.gather(*(guarded(i) for i in range(conns)))
    if firsts:
        firsts.sort()
        res.last_first_byte = firsts[-1]
        res.first_byte_p50 = firsts[len(firsts) // 2]
    return res


def run_burst(
    addr: Address, conns: int, size: int = PAYLOAD, deadline: float = DEADLINE
) -> BurstResult:
    """One burst of `conns` simultaneous connections from this process (uvloop if there is one)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_burst(addr, conns, size, deadline))
    return uvloop.run(_burst(addr, conns, size, deadline))


def table(results: Sequence[BurstResult]) -> tuple[list[str], list[list[str]]]:
    header = [
        "connections at once",
        "payload each way",
        "intact",
        "reset",
        "other failures",
        "first byte p50 (s)",
        "last first byte (s)",
        "last done (s)",
    ]
    body = [
        [
            f"{r.conns:,}",
            f"{r.payload // 1024} KiB",
            f"{r.ok:,}",
            f"{r.resets:,}",
            f"{r.failed:,}",
            f"{r.first_byte_p50:.2f}",
            f"{r.last_first_byte:.2f}",
            f"{r.last_done:.2f}",
        ]
        for r in results
    ]
    return header, body


def describe(r: BurstResult) -> str:
    text = (
        f"burst {r.conns:>5,} x {r.payload // 1024} KiB: {r.ok:,} intact, {r.resets:,} reset, "
        f"{r.failed:,} failed; first byte p50 {r.first_byte_p50:.2f} s, "
        f"last {r.last_first_byte:.2f} s; all done {r.last_done:.2f} s"
    )
    return text + "".join(f"\n  {why}" for why in r.reasons)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.__main__ import _raise_fd_limit
    from bench.paths import start_paths
    from bench.procs import BenchError, Children

    p = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="connection counts")
    p.add_argument("--payload-kib", type=int, default=PAYLOAD // 1024)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="vnet-burst-") as tmp:
        env = dict(os.environ)
        # Children start in the temp directory; they must still import bench from here.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        children = Children(Path(tmp), env)
        try:
            path = start_paths(["vnet"], children, Path(tmp)).paths["vnet"]
            for _ in range(args.repeat):
                for n in sizes:
                    print(describe(run_burst(path.echo, n, args.payload_kib * 1024)), flush=True)
                    children.check()
        except BenchError as exc:
            print(f"bench.burst: {exc}", file=sys.stderr)
            return 1
        finally:
            children.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
