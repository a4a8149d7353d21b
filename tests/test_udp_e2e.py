"""UDP with the real commands: TLS, tokens and --check; and reload in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from pathlib import Path

import dns.asyncquery
import dns.message

from tests.conftest import TIMEOUT, MakeNode, free_port, use_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.udp_services import udp_client, udp_server
from vnet.core.config import ServeConfig, UseConfig


async def test_udp_over_tls_with_group_tokens(procs: Procs, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "route.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "route.pem"))
    echo = await udp_server()
    port, use = free_port(), free_port()
    (tmp_path / "route.ini").write_text(
        f"[route]\nip=127.0.0.1\nport={port}\ntls_cert=route.pem\ntls_key=route.key\n"
        "[group.team]\ntoken=team-secret\n"
    )
    node = "group=team\ntoken=team-secret\ntls=true\ntls_ca=ca.pem\n"
    (tmp_path / "home.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=home\n{node}"
            f"[serve.echo]\nserveid=753\ntype=udp\nport={echo.port}\nudp_idle=30\n",
        )
    )
    (tmp_path / "office.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=office\n{node}udp_flows=10\n"
            f"[use.echo]\nserveid=753\ntype=udp\nport={use}\nudp_flows=5\n",
        )
    )
    # A udp-only key on a tcp serve: --check names the file, line, section and key.
    (tmp_path / "bad.ini").write_text(
        node_ini(port, "[serve.x]\nport=53\nudp_idle=5\n[use.y]\nserveid=1\ntype=quic\n")
    )
    for ini in ("home.ini", "office.ini"):
        rc, out, err = await procs.run(command("vnet"), "--check", ini)
        assert rc == 0, err
    rc, _, err = await procs.run(command("vnet"), "--check", "bad.ini")
    assert rc == 1
    assert err.splitlines() == [
        "vnet: bad.ini:6: [serve.x] udp_idle: is for type=udp only",
        "vnet: bad.ini:9: [use.y] type: 'quic' is not supported (tcp or udp)",
        "vnet: bad.ini: 2 problem(s)",
    ]
    route = await procs.start("route", command("vnet-route"), "route.ini")
    await route.wait_for_line("route listening on 127.0.0.1")
    await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on udp 127.0.0.1:{use}")
    client = await udp_client(use)
    for size in (1, 1000, 65_507):
        datagram = os.urandom(size)
        assert await client.round_trip(datagram) == datagram
    # An empty datagram, through nodes on uvloop (the commands use it where installed).
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", use))
        sock.send(b"")
        async with asyncio.timeout(TIMEOUT):
            assert await loop.sock_recv(sock, 70_000) == b""
    rc, out, err = await procs.run(
        command("vnet"), "office.ini", "-c", "show serves", timeout=2 * TIMEOUT
    )
    assert rc == 0, err
    row = out.splitlines()[1].split()
    assert (row[0], row[2], row[3]) == ("753", "echo", "udp")
    client.close()
    echo.close()


async def test_reload_turns_a_use_to_udp_and_back(make_node: MakeNode) -> None:
    echo = await udp_server()
    await make_node(
        "home", serves=[ServeConfig(key="svc", port=echo.port, serveid=753, type="udp")]
    )
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=753, port=0)])
    await wait_until(lambda: "set type=udp" in office.uses["svc"].error, "the mismatch")
    udp_use = UseConfig(key="svc", serveid=753, port=0, type="udp", udp_idle=5)
    diff, errors = await office.reload(dataclasses.replace(office.config, uses=(udp_use,)))
    assert not errors
    port = await use_port(office, "svc")
    client = await udp_client(port)
    assert await client.round_trip(b"after reload") == b"after reload"
    assert office.uses["svc"].udp is not None
    # Back to tcp: the udp socket closes and its flow ends.
    tcp_use = UseConfig(key="svc", serveid=753, port=0)
    await office.reload(dataclasses.replace(office.config, uses=(tcp_use,)))
    counters = office.uses["svc"].udp_counters
    await wait_until(lambda: counters.flows_open == 0, "the udp flow to end")
    assert office.uses["svc"].udp is None
    assert not office.uses["svc"].listening
    client.close()
    echo.close()


async def test_a_dns_query_from_a_real_node_to_a_real_node(procs: Procs, tmp_path: Path) -> None:
    """dnspython's client, the commands as processes, and a DNS server in this test."""
    from tests.test_udp import _dns_server

    server, dns_port = await _dns_server()
    port, use = free_port(), free_port()
    await procs.route(port)
    (tmp_path / "home.ini").write_text(
        node_ini(port, f"[vnet]\nname=home\n[serve.dns]\nserveid=753\ntype=udp\nport={dns_port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(port, f"[vnet]\nname=office\n[use.dns]\nserveid=753\ntype=udp\nport={use}\n")
    )
    await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on udp 127.0.0.1:{use}")
    query = dns.message.make_query("abc.vnet.test", "A")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=use, timeout=TIMEOUT)
    assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.3"]
    server.close()
