"""The web dashboard in a real headless Chromium (Debian's chromium + chromium-driver).

A route with [admin] web= and the demo's two nodes (home serving a service,
office using it), in process; the browser, driven by Selenium in a thread,
signs in, sees both nodes and the live tunnel, searches, kicks home with
confirmation, and sees the page update. Screenshots go to the test's
tmp_path/screenshots (pytest keeps the last runs' tmp dirs), named in the
test's output. Skips, naming the packages, where no browser is installed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, use_port
from tests.services import echo_server
from vnet.core.auth import TokenTable
from vnet.core.config import RouteEndpoint, ServeConfig, UseConfig
from vnet.node.client import NodeCredentials
from vnet.route.security import RouteSecurity
from vnet.route.server import RouteTimeouts, start_route

ADMIN = "dash-admin-token"
NODE = "dash-node-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NEEDS = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"

webdriver: Any = None
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - selenium is a dev dependency
    pass

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None or webdriver is None, reason=f"no browser: {NEEDS}"
)


def browser(profile: Path, *extra: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
        *extra,
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


def scenario(url: str, home: str, office: str, shots: Path, profile: Path) -> list[str]:
    """The browser's part, in a thread of its own (Selenium blocks). Returns what it did.

    The page redraws a table when its rows change (every second at most), so
    an element found a moment ago may be gone: every look and click is retried
    on a stale element until the wait's deadline.
    """
    done: list[str] = []
    driver = browser(profile)
    wait = WebDriverWait(driver, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))

    def text(element_id: str) -> str:
        return str(wait.until(lambda d: d.find_element(By.ID, element_id).text or True))

    def click(element_id: str) -> None:
        wait.until(lambda d: d.find_element(By.ID, element_id).click() or True)

    try:
        driver.get(url)
        wait.until(ec.visibility_of_element_located((By.ID, "token")))
        # A wrong token is refused, and says so.
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.ID, "signin-button").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "signin-error"), "not accepted"))
        driver.save_screenshot(str(shots / "1-signin-refused.png"))
        driver.find_element(By.ID, "token").send_keys(ADMIN)
        driver.find_element(By.ID, "signin-button").click()
        for vnetid in (home, office):
            wait.until(ec.visibility_of_element_located((By.ID, f"node-{vnetid}")))
        assert not driver.find_element(By.ID, "signin").is_displayed()
        assert "home" in text(f"node-{home}")
        assert "office" in text(f"node-{office}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tunnels tbody tr"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#charts .chart"))
        done.append("signed in; both nodes and the tunnel shown")
        driver.save_screenshot(str(shots / "2-nodes.png"))

        # Search: only office's row stays visible.
        driver.find_element(By.ID, "search").send_keys("office")
        wait.until(ec.invisibility_of_element_located((By.ID, f"node-{home}")))
        wait.until(ec.visibility_of_element_located((By.ID, f"node-{office}")))
        driver.find_element(By.ID, "search").clear()
        driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
        wait.until(ec.visibility_of_element_located((By.ID, f"node-{home}")))
        done.append("search filtered the rows")

        joined = driver.find_element(By.ID, f"node-{home}").get_attribute("data-joined")
        driver.find_element(By.ID, f"kick-{home}").click()
        wait.until(ec.visibility_of_element_located((By.ID, "confirm")))
        assert f"Kick vnet {home} (home)" in driver.find_element(By.ID, "confirm-text").text
        driver.save_screenshot(str(shots / "3-confirm-kick.png"))
        driver.find_element(By.ID, "confirm-yes").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), f"kicked vnet {home}"))
        assert (
            "1 tunnel(s) reset, 1 serve(s) withdrawn" in driver.find_element(By.ID, "notice").text
        )

        def updated(d: Any) -> bool:
            # home's row is gone, or back from a new session (it rejoins by itself).
            rows = d.find_elements(By.ID, f"node-{home}")
            return not rows or rows[0].get_attribute("data-joined") != joined

        wait.until(updated)
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#tunnels tbody tr"))
        done.append("kicked home; the page updated")
        driver.save_screenshot(str(shots / "4-after-kick.png"))
    except Exception:
        driver.save_screenshot(str(shots / "failed.png"))
        raise
    finally:
        driver.quit()
    return done


async def test_dashboard_signs_in_shows_the_demo_nodes_and_kicks_one(
    make_route: MakeRoute, make_node: MakeNode, tmp_path: Path
) -> None:
    security = RouteSecurity(tokens=TokenTable(NODE), admin_token=ADMIN)
    route = await start_route(
        RouteEndpoint("127.0.0.1", 0),
        RouteTimeouts(stop_grace=0.5),
        security,
        web=("127.0.0.1", 0),
    )
    make_route.started.append(route)
    creds = NodeCredentials(token=NODE)
    echo = await echo_server()
    home = await make_node(
        "home",
        group="default",
        serves=[ServeConfig(key="web", serveid=701, port=echo.port)],
        route=route,
        credentials=creds,
    )
    office = await make_node(
        "office",
        group="default",
        uses=[UseConfig(key="web", serveid=701, port=0)],
        route=route,
        credentials=creds,
    )
    port = await use_port(office, "web")
    # A live tunnel for the page to show, with bytes through it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 100_000)
    await asyncio.wait_for(reader.readexactly(100_000), TIMEOUT)
    route.admin.sample()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    url = f"http://127.0.0.1:{route.dashboard.port}/"
    started = time.monotonic()
    assert home.vnetid is not None
    assert office.vnetid is not None
    try:
        done = await asyncio.to_thread(
            scenario, url, home.vnetid, office.vnetid, shots, tmp_path / "profile"
        )
    finally:
        print(f"dashboard screenshots: {shots} ({time.monotonic() - started:.1f}s)")
        writer.close()
        await echo.close()
    assert done == [
        "signed in; both nodes and the tunnel shown",
        "search filtered the rows",
        "kicked home; the page updated",
    ]
    assert route.admin.actions[("kick", "ok")] == 1
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-signin-refused.png",
        "2-nodes.png",
        "3-confirm-kick.png",
        "4-after-kick.png",
    ]


async def tls_proxy(target: int, prefix: str, cert: Any) -> tuple[Any, int]:
    """A TLS-terminating reverse proxy on 127.0.0.1 that serves the dashboard under prefix,
    as an operator would put one in front of it (nginx, Caddy): aiohttp both ways."""
    import ssl

    import aiohttp
    from aiohttp import web

    async def forward(request: web.Request) -> web.Response:
        url = f"http://127.0.0.1:{target}/{request.match_info['tail']}"
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, url, headers=headers, data=await request.read()) as r,
        ):
            body = await r.read()
            kept = {
                k: v
                for k, v in r.headers.items()
                if k.lower()
                not in ("content-length", "transfer-encoding", "content-encoding", "connection")
            }
            return web.Response(status=r.status, body=body, headers=kept)

    app = web.Application()
    app.router.add_route("*", prefix + "{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, int(runner.addresses[0][1])


def signed_in_through(url: str, home: str, shots: Path, profile: Path) -> bool:
    driver = browser(profile, "--ignore-certificate-errors")
    wait = WebDriverWait(driver, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))
    try:
        driver.get(url)
        wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(ADMIN)
        driver.find_element(By.ID, "signin-button").click()
        wait.until(ec.visibility_of_element_located((By.ID, f"node-{home}")))
        driver.save_screenshot(str(shots / "behind-tls.png"))
        return bool(driver.execute_script("return location.protocol === 'https:'"))
    finally:
        driver.quit()


async def test_dashboard_behind_a_tls_proxy_under_a_sub_path(
    make_route: MakeRoute, make_node: MakeNode, tmp_path: Path
) -> None:
    import trustme

    route = await start_route(
        RouteEndpoint("127.0.0.1", 0),
        RouteTimeouts(stop_grace=0.5),
        RouteSecurity(admin_token=ADMIN),
        web=("127.0.0.1", 0),
    )
    make_route.started.append(route)
    home = await make_node("home", route=route)
    assert home.vnetid is not None
    runner, port = await tls_proxy(
        route.dashboard.port, "/vnet/", trustme.CA().issue_cert("127.0.0.1")
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        https = await asyncio.to_thread(
            signed_in_through,
            f"https://127.0.0.1:{port}/vnet/",
            home.vnetid,
            shots,
            tmp_path / "profile",
        )
    finally:
        await runner.cleanup()
    assert https
