"""The command line: `python -m tools.soak` (`make soak`)."""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from tools.soak import __doc__ as DOC
from tools.soak.fleet import SoakError
from tools.soak.report import summary
from tools.soak.run import Soak


async def main_async(minutes: float, seed: int, keep: bool, cluster: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vnet-soak-"))
    soak = Soak(minutes, seed, workdir, cluster)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, soak.interrupted.set)
    try:
        start, end = await soak.run()
    except SoakError as exc:
        print(f"soak: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 2
    report, failures = summary(soak, start, end)
    print(report, flush=True)
    if failures or keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        return 1
    return 130 if soak.interrupted.is_set() else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.soak", description=DOC.split("\n\n")[0] if DOC else None
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="how long (default: 3)")
    parser.add_argument("--seed", type=int, help="workload seed (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the logs even if it passes")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three routes sharing one etcd (its own), each node naming two of them, and "
        "route kills across the cluster",
    )
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be more than 0")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args.minutes, seed, args.keep, args.cluster))
    # Like vnet itself: the client must not be what limits the run on a small machine.
    result: int = uvloop.run(main_async(args.minutes, seed, args.keep, args.cluster))
    return result


if __name__ == "__main__":
    sys.exit(main())
