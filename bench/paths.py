"""The paths a connection can take to the target, each started and checked end to end.

direct: straight to the target. relay: through bench.relay. socat: through socat, when
installed. ssh: the OpenSSH chain (bench/sshchain.py), when installed. vnet: office's use port
-> office node -> route -> home node -> target, with the real `vnet-route` and `vnet` commands.
vnet-tls: the same with a trio of its own whose nodes reach the route over TLS (a CA and a
certificate for 127.0.0.1 made per run with trustme), measured against ssh's encrypted chain.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import sshchain
from bench.client import Address, probe_echo, probe_listen, probe_sink
from bench.procs import (
    HOST,
    Children,
    VnetTls,
    command,
    free_port,
    wait_ready,
    write_vnet_configs,
)

ALL_PATHS = ("direct", "relay", "socat", "ssh", "vnet", "vnet-tls")
# socat's default 8 KiB buffer would make it a strawman; 256 KiB matches bench.relay's reads.
SOCAT_BUFFER = 256 * 1024
# Logging is per connection at info level in places; the run measures the data path.
VNET_LOG_LEVEL = "warning"


@dataclass
class BenchPath:
    """One way to reach the target's sink and echo services."""

    name: str
    sink: Address
    echo: Address
    # Processes that carry this path's traffic, by role; CPU use is reported per role.
    processes: dict[str, int] = field(default_factory=dict)
    # vnet paths only: the route's address, for control-plane pings.
    route: Address | None = None


@dataclass
class Started:
    paths: dict[str, BenchPath]
    notes: list[str]
    describe: list[tuple[str, str]]


def _ready(
    what: str, children: Children, *probes: Callable[[], None], timeout: float = 30.0
) -> None:
    for probe in probes:
        wait_ready(what, probe, children, timeout)


def start_paths(wanted: Sequence[str], children: Children, workdir: Path) -> Started:
    py = sys.executable
    notes: list[str] = []
    describe: list[tuple[str, str]] = []
    sink_port, echo_port = free_port(), free_port()
    sink, echo = (HOST, sink_port), (HOST, echo_port)
    target = children.start(
        "target",
        [py, "-m", "bench.target", "--sink-port", str(sink_port), "--echo-port", str(echo_port)],
    )
    _ready("target", children, lambda: probe_echo(echo), lambda: probe_sink(sink))
    targets = {"target": target.proc.pid}
    paths: dict[str, BenchPath] = {}
    if "direct" in wanted:
        paths["direct"] = BenchPath("direct", sink, echo, dict(targets))

    if "relay" in wanted:
        rs, re_ = free_port(), free_port()
        relay = children.start(
            "relay",
            [
                py,
                "-m",
                "bench.relay",
                "--map",
                f"{rs}:{HOST}:{sink_port}",
                "--map",
                f"{re_}:{HOST}:{echo_port}",
            ],
        )
        rsink, recho = (HOST, rs), (HOST, re_)
        _ready("plain relay", children, lambda: probe_echo(recho), lambda: probe_sink(rsink))
        paths["relay"] = BenchPath("relay", rsink, recho, {"relay": relay.proc.pid, **targets})
        describe.append(("plain relay", "bench/relay.py: asyncio streams, 256 KiB reads"))

    if "socat" in wanted:
        socat = shutil.which("socat")
        if socat is None:
            notes.append("socat: skipped, `socat` is not on PATH")
        else:
            started = {}
            for role, port in (("sink", sink_port), ("echo", echo_port)):
                listen = free_port()
                child = children.start(
                    f"socat-{role}",
                    [
                        socat,
                        "-b",
                        str(SOCAT_BUFFER),
                        f"TCP-LISTEN:{listen},bind={HOST},reuseaddr,fork,backlog=4096,nodelay",
                        f"TCP:{HOST}:{port},nodelay",
                    ],
                )
                started[role] = (listen, child.proc.pid)
            ssink, secho = (HOST, started["sink"][0]), (HOST, started["echo"][0])
            _ready("socat", children, lambda: probe_echo(secho), lambda: probe_sink(ssink))
            # Only the bulk transfer is CPU-accounted, and it goes through the sink's socat.
            paths["socat"] = BenchPath(
                "socat", ssink, secho, {"socat": started["sink"][1], **targets}
            )
            describe.append(("socat", f"`socat -b {SOCAT_BUFFER} TCP-LISTEN:...,fork TCP:...`"))

    if "ssh" in wanted:
        why = sshchain.missing()
        if why is not None:
            notes.append(f"ssh: skipped, {why}")
        else:
            chain = sshchain.start(children, workdir, sink_port, echo_port)
            paths["ssh"] = BenchPath("ssh", chain.sink, chain.echo, {**chain.processes, **targets})
            describe.append(
                (
                    "ssh",
                    f"{sshchain.version()}: sshd + `ssh -N -R` (home) + `ssh -N -L` (office), "
                    "default cipher, ed25519 keys made per run",
                )
            )

    if "vnet" in wanted:
        paths["vnet"] = _start_vnet("vnet", children, workdir, sink_port, echo_port, targets)
        describe.append(("vnet", f"vnet-route + 2 x vnet, --log-level {VNET_LOG_LEVEL}"))

    if "vnet-tls" in wanted:
        tls_dir = workdir / "vnet-tls"
        tls_dir.mkdir()
        tls = _make_tls(tls_dir)
        if tls is None:
            notes.append("vnet-tls: skipped, the `trustme` package is not installed")
        else:
            paths["vnet-tls"] = _start_vnet(
                "vnet-tls", children, tls_dir, sink_port, echo_port, targets, tls
            )
            describe.append(
                (
                    "vnet-tls",
                    "vnet-route with TLS (trustme CA, cert for 127.0.0.1, made per run) "
                    f"+ 2 x vnet, tls=true; --log-level {VNET_LOG_LEVEL}",
                )
            )
    return Started(paths, notes, describe)


def _make_tls(workdir: Path) -> VnetTls | None:
    """A throwaway CA and a route certificate for 127.0.0.1; None without trustme."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    tls = VnetTls(ca=workdir / "ca.pem", cert=workdir / "route.pem", key=workdir / "route.key")
    ca.cert_pem.write_to_path(str(tls.ca))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert))
    cert.private_key_pem.write_to_path(str(tls.key))
    return tls


def _start_vnet(
    name: str,
    children: Children,
    confdir: Path,
    sink_port: int,
    echo_port: int,
    targets: dict[str, int],
    tls: VnetTls | None = None,
) -> BenchPath:
    """A route, a node "home" serving the target and a node "office" using it; configs go to
    confdir, logs to the run's directory as NAME-route.log and so on."""
    route_port, use_sink, use_echo = free_port(), free_port(), free_port()
    route_ini, home_ini, office_ini = write_vnet_configs(
        confdir, route_port, sink_port, echo_port, use_sink, use_echo, tls
    )
    level = ["--log-level", VNET_LOG_LEVEL]
    route = children.start(
        f"{name}-route", [*command("vnet-route", ["route"]), *level, str(route_ini)]
    )
    _ready(f"{name} route", children, lambda: probe_listen((HOST, route_port)))
    home = children.start(f"{name}-home", [*command("vnet", []), *level, str(home_ini)])
    office = children.start(f"{name}-office", [*command("vnet", []), *level, str(office_ini)])
    vsink, vecho = (HOST, use_sink), (HOST, use_echo)
    # The use port opens only once office has seen home's serve, and a tunnel works only
    # once home accepts; a byte round trip through each proves the whole chain.
    _ready(
        f"{name} tunnel",
        children,
        lambda: probe_echo(vecho),
        lambda: probe_sink(vsink),
        timeout=60,
    )
    return BenchPath(
        name,
        vsink,
        vecho,
        {
            f"{name} office": office.proc.pid,
            f"{name} route": route.proc.pid,
            f"{name} home": home.proc.pid,
            **targets,
        },
        route=(HOST, route_port),
    )
