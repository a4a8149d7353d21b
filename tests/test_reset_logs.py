"""A reset is logged as a reset: at INFO on the nodes, quietly at the route,
with no traceback or gRPC internals anywhere (in-process route and nodes)."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import MakeNode, use_port, wait_until
from tests.services import resetting_server, send_until_reset
from vnet.config import ServeConfig, UseConfig

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
        return sum(text in line for line in _lines(caplog, "vnet.tunnel"))

    await wait_until(
        lambda: said("reset by the service") >= rounds and said("reset by the far end") >= rounds,
        "both nodes to log each reset",
    )
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert not any(bad in text for bad in NOT_A_RESET), f"{record.name}: {text}"
        assert record.exc_info is None, f"{record.name}: a traceback: {text}"
        assert record.levelno < logging.WARNING, f"{record.name}: {text}"
    home = [x for x in _lines(caplog, "vnet.tunnel") if "from vnet" in x]
    away = [x for x in _lines(caplog, "vnet.tunnel") if "[use.svc]" in x]
    assert all("reset by the service" in x for x in home), home
    assert all("reset by the far end: the service reset the connection" in x for x in away), away
    levels = {r.levelno for r in caplog.records if r.name == "vnet.tunnel"}
    assert levels == {logging.INFO}
    await service.close()
