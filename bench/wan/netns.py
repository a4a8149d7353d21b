"""Network namespaces of a WAN run: the topology, entering it, and removing it on every exit.

    office ns                 wire ns                route ns
    oa 10.77.1.2  ==veth==  ob [wire] oc  ==veth==  od 10.77.1.1
    ha 10.77.2.2  ==veth==  hb [wire] hc  ==veth==  hd 10.77.2.1
    home ns                   wire ns                route ns

Four namespaces, none of them the root one, so the host's own network is never touched: the
office node and the measuring client in `office`, the home node and its services in `home`,
vnet-route and sshd in `route` (which forwards between its two links, for direct TCP), and the
two wire processes in `wire`, each bridging one access link's two veth ends. Every path between
office and home crosses both emulated links; see bench/wan/__main__.py for how the RTT is split.

Names carry the pid and a sequence number so runs never collide, and every namespace made is
recorded before use and deleted by cleanup(), which the runner calls from finally, atexit and
its signal handlers.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

OFFICE_IP, ROUTE_OFFICE_IP = "10.77.1.2", "10.77.1.1"
HOME_IP, ROUTE_HOME_IP = "10.77.2.2", "10.77.2.1"
CLONE_NEWNET = 0x40000000
# Host TCP settings copied into each namespace: a new namespace starts from the kernel's
# defaults (tcp_rmem max 6 MiB, for one), not from what the host was tuned to.
COPIED_SYSCTLS = (
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_notsent_lowat",
    "net.ipv4.tcp_slow_start_after_idle",
)
# Which Debian package gives each tool, for the skip message.
TOOLS = {"ip": "iproute2", "ethtool": "ethtool", "cc": "gcc", "sysctl": "procps"}

# Set by the command line (--tcp-cc): a value of a COPIED_SYSCTLS key used instead of the host's.
OVERRIDES: dict[str, str] = {}

_made: list[str] = []
_seq = 0


class NetnsError(BenchError):
    """A namespace command failed."""


def _run(argv: Sequence[str], timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc}") from None
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None; tries to make (and removes) one."""
    if not Path("/proc/self/ns/net").exists():
        return "this system has no network namespaces (Linux only)"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or in a container with CAP_NET_ADMIN)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install {package})"
    try:
        add(unique("vnb-probe"))
    except NetnsError as exc:
        return f"cannot create a network namespace here: {exc}"
    finally:
        cleanup()
    return None


def unique(prefix: str) -> str:
    global _seq
    _seq += 1
    return f"{prefix}-{os.getpid()}-{_seq}"


def add(name: str) -> None:
    # Recorded first: if `ip netns add` half-succeeds, cleanup still tries to remove it.
    _made.append(name)
    _run(["ip", "netns", "add", name])


def cleanup() -> None:
    """Kill whatever still runs in the namespaces this process made, then delete them
    (idempotent).

    The runner stops its children gracefully first; what is left here is what escaped it,
    such as sshd's per-connection processes (sessions of their own), which would otherwise
    wait forever for a peer whose link is gone, keeping their namespace alive.
    """
    while _made:
        name = _made.pop()
        with contextlib.suppress(NetnsError):
            for pid in _run(["ip", "netns", "pids", name]).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(NetnsError):
            _run(["ip", "netns", "del", name])


atexit.register(cleanup)


def leftovers() -> list[str]:
    """Namespaces of this process that still exist (for tests)."""
    mine = f"-{os.getpid()}-"
    try:
        out = _run(["ip", "netns", "list"])
    except NetnsError:
        return []
    return [line.split()[0] for line in out.splitlines() if mine in line]


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def sysctl(ns: str, key: str, value: str) -> None:
    _run(exec_argv(ns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def host_sysctl(key: str) -> str | None:
    try:
        return Path("/proc/sys", *key.split(".")).read_text().strip().replace("\t", " ")
    except OSError:
        return None


def veth(a: str, ns_a: str, b: str, ns_b: str) -> None:
    # Created straight into their namespaces: the names never exist in the root one.
    _run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b])


def quiet_link(ns: str, dev: str, arp: bool) -> None:
    """Offloads off (frames stay <= 1514 bytes and carry real checksums, which a frame copied
    through AF_PACKET needs), optionally ARP off, then up."""
    _run(
        exec_argv(ns, ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off"])
    )
    if not arp:
        ip(ns, "link", "set", "dev", dev, "arp", "off")
    ip(ns, "link", "set", "dev", dev, "up")


def new_namespace(prefix: str) -> str:
    name = unique(prefix)
    add(name)
    # IPv6 off before any interface exists: no router solicitations or MLD reports crossing
    # the emulated link in the middle of a measurement.
    sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
    sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
    for key in COPIED_SYSCTLS:
        value = OVERRIDES.get(key) or host_sysctl(key)
        if value is None:
            continue
        if key in OVERRIDES:
            # Asked for on the command line: a run that silently kept the host's value would
            # be reported as the other algorithm's (this kernel refuses a namespace its own
            # tcp_congestion_control, EPERM, and an earlier round's "cubic" runs were BBR).
            try:
                sysctl(name, key, value)
            except NetnsError as exc:
                raise NetnsError(f"cannot set {key}={value} in a namespace here: {exc}") from None
            continue
        with contextlib.suppress(NetnsError):
            sysctl(name, key, value)
    ip(name, "link", "set", "dev", "lo", "up")
    return name


@dataclass(frozen=True)
class Topology:
    office: str
    home: str
    route: str
    wire: str
    # (wire-side interface toward the node, wire-side interface toward the route) per link.
    office_link: tuple[str, str] = ("ob", "oc")
    home_link: tuple[str, str] = ("hb", "hc")

    @property
    def all(self) -> tuple[str, ...]:
        return (self.office, self.home, self.route, self.wire)


def build() -> Topology:
    topo = Topology(
        office=new_namespace("vnb-office"),
        home=new_namespace("vnb-home"),
        route=new_namespace("vnb-route"),
        wire=new_namespace("vnb-wire"),
    )
    sysctl(topo.route, "net.ipv4.ip_forward", "1")
    for node_ns, (n, wn, wr, r), node_ip, route_ip in (
        (topo.office, ("oa", "ob", "oc", "od"), OFFICE_IP, ROUTE_OFFICE_IP),
        (topo.home, ("ha", "hb", "hc", "hd"), HOME_IP, ROUTE_HOME_IP),
    ):
        veth(n, node_ns, wn, topo.wire)
        veth(wr, topo.wire, r, topo.route)
        ip(node_ns, "addr", "add", f"{node_ip}/24", "dev", n)
        ip(topo.route, "addr", "add", f"{route_ip}/24", "dev", r)
        quiet_link(node_ns, n, arp=True)
        quiet_link(topo.route, r, arp=True)
        # The wire's own ends have no address and no ARP: only the wire moves their frames.
        quiet_link(topo.wire, wn, arp=False)
        quiet_link(topo.wire, wr, arp=False)
        ip(node_ns, "route", "add", "default", "via", route_ip)
    return topo


def flush_tcp_metrics(topo: Topology) -> None:
    """Forget cached ssthresh and RTT per destination, so one measurement's connection does not
    start the next one's from its end state."""
    for ns in (topo.office, topo.home, topo.route):
        with contextlib.suppress(NetnsError):
            ip(ns, "tcp_metrics", "flush")


def ss(ns: str) -> str:
    try:
        text = _run(exec_argv(ns, ["ss", "-tinm", "state", "established"]))
    except NetnsError as exc:
        return str(exc)
    # ss pads every line to its idea of the terminal's width.
    return "\n".join(line.rstrip() for line in text.splitlines())


def bytes_received(ns: str, port: int) -> int:
    """Bytes the established TCP sockets on local port `port` in ns have received (from
    tcp_info, via ss): a receiver's count, which no sender-side buffer can inflate."""
    out = _run(exec_argv(ns, ["ss", "-tinH", "state", "established", f"( sport = :{port} )"]))
    return sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))


def queued_bytes(namespaces: Sequence[str]) -> int:
    """Bytes waiting in the send and receive queues of every established TCP socket of the
    namespaces: near zero once a finished transfer has fully drained out of every hop."""
    total = 0
    for ns in namespaces:
        out = _run(exec_argv(ns, ["ss", "-tnH", "state", "established"]))
        for line in out.splitlines():
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                total += int(fields[0]) + int(fields[1])
    return total


def tcp_memory() -> tuple[int, int, int]:
    """(pages all TCP sockets of the host hold now, tcp_mem's low mark, how often the root
    namespace's sockets have entered TCP memory pressure since boot).

    TCP's memory account is host-wide (namespaces share it), so other work on the machine can
    put every socket here under memory pressure, which clamps receive windows to a few
    segments and shrinks send buffers, and a flow can crawl for seconds after a pressure
    episode too short to see in the page count; the entry counter catches those. Pressure
    starts at tcp_mem's middle value and lasts until usage is back under the low one.
    """
    try:
        mem = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
        low = Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[0]
        pages = int(mem.group(1)) if mem else 0
    except (OSError, ValueError, IndexError):
        return 0, 1 << 62, 0
    return pages, int(low), _root_pressures()


def _root_pressures() -> int:
    # /proc/1 is in the root namespace, where the rest of the machine's sockets live.
    try:
        head, values = Path("/proc/1/net/netstat").read_text().splitlines()[:2]
        return int(dict(zip(head.split(), values.split(), strict=True))["TCPMemoryPressures"])
    except (OSError, ValueError, KeyError):
        return 0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the calling thread (and threads it starts meanwhile) in namespace ns.

    setns() moves only the calling thread; sockets keep the namespace they were made in.
    """
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(back)
