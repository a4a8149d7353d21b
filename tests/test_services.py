"""The tests' own services (tests/services.py) are closed after a test that
failed before closing them, so its failure is not reported a second time,
as a ResourceWarning in an unrelated later test."""

from __future__ import annotations

from tests.conftest import refused
from tests.services import close_left_open, echo_server
from tests.udp_services import udp_client, udp_server


async def test_what_a_test_left_open_is_closed_after_it() -> None:
    echo = await echo_server()
    udp = await udp_server()
    client = await udp_client(udp.port)
    port = echo.port
    # As a test that failed here would leave them: nothing closed.
    assert close_left_open() == 3
    assert await refused(port)
    assert udp.transport.is_closing()
    assert client.transport.is_closing()


async def test_what_its_test_closed_is_not_closed_again() -> None:
    echo = await echo_server()
    udp = await udp_server()
    await echo.close()
    udp.close()
    assert close_left_open() == 0
