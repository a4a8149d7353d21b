"""The garbage collector's pauses: start-up frozen out of full collections, pauses counted.

The freezing is the entry points' (vnet/cli.py), so the real commands run here; the counting
is checked against real collections in this process.
"""

from __future__ import annotations

import asyncio
import gc
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TIMEOUT, free_port, wait_until
from tests.procs import Procs, command, node_ini
from vnet.gcpause import BUCKETS, Pauses

pytestmark = pytest.mark.e2e


def _scrape(port: int) -> dict[str, float]:
    """name{labels} -> value, or None while the endpoint is not up yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def test_pauses_count_real_collections_by_generation() -> None:
    pauses = Pauses()
    gc.callbacks.append(pauses.callback)
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses.callback)
    # A young collection may also run on its own meanwhile: at least the one asked for.
    assert sum(pauses.buckets[0]) >= 1
    assert sum(pauses.buckets[2]) == 2
    assert pauses.seconds[2] > 0
    assert pauses.longest >= pauses.seconds[2] / 2
    families = {f.name: f for f in pauses.families()}
    full = [s for s in families["vnet_gc_pause_seconds"].samples if s.labels["generation"] == "2"]
    counts = {s.labels.get("le"): s.value for s in full if s.name.endswith("_bucket")}
    assert counts["+Inf"] == 2
    # Cumulative, as Prometheus reads a histogram.
    values = [counts[str(bound)] for bound in BUCKETS] + [counts["+Inf"]]
    assert values == sorted(values)


async def test_route_and_node_freeze_their_start_up_and_show_their_pauses(procs: Procs) -> None:
    route_port, route_metrics, node_metrics = free_port(), free_port(), free_port()
    route = await procs.route(route_port, extra=f"metrics=127.0.0.1:{route_metrics}\n")
    (procs.tmp / "node.ini").write_text(
        node_ini(route_port, f"[vnet]\ngroup=g\nmetrics=127.0.0.1:{node_metrics}\n")
    )
    node = await procs.start("node", command("vnet"), "node.ini")
    await node.wait_for_line("joined route", TIMEOUT)
    for port in (route_metrics, node_metrics):
        got: dict[str, dict[str, float]] = {}

        async def scraped(port: int = port, got: dict[str, dict[str, float]] = got) -> bool:
            got["m"] = await asyncio.to_thread(_scrape, port)
            # The node serves its metrics before it settles: wait for the freeze.
            return got["m"].get("vnet_gc_frozen_objects{}", 0) > 0

        await wait_until(scraped, f"the metrics on {port} to show the frozen start-up")
        m = got["m"]
        # Everything grpc, protobuf and vnet made while importing: tens of thousands.
        assert m["vnet_gc_frozen_objects{}"] > 10_000
        assert "vnet_gc_pause_seconds_count{generation=2}" in m
        assert m["vnet_gc_pause_seconds_count{generation=0}"] > 0
        assert m["vnet_gc_pause_longest_seconds{}"] > 0
    assert route.returncode is None
