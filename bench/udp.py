"""UDP through vnet against direct, measured by `iperf3 -u` (vnet only; needs iperf3).

A fresh route and two nodes: "home" serves an `iperf3 -s` on 127.0.0.1 twice on the same
port number, as a udp serve (its datagrams) and as a tcp serve (iperf3's control
connection); "office" uses both on one local port. Each run is `iperf3 -u -c` at a fixed
offered rate per stream, with 1 and with 8 parallel streams (8 UDP flows, so 8 tunnel
streams), first straight to the server, then through vnet, alternating --repeat times.
Reported, as iperf3 reports them at the receiving end: throughput, datagrams per second
per flow and in total, loss and jitter. The median run of each is shown.

Skipped, with a message naming the Debian package, when `iperf3` is not installed.
`python -m bench.udp` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HOST, BenchError, Children, command, free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
MISSING = "udp: skipped, iperf3 is not installed (Debian package iperf3: apt-get install iperf3)"
STREAMS = (1, 8)
# Offered Mbit/s per stream: what this 2-core box carries through vnet with little loss
# (one stream near 1,400-byte datagrams at 20 Mbit/s is ~1,800 datagrams/s).
RATE_MBIT = {1: 20.0, 8: 5.0}
LENGTH = 1400
SECONDS = 5
REPEAT = 3
ATTEMPTS = 5


@dataclass
class UdpRun:
    path: str
    streams: int
    offered_mbit: float
    datagrams: int
    lost: int
    jitter_ms: float
    seconds: float
    per_flow_pps: list[float]
    # Datagrams vnet's two nodes dropped themselves in the run (their vnet_udp_drops_total),
    # by reason; the rest of the loss was in kernel socket buffers. None: direct.
    vnet_drops: dict[str, float] | None = None

    @property
    def received_mbit(self) -> float:
        return self.pps * LENGTH * 8 / 1e6

    @property
    def loss_percent(self) -> float:
        return 100.0 * self.lost / self.datagrams if self.datagrams else 0.0

    @property
    def pps(self) -> float:
        """Datagrams received per second, all flows together."""
        return sum(self.per_flow_pps)


def iperf3() -> str | None:
    return shutil.which("iperf3")


def _client(binary: str, port: int, streams: int, rate: float, seconds: int) -> dict[str, object]:
    """One iperf3 -u run. Tried again (up to ATTEMPTS, 1 s apart) when iperf3 fails before
    the test: its server is still finishing the last one ("busy"), or 3.12 failed to set
    its streams up (it sometimes does with -P 8, straight to the server as well)."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _client_once(binary, port, streams, rate, seconds)
        except BenchError as exc:
            if attempt == ATTEMPTS:
                raise
            print(f"udp: {exc}; again", file=sys.stderr, flush=True)
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _client_once(
    binary: str, port: int, streams: int, rate: float, seconds: int
) -> dict[str, object]:
    argv = [
        binary,
        "-c",
        HOST,
        "-p",
        str(port),
        "-u",
        "-b",
        f"{rate}M",
        "-l",
        str(LENGTH),
        "-t",
        str(seconds),
        "-P",
        str(streams),
        "--json",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    try:
        result: dict[str, object] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 gave no JSON (status {done.returncode}): {done.stderr}") from None
    if "error" in result:
        raise BenchError(f"iperf3: {result['error']}")
    return result


def _parse(path: str, streams: int, rate: float, result: dict[str, object]) -> UdpRun:
    end = result["end"]
    assert isinstance(end, dict)
    total = end["sum"]
    per_flow = []
    for stream in end["streams"]:
        udp = stream["udp"]
        secs = float(udp["seconds"]) or 1.0
        per_flow.append((int(udp["packets"]) - int(udp["lost_packets"])) / secs)
    return UdpRun(
        path=path,
        streams=streams,
        offered_mbit=rate * streams,
        datagrams=int(total["packets"]),
        lost=int(total["lost_packets"]),
        jitter_ms=float(total["jitter_ms"]),
        seconds=float(total["seconds"]),
        per_flow_pps=per_flow,
    )


def _configs(
    workdir: Path, route_port: int, target: int, use: int, metrics: tuple[int, int]
) -> tuple[Path, Path, Path]:
    route = f"[route]\nip={HOST}\nport={route_port}\n"
    home = (
        f"{route}[vnet]\nname=home\ngroup=bench\nmetrics={HOST}:{metrics[0]}\n"
        f"[serve.iperf]\nserveid=711\nport={target}\n"
        f"[serve.iperf-udp]\nserveid=712\ntype=udp\nport={target}\n"
    )
    office = (
        f"{route}[vnet]\nname=office\ngroup=bench\nmetrics={HOST}:{metrics[1]}\n"
        f"[use.iperf]\nserveid=711\nport={use}\n"
        f"[use.iperf-udp]\nserveid=712\ntype=udp\nport={use}\n"
    )
    paths = (workdir / "route.ini", workdir / "home.ini", workdir / "office.ini")
    for path, text in zip(paths, (route, home, office), strict=True):
        path.write_text(text)
    return paths


def _listening(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=2.0):
        pass


def _drops(ports: Sequence[int]) -> dict[str, float]:
    """vnet_udp_drops_total of the nodes, summed by reason."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vnet_udp_drops_total":
                    reason = sample.labels["reason"]
                    out[reason] = out.get(reason, 0.0) + sample.value
    return out


def _probe(binary: str, port: int) -> None:
    result = _client_once(binary, port, 1, 1.0, 1)
    if not _parse("probe", 1, 1.0, result).datagrams:
        raise BenchError("no datagram arrived")


def run(
    workdir: Path,
    env: dict[str, str],
    seconds: int = SECONDS,
    repeat: int = REPEAT,
    streams: Sequence[int] = STREAMS,
) -> list[UdpRun]:
    """Every (path, streams) run, in the order made. Raises BenchError when iperf3 is missing."""
    binary = iperf3()
    if binary is None:
        raise BenchError(MISSING)
    children = Children(workdir, env)
    runs: list[UdpRun] = []
    try:
        target, route_port, use = free_port(), free_port(), free_port()
        children.start("iperf3-server", [binary, "-s", "-B", HOST, "-p", str(target)])
        # Probed with a short iperf3 run, not a bare connect: the server takes a connection
        # that sends nothing as a test under way and turns the next client away.
        wait_ready("iperf3 server", lambda: _probe(binary, target), children)
        metrics = (free_port(), free_port())
        route_ini, home_ini, office_ini = _configs(workdir, route_port, target, use, metrics)
        level = ["--log-level", "warning"]
        children.start("udp-route", [*command("vnet-route", ["route"]), *level, str(route_ini)])
        wait_ready("udp route", lambda: _listening(route_port), children)
        children.start("udp-home", [*command("vnet", []), *level, str(home_ini)])
        children.start("udp-office", [*command("vnet", []), *level, str(office_ini)])
        # The uses listen once home's serves are registered; a short iperf3 run through
        # them proves both the control connection and the datagrams pass.
        wait_ready("udp use", lambda: _probe(binary, use), children, timeout=60)
        for rep in range(repeat):
            for n in streams:
                order = [("direct", target), ("vnet", use)]
                if rep % 2:
                    order.reverse()
                for name, port in order:
                    children.check()
                    rate = RATE_MBIT.get(n, 5.0)
                    before = _drops(metrics) if name == "vnet" else {}
                    result = _parse(name, n, rate, _client(binary, port, n, rate, seconds))
                    if name == "vnet":
                        after = _drops(metrics)
                        result.vnet_drops = {k: after[k] - before.get(k, 0.0) for k in after}
                    runs.append(result)
                    print(describe(runs[-1]), file=sys.stderr, flush=True)
        return runs
    finally:
        children.stop_all()


def _dropped(r: UdpRun) -> str:
    if r.vnet_drops is None:
        return "-"
    return f"{sum(r.vnet_drops.values()):,.0f}"


def describe(r: UdpRun) -> str:
    return (
        f"udp {r.path:<6} {r.streams} stream(s): {r.received_mbit:.1f} of "
        f"{r.offered_mbit:.0f} Mbit/s, {r.pps:,.0f} datagrams/s "
        f"({statistics.median(r.per_flow_pps):,.0f} per flow), loss {r.loss_percent:.2f}% "
        f"(dropped by vnet: {_dropped(r)}), jitter {r.jitter_ms:.3f} ms"
    )


def table(runs: Sequence[UdpRun]) -> tuple[list[str], list[list[str]]]:
    """Medians (by received throughput) of each path and stream count."""
    header = [
        "path",
        "streams",
        "offered Mbit/s",
        "received Mbit/s",
        "datagrams/s per flow",
        "datagrams/s total",
        "loss %",
        "of it dropped by vnet",
        "jitter ms",
    ]
    body = []
    keys = sorted({(r.streams, r.path) for r in runs}, key=lambda k: (k[0], k[1] != "direct"))
    for streams, path in keys:
        group = sorted((r for r in runs if (r.streams, r.path) == (streams, path)), key=_mbit)
        mid = group[len(group) // 2]
        body.append(
            [
                path,
                str(streams),
                f"{mid.offered_mbit:.0f}",
                f"{mid.received_mbit:.1f}",
                f"{statistics.median(mid.per_flow_pps):,.0f}",
                f"{mid.pps:,.0f}",
                f"{mid.loss_percent:.2f}",
                _dropped(mid),
                f"{mid.jitter_ms:.3f}",
            ]
        )
    return header, body


def _mbit(r: UdpRun) -> float:
    return r.received_mbit


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.udp", description=__doc__)
    p.add_argument("--seconds", type=int, default=SECONDS, help="length of each iperf3 run")
    p.add_argument("--repeat", type=int, default=REPEAT, help="runs of each path")
    args = p.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="vnet-udp-") as tmp:
        try:
            runs = run(Path(tmp), env, args.seconds, args.repeat)
        except BenchError as exc:
            print(f"bench.udp: {exc}", file=sys.stderr)
            return 0 if iperf3() is None else 1
    header, body = table(runs)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    for row in (header, *body):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
