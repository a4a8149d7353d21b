"""`make demo`: a route and two nodes on loopback, with a web page between them.

Starts, as separate processes: the route on 127.0.0.1:7749 with its web
dashboard on 127.0.0.1:18090 (a fresh admin token each run, printed), a small
web server on 127.0.0.1:18080 (the "home" side's service), the home node
serving it as serveid 701, and the office node mapping it to 127.0.0.1:18888.
Then it prints what to open and runs until Ctrl-C. With --check it fetches
the page through the tunnel (and the dashboard's page), compares it with the
file, says so and exits (0 when it matched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
ROUTE_PORT = 7749
WEB_PORT = 18080
USE_PORT = 18888
DASHBOARD_PORT = 18090
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


async def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on 127.0.0.1, so the demo needs nothing extra."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Demo:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self.pumps: list[asyncio.Task[None]] = []
        self.log: list[str] = []

    async def spawn(self, name: str, *args: str, cwd: Path | None = None) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.procs.append((name, proc))
        self.pumps.append(asyncio.create_task(self._pump(name, proc)))

    async def _pump(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = f"[{name:>6}] {raw.decode(errors='replace').rstrip()}"
            self.log.append(line)
            if not self.quiet:
                print(line, flush=True)

    def died(self) -> str | None:
        for name, proc in self.procs:
            if proc.returncode is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if (why := self.died()) is not None:
                raise RuntimeError(why)
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                status, _ = await http_get(USE_PORT, timeout=1.0)
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page did not come through within {READY_TIMEOUT:.0f}s")
            await asyncio.sleep(0.1)

    async def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _busy(port):
            if (why := self.died()) is not None:
                raise RuntimeError(why)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listened on 127.0.0.1:{port} within {READY_TIMEOUT:.0f}s"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self.pumps, return_exceptions=True)


async def run(check: bool) -> int:
    for port, what in (
        (ROUTE_PORT, "the route"),
        (WEB_PORT, "the web page"),
        (USE_PORT, "the use"),
        (DASHBOARD_PORT, "the route's dashboard"),
    ):
        if _busy(port):
            print(
                f"demo: 127.0.0.1:{port} (for {what}) is already in use; stop what listens there",
                file=sys.stderr,
            )
            return 1
    demo = Demo(quiet=check)
    www = EXAMPLES / "www"
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # The route's defaults, plus its dashboard with a token made for this run.
            token = secrets.token_urlsafe(12)
            ini = Path(scratch) / "route.ini"
            ini.write_text(
                f"[route]\nip=127.0.0.1\nport={ROUTE_PORT}\n"
                f"[admin]\ntoken={token}\nweb=127.0.0.1:{DASHBOARD_PORT}\n"
            )
            ini.chmod(0o600)
            await demo.spawn("route", "-m", "vnet", "route", str(ini), cwd=Path(scratch))
            # A node gives up at once on a refused route: start them once it listens.
            await demo.wait_listening(ROUTE_PORT)
            await demo.spawn(
                "web", "-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1",
                "--directory", str(www),
            )  # fmt: skip
            await demo.spawn("home", "-m", "vnet", str(EXAMPLES / "home.ini"))
            await demo.spawn("office", "-m", "vnet", str(EXAMPLES / "office.ini"))
            await demo.wait_ready()
            url = f"http://127.0.0.1:{USE_PORT}/"
            if check:
                status, body = await http_get(USE_PORT)
                expected = (www / "index.html").read_bytes()
                if status != 200 or body != expected:
                    print(f"demo check: FAILED: {url} gave status {status}, {len(body)} bytes")
                    print("\n".join(demo.log))
                    return 1
                status, page = await http_get(DASHBOARD_PORT)
                if status != 200 or b"vnet route" not in page:
                    print(f"demo check: FAILED: the dashboard gave status {status}")
                    return 1
                print(f"demo check: fetched {url} through the tunnel: {len(body)} bytes, OK")
                return 0
            print(
                f"\nvnet demo is up: the route on 127.0.0.1:{ROUTE_PORT}, "
                f"home serving 127.0.0.1:{WEB_PORT} as serveid 701,\n"
                f"office mapping it to 127.0.0.1:{USE_PORT}. Open:\n\n"
                f"    curl {url}\n\n"
                f"The route's dashboard: http://127.0.0.1:{DASHBOARD_PORT}/ "
                f"(admin token: {token}), or from a shell:\n\n"
                f"    VNET_ADMIN_TOKEN={token} vnet-route admin nodes\n\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set() and demo.died() is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            if (why := demo.died()) is not None:
                print(f"demo: {why}", file=sys.stderr)
                return 1
            return 0
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        if check:
            print("\n".join(demo.log), file=sys.stderr)
        return 1
    finally:
        await demo.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.demo", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fetch the page through the tunnel once and exit"
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args.check))


if __name__ == "__main__":
    sys.exit(main())
