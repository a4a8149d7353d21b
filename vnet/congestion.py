"""Switching the congestion control of the TCP connections gRPC holds (vnet/core/steering.py
says when and why).

grpc.aio gives no access to its sockets, so they are found among the process's own file
descriptors by the address at the far end (Linux: /proc/self/fd); the switch is a
setsockopt(TCP_CONGESTION) on a duplicate of the descriptor, which changes the one socket
both share. Where any of this is unavailable (another OS, a kernel that refuses the
algorithm) nothing changes and the governor works as before.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator

from vnet.core.steering import GOVERNED, switch_to

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
    """Duplicates of this process's connected TCP sockets, closed afterwards."""
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


def govern(peers: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Switch the connections to peers that use a probing congestion control (BBR) to a
    loss-based one; what each switched connection used before, by peer."""
    before: dict[tuple[str, int], str] = {}
    with _tcp_sockets() as socks:
        for sock in socks:
            far = _far_end(sock)
            if far not in peers:
                continue
            was = current(sock)
            if not switch_to(was):
                continue
            for name in GOVERNED:
                if _set(sock, name):
                    before[far] = was
                    log.debug("connection to %s:%s: congestion control %s -> %s", *far, was, name)
                    break
            else:
                log.debug("connection to %s:%s: the kernel refused %s", *far, "/".join(GOVERNED))
    return before


def restore(before: dict[tuple[str, int], str]) -> None:
    """Put the connections govern() switched back to what they used."""
    if not before:
        return
    with _tcp_sockets() as socks:
        for sock in socks:
            far = _far_end(sock)
            if far is None or far not in before:
                continue
            was = before[far]
            if current(sock) != was and _set(sock, was):
                log.debug("connection to %s:%s: congestion control back to %s", *far, was)
