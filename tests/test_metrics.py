"""Prometheus metrics scraped over real HTTP after real traffic."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, use_port, wait_until
from tests.rawclient import Raw, status_of
from tests.services import exchange, exchange_server
from vnet.core.auth import TokenTable
from vnet.core.config import ServeConfig, UseConfig, VnetConfig
from vnet.node.client import NodeCredentials
from vnet.node.node import NodeTimeouts
from vnet.route.security import RouteSecurity

MIB = 1 << 20


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_nodes_serves_tunnels_bytes_and_refusals(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await make_route(
        security=RouteSecurity(tokens=TokenTable(per_group={"g": "secret"})),
        metrics=("127.0.0.1", 0),
    )
    assert route.metrics is not None
    service = await exchange_server()
    nodes = [
        await make_node(
            route=route,
            vnet=VnetConfig(group="g"),
            timeouts=NodeTimeouts(connect=TIMEOUT),
            credentials=NodeCredentials(token="secret"),
            **kw,
        )
        for kw in (
            {"serves": (ServeConfig(key="s", port=service.port, serveid=701),)},
            {"uses": (UseConfig(key="s", serveid=701, port=0),)},
        )
    ]
    port = await use_port(nodes[1], "s")
    await exchange(port, MIB, 2 * MIB)
    await wait_until(lambda: not route.servicer.splices, "the tunnel to close")
    raw = Raw(route.port)
    await status_of(raw.join("wrong", group="g"))
    await raw.close()

    m = await asyncio.to_thread(_scrape, route.metrics.port)
    assert m[("vnet_nodes", (("group", "g"),))] == 2
    assert m[("vnet_serves", (("group", "g"),))] == 1
    # 701 is static: all 499 dynamic serveids are free, 499 of the 500 static ones.
    assert m[("vnet_serveids_free", (("group", "g"), ("kind", "dynamic")))] == 499
    assert m[("vnet_serveids_free", (("group", "g"), ("kind", "static")))] == 499
    assert m[("vnet_tunnels_total", ())] == 1
    assert m[("vnet_tunnels_open", ())] == 0
    assert m[("vnet_tunnel_resets_total", ())] == 0
    # Frame bytes: the payload plus a few bytes of framing per message.
    up = m[("vnet_relayed_bytes_total", (("direction", "to_serve"),))]
    down = m[("vnet_relayed_bytes_total", (("direction", "to_dialer"),))]
    assert MIB + 16 <= up < MIB + 16 + 4096
    assert 2 * MIB + 32 <= down < 2 * MIB + 32 + 4096
    assert m[("vnet_tunnel_setup_seconds_count", ())] == 1
    assert m[("vnet_auth_failures_total", ())] == 1
    assert m[("vnet_rejected_requests_total", (("code", "UNAUTHENTICATED"),))] == 1
    await service.close()


async def test_node_metrics_count_each_uses_connections_and_bytes(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.metrics import serve_node_metrics

    route = await make_route()
    service = await exchange_server()
    await make_node(
        route=route,
        vnet=VnetConfig(),
        serves=(ServeConfig(key="s", port=service.port, serveid=701),),
        timeouts=NodeTimeouts(connect=TIMEOUT),
    )
    office = await make_node(
        route=route,
        vnet=VnetConfig(),
        uses=(UseConfig(key="s", serveid=701, port=0),),
        timeouts=NodeTimeouts(connect=TIMEOUT),
    )
    endpoint = serve_node_metrics(office, "127.0.0.1", 0)
    port = await use_port(office, "s")
    await exchange(port, MIB, 3 * MIB)
    await exchange(port, 0, 0)
    await wait_until(lambda: office.uses["s"].counters.open == 0, "the use's tunnels to end")
    m = await asyncio.to_thread(_scrape, endpoint.port)
    assert m[("vnet_node_connected", ())] == 1
    assert m[("vnet_use_connections_total", (("use", "s"),))] == 2
    assert m[("vnet_use_connections_open", (("use", "s"),))] == 0
    assert m[("vnet_use_resets_total", (("use", "s"),))] == 0
    # The exchange's own framing: a 16-byte header out, a 32-byte digest back.
    assert m[("vnet_use_bytes_total", (("direction", "out"), ("use", "s")))] == MIB + 32
    assert m[("vnet_use_bytes_total", (("direction", "in"), ("use", "s")))] == 3 * MIB + 64
    # One tunnel at a time: nothing to yield to.
    assert m[("vnet_node_bulk_yields_total", ())] == 0
    await asyncio.to_thread(endpoint.close)
    await service.close()
