"""The admin API in process: who may call it (every method), and what it lists and does.

The calls are made by hand (method paths and serialized requests on a plain
channel), not through the project's own client, so the checks do not share
its mistakes. Real nodes, real tunnels, bytes compared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, use_port, wait_until
from tests.services import echo_round_trip, echo_server, read_until_reset
from vnet.core.admin import AdminAuth, Throughput, audit_line, group_totals
from vnet.core.auth import PenaltyPolicy, TokenTable
from vnet.core.config import ServeConfig, UseConfig
from vnet.core.errors import Forbidden, Unauthenticated
from vnet.node.client import NodeCredentials
from vnet.route.security import RouteSecurity
from vnet.route.server import RunningRoute
from vnet.wire.admin_messages import ADMIN_METHODS, ADMIN_SERVICE, AdminStub, raw_request

NODE_TOKEN = "node-token-1"
ADMIN_TOKEN = "admin-token-1"
# No penalty in the way: these tests fail on purpose many times from one address.
LENIENT = PenaltyPolicy(max_failures=10_000)


def secured() -> RouteSecurity:
    return RouteSecurity(tokens=TokenTable(NODE_TOKEN), admin_token=ADMIN_TOKEN, penalty=LENIENT)


@pytest.fixture
async def channel(make_route: MakeRoute) -> AsyncIterator[tuple[RunningRoute, grpc.aio.Channel]]:
    route = await make_route(security=secured())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{route.port}") as ch:
        yield route, ch


async def call(ch: grpc.aio.Channel, name: str, token: str | None) -> grpc.StatusCode:
    method = ch.unary_unary(f"/{ADMIN_SERVICE}/{name}")
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    try:
        await method(raw_request(name), metadata=metadata, timeout=TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", ADMIN_METHODS)
async def test_every_method_refuses_absent_wrong_and_node_credentials(
    channel: tuple[RunningRoute, grpc.aio.Channel], name: str
) -> None:
    route, ch = channel
    for token in (None, "", "wrong", NODE_TOKEN, ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]):
        assert await call(ch, name, token) == grpc.StatusCode.UNAUTHENTICATED, (name, token)
    # Refused before anything was done: not draining, every refusal audited and counted.
    assert not route.admin.draining
    assert route.admin.actions[(_action(name), "failed")] == 6
    # The right token passes the check (what the method then says is its own business).
    code = await call(ch, name, ADMIN_TOKEN)
    assert code != grpc.StatusCode.UNAUTHENTICATED
    assert code in {
        "Kick": {grpc.StatusCode.NOT_FOUND},
        "CloseTunnel": {grpc.StatusCode.NOT_FOUND},
        # Started without a config file: nothing to reload.
        "Reload": {grpc.StatusCode.FAILED_PRECONDITION},
    }.get(name, {grpc.StatusCode.OK}), name


def _action(method: str) -> str:
    return {
        "ListNodes": "list-nodes",
        "ListServes": "list-serves",
        "ListTunnels": "list-tunnels",
        "ListUnserves": "list-unserves",
        "Kick": "kick",
        "CloseTunnel": "close",
        "Drain": "drain",
        "Reload": "reload",
    }[method]


async def test_wrong_admin_tokens_are_penalised_like_wrong_node_tokens(
    make_route: MakeRoute,
) -> None:
    security = RouteSecurity(
        tokens=TokenTable(NODE_TOKEN),
        admin_token=ADMIN_TOKEN,
        penalty=PenaltyPolicy(max_failures=3, window=600, penalty=600),
    )
    route = await make_route(security=security)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{route.port}") as ch:
        for _ in range(3):
            assert await call(ch, "ListNodes", "guess") == grpc.StatusCode.UNAUTHENTICATED
        # Now even the right token waits out the penalty.
        assert await call(ch, "ListNodes", ADMIN_TOKEN) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_admin_auth_rules() -> None:
    open_local = AdminAuth("")
    # No admin token: loopback only, whatever is presented.
    open_local.check("", "127.0.0.1")
    open_local.check("anything", "::1")
    with pytest.raises(Forbidden):
        open_local.check("", "10.1.2.3")
    locked = AdminAuth(ADMIN_TOKEN)
    locked.check(ADMIN_TOKEN, "203.0.113.9")
    for wrong in ("", NODE_TOKEN, ADMIN_TOKEN.upper()):
        with pytest.raises(Unauthenticated):
            locked.check(wrong, "127.0.0.1")
    assert locked.changed(AdminAuth("other")) == ["[admin] token changed"]
    assert open_local.changed(locked) == ["[admin] token added"]
    assert locked.changed(AdminAuth(ADMIN_TOKEN)) == []
    # Client certificate names: an admin by certificate, or else by token.
    both = AdminAuth(ADMIN_TOKEN, ["ops.example"])
    assert both.check("", "203.0.113.9", ["x", "ops.example"]) == "cert:ops.example"
    assert both.check(ADMIN_TOKEN, "203.0.113.9", ["node.example"]) == "token"
    with pytest.raises(Unauthenticated):
        both.check("", "127.0.0.1", ["node.example"])
    names_only = AdminAuth("", ["ops.example"])
    with pytest.raises(Unauthenticated):
        names_only.check("", "127.0.0.1")
    assert names_only.changed(both) == ["[admin] token added"]
    assert both.changed(AdminAuth(ADMIN_TOKEN)) == ["[admin] client_names changed"]


def test_token_table_changes_and_digests() -> None:
    from vnet.core.auth import digest

    old = TokenTable("all", {"a": "A1", "b": "B1"})
    new = TokenTable("all", {"a": "A2", "c": "C1"})
    assert old.changes(new) == [
        "[group.a] token changed",
        "[group.b] token removed",
        "[group.c] token added",
    ]
    assert new.admits_digest(digest("all"), "b")
    assert not new.admits_digest(digest("A1"), "a")
    assert new.admits_digest(digest("A2"), "a")
    assert not new.admits_digest(digest("A2"), "c")
    # A session that joined a route without tokens ("") is not valid once there are some.
    assert TokenTable().admits_digest(digest(""), "a")
    assert not new.admits_digest(digest(""), "a")


def test_audit_line_fields_split_back() -> None:
    line = audit_line("admin@127.0.0.1", "kick", "03", 'failed: no "vnet" 03')
    assert line == (
        'admin who=admin@127.0.0.1 action=kick target=03 result="failed: no \\"vnet\\" 03"'
    )
    assert audit_line("w", "drain", "", "ok") == "admin who=w action=drain target=- result=ok"


def test_throughput_rates_per_group() -> None:
    history = Throughput(window=10)
    history.record(0.0, {"a": 0})
    history.record(2.0, {"a": 2000, "b": 100})
    history.record(4.0, {"a": 2000, "b": 500})
    # A group whose total went down (its nodes left) restarts from 0, never negative.
    history.record(6.0, {"a": 1000, "b": 900})
    assert history.rates() == {
        "a": [(2.0, 1000.0), (4.0, 0.0), (6.0, 0.0)],
        "b": [(2.0, 50.0), (4.0, 200.0), (6.0, 200.0)],
    }
    history.record(20.0, {"a": 1000})
    assert history.rates() == {}  # the older samples fell out of the window
    assert group_totals([]) == {}


async def test_lists_kick_and_close_with_live_tunnels(
    make_route: MakeRoute, make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    route = await make_route(security=secured())
    creds = NodeCredentials(token=NODE_TOKEN)
    echo = await echo_server()
    home = await make_node(
        "home",
        serves=[ServeConfig(key="echo", serveid=701, port=echo.port)],
        credentials=creds,
    )
    office = await make_node(
        "office", uses=[UseConfig(key="echo", serveid=701, port=0)], credentials=creds
    )
    port = await use_port(office, "echo")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{route.port}") as ch:
        admin = AdminStub(ch, [("authorization", f"Bearer {ADMIN_TOKEN}")])
        # A tunnel held open while we look.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = b"through the route " * 1000
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        tunnels = await admin.tunnels()
        assert len(tunnels) == 1
        t = tunnels[0]
        assert (t.group, t.serveid, t.dial_vnetid, t.serve_vnetid, t.state) == (
            "g",
            701,
            office.vnetid,
            home.vnetid,
            "open",
        )
        assert t.bytes_to_serve >= len(payload)
        assert t.bytes_to_dialer >= len(payload)
        nodes = {n.vnetid: n for n in await admin.nodes()}
        assert set(nodes) == {home.vnetid, office.vnetid}
        assert nodes[home.vnetid].name == "home"
        assert nodes[home.vnetid].serves == 1
        assert nodes[office.vnetid].tunnels == 1
        assert nodes[office.vnetid].peer.startswith("ipv4:127.0.0.1:")
        assert nodes[office.vnetid].bytes_from_node >= len(payload)
        assert nodes[home.vnetid].bytes_from_node >= len(payload)
        serves = await admin.serves()
        assert [(s.group, s.serve.serveid, s.serve.vnetid) for s in serves] == [
            ("g", 701, home.vnetid)
        ]
        assert await admin.unserves() == []

        # Close that one tunnel: the client is reset, the nodes stay.
        await admin.close_tunnel(t.tunnel_id)
        await read_until_reset(reader)
        writer.close()
        assert {n.vnetid for n in await admin.nodes()} == {home.vnetid, office.vnetid}
        assert await echo_round_trip(port, b"after close") == b"after close"

        # Kick the serving node mid-transfer: reset, withdrawn, and it comes back.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await reader.readexactly(1)
        kicked = await admin.kick(home.vnetid)
        assert (kicked.name, kicked.tunnels_reset, kicked.serves_withdrawn) == ("home", 1, 1)
        await read_until_reset(reader)
        writer.close()

        async def back() -> bool:
            # Port 0: the use listens anew (on another port) once the serve is back.
            again = office.uses["echo"].port
            with contextlib.suppress(OSError, TimeoutError):
                return again is not None and await echo_round_trip(again, b"again") == b"again"
            return False

        await wait_until(back, "the kicked node to rejoin and serve again", interval=0.1)
        # The node says why it lost the route, not that the route stopped.
        assert (
            "lost the route: the route ended this node's session (kicked by an admin); reconnecting"
            in caplog.messages
        )
        assert route.admin.actions[("kick", "ok")] == 1
        assert route.admin.actions[("close", "ok")] == 1
    await echo.close()


async def test_no_admin_token_answers_loopback(make_route: MakeRoute) -> None:
    route = await make_route()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{route.port}") as ch:
        assert await call(ch, "ListNodes", None) == grpc.StatusCode.OK


async def test_admin_by_client_certificate_and_tls_identity_listed(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    import trustme

    from vnet.node.client import ClientTls
    from vnet.route.security import ServerTls

    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    tls = ServerTls(
        cert_chain=b"".join(b.bytes() for b in server.cert_chain_pems),
        private_key=server.private_key_pem.bytes(),
        client_ca=client_ca.cert_pem.bytes(),
    )
    security = RouteSecurity(
        tokens=TokenTable(NODE_TOKEN), tls=tls, admin_names=("ops.example",), penalty=LENIENT
    )
    route = await make_route(security=security)

    def pems(name: str) -> tuple[bytes, bytes]:
        cert = client_ca.issue_cert(name)
        return b"".join(b.bytes() for b in cert.cert_chain_pems), cert.private_key_pem.bytes()

    chain, key = pems("node.example")
    node = await make_node(
        "n",
        route=route,
        credentials=NodeCredentials(
            token=NODE_TOKEN,
            tls=ClientTls(root_ca=ca.cert_pem.bytes(), cert_chain=chain, private_key=key),
        ),
    )

    def channel(name: str) -> grpc.aio.Channel:
        chain, key = pems(name)
        creds = grpc.ssl_channel_credentials(ca.cert_pem.bytes(), key, chain)
        return grpc.aio.secure_channel(f"127.0.0.1:{route.port}", creds)

    async with channel("ops.example") as ops, channel("node.example") as other:
        [listed] = await AdminStub(ops, []).nodes()
        assert (listed.vnetid, listed.tls_identity) == (node.vnetid, "node.example")
        # A node's certificate (and its token) is not an admin's.
        for name in ADMIN_METHODS:
            assert await call(other, name, None) == grpc.StatusCode.UNAUTHENTICATED, name
            assert await call(other, name, NODE_TOKEN) == grpc.StatusCode.UNAUTHENTICATED, name
    assert route.admin.actions[("list-nodes", "failed")] == 2


async def test_reload_applies_limits_at_once_and_a_bad_file_changes_nothing(
    make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.core.config import parse_route_config
    from vnet.core.errors import Refused

    route = await make_route(security=secured())
    base = f"[route]\nip=127.0.0.1\nport={route.port}\ntoken={NODE_TOKEN}\n"
    route.admin.settings = parse_route_config("r.ini", base)
    answers: list[object] = [["r.ini:4: [route] max_nodes: 'x' is not a number"]]
    route.admin.reloader = lambda: answers[-1]  # type: ignore[assignment, return-value]
    creds = NodeCredentials(token=NODE_TOKEN)
    echo = await echo_server()
    await make_node(
        "home", serves=[ServeConfig(key="e", serveid=701, port=echo.port)], credentials=creds
    )
    office = await make_node(
        "office", uses=[UseConfig(key="e", serveid=701, port=0)], credentials=creds
    )
    port = await use_port(office, "e")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"first")
    assert await reader.readexactly(5) == b"first"

    with pytest.raises(Refused, match="nothing changed: r.ini:4: \\[route\\] max_nodes"):
        await route.admin.reload("test")
    assert route.servicer.limits.max_tunnels_per_node == 2048

    new = parse_route_config(
        "r.ini", base.replace(f"port={route.port}", "port=1") + "max_tunnels_per_node=1\n"
    )
    answers.append((new, secured()))
    report = await route.admin.reload("test")
    assert report.changes == ("[route] max_tunnels_per_node 2048 -> 1",)
    assert report.ended == ()
    assert report.needs_restart == ("[route] port changed: needs a restart",)
    # The cap holds for the next tunnel; the open one goes on.
    second_reader, second = await asyncio.open_connection("127.0.0.1", port)
    second.write(b"second")
    await read_until_reset(second_reader)
    second.close()
    writer.write(b"still")
    assert await reader.readexactly(5) == b"still"
    writer.close()
    await echo.close()
