"""Failover with the real commands: `vnet` nodes with [route] routes=A,B, A killed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until
from tests.procs import Procs, command
from tests.services import echo_ok, echo_round_trip, echo_server, pattern

pytestmark = pytest.mark.e2e

# The nodes' default backoff starts at 0.5 s; B is the next route they try.
RECOVERY = 20.0


@pytest.mark.timeout(90)
async def test_kill_9_of_a_route_the_vnet_commands_move_to_the_next(
    procs: Procs, tmp_path: Path
) -> None:
    echo = await echo_server()
    a, b, use = free_port(), free_port(), free_port()
    route_a = await procs.route(a, "route-a")
    await procs.route(b, "route-b")
    routes = f"[route]\nroutes=127.0.0.1:{a}, 127.0.0.1:{b}\n"
    (tmp_path / "home.ini").write_text(
        f"{routes}[vnet]\nname=home\ngroup=team\n"
        f"[serve.echo]\nserveid=700\nport={echo.port}\n[serve.web]\nport={echo.port}\n"
    )
    (tmp_path / "office.ini").write_text(
        f"{routes}[vnet]\nname=office\ngroup=team\n[use.echo]\nserveid=700\nport={use}\n"
    )
    home = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await home.wait_for_line(f"joined route 127.0.0.1:{a} as vnet")
    await wait_until(lambda: echo_ok(use, 50_000), "the use to work through A", interval=0.1)

    await route_a.stop(signal.SIGKILL)
    lost = time.monotonic()
    await wait_until(lambda: echo_ok(use, 50_000), "the use through B", RECOVERY, 0.1)
    took = time.monotonic() - lost
    body = pattern(2_000_000, seed=11)
    assert await echo_round_trip(use, body) == body
    for node in (home, office):
        await node.wait_for_line(f"(moved from route 127.0.0.1:{a})")
        assert f"lost route 127.0.0.1:{a}" in node.output()
        assert node.returncode is None
    # The same serveids on B: the static one kept, the dynamic one asked back.
    assert home.output().count("[serve.web] registered as serveid 1 ->") == 2
    assert home.output().count("[serve.echo] registered as serveid 700 ->") == 2
    print(f"the use worked again through B {took:.1f}s after A was killed")
    await echo.close()
