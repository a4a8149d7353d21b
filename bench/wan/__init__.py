"""The WAN benchmark: `python -m bench.wan` (`make bench-wan`); see docs/BENCHMARKS.md."""
