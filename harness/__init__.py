"""Test harness code shared by tests/, bench/ and tools/soak: not part of the vnet package.

`harness.procs` starts real `vnet-route`, `vnet` (or any other) commands as child processes with
their output in log files, waits for their log lines with a deadline, signals and stops them, and
reads their RSS and open fds. Each caller keeps only what is its own: pytest glue in tests/, CPU
accounting and readiness probes in bench/, the disruption schedule in the soak.
"""
