"""A join storm and a restart storm of 300 raw sessions against a real vnet-route process.

The load generator of `make bench` (bench/control.py: the generated stubs, one connection per
simulated node) at a size this box runs in seconds. Only invariants are checked, never a
time: nobody dropped or left out, every node saw every serve change, and after kill -9 and a
restart on the same port every vnetid and every serveid is what it was. 300 nodes with two
serves each are more than the group's 499 dynamic serveids: the last registrations are
refused, and on the way back those nodes ask again (serveid 0), which is what took other
nodes' ids before the route held them for their claimants.
"""

from __future__ import annotations

from pathlib import Path

from bench.control import storm

NODES = 300


async def test_storms_drop_nobody_and_keep_every_id(tmp_path: Path) -> None:
    result = await storm(tmp_path, NODES, groups=1, restart=True, fanout_rounds=2, deadline_s=60)
    assert "never in" not in result.join_refusals, result.join_refusals
    assert result.dropped == 0
    # Every serveid the group has was registered, the rest refused as "no free serveid".
    assert result.serves == 499
    assert result.serves + result.full == 2 * NODES
    assert result.missed_change == 0
    assert "never back" not in result.restart_refusals, result.restart_refusals
    assert (result.vnetids_changed, result.serveids_changed) == (0, 0)
    assert result.restart_dropped == 0
    assert result.restart_missed == 0
