"""Python's cyclic garbage collector, kept from stalling the relay, and its pauses counted.

A full (generation 2) collection walks every object the collector tracks, and a route or a node
holds ~40,000 of them from its imports alone (grpc, protobuf, prompt_toolkit). On the emulated
50 ms / 100 Mbit/s link such a walk stopped the route for 23-40 ms in the middle of a download:
the transfer's bytes piled up behind the stopped relay and went on toward the office in one
burst, and the keystroke next to the transfer waited behind that burst (the p99 ping rows in
docs/BENCHMARKS.md). `gc.freeze()` once the process has started moves what start-up made
(modules, classes, functions, the servicer) out of the collector's reach, so a full collection
walks only what the process made since. Those objects live as long as the process anyway, and
reference counting still frees any of them that die; only a cycle among them would stay.

The pauses are counted for the metrics (`vnet_gc_pause_seconds`): a clock read per collection,
at most a few hundred a second.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# Upper bounds in seconds: a young collection takes well under 1 ms, a full one over a large
# heap tens of milliseconds, which is when a ping next to a transfer feels it.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
GENERATIONS = 3


class Pauses:
    """Counts of collections by generation and by how long they stopped the process."""

    def __init__(self) -> None:
        # buckets[g][i]: collections of generation g that took at most BUCKETS[i]; the last
        # slot those that took longer. Plain integers: the callback runs under the GIL.
        self.buckets = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]
        self.seconds = [0.0] * GENERATIONS
        self.longest = 0.0
        self._began = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks' signature: called at the start and the stop of every collection."""
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        generation = min(int(info.get("generation", 0)), GENERATIONS - 1)
        slot = next((i for i, bound in enumerate(BUCKETS) if took <= bound), len(BUCKETS))
        self.buckets[generation][slot] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)

    def families(self) -> Iterator[Any]:
        """The Prometheus families: a histogram by generation, the longest, the frozen."""
        # Here, not at the top: the entry points import this module, and `vnet --help`
        # should not pay for prometheus_client.
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        pauses = HistogramMetricFamily(
            "vnet_gc_pause_seconds",
            "How long each of Python's garbage collections stopped the process, by generation "
            "(2: a full collection)",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            cumulative, counts = 0, []
            for bound, count in zip(BUCKETS, self.buckets[generation], strict=False):
                cumulative += count
                counts.append((str(bound), cumulative))
            counts.append(("+Inf", cumulative + self.buckets[generation][-1]))
            pauses.add_metric([str(generation)], counts, self.seconds[generation])
        yield pauses
        yield GaugeMetricFamily(
            "vnet_gc_pause_longest_seconds",
            "The longest garbage collection pause since the process started",
            value=self.longest,
        )
        yield GaugeMetricFamily(
            "vnet_gc_frozen_objects",
            "Objects made during start-up and moved out of the collector's walks",
            value=gc.get_freeze_count(),
        )


# One collector per process, so one record per process.
PAUSES = Pauses()


def watch() -> None:
    """Count every collection from now on (once per process)."""
    if PAUSES.callback not in gc.callbacks:
        gc.callbacks.append(PAUSES.callback)


def settle() -> None:
    """Once the process has started: collect what start-up left over, then freeze the rest."""
    gc.collect()
    gc.freeze()
    log.debug("%d objects from start-up frozen out of garbage collection", gc.get_freeze_count())


class GcCollector:
    """The pauses as a Prometheus collector, for the route's and the node's registries."""

    def collect(self) -> Iterator[Any]:
        yield from PAUSES.families()
