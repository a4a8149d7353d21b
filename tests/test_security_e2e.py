"""Security settings through the real commands and config files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, free_port
from tests.procs import Procs, command, node_ini
from tests.services import echo_server, pattern, read_exactly_or_eof

pytestmark = pytest.mark.e2e


async def test_protected_mode_refuses_a_public_route_without_a_token(
    procs: Procs, tmp_path: Path
) -> None:
    (tmp_path / "route.ini").write_text("[route]\nip=0.0.0.0\nport=7749\n")
    rc, out, err = await procs.run(command("vnet-route"), "route.ini")
    assert rc == 1
    assert err.startswith(
        "vnet-route: route.ini:2: [route] ip: refusing to listen on 0.0.0.0 without a token"
    )
    assert "allow_insecure=true" in err
    assert "Traceback" not in err


async def _echo_through(port: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = pattern(1 << 20, seed=9)
        writer.write(body)
        writer.write_eof()
        assert await read_exactly_or_eof(reader) == body
        writer.close()


async def test_tokens_from_env_and_file_and_tls_from_files(procs: Procs, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "route.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "route.pem"))
    (tmp_path / "office.token").write_text("office-secret\n")
    service = await echo_server()
    port = free_port()
    use = free_port()
    (tmp_path / "route.ini").write_text(
        f"[route]\nip=127.0.0.1\nport={port}\ntls_cert=route.pem\ntls_key=route.key\n"
        "[group.team]\ntoken_env=TEAM_TOKEN\n"
    )
    tls = "tls=true\ntls_ca=ca.pem\n"
    (tmp_path / "home.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=home\ngroup=team\ntoken_env=TEAM_TOKEN\n{tls}"
            f"[serve.echo]\nserveid=700\nport={service.port}\n",
        )
    )
    (tmp_path / "office.ini").write_text(
        node_ini(
            port,
            f"[vnet]\nname=office\ngroup=team\ntoken_file=office.token\n{tls}"
            f"[use.echo]\nserveid=700\nport={use}\n",
        )
    )
    (tmp_path / "intruder.ini").write_text(
        node_ini(port, f"[vnet]\nname=x\ngroup=team\ntoken=wrong\n{tls}")
    )
    import os

    os.environ["TEAM_TOKEN"] = "office-secret"
    try:
        route = await procs.start("route", command("vnet-route"), "route.ini")
        await route.wait_for_line("route listening on 127.0.0.1")
        assert "with TLS" in route.output()
        home = await procs.start("home", command("vnet"), "home.ini")
        office = await procs.start("office", command("vnet"), "office.ini")
        await office.wait_for_line(f"listening on 127.0.0.1:{use}")
        await _echo_through(use)
        rc, _, err = await procs.run(command("vnet"), "intruder.ini")
        assert (rc, err) == (
            1,
            f"vnet: the route at 127.0.0.1:{port} refused this node: "
            "invalid or missing credentials (token, or session: join again)\n",
        )
        del os.environ["TEAM_TOKEN"]
        rc, _, err = await procs.run(command("vnet"), "home.ini")
        assert (rc, err) == (
            1,
            "vnet: home.ini:7: [vnet] token_env: environment variable TEAM_TOKEN is not set\n",
        )
        await home.stop()
    finally:
        os.environ.pop("TEAM_TOKEN", None)
        await service.close()
