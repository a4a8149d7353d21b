"""`make demo-cluster`: three routes sharing one registry in etcd, on loopback.

Starts, as separate processes: a single-member etcd (its own data dir, free
ports), routes a, b and c on 127.0.0.1:7751-7753 with [cluster] pointing at
it, the small web server of `make demo` on 127.0.0.1:18080, the home node
serving it as serveid 701 (routes = a, then b) and the office node mapping it
to 127.0.0.1:18888 (routes = c, then b). The office's tunnel crosses two
routes: c relays it to a, where home is. Then it prints what to try (kill
route a: home moves to b, keeping its vnetid and serveid) and runs until
Ctrl-C. With --check it fetches the page through the tunnel, kills route a
with SIGKILL, waits until the page comes through again (now via b), says how
long that took, and exits (0 when both fetches matched the file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from vnet.demo import EXAMPLES, READY_TIMEOUT, USE_PORT, WEB_PORT, Demo, _busy, http_get

ROUTES = {"a": 7751, "b": 7752, "c": 7753}
# Short, so the demo shows a dead route's entries go within seconds.
LEASE_TTL = 4


def _route_ini(route_id: str, port: int, etcd_url: str, token: str) -> str:
    return (
        f"[route]\nip=127.0.0.1\nport={port}\n"
        f"[cluster]\netcd={etcd_url}\nroute_id={route_id}\n"
        f"advertise=127.0.0.1:{port}\ntoken={token}\nlease_ttl={LEASE_TTL}\n"
    )


def _node_ini(name: str, routes: Sequence[str], section: str) -> str:
    listed = ", ".join(f"127.0.0.1:{ROUTES[r]}" for r in routes)
    first = ROUTES[routes[0]]
    return (
        f"[route]\nip=127.0.0.1\nport={first}\nroutes={listed}\n"
        f"[vnet]\nname={name}\ngroup=demo\nterminal=false\n{section}"
    )


async def _page_matches(expected: bytes) -> bool:
    with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
        status, body = await http_get(USE_PORT, timeout=2.0)
        return status == 200 and body == expected
    return False


async def run(check: bool) -> int:
    from harness.etcd import EtcdServer

    for port in (*ROUTES.values(), WEB_PORT, USE_PORT):
        if _busy(port):
            print(f"demo-cluster: 127.0.0.1:{port} is already in use", file=sys.stderr)
            return 1
    demo = Demo(quiet=check)
    www = EXAMPLES / "www"
    expected = (www / "index.html").read_bytes()
    etcd: EtcdServer | None = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            etcd = EtcdServer(work)
            await etcd.start()
            token = secrets.token_urlsafe(16)
            for route_id, port in ROUTES.items():
                ini = work / f"route-{route_id}.ini"
                ini.write_text(_route_ini(route_id, port, etcd.url, token))
                ini.chmod(0o600)
                await demo.spawn(f"route-{route_id}", "-m", "vnet", "route", str(ini), cwd=work)
            for port in ROUTES.values():
                await demo.wait_listening(port)
            await demo.spawn(
                "web", "-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1",
                "--directory", str(www),
            )  # fmt: skip
            serve = f"[serve.web]\nserveid=701\nip=127.0.0.1\nport={WEB_PORT}\ninfo=demo page\n"
            use = f"[use.web]\nserveid=701\nip=127.0.0.1\nport={USE_PORT}\n"
            (work / "home.ini").write_text(_node_ini("home", ("a", "b"), serve))
            (work / "office.ini").write_text(_node_ini("office", ("c", "b"), use))
            await demo.spawn("home", "-m", "vnet", str(work / "home.ini"), cwd=work)
            await demo.spawn("office", "-m", "vnet", str(work / "office.ini"), cwd=work)
            await demo.wait_ready()
            url = f"http://127.0.0.1:{USE_PORT}/"
            if check:
                return await _check(demo, url, expected)
            print(
                f"\nvnet cluster demo is up: etcd at {etcd.url}, routes a, b, c on "
                f"127.0.0.1:{ROUTES['a']}-{ROUTES['c']};\n"
                f"home (on a) serves 127.0.0.1:{WEB_PORT} as serveid 701, office (on c) "
                f"maps it to 127.0.0.1:{USE_PORT}. Open:\n\n    curl {url}\n\n"
                "Kill route a (its pid is in `ps`, `pkill -9 -f route-a.ini`): home moves to "
                "route b with\nthe same vnetid and serveid, and the page comes through again.\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            return 0
    except RuntimeError as exc:
        print(f"demo-cluster: {exc}", file=sys.stderr)
        if check:
            print("\n".join(demo.log), file=sys.stderr)
        return 1
    finally:
        await demo.stop()
        if etcd is not None:
            await etcd.stop()


async def _check(demo: Demo, url: str, expected: bytes) -> int:
    if not await _page_matches(expected):
        print(f"demo-cluster check: FAILED: {url} did not give the page")
        print("\n".join(demo.log))
        return 1
    print(f"demo-cluster check: fetched {url} through routes c and a: {len(expected)} bytes, OK")
    route_a = dict(demo.procs)["route-a"]
    route_a.kill()
    killed = time.monotonic()
    deadline = killed + READY_TIMEOUT
    while not await _page_matches(expected):
        if time.monotonic() > deadline:
            print(f"demo-cluster check: FAILED: no page within {READY_TIMEOUT:.0f} s of the kill")
            print("\n".join(demo.log))
            return 1
        await asyncio.sleep(0.1)
    print(
        f"demo-cluster check: killed route a (SIGKILL); the page came through again, via "
        f"route b, {time.monotonic() - killed:.1f} s later: OK"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnet.demo_cluster", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="fetch the page, kill route a, fetch it again via route b, and exit",
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args.check))


if __name__ == "__main__":
    sys.exit(main())
