"""What the extra hop of a tunnel across two routes costs: `python -m bench.peer_hop`.

Processes: the target (sink and echo), route B (the home node's), route A (the office
node's), the home node serving the sink and the echo on B, and two office nodes using
them: one joined to B (the tunnel stays within one route: the baseline) and one joined
to A (A relays to B through PeerService.Dial: the cross-route tunnel). No etcd: route A
is started with its `locate` and a mirror of the home node's serves set directly, as
the cluster's registry will set them. Each figure is measured on both paths in turn,
in the same run, so the two share the machine's noise.

Not part of `make bench` (the cluster rows come with the store wired into the route);
run it alone on an otherwise idle machine. `route` is this module's own route process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import client
from bench.procs import HOST, Children, command, free_port, wait_ready
from harness.procs import unbuffered_env

REPO = Path(__file__).resolve().parent.parent

TOKEN = "bench-cluster-token"
SINK, ECHO = 701, 702
# The home node joins B first: vnetid 01 there.
HOME_VNETID = "01"


async def _route(port: int, peer: str, sink_port: int, echo_port: int) -> None:
    from vnet.core.config import RouteEndpoint
    from vnet.route.peer import PeerAccess
    from vnet.route.server import start_route

    running = await start_route(RouteEndpoint(HOST, port))
    servicer = running.servicer
    servicer.peers.access = PeerAccess(TOKEN, route_id=f"bench-{port}")
    if peer:
        registry = servicer.registry
        registry.add_vnet("home", "bench", wanted=HOME_VNETID)
        for serveid, target in ((SINK, sink_port), (ECHO, echo_port)):
            reg = registry.register(HOME_VNETID, serveid, f"s{serveid}", HOST, target)
            servicer.fanout.added(reg.serve, "bench")
        servicer.locate = lambda group, serveid: peer
    print("route ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()


def _node_ini(name: str, route_port: int, body: str) -> str:
    return (
        f"[route]\nip={HOST}\nport={route_port}\n\n"
        f"[vnet]\nname={name}\ngroup=bench\nterminal=false\n\n{body}"
    )


def _uses(sink: int, echo: int) -> str:
    return (
        f"[use.sink]\nserveid={SINK}\nip={HOST}\nport={sink}\n\n"
        f"[use.echo]\nserveid={ECHO}\nip={HOST}\nport={echo}\n"
    )


def measure(size_mb: int, conns: int, rounds: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="vnet-peer-hop-"))
    env = unbuffered_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    children = Children(work, env)
    sink, echo = free_port(), free_port()
    a_port, b_port = free_port(), free_port()
    ports = {"one route": (free_port(), free_port()), "two routes": (free_port(), free_port())}
    py = [sys.executable, "-m", "bench.peer_hop", "route"]
    try:
        children.start(
            "target",
            [
                sys.executable,
                "-m",
                "bench.target",
                "--sink-port",
                str(sink),
                "--echo-port",
                str(echo),
            ],
        )
        children.start("route-b", [*py, str(b_port), "", str(sink), str(echo)])
        children.start("route-a", [*py, str(a_port), f"{HOST}:{b_port}", str(sink), str(echo)])
        home = _node_ini(
            "home",
            b_port,
            f"[serve.sink]\nserveid={SINK}\nip={HOST}\nport={sink}\n\n"
            f"[serve.echo]\nserveid={ECHO}\nip={HOST}\nport={echo}\n",
        )
        configs = {
            "home": home,
            "office-b": _node_ini("office-b", b_port, _uses(*ports["one route"])),
            "office-a": _node_ini("office-a", a_port, _uses(*ports["two routes"])),
        }
        for name, text in configs.items():
            path = work / f"{name}.ini"
            path.write_text(text)
            children.start(name, [*command("vnet", []), "--log-level", "warning", str(path)])
            if name == "home":
                wait_ready("route B", lambda: client.probe_listen((HOST, b_port)), children)
        for label, (s, e) in ports.items():
            wait_ready(f"{label}: sink", functools.partial(client.probe_sink, (HOST, s)), children)
            wait_ready(f"{label}: echo", functools.partial(client.probe_echo, (HOST, e)), children)
        rows: dict[str, list[str]] = {label: [] for label in ports}
        # Metric by metric, both paths in turn, so that a busy moment hits both alike.
        for s, _ in ports.values():
            client.bulk((HOST, s), 10_000_000, 60)  # warm up both paths' channels
        for label, (s, _) in ports.items():
            rows[label].append(f"{client.bulk((HOST, s), size_mb * 1_000_000, 300):.0f}")
        for label, (_, e) in ports.items():
            rows[label].append(f"{statistics.median(client.ping_pong((HOST, e), rounds)):.0f}")
        for label, (_, e) in ports.items():
            serial = client.serial_connections((HOST, e), conns, 300)
            rows[label].append(f"{serial.per_second:.0f}")
            rows[label].append(f"{statistics.median(serial.latencies_us) / 1000:.2f}")
        for label, (_, e) in ports.items():
            parallel = client.parallel_connections((HOST, e), conns, 16, 300)
            rows[label].append(f"{parallel.per_second:.0f}")
        head = ["path", "MB/s (1 conn)", "ping p50 us", "new tunnels/s", "setup p50 ms", "x16 /s"]
        print(" | ".join(head))
        for label, row in rows.items():
            print(" | ".join([label, *row]))
        return 0
    finally:
        children.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["route"]:
        port, peer, sink, echo = args[1:5]
        from vnet.cli import _run

        async def run() -> int:
            await _route(int(port), peer, int(sink), int(echo))
            return 0

        return _run(run())
    parser = argparse.ArgumentParser(prog="python -m bench.peer_hop", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=500, help="bulk transfer size (MB)")
    parser.add_argument("--conns", type=int, default=500, help="connections per rate test")
    parser.add_argument("--rounds", type=int, default=2000, help="ping-pong round trips")
    opts = parser.parse_args(args)
    return measure(opts.size_mb, opts.conns, opts.rounds)


if __name__ == "__main__":
    sys.exit(main())
