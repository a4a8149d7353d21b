"""Put on PYTHONPATH by `bench.wan --stalls`: every Python child records its stalls."""

from __future__ import annotations

import os

if os.environ.get("VNET_BENCH_STALLS"):
    from bench.wan.stalltrace import install

    install(os.environ["VNET_BENCH_STALLS"])
