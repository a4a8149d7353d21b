"""The pure unserve rules: who may offer what, and for how long."""

from __future__ import annotations

import pytest

from vnet.core.config import VnetConfig
from vnet.core.unserve import Offer, refusal

ALLOW = VnetConfig(allow_unserve=True, unserve_num=2)


def test_allowed_loopback() -> None:
    assert refusal(ALLOW, "127.0.0.1", ["127.0.0.1"], 0) == ""
    assert refusal(ALLOW, "localhost", ["127.0.0.1", "::1"], 1) == ""
    assert refusal(ALLOW, "::ffff:127.0.0.1", ["::ffff:127.0.0.1"], 0) == ""


@pytest.mark.parametrize(
    ("vnet", "ip", "addresses", "live", "reason"),
    [
        (VnetConfig(), "127.0.0.1", ["127.0.0.1"], 0, "does not allow unserve (allow_unserve"),
        (ALLOW, "127.0.0.1", ["127.0.0.1"], 2, "has 2 unserve(s) already, its limit"),
        (ALLOW, "10.0.0.5", ["10.0.0.5"], 0, "10.0.0.5 is not a loopback address"),
        (ALLOW, "::ffff:10.0.0.5", ["::ffff:10.0.0.5"], 0, "is not a loopback address"),
        (ALLOW, "db.internal", ["10.1.2.3"], 0, "db.internal (10.1.2.3) is not a loopback"),
        (ALLOW, "sneaky", ["127.0.0.1", "10.1.2.3"], 0, "sneaky (10.1.2.3) is not a loopback"),
        (ALLOW, "nowhere", [], 0, "cannot resolve 'nowhere'"),
    ],
)
def test_refusals(vnet: VnetConfig, ip: str, addresses: list[str], live: int, reason: str) -> None:
    assert reason in refusal(vnet, ip, addresses, live)


def test_remote_allowed_when_configured() -> None:
    remote = VnetConfig(allow_unserve=True, unserve_remote=True, unserve_num=1)
    assert refusal(remote, "10.0.0.5", ["10.0.0.5"], 0) == ""


def test_lifetimes() -> None:
    offer = Offer(serveid=1, ip="127.0.0.1", port=8888, requester="02", created=100.0)
    assert offer.lapses_at(180, 60) == 280.0  # never used: 3 minutes after it was made
    offer.opened()
    offer.opened()
    assert offer.lapses_at(180, 60) is None  # in use
    offer.closed(300.0)
    assert offer.lapses_at(180, 60) is None
    offer.closed(400.0)
    assert offer.lapses_at(180, 60) == 460.0  # a minute after the last one closed
