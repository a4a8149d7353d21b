"""`python -m bench`: measure vnet against direct TCP, a plain relay, socat and OpenSSH.

Every path is measured by this process (never by a relay's own process), in alternating order,
--repeat times; the tables show medians. See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench import (
    burst,
    client,
    cluster,
    control,
    floor,
    idle,
    isolation,
    output,
    realprog,
    report,
    stalled,
    udp,
)
from bench.paths import ALL_PATHS, BenchPath, start_paths
from bench.procs import BenchError, Children, group_cpu_seconds

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Untimed round trips before the timed ones (their CPU is counted with them).
PING_WARMUP = 50
# Connections in the aggregate-throughput test; each sends bulk/N bytes.
CONCURRENCY = (8, 64)
FULL_IDLE = (1000, 10_000)
QUICK_IDLE = (200,)
# Connections at once in the burst test, and stalled tunnels in the memory test.
BURSTS = (100, 1000)
FULL_STALLED = 50
# The control-plane table (bench/control.py): nodes in one group, then (nodes, groups).
CONTROL_SIZES = "100,500,2000"
CONTROL_SPREAD = (2000, 200)
QUICK_CONTROL_SIZES = "100"
QUICK_STALLED = 10


@dataclass(frozen=True)
class Sizes:
    bulk_mib: int
    pings: int
    conns: int
    parallel_conns: int
    parallel: int
    repeat: int


FULL = Sizes(bulk_mib=1024, pings=5000, conns=500, parallel_conns=2000, parallel=16, repeat=3)
QUICK = Sizes(bulk_mib=64, pings=1000, conns=50, parallel_conns=400, parallel=16, repeat=1)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (smoke run)")
    p.add_argument("--bulk-mib", type=int, help=f"bulk transfer size (default {FULL.bulk_mib})")
    p.add_argument("--pings", type=int, help=f"ping-pong round trips (default {FULL.pings})")
    p.add_argument("--conns", type=int, help=f"serial connections (default {FULL.conns})")
    p.add_argument(
        "--parallel-conns",
        type=int,
        help=f"connections in the parallel test (default {FULL.parallel_conns})",
    )
    p.add_argument("--parallel", type=int, help=f"connections in flight (default {FULL.parallel})")
    p.add_argument("--repeat", type=int, help=f"repetitions per path (default {FULL.repeat})")
    p.add_argument(
        "--paths",
        default=",".join(ALL_PATHS),
        help=f"comma-separated subset of {','.join(ALL_PATHS)} (default: all)",
    )
    p.add_argument(
        "--idle-tunnels",
        help=f"idle vnet tunnel counts for the memory test (default "
        f"{','.join(map(str, FULL_IDLE))}; --quick: {','.join(map(str, QUICK_IDLE))})",
    )
    p.add_argument("--no-idle", action="store_true", help="skip the idle-tunnel memory test")
    p.add_argument(
        "--bursts",
        default=",".join(map(str, BURSTS)),
        help=f"connections opened at once in the burst test (default "
        f"{','.join(map(str, BURSTS))}; each echoes {burst.PAYLOAD // 1024} KiB)",
    )
    p.add_argument("--no-burst", action="store_true", help="skip the connection-burst test")
    p.add_argument(
        "--stalled",
        type=int,
        help=f"stalled readers in the stalled-memory test, on a fresh route and nodes "
        f"(default {FULL_STALLED}; --quick: {QUICK_STALLED})",
    )
    p.add_argument("--no-stalled", action="store_true", help="skip the stalled-memory test")
    p.add_argument(
        "--no-udp", action="store_true", help="skip the UDP test (iperf3 -u, vnet vs direct)"
    )
    p.add_argument(
        "--udp-seconds",
        type=int,
        help=f"length of each iperf3 -u run (default {udp.SECONDS}; --quick: 2)",
    )
    p.add_argument(
        "--control-sizes",
        help="node counts of the control-plane table, one group each (default "
        f"{CONTROL_SIZES}, then {CONTROL_SPREAD[0]:,} nodes over {CONTROL_SPREAD[1]} groups; "
        f"--quick: {QUICK_CONTROL_SIZES} only); bench/control.py",
    )
    p.add_argument("--no-control", action="store_true", help="skip the control-plane table")
    p.add_argument(
        "--no-cluster", action="store_true", help="skip the route-cluster table (bench/cluster.py)"
    )
    p.add_argument(
        "--no-realprog",
        action="store_true",
        help="skip the real-programs table (redis-benchmark, wrk, ab, iperf3 through direct, "
        "ssh, vnet and vnet-tls on servers of their own; see bench/realprog.py)",
    )
    p.add_argument(
        "--chart",
        metavar="PNG",
        help="also draw throughput and latency charts (needs `pip install matplotlib`), "
        "e.g. --chart docs/bench-throughput.png",
    )
    p.add_argument(
        "--write",
        "--markdown",
        dest="markdown",
        metavar="FILE",
        help="also write the results as Markdown (replacing only the generated block if FILE "
        "already has one), e.g. --write docs/BENCHMARKS.md",
    )
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for name in Sizes.__dataclass_fields__:
        if getattr(args, name) is None:
            setattr(args, name, getattr(base, name))
        elif getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        idle_text = args.idle_tunnels or ",".join(map(str, QUICK_IDLE if args.quick else FULL_IDLE))
        args.idle_tunnels = sorted({int(x) for x in idle_text.split(",") if x.strip()})
    except ValueError:
        p.error("--idle-tunnels: a comma-separated list of counts")
    if not args.idle_tunnels or min(args.idle_tunnels) < 1:
        p.error("--idle-tunnels: counts must be at least 1")
    try:
        args.bursts = sorted({int(x) for x in args.bursts.split(",") if x.strip()})
    except ValueError:
        p.error("--bursts: a comma-separated list of counts")
    if not args.bursts or min(args.bursts) < 1:
        p.error("--bursts: counts must be at least 1")
    if args.stalled is None:
        args.stalled = QUICK_STALLED if args.quick else FULL_STALLED
    elif args.stalled < 1:
        p.error("--stalled must be at least 1")
    # Under load a round trip can take ms; a tenth of --pings keeps the run short.
    args.loaded_pings = max(100, args.pings // 10)
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = set(args.paths) - set(ALL_PATHS)
    if unknown or not args.paths:
        p.error(f"--paths: unknown {', '.join(sorted(unknown)) or 'empty list'}")
    return args


def _metrics(args: argparse.Namespace) -> list[report.Metric]:
    return [
        report.Metric("bulk", f"bulk {args.bulk_mib} MiB, 1 conn (MB/s)", True),
        report.Metric("ping_p50", "1-byte ping-pong p50 (us)", False),
        report.Metric("ping_p99", "1-byte ping-pong p99 (us)", False),
        *(
            report.Metric(
                f"bulk{n}", f"bulk {args.bulk_mib} MiB over {n} conns, total (MB/s)", True
            )
            for n in CONCURRENCY
        ),
        report.Metric("loaded_p50", "ping-pong p50 with a bulk conn running (us)", False),
        report.Metric("loaded_p99", "ping-pong p99 with a bulk conn running (us)", False),
        report.Metric("serial_rate", "new conns/s, one at a time", True),
        report.Metric("serial_p50", "conn lifetime p50, one at a time (us)", False),
        report.Metric("parallel_rate", f"new conns/s, {args.parallel} in parallel", True),
        report.Metric(
            "parallel_p50", f"conn lifetime p50, {args.parallel} in parallel (us)", False
        ),
    ]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# One kind of measurement on one path: returns metric key -> value.
Measure = Callable[[BenchPath], dict[str, float]]


class Runner:
    def __init__(self, args: argparse.Namespace, children: Children) -> None:
        self.args = args
        self.children = children
        self.results: report.Results = {}
        # phase -> path -> process role -> CPU % of one core during each run of the phase.
        self.cpu: dict[str, dict[str, dict[str, list[float]]]] = {}

    def _accounted(
        self, phase: str, path: BenchPath, fn: Callable[[], T], per: int | None = None
    ) -> T:
        """fn(), with each process's CPU use recorded under phase: % of one core over the
        wall time, or, given per (operations fn did), microseconds of CPU per operation."""
        before = {role: group_cpu_seconds(pid) for role, pid in path.processes.items()}
        own = time.process_time()
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        used = {role: group_cpu_seconds(pid) - before[role] for role, pid in path.processes.items()}
        used["bench client"] = time.process_time() - own
        cpu = self.cpu.setdefault(phase, {}).setdefault(path.name, {})
        for role, seconds in used.items():
            value = 1e6 * seconds / per if per else 100 * seconds / wall
            cpu.setdefault(role, []).append(value)
        return result

    def bulk(self, path: BenchPath) -> dict[str, float]:
        nbytes = self.args.bulk_mib * 1024 * 1024
        # At least 20 MB/s or 60 s, whichever is longer: far slower than that is a bug.
        deadline = max(60.0, nbytes / 20e6)
        mbps = self._accounted("bulk", path, lambda: client.bulk(path.sink, nbytes, deadline))
        return {"bulk": mbps}

    def ping(self, path: BenchPath) -> dict[str, float]:
        # CPU per round trip says where a round trip's time goes: the hops are sequential.
        samples = self._accounted(
            "ping",
            path,
            lambda: client.ping_pong(path.echo, self.args.pings, PING_WARMUP),
            per=self.args.pings + PING_WARMUP,
        )
        return {"ping_p50": statistics.median(samples), "ping_p99": _percentile(samples, 0.99)}

    def concurrent(self, path: BenchPath) -> dict[str, float]:
        total = self.args.bulk_mib * 1024 * 1024
        return {
            f"bulk{n}": client.concurrent_bulk(path.sink, total, n, max(60.0, total / 20e6))
            for n in CONCURRENCY
        }

    def loaded_ping(self, path: BenchPath) -> dict[str, float]:
        """Ping-pong on one tunnel while another tunnel of the same path carries bulk data:
        what an interactive session feels while a download runs next to it."""
        background = client.Background(path.sink)
        try:
            background.wait_flowing(16 * 1024 * 1024, 30.0)
            samples = client.ping_pong(path.echo, self.args.loaded_pings)
        finally:
            background.stop()
        return {
            "loaded_p50": statistics.median(samples),
            "loaded_p99": _percentile(samples, 0.99),
        }

    def serial(self, path: BenchPath) -> dict[str, float]:
        n = self.args.conns
        res = client.serial_connections(path.echo, n, max(60.0, n * 0.1))
        return {"serial_rate": res.per_second, "serial_p50": statistics.median(res.latencies_us)}

    def parallel(self, path: BenchPath) -> dict[str, float]:
        n = self.args.parallel_conns
        res = self._accounted(
            "parallel",
            path,
            lambda: client.parallel_connections(
                path.echo, n, self.args.parallel, max(60.0, n * 0.1)
            ),
        )
        return {
            "parallel_rate": res.per_second,
            "parallel_p50": statistics.median(res.latencies_us),
        }

    def warm_up(self, path: BenchPath) -> None:
        """Untimed traffic first, so one-off costs (imports, HTTP/2 window growth) are not
        charged to whichever path happens to run first."""
        self._guard(path, "warm-up", lambda: client.bulk(path.sink, 16 * 1024 * 1024, 60.0))
        self._guard(path, "warm-up", lambda: client.ping_pong(path.echo, 200))
        self._guard(path, "warm-up", lambda: client.serial_connections(path.echo, 20, 60.0))

    def _guard(self, path: BenchPath, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (OSError, BenchError) as exc:
            # A dead child explains the failure better than the socket error it caused.
            self.children.check()
            raise BenchError(
                f"{what} over {path.name} failed: {type(exc).__name__}: {exc}"
            ) from None

    def run(self, paths: dict[str, BenchPath]) -> None:
        kinds: list[tuple[str, Measure]] = [
            ("bulk", self.bulk),
            ("ping-pong", self.ping),
            ("concurrent bulk", self.concurrent),
            ("ping under bulk", self.loaded_ping),
            ("serial conns", self.serial),
            ("parallel conns", self.parallel),
        ]
        for path in paths.values():
            self.warm_up(path)
        order = list(paths.values())
        for rep in range(self.args.repeat):
            # Rotate who goes first, so drift (thermal, page cache, TIME_WAIT build-up) is
            # spread over the paths instead of always hitting the same one.
            turn = order[rep % len(order) :] + order[: rep % len(order)]
            for kind, measure in kinds:
                for path in turn:
                    self.children.check()
                    got = self._guard(path, kind, functools.partial(measure, path))
                    for key, value in got.items():
                        self.results.setdefault(key, {}).setdefault(path.name, []).append(value)
                    shown = "  ".join(f"{k}={v:,.0f}" for k, v in got.items())
                    _say(f"[{rep + 1}/{self.args.repeat}] {kind:<15} {path.name:<8} {shown}")

    def cpu_table(self, names: list[str], phase: str) -> tuple[list[str], list[list[str]]]:
        per_path = self.cpu.get(phase, {})
        roles: list[str] = ["bench client"]
        for name in names:
            roles += [r for r in per_path.get(name, {}) if r not in roles]
        body = []
        for role in roles:
            cells = [role]
            for name in names:
                values = per_path.get(name, {}).get(role)
                cells.append(f"{statistics.median(values):.0f}" if values else "-")
            body.append(cells)
        return ["process", *names], body


def _vnet_sections(
    args: argparse.Namespace, path: BenchPath, runner: Runner, tmp: Path, env: dict[str, str]
) -> list[tuple[str, output.Table]]:
    """The burst and stalled-reader tables (vnet only)."""
    sections: list[tuple[str, output.Table]] = []
    if not args.no_burst:
        results = []
        for n in args.bursts:
            res = runner._guard(path, "burst", lambda n=n: burst.run_burst(path.echo, n))
            _say(burst.describe(res))
            results.append(res)
        sections.append(
            (
                f"vnet, connection bursts (bench/burst.py: N clients connect at once, each "
                f"echoes {burst.PAYLOAD // 1024} KiB, byte-exact; seconds from the start)",
                burst.table(results),
            )
        )
    if not args.no_control:
        workdir = tmp / "control"
        workdir.mkdir()
        quick = args.quick and not args.control_sizes
        text = args.control_sizes or (QUICK_CONTROL_SIZES if quick else CONTROL_SIZES)
        sizes = [int(x) for x in text.split(",") if x.strip()]
        spread, groups = (0, 1) if quick else CONTROL_SPREAD
        _say(
            f"control plane: {text} nodes in one group"
            + (f", {spread} in {groups}" if spread else "")
        )
        results = control.run_all(workdir, sizes, spread, groups, say=_say)
        sections.append(
            (
                "control plane (bench/control.py: raw sessions through the generated stubs, one "
                "connection each, Join + Control + 2 RegisterServe, all at once against a real "
                "vnet-route; then kill -9 and a restart on the same port)",
                control.rows(results),
            )
        )
    if not args.no_cluster:
        sizes = (1, 2) if args.quick else (1, 2, 3)
        repeat = 1 if args.quick else args.repeat
        _say(f"route cluster: {', '.join(map(str, sizes))} routes")
        try:
            body = cluster.rows(sizes, args.quick, repeat)
            sections.append((cluster.title(sizes, args.quick, repeat), (cluster.HEADER, body)))
        except BenchError as exc:
            _say(f"route cluster: not measured: {exc}")
    if not args.no_stalled:
        workdir = tmp / "stalled"
        workdir.mkdir()
        res = runner._guard(path, "stalled", lambda: stalled.run_fresh(args.stalled, workdir, env))
        _say(stalled.describe(res))
        sections.append(
            (
                f"vnet, stalled readers (bench/stalled.py: {args.stalled} clients send into "
                "the echo use and never read, on a fresh route and nodes; VmRSS growth once "
                "nothing moves)",
                stalled.table([res]),
            )
        )
    if not args.no_udp:
        if udp.iperf3() is None:
            _say(udp.MISSING)
        else:
            workdir = tmp / "udp"
            workdir.mkdir()
            seconds = args.udp_seconds or (2 if args.quick else udp.SECONDS)
            repeat = 1 if args.quick else udp.REPEAT
            runs = runner._guard(path, "udp", lambda: udp.run(workdir, env, seconds, repeat))
            rates = ", ".join(f"{n} x {udp.RATE_MBIT[n]:g}" for n in udp.STREAMS)
            sections.append(
                (
                    f"UDP (bench/udp.py: iperf3 -u, {udp.LENGTH}-byte datagrams, {rates} "
                    f"Mbit/s offered, {seconds} s per run, median of {repeat}; loss and "
                    "jitter as iperf3's receiver reports them; a fresh route and nodes)",
                    udp.table(runs),
                )
            )
    return sections


def _realprog(
    args: argparse.Namespace, tmp: Path, env: dict[str, str], notes: list[str]
) -> list[tuple[str, output.Table]]:
    """The real-programs tables, on servers, an ssh chain and vnet trios of their own."""
    base = realprog.QUICK if args.quick else realprog.FULL
    sizes = realprog.Sizes(**{**base.__dict__, "repeat": args.repeat})
    wanted = [name for name in args.paths if name in realprog.PATHS]
    _say(f"real programs through {', '.join(wanted)}")
    workdir = tmp / "realprog"
    workdir.mkdir()
    outcome = realprog.run(workdir, env, sizes, wanted)
    notes += outcome.notes
    return [
        (realprog.title(sizes), realprog.table(outcome)),
        (
            "real programs, CPU per operation of each path's own processes (us, median; "
            "the server and the client program not included)",
            realprog.cpu_table(outcome),
        ),
    ]


def _stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM becomes an exception so the finally blocks stop every child.
    raise KeyboardInterrupt


def _raise_fd_limit() -> None:
    """Soft fd limit up to the hard one, before any child starts: the idle test holds
    thousands of sockets here, and office, home and the target (which inherit the limit)
    as many again each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    _raise_fd_limit()
    signal.signal(signal.SIGTERM, _stop)
    load = os.getloadavg()
    began = time.monotonic()
    env = dict(os.environ)
    # Children start in a temp directory; they must still import bench from this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="vnet-bench-") as tmp:
        children = Children(Path(tmp), env)
        try:
            started = start_paths(args.paths, children, Path(tmp))
            ready = time.monotonic() - began
            _say(f"paths ready after {ready:.1f} s: {', '.join(started.paths)}")
            # The idle-tunnel and isolation tests are about vnet's tunnels, not its transport:
            # they run on the plaintext vnet path only, never on vnet-tls.
            if "vnet" not in started.paths and "vnet-tls" in started.paths:
                started.notes.append(
                    "idle tunnels and isolation: skipped, they run on the vnet path only "
                    "(not selected)"
                )
            for note in started.notes:
                _say(note)
            if not started.paths:
                # e.g. --paths vnet-tls without trustme, or --paths ssh without OpenSSH.
                _say("bench: nothing to measure, every selected path was skipped")
                return 1
            idle_table = None
            if "vnet" in started.paths and not args.no_idle:
                # First, while the route is fresh: memory a busy run freed inside the process
                # would otherwise be reused by the new tunnels and hide their cost.
                _say(f"idle tunnels: {', '.join(map(str, args.idle_tunnels))} through vnet")
                idle_table = idle.run(started.paths["vnet"], args.idle_tunnels, children, _say)
                # What grpc.aio alone costs per stream: the floor under the route's two.
                for size, kib in floor.measure(args.idle_tunnels).items():
                    idle_table.notes.append(
                        f"bench/floor.py: a bare grpc.aio server holding {size:,} idle bidi "
                        f"streams grew {kib:.1f} KiB per stream; a tunnel is two streams at "
                        f"the route, so {2 * kib:.1f} KiB"
                    )
            runner = Runner(args, children)
            runner.run(started.paths)
            iso = None
            sections: list[tuple[str, output.Table]] = []
            if "vnet" in started.paths:
                _say("isolation: one stalled reader, then the same measurements again")
                iso = runner._guard(
                    started.paths["vnet"],
                    "isolation",
                    lambda: isolation.run(started.paths["vnet"], args.bulk_mib, args.pings),
                )
                sections = _vnet_sections(args, started.paths["vnet"], runner, Path(tmp), env)
            if not args.no_realprog:
                sections += _realprog(args, Path(tmp), env, started.notes)
        except BenchError as exc:
            _say(f"bench: {exc}")
            for child in children.started:
                _say(f"--- {child.name} ({shlex.join(child.argv)}), last lines:\n{child.tail()}")
            return 1
        except KeyboardInterrupt:
            _say("bench: interrupted; stopping the child processes")
            return 130
        finally:
            # A second Ctrl-C must not cut the cleanup short and leave children running; the
            # cleanup is bounded (a few seconds per child at most).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            children.stop_all()
    took = time.monotonic() - began
    metrics = _metrics(args)
    output.finish(
        output.Run(
            args, argv, load, took, CONCURRENCY, started, runner.results, idle_table, iso, sections
        ),
        metrics,
        runner.cpu_table(list(started.paths), "bulk"),
        runner.cpu_table(list(started.paths), "parallel"),
        runner.cpu_table(list(started.paths), "ping"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
