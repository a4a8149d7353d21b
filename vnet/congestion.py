"""Switching the congestion control of the TCP connections gRPC holds (vnet/core/steering.py
says when and why).

grpc.aio gives no access to its sockets, so they are found among the process's own file
descriptors by the address at the far end (Linux: /proc/self/fd); the switch is a
setsockopt(TCP_CONGESTION) on a duplicate of the descriptor, which changes the one socket
both share. The duplicate is kept while switched, to read the connection's retransmissions
(tcp_info) and to switch it back; a connection gRPC closes meanwhile is shut down by gRPC
as usual, and its descriptor is released with the duplicate (the route's hold, 3 s, at
most). Where any of this is unavailable (another OS, a kernel that refuses the algorithm)
nothing changes and the governor works as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from vnet.core.steering import GOVERNED, LossWatch, switch_to

log = logging.getLogger(__name__)

_FDS = "/proc/self/fd"
_CC_LEN = 16


def peer_of(grpc_peer: str) -> tuple[str, int] | None:
    """(ip, port) from a gRPC peer string ("ipv4:10.0.0.2:4711", "ipv6:[::1]:4711")."""
    kind, _, rest = grpc_peer.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return None
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


@contextlib.contextmanager
def _tcp_sockets() -> Iterator[list[socket.socket]]:
    """Duplicates of this process's connected TCP sockets, closed afterwards. Made with
    socket(fileno=): it leaves the file's flags alone (O_NONBLOCK is shared with gRPC's
    descriptor; settimeout() or dup() would change it), and nothing here may block."""
    found: list[socket.socket] = []
    try:
        names = os.listdir(_FDS)
    except OSError:
        names = []
    try:
        for name in names:
            try:
                if not os.readlink(f"{_FDS}/{name}").startswith("socket:"):
                    continue
                dup = os.dup(int(name))
            except (OSError, ValueError):
                continue
            try:
                sock = socket.socket(fileno=dup)
            except OSError:
                os.close(dup)
                continue
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                found.append(sock)
            else:
                sock.close()
        yield found
    finally:
        for sock in found:
            sock.close()


def _far_end(sock: socket.socket) -> tuple[str, int] | None:
    try:
        address = sock.getpeername()
    except OSError:
        return None
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(address[1])


def current(sock: socket.socket) -> str:
    """sock's congestion control ("" where it cannot be read)."""
    if not hasattr(socket, "TCP_CONGESTION"):
        return ""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, _CC_LEN)
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _set(sock: socket.socket, name: str) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
    except OSError:
        return False
    return True


_TCP_INFO_LEN = 104
_TOTAL_RETRANS = 100  # offset of tcpi_total_retrans in struct tcp_info (linux/tcp.h)


def total_retrans(sock: socket.socket) -> int | None:
    """Segments sock has retransmitted in all (None where tcp_info cannot be read)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError):
        return None
    if len(raw) < _TOTAL_RETRANS + 4:
        return None
    return int(struct.unpack_from("=I", raw, _TOTAL_RETRANS)[0])


@dataclass
class Switched:
    """One connection switched off its probing algorithm: a duplicate of its descriptor,
    kept while switched to watch its retransmissions, and what it used before."""

    sock: socket.socket
    far: tuple[str, int]
    was: str
    watch: LossWatch = field(default_factory=LossWatch)
    # Back on `was` already: it showed random loss.
    lossy: bool = False

    def check(self, now: float) -> bool:
        """Put it back on its own algorithm now if it shows random loss (LossWatch):
        True when that happened just now."""
        if self.lossy:
            return False
        count = total_retrans(self.sock)
        if count is None or not self.watch.seen(now, count):
            return False
        self.lossy = True
        if _set(self.sock, self.was):
            log.info(
                "connection to %s:%s: random loss while governed, back on %s", *self.far, self.was
            )
        return True

    def restore(self) -> None:
        """Back to what it used, and the duplicate closed (not the connection: gRPC's)."""
        try:
            if not self.lossy and current(self.sock) != self.was and _set(self.sock, self.was):
                log.debug("connection to %s:%s: congestion control back to %s", *self.far, self.was)
        finally:
            self.sock.close()


def govern(peers: set[tuple[str, int]]) -> list[Switched]:
    """Switch the connections to peers that use a probing congestion control (BBR) to a
    loss-based one. Each switched one must be restore()d: it holds a duplicate open."""
    switched: list[Switched] = []
    with _tcp_sockets() as socks:
        for sock in socks:
            far = _far_end(sock)
            if far is None or far not in peers:
                continue
            was = current(sock)
            if not switch_to(was):
                continue
            for name in GOVERNED:
                if _set(sock, name):
                    log.debug("connection to %s:%s: congestion control %s -> %s", *far, was, name)
                    # Kept: the caller owns this duplicate from now on. Not sock.dup(): that
                    # sets the (shared) file's blocking mode, and gRPC's must stay as it is.
                    kept = socket.socket(fileno=os.dup(sock.fileno()))
                    switched.append(Switched(kept, far, was))
                    break
            else:
                log.debug("connection to %s:%s: the kernel refused %s", *far, "/".join(GOVERNED))
    return switched


def restore(switched: list[Switched]) -> None:
    """Put the connections govern() switched back, closing the duplicates."""
    for one in switched:
        one.restore()
