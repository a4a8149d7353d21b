"""`python -m bench.wan`: direct TCP, the OpenSSH chain and vnet over an emulated internet link.

Office and home nodes run in network namespaces of their own, the route (vnet-route, sshd, the
forwarding for direct TCP) in a third, and a user-space link emulator (bench/wan/wire.c, built
with the system cc) on both access links. See the WAN section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench import client
from bench.procs import BenchError, Children
from bench.wan import measure, netns, output, stalltrace, wire
from bench.wan import paths as wan_paths
from bench.wan.paths import ALL_PATHS, SINK, WanPath
from bench.wan.paths import start as start_paths
from bench.wan.profiles import FULL, PROFILES, QUICK, Profile, Sizes

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
# Measurements of a row again after host-wide TCP memory pressure spoilt it.
RETRIES = 2
ROWS = ("ping", "bulk", "bulk8", "first-byte", "up", "down")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes, profiles A and C only")
    p.add_argument(
        "--profiles",
        help="comma-separated subset of A (50 ms RTT, 100 Mbit/s, 50 ms buffer), B (A with 1%% "
        "loss), C (100 ms RTT, 1 Gbit/s, throughput only); default A,B,C (--quick: A,C)",
    )
    p.add_argument("--rtt-ms", type=float, help="a custom profile: RTT office <-> home")
    p.add_argument("--rate-mbit", type=float, help="custom profile: rate (default 100)")
    p.add_argument("--buffer-ms", type=float, help="custom profile: buffer (default = RTT)")
    p.add_argument("--loss-pct", type=float, default=0.0, help="custom profile: loss (default 0)")
    p.add_argument("--paths", default=",".join(ALL_PATHS), help="subset of direct,ssh,vnet")
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"subset of {','.join(ROWS)} (default: all; up/down are the loaded pings)",
    )
    p.add_argument("--bulk-mib", type=int, help="bulk transfer size at 100 Mbit/s")
    p.add_argument("--pings", type=int, help="unloaded ping-pong round trips")
    p.add_argument("--load-s", type=float, help="seconds each loaded transfer runs")
    p.add_argument("--write", metavar="FILE", help="also write the results into FILE's WAN block")
    p.add_argument("--chart", metavar="PNG", help="latency-over-time chart of the loaded runs")
    p.add_argument("--note", default="", help="free text for the results, e.g. what else ran")
    p.add_argument(
        "--ss-log",
        metavar="FILE",
        help="write the `ss -tinm` snapshots taken mid-way through each loaded ssh and vnet run "
        "(office, route and home sockets) to FILE instead of stderr",
    )
    p.add_argument(
        "--tcp-cc",
        metavar="NAME",
        help="TCP congestion control in the namespaces (default: the host's, e.g. bbr or cubic)",
    )
    p.add_argument(
        "--vnet",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a [vnet] setting for both nodes, e.g. queue_target_ms=8 (repeatable; for A/B runs)",
    )
    p.add_argument(
        "--logs",
        metavar="DIR",
        help="keep every process's log in DIR/<profile>/, with vnet at --log-level debug "
        "(its governor then logs each probe: round trip, queueing delay, rate)",
    )
    p.add_argument(
        "--stalls",
        action="store_true",
        help="with --logs: every Python process (vnet's, the bench's) also records when it "
        "stood still (a thread or its event loop woke over 8 ms late, a garbage collection over "
        "3 ms) in DIR/<profile>/stalls-*.log, on the clock of the ping traces",
    )
    args = p.parse_args(argv)
    if args.stalls and not args.logs:
        p.error("--stalls needs --logs DIR: the records are kept there")
    for item in args.vnet:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or "\n" in item or "[" in item:
            p.error(f"--vnet wants KEY=VALUE, not {item!r}")
    base = QUICK if args.quick else FULL
    args.sizes = Sizes(
        bulk_mib=args.bulk_mib or base.bulk_mib,
        bulk_mib_fast=base.bulk_mib_fast,
        pings=args.pings or base.pings,
        first_bytes=base.first_bytes,
        before_s=base.before_s,
        load_s=args.load_s or base.load_s,
        settle_s=min(base.settle_s, (args.load_s or base.load_s) / 2),
        after_max_s=base.after_max_s,
    )
    if args.rtt_ms is not None:
        rate = args.rate_mbit or 100.0
        custom = Profile("custom", args.rtt_ms, rate, args.buffer_ms or args.rtt_ms, args.loss_pct)
        args.profile_list = [custom]
        if args.profiles:
            p.error("--profiles and --rtt-ms: give one or the other")
    else:
        names = args.profiles or ("A,C" if args.quick else "A,B,C")
        wanted = [n.strip().upper() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in PROFILES]
        if unknown or not wanted:
            p.error(f"--profiles: unknown {', '.join(unknown) or 'empty list'}")
        args.profile_list = [PROFILES[n] for n in wanted]
    args.rows = [x.strip() for x in args.rows.split(",") if x.strip()]
    if not args.rows or set(args.rows) - set(ROWS):
        p.error(f"--rows: a comma-separated subset of {','.join(ROWS)}")
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not args.paths or set(args.paths) - set(ALL_PATHS):
        p.error(f"--paths: a comma-separated subset of {','.join(ALL_PATHS)}")
    return args


class ProfileRun:
    """One profile: a fresh topology, the wires, the paths, the rows; torn down after."""

    def __init__(self, args: argparse.Namespace, profile: Profile, binary: Path, tmp: Path):
        self.args, self.profile, self.binary = args, profile, binary
        self.sizes: Sizes = args.sizes
        self.workdir = tmp / profile.name
        self.workdir.mkdir()
        env = dict(os.environ)
        first = [str(REPO)]
        if args.stalls:
            # The directory's sitecustomize starts the recording in every child.
            first.insert(0, str(Path(stalltrace.__file__).parent / "stalls"))
            env[stalltrace.ENV] = str(self.workdir)
            stalltrace.install(self.workdir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, env.get("PYTHONPATH")]))
        self.children = Children(self.workdir, env)
        self.result = output.ProfileResult(profile)

    def run(self) -> output.ProfileResult:
        try:
            topo = netns.build()
            with netns.inside(topo.office):
                self._run(topo)
        finally:
            self.children.stop_all()
            netns.cleanup()
            if self.args.logs:
                keep = Path(self.args.logs) / self.profile.name
                keep.mkdir(parents=True, exist_ok=True)
                for log in self.workdir.glob("*.log"):
                    shutil.copy(log, keep / log.name)
        return self.result

    def _run(self, topo: netns.Topology) -> None:
        link = self.profile.link()
        wires = [
            wire.start(
                self.children,
                f"wire-{side}",
                netns.exec_argv(topo.wire, wire.argv(self.binary, a, b, link, seed)),
            )
            for side, (a, b), seed in (
                ("office", topo.office_link, 1),
                ("home", topo.home_link, 2),
            )
        ]
        t0 = time.monotonic()
        started = start_paths(self.args.paths, self.children, self.workdir, topo, self.args.vnet)
        _say(f"[{self.profile.name}] paths ready after {time.monotonic() - t0:.1f} s: "
             f"{', '.join(started.paths)}")  # fmt: skip
        self.result.notes += started.notes
        self.result.describe = started.describe
        self.result.paths = list(started.paths)
        paths = list(started.paths.values())
        for path in paths:
            # Untimed: ARP, the first tunnel, and one-off start-up costs are not measured.
            self._guard(path, "warm-up", functools.partial(client.bulk, path.sink, 1 << 20, 60.0))
            self._guard(path, "warm-up", functools.partial(measure.ping_ms, path.echo, 3))
        kinds: list[tuple[str, str, Callable[[WanPath], dict[str, float]]]] = [
            ("ping", "ping-pong", self.ping),
            ("bulk", "bulk", self.bulk),
        ]
        if self.profile.rows == "full":
            kinds += [
                ("bulk8", "bulk 8 conns", self.bulk8),
                ("first-byte", "first byte", self.first_byte),
                ("up", "ping + upload", lambda p: self.loaded(p, "up", topo)),
                ("down", "ping + download", lambda p: self.loaded(p, "down", topo)),
            ]
        for row, kind, fn in kinds:
            if row not in self.args.rows:
                continue
            for path in paths:
                got = self._row(row, kind, path, fn, topo)
                for key, value in got.items():
                    self.result.values.setdefault(key, {})[path.name] = value
                shown = "  ".join(f"{k}={v:,.1f}" for k, v in got.items())
                _say(f"[{self.profile.name}] {kind:<15} {path.name:<7} {shown}")
        for w in wires:
            stats = wire.stop(w)
            self.result.wire_stats[w.name] = stats

    def _row(
        self,
        row: str,
        kind: str,
        path: WanPath,
        fn: Callable[[WanPath], dict[str, float]],
        topo: netns.Topology,
    ) -> dict[str, float]:
        """One row on one path; measured again (up to RETRIES times) when the host's TCP
        memory was under pressure meanwhile, since then the kernel, not the link, set the
        pace; a row still affected after that is listed in the notes."""
        for attempt in range(RETRIES + 1):
            self.children.check()
            netns.flush_tcp_metrics(topo)
            watch = measure.MemoryWatch(netns.tcp_memory)
            try:
                got = self._guard(path, kind, functools.partial(fn, path))
            finally:
                pressured = watch.stop()
            if not pressured:
                return got
            _say(
                f"[{self.profile.name}] {kind} over {path.name}: the host was in TCP memory "
                f"pressure meanwhile (peak {watch.peak:,} pages, low mark {watch.mark:,}; "
                f"{watch.entries} entries; other work on the machine)"
                + ("; measuring again" if attempt < RETRIES else "")
            )
        self.result.pressured.append(f"{kind} over {path.name}")
        return got

    def _guard(self, path: WanPath, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (OSError, BenchError) as exc:
            self.children.check()
            raise BenchError(
                f"[{self.profile.name}] {what} over {path.name} failed: {type(exc).__name__}: {exc}"
            ) from None

    def ping(self, path: WanPath) -> dict[str, float]:
        n = self.sizes.pings if self.profile.rows == "full" else min(20, self.sizes.pings)
        samples = measure.ping_ms(path.echo, n)
        return {
            "ping_p50": statistics.median(samples),
            "ping_p99": measure.percentile(samples, 0.99),
        }

    def _bulk_bytes(self) -> int:
        fast = self.profile.rows != "full"
        return (self.sizes.bulk_mib_fast if fast else self.sizes.bulk_mib) << 20

    def bulk(self, path: WanPath) -> dict[str, float]:
        n = self._bulk_bytes()
        return {"bulk1": client.bulk(path.sink, n, max(120.0, n / 1e6))}

    def bulk8(self, path: WanPath) -> dict[str, float]:
        n = self._bulk_bytes()
        return {"bulk8": client.concurrent_bulk(path.sink, n, 8, max(120.0, n / 1e6))}

    def first_byte(self, path: WanPath) -> dict[str, float]:
        samples = measure.first_byte_ms(path.echo, self.sizes.first_bytes)
        return {"first_byte_p50": statistics.median(samples)}

    def loaded(self, path: WanPath, direction: str, topo: netns.Topology) -> dict[str, float]:
        s = self.sizes
        plan = measure.LoadPlan(s.before_s, s.load_s, s.settle_s, s.after_max_s)

        def flow() -> measure.Upload | measure.Download:
            if direction == "up":
                return measure.Upload(path.sink)
            return measure.Download(path.source)

        def snapshot() -> None:
            # Where the queue sits: every socket of office and of the route namespace.
            text = [f"### {self.profile.name} {path.name} ping next to {direction}load"]
            for label, ns in (("office", topo.office), ("route", topo.route), ("home", topo.home)):
                text.append(f"--- ss -tinm in {label} ({ns})")
                text.append(netns.ss(ns))
            self.result.evidence.append("\n".join(text))

        def at_sink() -> int:
            return netns.bytes_received(topo.home, SINK)

        def drained() -> bool:
            # A ping's worth or two may be in flight; a transfer's leftovers are megabytes.
            return netns.queued_bytes((topo.office, topo.route, topo.home)) < 64 * 1024

        got = measure.loaded(
            path.echo, flow, plan, snapshot, at_sink if direction == "up" else None, drained
        )
        self.result.timelines[(direction, path.name)] = got
        if self.args.logs:
            # Every round trip with its send time on the monotonic clock the vnet logs use.
            trace = self.workdir / f"pings-{direction}-{path.name}.log"
            trace.write_text("".join(f"{got.began + t:.3f} {ms:.1f}\n" for t, ms in got.timeline))
        return {
            f"{direction}_p50": got.p50,
            f"{direction}_p99": got.p99,
            f"{direction}_mbps": got.mbps,
            f"{direction}_pings": float(got.pings),
        }


def _stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP become an exception, so the finally blocks stop every child and
    # remove every namespace.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.tcp_cc:
        netns.OVERRIDES["net.ipv4.tcp_congestion_control"] = args.tcp_cc
    if args.logs:
        wan_paths.VNET_LOG_LEVEL = "debug"
    why = netns.unavailable()
    if why is not None:
        _say(f"bench-wan: skipped: {why}")
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    load = os.getloadavg()
    began = time.monotonic()
    results: list[output.ProfileResult] = []
    with tempfile.TemporaryDirectory(prefix="vnet-bench-wan-") as tmp:
        run: ProfileRun | None = None
        try:
            binary = wire.compile_wire(Path(tmp))
            for profile in args.profile_list:
                _say(f"[{profile.name}] {profile.describe()}; {profile.per_link()}")
                run = ProfileRun(args, profile, binary, Path(tmp))
                results.append(run.run())
        except BenchError as exc:
            _say(f"bench-wan: {exc}")
            if run is not None:
                for child in run.children.started:
                    _say(
                        f"--- {child.name} ({shlex.join(child.argv)}), last lines:\n{child.tail()}"
                    )
            return 1
        except KeyboardInterrupt:
            _say("bench-wan: interrupted; stopping the child processes, removing the namespaces")
            return 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            netns.cleanup()
    output.finish(output.Run(args, argv, load, time.monotonic() - began, results, REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
