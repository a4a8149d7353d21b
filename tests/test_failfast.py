"""Failing fast, and saying what to do: start-up failures and frozen serving nodes.

The rule for unresponsive nodes is tested on its own with a clock passed in;
everything else with the real commands: each start-up mistake must end in
one line naming the cause and the setting, with none of gRPC's or
BoringSSL's own text and no traceback.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, free_port, wait_until
from tests.procs import Proc, Procs, command, node_ini
from tests.services import echo_ok, echo_server
from vnet.core.unanswered import (
    BACKLOG_ALLOWANCE,
    FORGET_AFTER,
    MAX_SILENCE,
    STALL_AFTER,
    AnswerWatch,
)

# What gRPC and BoringSSL say in their own words; none of it may reach the user.
RAW = (
    "failed to connect to all addresses",
    "Socket closed",
    "UNKNOWN:",
    "UNAVAILABLE:",
    "SSL_ERROR",
    "OPENSSL_internal",
    "ssl_transport_security",
    "Handshake failed",
    "Failed to bind",
    "Traceback",
)


# --- the rule, with a clock passed in ------------------------------------------


def test_a_silent_node_trips_only_after_the_threshold() -> None:
    # No allowance for the backlog here: the threshold alone (see below).
    watch = AnswerWatch(backlog_allowance=0.0)
    assert watch.silent_for(0.0) == 0.0
    watch.asked("a", now=100.0)
    assert watch.silent_for(100.0 + STALL_AFTER - 0.01) == 0.0
    assert watch.silent_for(100.0 + STALL_AFTER) == pytest.approx(STALL_AFTER)
    assert watch.waiting == 1


def test_any_answer_clears_it_even_one_too_late_for_its_tunnel() -> None:
    watch = AnswerWatch(backlog_allowance=0.0)
    watch.asked("a", 0.0)
    assert watch.silent_for(5.0)
    # The route gave up on "a" long ago; an Accept for it still shows life.
    watch.answered("a", 6.0)
    assert watch.silent_for(6.0) == 0.0
    watch.asked("b", 7.0)
    watch.answered("unknown", 8.0)
    assert watch.silent_for(8.0 + STALL_AFTER - 0.01) == 0.0
    assert watch.silent_for(8.0 + STALL_AFTER) > 0


def test_a_slow_node_with_a_backlog_never_trips() -> None:
    # A burst of 1,000 requests at once; the node answers one every half
    # second, the oldest waiting for far longer than the threshold.
    watch = AnswerWatch()
    for n in range(1000):
        watch.asked(f"t{n}", 0.0)
    now = 0.0
    for n in range(100):
        now += 0.5
        assert watch.silent_for(now) == 0.0, f"tripped at {now}s"
        watch.answered(f"t{n}", now)
    assert watch.waiting == 900


def test_a_burst_gives_more_time_for_the_first_answer_but_not_forever() -> None:
    # A thousand requests at once: the route and the node are busy with all
    # of them, so the first answer may come late; the allowance is bounded.
    watch = AnswerWatch()
    for n in range(1000):
        watch.asked(f"t{n}", 0.0)
    allowed = min(STALL_AFTER + 1000 * BACKLOG_ALLOWANCE, MAX_SILENCE)
    assert allowed > STALL_AFTER
    assert watch.silent_for(allowed - 0.01) == 0.0
    assert watch.silent_for(allowed) > 0
    for n in range(100_000):
        watch.asked(f"u{n}", 0.0)
    assert watch.silent_for(MAX_SILENCE) > 0


def test_nothing_waiting_is_not_silence() -> None:
    watch = AnswerWatch()
    watch.asked("a", 0.0)
    watch.answered("a", 0.5)
    assert watch.silent_for(1000.0) == 0.0


def test_a_request_never_answered_is_forgotten() -> None:
    # A node that drops one request (a bug) must not be shut out for good.
    watch = AnswerWatch()
    watch.asked("lost", 0.0)
    assert watch.silent_for(FORGET_AFTER - 1) > 0
    assert watch.silent_for(FORGET_AFTER) == 0.0
    assert watch.waiting == 0


# --- start-up failures, with the real commands ------------------------------------


def _certificates(tmp: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    for name, host in (("route", "127.0.0.1"), ("named", "vnet.example.org")):
        cert = ca.issue_cert(host)
        cert.private_key_pem.write_to_path(str(tmp / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(tmp / f"{name}.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp / "other-ca.pem"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp / "client-ca.pem"))
    stranger = trustme.CA().issue_cert("node.example")
    stranger.private_key_pem.write_to_path(str(tmp / "stranger.key"))
    stranger.cert_chain_pems[0].write_to_path(str(tmp / "stranger.pem"))


def _no_raw_text(err: str) -> None:
    for raw in RAW:
        assert raw not in err, f"{raw!r} in {err!r}"


@pytest.mark.e2e
async def test_a_key_that_does_not_match_its_certificate(procs: Procs, tmp_path: Path) -> None:
    _certificates(tmp_path)
    port = free_port()
    (tmp_path / "route.ini").write_text(
        f"[route]\nip=127.0.0.1\nport={port}\ntls_cert=route.pem\ntls_key=named.key\n"
    )
    for args in (("route.ini",), ("--check", "route.ini")):
        rc, _, err = await procs.run(command("vnet-route"), *args)
        assert rc == 1
        assert err.startswith(
            "vnet-route: route.ini:5: [route] tls_key: "
            "named.key does not match tls_cert route.pem\n"
        ), err
        _no_raw_text(err)
    # A node's client certificate, the same; checked before it connects.
    (tmp_path / "node.ini").write_text(
        node_ini(port, "[vnet]\ntls=true\ntls_ca=ca.pem\ntls_cert=route.pem\ntls_key=named.key\n")
    )
    for args in (("node.ini",), ("--check", "node.ini")):
        rc, _, err = await procs.run(command("vnet"), *args)
        assert rc == 1
        assert err.startswith(
            "vnet: node.ini:8: [vnet] tls_key: named.key does not match tls_cert route.pem\n"
        ), err
        _no_raw_text(err)


@pytest.mark.e2e
async def test_each_start_up_mistake_gets_one_line_with_its_fix(
    procs: Procs, tmp_path: Path
) -> None:
    _certificates(tmp_path)
    plain, tls, named, mtls = (free_port() for _ in range(4))
    await asyncio.gather(
        procs.route(plain, "plain"),
        procs.route(tls, "tls", "tls_cert=route.pem\ntls_key=route.key\n"),
        procs.route(named, "named", "tls_cert=named.pem\ntls_key=named.key\n"),
        procs.route(
            mtls, "mtls", "tls_cert=route.pem\ntls_key=route.key\ntls_client_ca=client-ca.pem\n"
        ),
    )
    closed = free_port()
    trust = "tls=true\ntls_ca=ca.pem\n"
    cases = {
        "refused": (
            closed,
            "",
            "connection refused (is vnet-route running there? check [route] ip and port)",
        ),
        "plaintext node, TLS route": (tls, "", "the route uses TLS: set [vnet] tls=true"),
        "TLS node, plaintext route": (
            plain,
            trust,
            "the route does not use TLS: set [vnet] tls=false",
        ),
        "certificate for another name": (
            named,
            trust,
            "the route's certificate is for vnet.example.org, not 127.0.0.1: "
            "set [vnet] tls_server_name=vnet.example.org",
        ),
        "certificate from another CA": (
            tls,
            "tls=true\ntls_ca=other-ca.pem\n",
            "the route's certificate is not signed by the CA in [vnet] tls_ca (other-ca.pem)",
        ),
        "no client certificate": (
            mtls,
            trust,
            "it requires a client certificate; set [vnet] tls_cert and tls_key",
        ),
        "client certificate from another CA": (
            mtls,
            f"{trust}tls_cert=stranger.pem\ntls_key=stranger.key\n",
            "it refused this node's certificate ([vnet] tls_cert stranger.pem)",
        ),
    }

    async def attempt(case: str, port: int, vnet: str) -> tuple[str, int, str]:
        ini = f"{case.replace(' ', '-').replace(',', '')}.ini"
        (tmp_path / ini).write_text(node_ini(port, f"[vnet]\nname=n\n{vnet}"))
        rc, _, err = await procs.run(command("vnet"), ini, timeout=3 * TIMEOUT)
        return case, rc, err

    results = await asyncio.gather(*(attempt(c, p, v) for c, (p, v, _) in cases.items()))
    for case, rc, err in results:
        port, _, expected = cases[case]
        assert rc == 1, case
        assert err.startswith(f"vnet: cannot reach the route at 127.0.0.1:{port}: "), (case, err)
        assert expected in err, (case, err)
        assert err.count("\n") == 1, (case, err)
        _no_raw_text(err)
    # And with the name it asked for, the node joins.
    (tmp_path / "good.ini").write_text(
        node_ini(named, f"[vnet]\nname=n\n{trust}tls_server_name=vnet.example.org\n")
    )
    node = await procs.start("good", command("vnet"), "good.ini")
    await node.wait_for_line("joined route")


# --- a frozen serving node ---------------------------------------------------------


async def _reset_at_once(port: int) -> bool:
    """Whether a new connection through the use is reset (not left hanging).

    It sends nothing, as a client that waits for the server to speak first:
    a write racing the route's refusal makes grpc.aio replace the route's
    status with its own INTERNAL ("Internal error from Core") on the node,
    which then logs only that the route ended the stream, not why.
    """
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionResetError:
        # Reset before the connect's own completion was read: at once indeed.
        return True
    try:
        async with asyncio.timeout(1.0):
            return await reader.read(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_clients_of_a_frozen_node_are_reset_until_it_answers(
    procs: Procs, tmp_path: Path
) -> None:
    echo = await echo_server()
    port, use = free_port(), free_port()
    # A long keepalive: the frozen node is not declared dead during the test.
    await procs.route(port, extra="keepalive=60\n")
    (tmp_path / "home.ini").write_text(
        node_ini(port, f"[vnet]\nname=home\n[serve.echo]\nserveid=700\nport={echo.port}\n")
    )
    (tmp_path / "office.ini").write_text(
        node_ini(port, f"[vnet]\nname=office\n[use.echo]\nserveid=700\nport={use}\n")
    )
    home: Proc = await procs.start("home", command("vnet"), "home.ini")
    office = await procs.start("office", command("vnet"), "office.ini")
    await office.wait_for_line(f"listening on 127.0.0.1:{use}")
    assert await echo_ok(use, 10_000)

    home.proc.send_signal(signal.SIGSTOP)
    try:
        # The first connection's open_tunnel goes unanswered...
        _, first = await asyncio.open_connection("127.0.0.1", use)
        first.write(b"waiting")
        # ...and once that has lasted the threshold, new ones are reset at
        # once (before the route's 10 s accept timeout would have).
        await wait_until(
            lambda: _reset_at_once(use), "a connection reset at once while home is frozen"
        )
        await office.wait_for_line("has answered no tunnel request for")
    finally:
        home.proc.send_signal(signal.SIGCONT)
    first.close()
    await wait_until(
        lambda: echo_ok(use, 10_000), "the serve to work again after SIGCONT", 3 * TIMEOUT, 0.1
    )
    await echo.close()
