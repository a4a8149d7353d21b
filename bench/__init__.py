"""Benchmarks for vnet: throughput, latency and tunnel setup rate against plain baselines.

`python -m bench` (or `make bench`) starts a target service, a plain asyncio relay, socat when
it is installed, and a real vnet route with two nodes, all as separate processes, then measures
each path from the bench process itself. See docs/BENCHMARKS.md for results and method.
"""

from __future__ import annotations
