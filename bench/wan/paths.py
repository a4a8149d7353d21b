"""The three paths of the WAN benchmark, started across the namespaces of bench/wan/netns.py.

The home namespace runs the services (bench.target's sink and echo, bench.wan.source's endless
download); every path ends there.

- direct: the client in office connects to home's address; the route namespace forwards.
- ssh: sshd in the route namespace; `ssh -N -R` from home and `ssh -N -L` from office, as
  bench/sshchain.py does on loopback.
- vnet: `vnet-route` in the route namespace, the home node serving the three services, the
  office node mapping them to local ports.

The run's process sits in the office namespace while it starts and measures them, so every
address below is reached from there.
"""

from __future__ import annotations

import getpass
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import sshchain
from bench.client import Address, probe_echo, probe_sink
from bench.procs import Children, command, wait_ready
from bench.wan import netns
from bench.wan.netns import HOME_IP, ROUTE_HOME_IP, ROUTE_OFFICE_IP, Topology

ALL_PATHS = ("direct", "ssh", "vnet")
SINK, ECHO, SOURCE = 9001, 9002, 9003
ROUTE_PORT, SSHD_PORT = 7749, 2222
LOCAL = "127.0.0.1"
# The vnet token of the run; only these namespaces can reach the route anyway.
TOKEN = "wan-bench-token"
VNET_LOG_LEVEL = "warning"


@dataclass
class WanPath:
    name: str
    sink: Address
    echo: Address
    source: Address
    # The TCP ports of the path's long-lived connections over the WAN, for `ss` snapshots.
    ports: list[int] = field(default_factory=list)


@dataclass
class Started:
    paths: dict[str, WanPath]
    notes: list[str]
    describe: list[tuple[str, str]]


def _wait(what: str, children: Children, path: WanPath, timeout: float = 60.0) -> None:
    # A byte through echo and a counted byte through sink prove the whole chain.
    wait_ready(what, lambda: probe_echo(path.echo), children, timeout)
    wait_ready(what, lambda: probe_sink(path.sink), children, timeout)


def start(
    wanted: Sequence[str],
    children: Children,
    workdir: Path,
    topo: Topology,
    vnet_settings: Sequence[str] = (),
) -> Started:
    py = sys.executable
    children.start(
        "target",
        netns.exec_argv(
            topo.home,
            [py, "-m", "bench.target", "--host", "0.0.0.0",
             "--sink-port", str(SINK), "--echo-port", str(ECHO)],
        ),
    )  # fmt: skip
    children.start(
        "source",
        netns.exec_argv(topo.home, [py, "-m", "bench.wan.source", "--port", str(SOURCE)]),
    )
    paths: dict[str, WanPath] = {}
    notes: list[str] = []
    describe: list[tuple[str, str]] = []
    direct = WanPath("direct", (HOME_IP, SINK), (HOME_IP, ECHO), (HOME_IP, SOURCE))
    # Always waited for: the other paths end at the same services.
    _wait("home services", children, direct)
    if "direct" in wanted:
        paths["direct"] = direct
    if "ssh" in wanted:
        why = sshchain.missing()
        if why is not None:
            notes.append(f"ssh: skipped, {why}")
        else:
            paths["ssh"] = _start_ssh(children, workdir, topo)
            describe.append(
                (
                    "ssh",
                    f"{sshchain.version()}: sshd in the route namespace, `ssh -N -R` from home, "
                    "`ssh -N -L` from office; default cipher",
                )
            )
    if "vnet" in wanted:
        paths["vnet"] = _start_vnet(children, workdir, topo, vnet_settings)
        describe.append(
            ("vnet", f"vnet-route in the route namespace + 2 x vnet, --log-level {VNET_LOG_LEVEL}")
        )
    return Started(paths, notes, describe)


def _connects(address: Address) -> None:
    with socket.create_connection(address, timeout=2.0):
        pass


def _start_ssh(children: Children, workdir: Path, topo: Topology) -> WanPath:
    sshd = sshchain.find_sshd()
    assert sshd is not None
    work = workdir / "ssh"
    work.mkdir(mode=0o700)
    config = sshchain._sshd_config(work, SSHD_PORT)
    # The loopback chain's config, listening on the route namespace's two links instead.
    text = config.read_text().replace("ListenAddress 127.0.0.1", "ListenAddress 0.0.0.0")
    config.write_text(text)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    children.start("sshd", netns.exec_argv(topo.route, [sshd, "-D", "-e", "-f", str(config)]))
    # ssh -R exits at once on a refused connection: wait until sshd listens (on a busy
    # box it took longer than ssh took to connect, and the whole run failed).
    wait_ready("sshd", lambda: _connects((ROUTE_OFFICE_IP, SSHD_PORT)), children)
    key = ["-i", str(work / "client_key"), *sshchain.SSH_OPTIONS, "-p", str(SSHD_PORT)]
    user = getpass.getuser()
    remote = {SINK: 19001, ECHO: 19002, SOURCE: 19003}
    home_fw = [a for svc, r in remote.items() for a in ("-R", f"{r}:{LOCAL}:{svc}")]
    children.start(
        "ssh-home",
        netns.exec_argv(topo.home, ["ssh", "-N", *key, *home_fw, f"{user}@{ROUTE_HOME_IP}"]),
    )
    local = {SINK: 18011, ECHO: 18012, SOURCE: 18013}
    office_fw = [a for svc, lp in local.items() for a in ("-L", f"{lp}:{LOCAL}:{remote[svc]}")]
    # Started at once: until home's remote forwards exist, -L connections fail and the
    # readiness probe simply tries again.
    children.start(
        "ssh-office",
        netns.exec_argv(topo.office, ["ssh", "-N", *key, *office_fw, f"{user}@{ROUTE_OFFICE_IP}"]),
    )
    path = WanPath(
        "ssh",
        (LOCAL, local[SINK]),
        (LOCAL, local[ECHO]),
        (LOCAL, local[SOURCE]),
        [SSHD_PORT],
    )
    _wait("ssh chain", children, path)
    return path


def _start_vnet(
    children: Children, workdir: Path, topo: Topology, settings: Sequence[str]
) -> WanPath:
    work = workdir / "vnet"
    work.mkdir()
    route_ini = work / "route.ini"
    route_ini.write_text(f"[route]\nip=0.0.0.0\nport={ROUTE_PORT}\ntoken={TOKEN}\n")
    serves = "".join(
        f"[serve.{name}]\nserveid={sid}\nip={LOCAL}\nport={port}\n"
        for name, sid, port in (("sink", 701, SINK), ("echo", 702, ECHO), ("source", 703, SOURCE))
    )
    uses = "".join(
        f"[use.{name}]\nserveid={sid}\nip={LOCAL}\nport={port}\n"
        for name, sid, port in (("sink", 701, 18001), ("echo", 702, 18002), ("source", 703, 18003))
    )
    home_ini, office_ini = work / "home.ini", work / "office.ini"
    # --vnet KEY=VALUE settings, in both nodes' [vnet] section (A/B runs of a setting).
    extra = "".join(f"{item}\n" for item in settings)
    home_ini.write_text(
        f"[route]\nip={ROUTE_HOME_IP}\nport={ROUTE_PORT}\n"
        f"[vnet]\nname=home\ngroup=bench\ntoken={TOKEN}\n{extra}{serves}"
    )
    office_ini.write_text(
        f"[route]\nip={ROUTE_OFFICE_IP}\nport={ROUTE_PORT}\n"
        f"[vnet]\nname=office\ngroup=bench\ntoken={TOKEN}\n{extra}{uses}"
    )
    level = ["--log-level", VNET_LOG_LEVEL]
    children.start(
        "vnet-route",
        netns.exec_argv(topo.route, [*command("vnet-route", ["route"]), *level, str(route_ini)]),
    )
    # The nodes retry the route until it listens (their start-up timeout is 10 s).
    children.start(
        "vnet-home", netns.exec_argv(topo.home, [*command("vnet", []), *level, str(home_ini)])
    )
    children.start(
        "vnet-office",
        netns.exec_argv(topo.office, [*command("vnet", []), *level, str(office_ini)]),
    )
    path = WanPath("vnet", (LOCAL, 18001), (LOCAL, 18002), (LOCAL, 18003), [ROUTE_PORT])
    _wait("vnet tunnel", children, path)
    return path
