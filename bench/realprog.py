"""Real programs through direct TCP, the ssh chain and vnet: the "real programs" table.

Servers from Debian packages run on 127.0.0.1 for this run alone: `redis-server`, `nginx`
(one worker, a 1 KiB page, access log off) and `iperf3 -s`. Each is reached four ways:
straight (direct), through the OpenSSH chain (bench/sshchain.py, one -R/-L pair per server),
through vnet (a fresh `vnet-route` and nodes "home", serving the three, and "office", using
them) and through vnet-tls (another trio whose nodes reach the route over TLS). Every path is
first checked byte for byte (a Redis SET/GET of a random value, the page fetched and compared).

The clients are the programs' own benchmarks, run as a user would:

- `redis-benchmark -t get -c 50`, and with `-P 16` (pipelining);
- `wrk -t 1 -c 50`: HTTP keep-alive, 50 connections, the small page;
- `ab -c 50` without `-k`: a new connection (so a new tunnel) per request, every reply's
  length checked by ab (any failed request fails the run);
- `iperf3 -c` with 1 and with 8 streams (TCP).

Repeated --repeat times, the paths alternating and rotating who goes first; the table shows
medians, the ratios vnet/ssh and vnet/direct, and the project's goal per row, met or not met.
A row whose program is missing is skipped with a message naming the Debian package.
`python -m bench.realprog` runs it alone.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import sshchain
from bench.client import Address, probe_listen
from bench.paths import _make_tls
from bench.procs import (
    HOST,
    BenchError,
    Children,
    VnetTls,
    command,
    free_port,
    group_cpu_seconds,
    wait_ready,
)

REPO = Path(__file__).resolve().parent.parent
PATHS = ("direct", "ssh", "vnet", "vnet-tls")
CONCURRENCY = 50
PAGE = bytes(range(32, 127)) * 10 + b"\n" * 74  # 1,024 bytes
# A run that takes far longer than this is a hang, not a measurement.
RUN_TIMEOUT = 300.0
ATTEMPTS = 5


@dataclass(frozen=True)
class Sizes:
    redis_requests: int
    redis_pipelined: int
    http_seconds: int
    ab_requests: int
    iperf_seconds: int
    repeat: int


FULL = Sizes(20_000, 200_000, 5, 3_000, 5, 3)
QUICK = Sizes(5_000, 50_000, 2, 500, 2, 1)


@dataclass(frozen=True)
class Server:
    """A program the workloads talk to: its binary and the Debian package holding it."""

    name: str
    binary: str
    package: str


SERVERS = {
    "redis": Server("redis", "redis-server", "redis-server"),
    "http": Server("http", "nginx", "nginx"),
    "iperf": Server("iperf", "iperf3", "iperf3"),
}
SERVEIDS = {"redis": 721, "http": 722, "iperf": 723}


# A run's figure (requests/s or Mbit/s) and the operations it did (requests, or MB).
Figure = tuple[float, float]


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    server: str
    client: str
    package: str
    # The goal: vnet's figure at least this many times the ssh chain's.
    goal: float
    run: Callable[[Address, Sizes], Figure]
    # What one operation is, for the CPU column: "request" or "MB" (10^6 bytes received).
    op: str = "request"


def _run(argv: list[str], timeout: float = RUN_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{argv[0]}` did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(
            f"`{' '.join(argv)}` exited with status {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-500:]}"
        )
    return done.stdout


def _redis(addr: Address, requests: int, pipeline: int) -> Figure:
    argv = ["redis-benchmark", "-h", addr[0], "-p", str(addr[1]), "-t", "get"]
    argv += ["-c", str(CONCURRENCY), "-n", str(requests), "-P", str(pipeline), "--csv"]
    for row in csv.DictReader(_run(argv).splitlines()):
        if row.get("test") == "GET":
            return float(row["rps"]), requests
    raise BenchError("redis-benchmark printed no GET row")


def redis_get(addr: Address, sizes: Sizes) -> Figure:
    return _redis(addr, sizes.redis_requests, 1)


def redis_pipelined(addr: Address, sizes: Sizes) -> Figure:
    return _redis(addr, sizes.redis_pipelined, 16)


def wrk_keepalive(addr: Address, sizes: Sizes) -> Figure:
    url = f"http://{addr[0]}:{addr[1]}/"
    argv = ["wrk", "-t", "1", "-c", str(CONCURRENCY), "-d", f"{sizes.http_seconds}s", url]
    out = _run(argv)
    # wrk counts broken connections and wrong statuses but still exits 0.
    for bad in ("Socket errors", "Non-2xx or 3xx responses"):
        if bad in out:
            raise BenchError(f"wrk: {out.strip()}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if not (found and done):
        raise BenchError(f"wrk printed no Requests/sec: {out.strip()}")
    return float(found.group(1)), int(done.group(1))


def ab_new_connections(addr: Address, sizes: Sizes) -> Figure:
    n = sizes.ab_requests
    argv = ["ab", "-q", "-r", "-c", str(CONCURRENCY), "-n", str(n), f"http://{addr[0]}:{addr[1]}/"]
    out = _run(argv)
    # ab counts a reply of another length than the first as failed: byte counts checked.
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    if not (failed and complete and rate) or "Non-2xx" in out:
        raise BenchError(f"ab: unexpected report: {out.strip()[-500:]}")
    if int(failed.group(1)) or int(complete.group(1)) != n:
        raise BenchError(f"ab: {complete.group(1)} of {n} complete, {failed.group(1)} failed")
    return float(rate.group(1)), n


def _iperf_once(addr: Address, streams: int, seconds: int) -> Figure:
    argv = ["iperf3", "-c", addr[0], "-p", str(addr[1]), "-t", str(seconds)]
    argv += ["-P", str(streams), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 gave no JSON (status {done.returncode}): {done.stderr}") from None
    if "error" in result:
        raise BenchError(f"iperf3: {result['error']}")
    got = result["end"]["sum_received"]
    return float(got["bits_per_second"]) / 1e6, float(got["bytes"]) / 1e6


def _iperf(addr: Address, streams: int, seconds: int) -> Figure:
    """Mbit/s the server received. Tried again (1 s apart) when iperf3 fails before the test:
    its server still finishing the last one ("busy"), or 3.12 failing to set -P 8 up."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _iperf_once(addr, streams, seconds)
        except BenchError as exc:
            if attempt == ATTEMPTS:
                raise
            _say(f"realprog: {exc}; again")
            time.sleep(1.0)
    raise AssertionError("unreachable")


def iperf1(addr: Address, sizes: Sizes) -> Figure:
    return _iperf(addr, 1, sizes.iperf_seconds)


def iperf8(addr: Address, sizes: Sizes) -> Figure:
    return _iperf(addr, 8, sizes.iperf_seconds)


WORKLOADS = (
    Workload(
        "redis",
        f"redis-benchmark -t get -c {CONCURRENCY} (requests/s)",
        "redis",
        "redis-benchmark",
        "redis-tools",
        1.0,
        redis_get,
    ),
    Workload(
        "redis_p16",
        f"redis-benchmark -t get -c {CONCURRENCY} -P 16 (requests/s)",
        "redis",
        "redis-benchmark",
        "redis-tools",
        1.0,
        redis_pipelined,
    ),
    Workload(
        "wrk",
        f"wrk -c {CONCURRENCY}, keep-alive, 1 KiB page (requests/s)",
        "http",
        "wrk",
        "wrk",
        1.0,
        wrk_keepalive,
    ),
    Workload(
        "ab",
        f"ab -c {CONCURRENCY}, a new connection per request (requests/s)",
        "http",
        "ab",
        "apache2-utils",
        3.0,
        ab_new_connections,
    ),
    Workload("iperf1", "iperf3, 1 stream (Mbit/s)", "iperf", "iperf3", "iperf3", 1.5, iperf1, "MB"),
    Workload("iperf8", "iperf3 -P 8 (Mbit/s)", "iperf", "iperf3", "iperf3", 1.5, iperf8, "MB"),
)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the servers -------------------------------------------------------------------------


def _nginx_config(work: Path, port: int) -> Path:
    www = work / "www"
    www.mkdir()
    (www / "index.html").write_bytes(PAGE)
    temp = work / "temp"
    temp.mkdir()
    config = work / "nginx.conf"
    temps = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config.write_text(
        f"""# Written by bench/realprog.py for one run.
worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log {work / "nginx-error.log"} warn;
# The run's files are in a 0700 temp directory: the worker runs as whoever runs the bench.
user {getpass.getuser()};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{temps}
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
    }}
}}
"""
    )
    return config


def _redis_probe(addr: Address) -> None:
    """SET a random value and GET it back, byte for byte."""
    value = secrets.token_hex(16).encode()
    with socket.create_connection(addr, timeout=5.0) as sock:
        sock.sendall(b"SET vnet-bench " + value + b"\r\nGET vnet-bench\r\n")
        want = b"+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
        got = b""
        while len(got) < len(want):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    if got != want:
        raise BenchError(f"redis: expected {want!r}, got {got!r}")


def _http_probe(addr: Address) -> None:
    """GET the page and compare it with what nginx serves, byte for byte."""
    with socket.create_connection(addr, timeout=5.0) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or body != PAGE:
        raise BenchError(f"http: not the page: {got[:200]!r}")


def _iperf_probe(addr: Address) -> None:
    # A short real test, not a bare connect: iperf3's server takes a connection that sends
    # nothing as a test under way and turns the next client away.
    _run(["iperf3", "-c", addr[0], "-p", str(addr[1]), "-n", "64K"], timeout=30.0)


PROBES: dict[str, Callable[[Address], None]] = {
    "redis": _redis_probe,
    "http": _http_probe,
    "iperf": _iperf_probe,
}


def _start_servers(children: Children, work: Path, wanted: Sequence[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    if "redis" in wanted:
        port = free_port()
        children.start(
            "redis-server",
            ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly",
             "no", "--daemonize", "no", "--protected-mode", "no", "--dir", str(work)],
        )  # fmt: skip
        ports["redis"] = port
    if "http" in wanted:
        port = free_port()
        config = _nginx_config(work, port)
        children.start("nginx", ["nginx", "-p", str(work), "-c", str(config), "-e", "stderr"])
        ports["http"] = port
    if "iperf" in wanted:
        port = free_port()
        children.start("iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", str(port)])
        ports["iperf"] = port
    for name, port in ports.items():
        probe = PROBES[name]
        wait_ready(name, lambda probe=probe, port=port: probe((HOST, port)), children)
    return ports


@dataclass(frozen=True)
class Variant:
    """Another plaintext vnet trio for an A/B run: its name (a column of the table), the
    source tree its processes import vnet from (None: this checkout), and extra config keys
    for the nodes' [vnet] section and the route's [route] section."""

    name: str
    source: Path | None = None
    node: tuple[tuple[str, str], ...] = ()
    route: tuple[tuple[str, str], ...] = ()


def parse_variant(text: str) -> Variant:
    """NAME=ITEM,ITEM...: src=DIR, vnet.KEY=VALUE or route.KEY=VALUE."""
    name, sep, spec = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) or name in PATHS:
        raise ValueError(f"{text!r}: NAME=ITEM,... with a new lower-case NAME")
    source, node, route = None, [], []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: KEY=VALUE")
        if key == "src":
            source = Path(value).resolve()
            if not (source / "vnet" / "__init__.py").is_file():
                raise ValueError(f"src={value}: no vnet package there")
        elif key.startswith("vnet."):
            node.append((key.removeprefix("vnet."), value))
        elif key.startswith("route."):
            route.append((key.removeprefix("route."), value))
        else:
            raise ValueError(f"{item!r}: src=DIR, vnet.KEY=VALUE or route.KEY=VALUE")
    return Variant(name, source, tuple(node), tuple(route))


# --- the paths ---------------------------------------------------------------------------


def _vnet_configs(
    work: Path,
    route_port: int,
    targets: dict[str, int],
    uses: dict[str, int],
    tls: VnetTls | None,
    variant: Variant | None = None,
) -> tuple[Path, Path, Path]:
    route = f"[route]\nip={HOST}\nport={route_port}\n"
    route_only = route + "".join(f"{k}={v}\n" for k, v in (variant.route if variant else ()))
    node_tls = "".join(f"{k}={v}\n" for k, v in (variant.node if variant else ()))
    if tls is not None:
        route_only += f"tls_cert={tls.cert}\ntls_key={tls.key}\n"
        node_tls += f"tls=true\ntls_ca={tls.ca}\n"
    home = f"{route}[vnet]\nname=home\ngroup=bench\n{node_tls}" + "".join(
        f"[serve.{name}]\nserveid={SERVEIDS[name]}\nport={port}\n" for name, port in targets.items()
    )
    office = f"{route}[vnet]\nname=office\ngroup=bench\n{node_tls}" + "".join(
        f"[use.{name}]\nserveid={SERVEIDS[name]}\nport={uses[name]}\n" for name in targets
    )
    paths = (work / "route.ini", work / "home.ini", work / "office.ini")
    for path, text in zip(paths, (route_only, home, office), strict=True):
        path.write_text(text)
    return paths


def _start_vnet(
    name: str,
    children: Children,
    work: Path,
    targets: dict[str, int],
    tls: bool,
    variant: Variant | None = None,
) -> tuple[dict[str, Address], dict[str, int]]:
    work.mkdir()
    made = _make_tls(work) if tls else None
    if tls and made is None:
        raise BenchError("the `trustme` package is not installed")
    route_port = free_port()
    uses = {role: free_port() for role in targets}
    route_ini, home_ini, office_ini = _vnet_configs(work, route_port, targets, uses, made, variant)
    level = ["--log-level", "warning"]
    env = None
    route_cmd, node_cmd = command("vnet-route", ["route"]), command("vnet", [])
    if variant is not None and variant.source is not None:
        # `python -m vnet` with the variant's tree first on the path: the console scripts
        # would import this checkout.
        env = dict(children.env or os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(variant.source), env.get("PYTHONPATH", "")])
        route_cmd = [sys.executable, "-m", "vnet", "route"]
        node_cmd = [sys.executable, "-m", "vnet"]
    route = children.start(f"{name}-route", [*route_cmd, *level, str(route_ini)], env)
    wait_ready(f"{name} route", lambda: probe_listen((HOST, route_port)), children)
    home = children.start(f"{name}-home", [*node_cmd, *level, str(home_ini)], env)
    office = children.start(f"{name}-office", [*node_cmd, *level, str(office_ini)], env)
    processes = {
        f"{name} office": office.proc.pid,
        f"{name} route": route.proc.pid,
        f"{name} home": home.proc.pid,
    }
    return {role: (HOST, port) for role, port in uses.items()}, processes


@dataclass
class ProgPath:
    name: str
    addresses: dict[str, Address]
    processes: dict[str, int] = field(default_factory=dict)


def _start_paths(
    children: Children,
    work: Path,
    wanted: Sequence[str],
    ports: dict[str, int],
    variants: Sequence[Variant] = (),
) -> tuple[list[ProgPath], list[str]]:
    notes: list[str] = []
    paths: list[ProgPath] = []
    if "direct" in wanted:
        paths.append(ProgPath("direct", {role: (HOST, port) for role, port in ports.items()}))
    if "ssh" in wanted:
        why = sshchain.missing()
        if why is not None:
            notes.append(f"realprog: ssh skipped, {why}")
        else:
            addresses, processes = sshchain.start_forwards(children, work, ports)
            paths.append(ProgPath("ssh", addresses, processes))
    for name in ("vnet", "vnet-tls"):
        if name in wanted:
            try:
                addresses, processes = _start_vnet(
                    name, children, work / name, ports, name == "vnet-tls"
                )
            except BenchError as exc:
                notes.append(f"realprog: {name} skipped, {exc}")
                continue
            paths.append(ProgPath(name, addresses, processes))
    for variant in variants:
        addresses, processes = _start_vnet(
            variant.name, children, work / variant.name, ports, False, variant
        )
        paths.append(ProgPath(variant.name, addresses, processes))
    for path in paths:
        for role, addr in path.addresses.items():
            probe = PROBES[role]
            wait_ready(
                f"{role} through {path.name}",
                lambda probe=probe, addr=addr: probe(addr),
                children,
                timeout=60,
            )
    return paths, notes


# --- the run -----------------------------------------------------------------------------

# workload key -> path name -> figures of each repetition.
Results = dict[str, dict[str, list[float]]]


@dataclass
class Outcome:
    results: Results
    workloads: list[Workload]
    paths: list[str]
    notes: list[str]
    # Like results: CPU microseconds per operation, the path's own processes summed
    # (the server's and the client program's not included; direct has none).
    cpu: Results = field(default_factory=dict)


def available(workloads: Sequence[Workload] = WORKLOADS) -> tuple[list[Workload], list[str]]:
    """The workloads whose server and client are installed, and a note for each skipped."""
    keep, notes = [], []
    for w in workloads:
        server = SERVERS[w.server]
        if shutil.which(server.binary) is None:
            notes.append(
                f"realprog: `{w.label}` skipped, `{server.binary}` is not installed "
                f"(Debian package {server.package}: apt-get install {server.package})"
            )
        elif shutil.which(w.client) is None:
            notes.append(
                f"realprog: `{w.label}` skipped, `{w.client}` is not installed "
                f"(Debian package {w.package}: apt-get install {w.package})"
            )
        else:
            keep.append(w)
    return keep, notes


def run(
    workdir: Path,
    env: dict[str, str],
    sizes: Sizes,
    wanted: Sequence[str],
    only: Sequence[str] | None = None,
    variants: Sequence[Variant] = (),
) -> Outcome:
    workloads, notes = available([w for w in WORKLOADS if only is None or w.key in only])
    for note in notes:
        _say(note)
    results: Results = {}
    cpu: Results = {}
    if not workloads:
        return Outcome(results, [], [], notes)
    children = Children(workdir, env)
    try:
        ports = _start_servers(children, workdir, sorted({w.server for w in workloads}))
        paths, more = _start_paths(children, workdir, wanted, ports, variants)
        notes += more
        for note in more:
            _say(note)
        for rep in range(sizes.repeat):
            for w in workloads:
                # Rotate who goes first, so drift is spread over the paths.
                turn = paths[rep % len(paths) :] + paths[: rep % len(paths)]
                for path in turn:
                    children.check()
                    before = _cpu(path)
                    try:
                        value, ops = w.run(path.addresses[w.server], sizes)
                    except BenchError as exc:
                        children.check()
                        raise BenchError(f"{w.key} over {path.name}: {exc}") from None
                    results.setdefault(w.key, {}).setdefault(path.name, []).append(value)
                    shown = ""
                    if path.processes and ops:
                        per_op = 1e6 * (_cpu(path) - before) / ops
                        cpu.setdefault(w.key, {}).setdefault(path.name, []).append(per_op)
                        shown = f"  ({per_op:,.0f} us CPU per {w.op})"
                    _say(
                        f"[{rep + 1}/{sizes.repeat}] {w.key:<9} {path.name:<8} {value:,.0f}{shown}"
                    )
        return Outcome(results, workloads, [p.name for p in paths], notes, cpu)
    finally:
        children.stop_all()


def _cpu(path: ProgPath) -> float:
    return sum(group_cpu_seconds(pid) for pid in path.processes.values())


def _ratio(results: dict[str, list[float]], a: str, b: str) -> float | None:
    if a in results and b in results:
        return statistics.median(results[a]) / statistics.median(results[b])
    return None


def table(outcome: Outcome) -> tuple[list[str], list[list[str]]]:
    names = outcome.paths
    vnets = [n for n in names if n not in ("direct", "ssh")]
    header = ["workload", *names]
    for v in vnets:
        header += [f"{v}/ssh", f"{v}/direct"]
    header += ["goal vs ssh", *(f"{v} goal" for v in vnets)]
    body = []
    for w in outcome.workloads:
        got = outcome.results.get(w.key, {})
        row = [w.label]
        row += [f"{statistics.median(got[n]):,.0f}" if n in got else "-" for n in names]
        verdicts = []
        for v in vnets:
            vs_ssh, vs_direct = _ratio(got, v, "ssh"), _ratio(got, v, "direct")
            row += [f"{x:.2f}x" if x is not None else "-" for x in (vs_ssh, vs_direct)]
            verdicts.append("-" if vs_ssh is None else "met" if vs_ssh >= w.goal else "not met")
        row += [f">= {w.goal:g}x", *verdicts]
        body.append(row)
    return header, body


def cpu_table(outcome: Outcome) -> tuple[list[str], list[list[str]]]:
    """CPU per operation of each path's own processes (median), in microseconds."""
    names = [n for n in outcome.paths if any(n in got for got in outcome.cpu.values())]
    body = []
    for w in outcome.workloads:
        got = outcome.cpu.get(w.key, {})
        cells = [f"{statistics.median(got[n]):,.0f}" if n in got else "-" for n in names]
        body.append([f"{w.key}, us per {w.op}", *cells])
    return ["workload", *names], body


def title(sizes: Sizes) -> str:
    return (
        "real programs (bench/realprog.py: redis-server, nginx with one worker, iperf3 -s; "
        f"redis-benchmark -n {sizes.redis_requests:,} / {sizes.redis_pipelined:,} pipelined, "
        f"wrk -t 1 {sizes.http_seconds} s, ab -n {sizes.ab_requests:,}, iperf3 "
        f"{sizes.iperf_seconds} s; median of {sizes.repeat}, paths alternating; a fresh "
        "route and nodes)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.realprog", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    p.add_argument("--repeat", type=int, help="repetitions (default 3; --quick: 1)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"subset of {','.join(PATHS)}")
    p.add_argument(
        "--only",
        help=f"subset of the workloads {','.join(w.key for w in WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ITEM,...",
        help="one more plaintext vnet trio, for A/B runs: src=DIR (import vnet from that "
        "tree), vnet.KEY=VALUE (the nodes' [vnet] section), route.KEY=VALUE; repeatable, e.g. "
        "--variant ungoverned=vnet.queue_target_ms=0",
    )
    args = p.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as exc:
        p.error(f"--variant: {exc}")
    keys = [w.key for w in WORKLOADS]
    only = [x.strip() for x in (args.only or ",".join(keys)).split(",") if x.strip()]
    if not only or set(only) - set(keys):
        p.error(f"--only: a comma-separated subset of {','.join(keys)}")
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            p.error("--repeat must be at least 1")
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    wanted = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not wanted or set(wanted) - set(PATHS):
        p.error(f"--paths: a comma-separated subset of {','.join(PATHS)}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vnet-realprog-") as tmp:
        try:
            outcome = run(Path(tmp), env, sizes, wanted, only, variants)
        except BenchError as exc:
            _say(f"bench.realprog: {exc}")
            return 1
    from bench.report import plain_table

    print(f"{title(sizes)}; load average before: {' / '.join(f'{x:.2f}' for x in load)}")
    print(plain_table(*table(outcome)))
    print()
    print("CPU per operation, the path's own processes (us, median; not the server or client):")
    print(plain_table(*cpu_table(outcome)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
