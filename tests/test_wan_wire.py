"""The WAN benchmark's link emulator (bench/wan/wire.c) between two network namespaces.

Skipped where namespaces cannot be made (not root, no `ip`, no `cc`...). No timing is asserted:
one test checks that bytes cross exactly, the other that a full buffer drops what arrives,
with a rate so low (1000 bytes/s) that the link cannot drain while the burst arrives.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.procs import BenchError, Children
from bench.wan import netns, wire

A_IP, B_IP = "10.78.0.1", "10.78.0.2"
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(f"network namespaces unavailable: {why}")
    try:
        return wire.compile_wire(tmp_path_factory.mktemp("wire"))
    except BenchError as exc:
        pytest.skip(str(exc))


@dataclass
class Pair:
    a: str
    b: str
    wire_ns: str
    children: Children
    binary: Path

    def start_wire(self, link: wire.Link) -> subprocess.Popen[bytes]:
        argv = netns.exec_argv(self.wire_ns, wire.argv(self.binary, "wa", "wb", link, 7))
        return wire.start(self.children, "wire", argv).proc


def _mac(ns: str, dev: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", dev],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return str(json.loads(out)[0]["address"])


@pytest.fixture
def pair(binary: Path, tmp_path: Path) -> Iterator[Pair]:
    """Namespaces a and b on one Ethernet segment whose middle is the wire, in a third."""
    children = Children(tmp_path)
    try:
        a, b, w = (netns.new_namespace(p) for p in ("vnb-ta", "vnb-tb", "vnb-tw"))
        netns.veth("pa", a, "wa", w)
        netns.veth("wb", w, "pb", b)
        for ns, dev, addr in ((a, "pa", A_IP), (b, "pb", B_IP)):
            netns.ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            netns.quiet_link(ns, dev, arp=True)
        netns.quiet_link(w, "wa", arp=False)
        netns.quiet_link(w, "wb", arp=False)
        # Static neighbours: no ARP frame takes a place in the tiny buffer.
        netns.ip(a, "neigh", "replace", B_IP, "lladdr", _mac(b, "pb"), "dev", "pa")
        netns.ip(b, "neigh", "replace", A_IP, "lladdr", _mac(a, "pa"), "dev", "pb")
        yield Pair(a, b, w, children, binary)
    finally:
        children.stop_all()
        netns.cleanup()
        assert netns.leftovers() == []


def test_wire_carries_tcp_bytes_exactly(pair: Pair) -> None:
    pair.start_wire(wire.Link(rate_bps=1e9, buffer_bytes=4_000_000, delay_us=500))
    with netns.inside(pair.b):
        server = socket.create_server((B_IP, 0))
    with netns.inside(pair.a):
        port = server.getsockname()[1]
        client = socket.create_connection((B_IP, port), timeout=TIMEOUT)
    payload = os.urandom(2 * 1024 * 1024)
    got = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    server.settimeout(TIMEOUT)
    echo = threading.Thread(target=serve, daemon=True)
    echo.start()
    with client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := client.recv(65536):
            got += chunk
        sender.join(TIMEOUT)
    echo.join(TIMEOUT)
    server.close()
    assert len(got) == len(payload)
    assert bytes(got) == payload


def test_wire_drops_what_overflows_its_buffer(pair: Pair) -> None:
    # 1000 bytes/s and a 2,500-byte buffer: 1042-byte frames (1000 bytes of UDP payload), so
    # two fit and the third would need 0.6 s of draining first; the burst takes milliseconds.
    proc = pair.start_wire(wire.Link(rate_bps=8000, buffer_bytes=2500, delay_us=0))
    with netns.inside(pair.b):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((B_IP, 5000))
    with netns.inside(pair.a):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagrams = [bytes([i]) * 1000 for i in range(20)]
    with rx, tx:
        for d in datagrams:
            tx.sendto(d, (B_IP, 5000))
        rx.settimeout(TIMEOUT)
        received = [rx.recv(2000), rx.recv(2000)]
        stats = wire.stop(pair.children.get("wire"))
        rx.setblocking(False)
        with pytest.raises(BlockingIOError):
            rx.recv(2000)
    assert proc.returncode == 0
    assert received == datagrams[:2]
    forward = stats["A>B"]
    assert (forward["in"], forward["forwarded"], forward["dropped"]) == (20, 2, 18)
    assert forward["lost"] == 0
    assert forward["queued"] == 0
