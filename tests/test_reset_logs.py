"""A reset is logged as a reset: at INFO on the nodes, quietly at the route,
with no traceback or gRPC internals anywhere (in-process route and nodes)."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import MakeNode, free_port, use_port, wait_until
from tests.procs import Procs, command, node_ini
from tests.services import resetting_server, send_until_reset
from vnet.core.config import ServeConfig, UseConfig

# What a reset must never be reported as.
NOT_A_RESET = (
    "Traceback",
    "ExecuteBatchError",
    "TOO_MANY_OPERATIONS",
    "Internal error from Core",
    "RuntimeError",
    "INTERNAL",
)


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.parametrize("send", [0], ids=["silent-service"])
async def test_a_service_reset_is_logged_as_one(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, send: int
) -> None:
    caplog.set_level(logging.DEBUG)
    service = await resetting_server(send=send)
    await make_node("home", serves=[ServeConfig(key="svc", port=service.port, serveid=701)])
    office = await make_node("office", uses=[UseConfig(key="svc", serveid=701, port=0)])
    port = await use_port(office, "svc")
    rounds = 5
    for _ in range(rounds):
        await send_until_reset(port)

    def said(text: str) -> int:
        return sum(text in line for line in _lines(caplog, "vnet.node.tunnel"))

    await wait_until(
        lambda: said("reset by the service") >= rounds and said("reset by the far end") >= rounds,
        "both nodes to log each reset",
    )
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(bad in text for bad in NOT_A_RESET), f"{record.name}: {text}"
        assert record.exc_info is None, f"{record.name}: a traceback: {text}"
        assert record.levelno < logging.WARNING, f"{record.name}: {text}"
    home = [x for x in _lines(caplog, "vnet.node.tunnel") if "from vnet" in x]
    away = [x for x in _lines(caplog, "vnet.node.tunnel") if "[use.svc]" in x]
    assert all("reset by the service" in x for x in home), home
    assert all("reset by the far end: the service reset the connection" in x for x in away), away
    levels = {r.levelno for r in caplog.records if r.name == "vnet.node.tunnel"}
    assert levels == {logging.INFO}
    await service.close()


@pytest.mark.e2e
async def test_the_real_commands_log_resets_and_departures_truthfully(
    procs: Procs, tmp_path: Path
) -> None:
    # The real programs (uvloop, their own logging set-up), all at DEBUG.
    service = await resetting_server()
    route_port, use = free_port(), free_port()
    (tmp_path / "route.ini").write_text(f"[route]\nip=127.0.0.1\nport={route_port}\n")
    (tmp_path / "home.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=home\n[serve.x]\nserveid=701\nport={service.port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=office\n[use.x]\nserveid=701\nport={use}\n")
    )
    debug = ("--log-level", "debug")
    route = await procs.start("route", command("vnet-route"), "route.ini", *debug)
    await route.wait_for_line("route listening on")
    home = await procs.start("home", command("vnet"), "home.ini", *debug)
    await home.wait_for_line("registered as serveid 701")
    office = await procs.start("office", command("vnet"), "office.ini", *debug)
    await office.wait_for_line(f"listening on 127.0.0.1:{use}")
    rounds = 3
    for _ in range(rounds):
        await send_until_reset(use)
    await wait_until(
        lambda: (
            office.output().count("reset by the far end: the service reset the connection")
            >= rounds
            and home.output().count("reset by the service") >= rounds
        ),
        "both nodes to log each reset",
    )
    # A clean stop leaves; a killed node is lost.
    assert await office.stop(signal.SIGTERM) == 0
    await route.wait_for_line("vnet 02 (office) left group default; 0 serve(s) withdrawn")
    await home.stop(signal.SIGKILL)
    await route.wait_for_line(
        "vnet 01 (home) dropped from group default: connection lost; 1 serve(s) withdrawn"
    )
    for proc in (route, home, office):
        text = proc.output()
        for bad in NOT_A_RESET:
            assert bad not in text, f"{proc.name} logged {bad!r}:\n{text}"
        assert not re.search(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)", text, re.M), text
    for line in office.output().splitlines() + home.output().splitlines():
        if "vnet.node.tunnel" in line:
            assert " INFO " in line, line
    await service.close()


@pytest.mark.e2e
async def test_a_reset_reaches_a_client_that_sends_without_reading(
    procs: Procs, tmp_path: Path
) -> None:
    # The service answers, then resets while the client is still uploading
    # and not reading (an HTTP server refusing a large upload, say). Flow
    # control is full both ways; the reset must still reach the client.
    service = await resetting_server(send=300_000)
    route_port, use = free_port(), free_port()
    (tmp_path / "route.ini").write_text(f"[route]\nip=127.0.0.1\nport={route_port}\n")
    (tmp_path / "home.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=home\n[serve.x]\nserveid=701\nport={service.port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(route_port, f"[vnet]\nname=office\n[use.x]\nserveid=701\nport={use}\n")
    )
    route = await procs.start("route", command("vnet-route"), "route.ini", "--log-level", "debug")
    await route.wait_for_line("route listening on")
    home = await procs.start("home", command("vnet"), "home.ini")
    await home.wait_for_line("registered as serveid 701")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{use}")
    for _ in range(8):
        await send_until_reset(use)
    for proc in (route, home, office):
        text = proc.output()
        for bad in NOT_A_RESET:
            assert bad not in text, f"{proc.name} logged {bad!r}:\n{text}"
        assert not re.search(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)", text, re.M), text
    await service.close()
