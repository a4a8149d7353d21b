"""Tokens on every call, group isolation, limits, penalties and TLS."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from tests.conftest import TIMEOUT, MakeNode, MakeRoute, use_port, wait_until
from tests.rawclient import Raw, status_of, stream_status
from tests.services import echo_round_trip, echo_server, exchange, exchange_server, tcp_relay
from vnet import wire
from vnet.core.auth import PenaltyPolicy, TokenTable
from vnet.core.config import RouteLimits, ServeConfig, UseConfig
from vnet.node.client import NodeCredentials
from vnet.node.node import Node, NodeTimeouts
from vnet.route.security import RouteSecurity
from vnet.route.server import RunningRoute
from vnetrpc.v1 import route_pb2 as pb

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
TOKENS = TokenTable(per_group={"a": "token-a", "b": "token-b"})


def _security(tokens: TokenTable = TOKENS, penalty: PenaltyPolicy | None = None) -> RouteSecurity:
    # These tests fail on purpose a lot; the penalty has its own test.
    return RouteSecurity(tokens=tokens, penalty=penalty or PenaltyPolicy(max_failures=10_000))


@pytest.fixture
async def secured(make_route: MakeRoute) -> RunningRoute:
    return await make_route(security=_security())


async def _node(
    make_node: MakeNode, route: RunningRoute, token: str, group: str, **kw: object
) -> Node:
    """A node of `group` (named so) presenting `token`."""
    return await make_node(
        group,
        group,
        route=route,
        timeouts=NodeTimeouts(connect=TIMEOUT),
        credentials=NodeCredentials(token=token),
        **kw,
    )


async def test_join_needs_the_groups_token(secured: RunningRoute) -> None:
    raw = Raw(secured.port)
    no_token = await status_of(raw.join(None))
    wrong = await status_of(raw.join("guess"))
    other_group = await status_of(raw.join("token-b", group="a"))
    unknown_group = await status_of(raw.join("token-a", group="nonexistent"))
    # One answer for all of them: nothing tells which part was wrong.
    assert no_token == wrong == other_group == unknown_group
    assert no_token[0] == UNAUTH
    joined = await raw.join("token-a", group="a")
    assert joined.group == "a"
    await raw.close()


async def test_every_call_checks_the_token_not_only_join(secured: RunningRoute) -> None:
    raw = Raw(secured.port)
    session = (await raw.join("token-a")).session
    good = raw.md("token-a", session)
    await raw.stub.Ping(pb.PingRequest(nonce=7), metadata=good, timeout=5)
    for bad in (raw.md(None, session), raw.md("guess", session), raw.md("token-b", session)):
        assert (await status_of(raw.stub.Ping(pb.PingRequest(), metadata=bad)))[0] == UNAUTH
        assert (await status_of(raw.stub.ListServes(pb.ListServesRequest(), metadata=bad)))[
            0
        ] == UNAUTH
        assert (await status_of(raw.stub.ListVnets(pb.ListVnetsRequest(), metadata=bad)))[
            0
        ] == UNAUTH
        request = pb.RegisterServeRequest(serveid=701, name="x", ip="127.0.0.1", port=22)
        assert (await status_of(raw.stub.RegisterServe(request, metadata=bad)))[0] == UNAUTH
        dial = raw.dial((*bad, ("vnet-serveid", "701")))
        assert (await stream_status(dial))[0] == UNAUTH
        accept = raw.accept((*bad, ("vnet-tunnel", "00")))
        assert (await stream_status(accept))[0] == UNAUTH
    # A made-up session with a good token is refused the same way.
    made_up = raw.md("token-a", "not-a-session")
    assert (await status_of(raw.stub.Ping(pb.PingRequest(), metadata=made_up)))[0] == UNAUTH
    await raw.close()


async def test_other_groups_serves_look_like_nonexistent_ones(
    secured: RunningRoute, make_node: MakeNode
) -> None:
    service = await echo_server()
    await _node(
        make_node,
        secured,
        "token-b",
        "b",
        serves=(ServeConfig(key="s", port=service.port, serveid=701),),
    )
    raw = Raw(secured.port)
    session = (await raw.join("token-a")).session
    md = raw.md("token-a", session)
    exists_elsewhere = await stream_status(raw.dial((*md, ("vnet-serveid", "701"))))
    nowhere = await stream_status(raw.dial((*md, ("vnet-serveid", "702"))))
    assert exists_elsewhere[0] == nowhere[0] == grpc.StatusCode.NOT_FOUND
    assert re.sub(r"\d+", "N", exists_elsewhere[1]) == re.sub(r"\d+", "N", nowhere[1])
    listed = await raw.stub.ListServes(pb.ListServesRequest(), metadata=md, timeout=5)
    assert list(listed.serves) == []
    vnets = await raw.stub.ListVnets(pb.ListVnetsRequest(), metadata=md, timeout=5)
    assert [v.group for v in vnets.vnets] == ["a"]
    # Nor can it withdraw B's serve: the same answer as for a serve that never was.
    gone = await status_of(
        raw.stub.UnregisterServe(pb.UnregisterServeRequest(serveid=701), metadata=md)
    )
    never = await status_of(
        raw.stub.UnregisterServe(pb.UnregisterServeRequest(serveid=702), metadata=md)
    )
    assert gone[0] == never[0] == grpc.StatusCode.NOT_FOUND
    assert re.sub(r"\d+", "N", gone[1]) == re.sub(r"\d+", "N", never[1])
    await raw.close()
    await service.close()


async def test_only_the_serves_owner_can_accept_its_tunnel(secured: RunningRoute) -> None:
    owner = Raw(secured.port)
    _, owner_md, control = await owner.join_and_serve("token-a", 701, name="owner")
    dialer = Raw(secured.port)
    dialer_md = dialer.md("token-a", (await dialer.join("token-a", name="dialer")).session)
    dial = dialer.dial((*dialer_md, ("vnet-serveid", "701")))
    await dial.write(wire.encode_data(b"hello"))
    while True:
        event = await control.read()
        if event.WhichOneof("event") == "open_tunnel":
            break
    tunnel_id = event.open_tunnel.tunnel_id
    # Someone else of the same group, and someone of another group, try to take it.
    for token, group in (("token-a", "a"), ("token-b", "b")):
        thief = Raw(secured.port)
        md = thief.md(token, (await thief.join(token, group=group, name="thief")).session)
        stolen = await stream_status(thief.accept((*md, ("vnet-tunnel", tunnel_id))))
        made_up = await stream_status(thief.accept((*md, ("vnet-tunnel", "0" * 16))))
        assert stolen == made_up
        assert stolen[0] == grpc.StatusCode.NOT_FOUND
        await thief.close()
    # The owner still can, and gets the bytes.
    accept = owner.accept((*owner_md, ("vnet-tunnel", tunnel_id)))
    assert await accept.read() == wire.encode_data(b"hello")
    dial.cancel()
    accept.cancel()
    control.cancel()
    await owner.close()
    await dialer.close()


async def test_group_like_fields_cannot_move_a_node(secured: RunningRoute) -> None:
    raw = Raw(secured.port)
    # A's token asking for group b: the same answer as a wrong token.
    assert await status_of(raw.join("token-a", group="b")) == await status_of(raw.join("x"))
    await raw.close()


async def test_a_token_for_all_groups(make_route: MakeRoute) -> None:
    route = await make_route(
        security=_security(TokenTable(all_groups="master", per_group={"a": "token-a"}))
    )
    raw = Raw(route.port)
    assert (await raw.join("master", group="anything")).group == "anything"
    assert (await raw.join("token-a", group="a")).group == "a"
    assert (await status_of(raw.join("token-a", group="anything")))[0] == UNAUTH
    await raw.close()


async def test_tunnels_work_with_tokens(secured: RunningRoute, make_node: MakeNode) -> None:
    service = await exchange_server()
    await _node(
        make_node,
        secured,
        "token-a",
        "a",
        serves=(ServeConfig(key="s", port=service.port, serveid=701),),
    )
    office = await _node(
        make_node, secured, "token-a", "a", uses=(UseConfig(key="s", serveid=701, port=0),)
    )
    port = await use_port(office, "s")
    await exchange(port, 1 << 20, 1 << 20)
    await service.close()


# --- bad input ------------------------------------------------------------------


async def test_bad_requests_get_clear_statuses_and_the_route_keeps_serving(
    secured: RunningRoute, make_node: MakeNode
) -> None:
    service = await echo_server()
    await _node(
        make_node,
        secured,
        "token-a",
        "a",
        serves=(ServeConfig(key="s", port=service.port, serveid=701),),
    )
    raw = Raw(secured.port)
    md = raw.md("token-a", (await raw.join("token-a")).session)

    def register(**fields: object) -> object:
        base: dict[str, object] = {"serveid": 0, "name": "x", "ip": "127.0.0.1", "port": 22}
        base.update(fields)
        return raw.stub.RegisterServe(pb.RegisterServeRequest(**base), metadata=md, timeout=5)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(register(port=0)) == (invalid, "port 0 is out of range (1-65535)")
    assert await status_of(register(port=70000)) == (
        invalid,
        "port 70000 is out of range (1-65535)",
    )
    assert await status_of(register(serveid=1000)) == (
        invalid,
        "serveid 1000 is out of range (0-999)",
    )
    assert await status_of(register(type="sctp")) == (
        invalid,
        "type 'sctp' is not supported (tcp or udp)",
    )
    assert (await status_of(register(name="x" * 10_000)))[0] == invalid
    # Oversized: past the route's message limit.
    code, _ = await status_of(register(info="x" * (5 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Tunnel metadata that is missing or nonsense.
    for serveid in ("", "0", "abc", "1000", "-1"):
        status = await stream_status(raw.dial((*md, ("vnet-serveid", serveid))))
        assert status[0] == invalid, serveid
    assert (await stream_status(raw.accept((*md, ("vnet-tunnel", "")))))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    # A frame over the size limit ends that stream only.
    big = raw.dial((*md, ("vnet-serveid", "701")))
    assert (await stream_status(big, wire.encode_data(b"x" * (5 << 20))))[0] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # Garbage frames reach the serving node, which resets that tunnel alone.
    garbage = raw.dial((*md, ("vnet-serveid", "701")))
    await garbage.write(b"\xff\xfe\xfd garbage")
    async with asyncio.timeout(TIMEOUT):
        reply = await garbage.read()
    assert wire.decode_frame(reply)[0] is wire.FrameKind.RESET
    garbage.cancel()
    # Everyone else carries on.
    office = await _node(
        make_node, secured, "token-a", "a", uses=(UseConfig(key="s", serveid=701, port=0),)
    )
    port = await use_port(office, "s")
    assert await echo_round_trip(port, b"still fine") == b"still fine"
    await raw.stub.Ping(pb.PingRequest(), metadata=md, timeout=5)
    await raw.close()
    await service.close()


async def test_limits(make_route: MakeRoute) -> None:
    route = await make_route(
        security=_security(TokenTable()),
        limits=RouteLimits(max_nodes=3, max_serves_per_node=2, max_tunnels_per_node=1),
    )
    raw = Raw(route.port)
    md = raw.md(None, (await raw.join(None)).session)
    for serveid in (701, 702):
        await raw.stub.RegisterServe(
            pb.RegisterServeRequest(serveid=serveid, name="s", ip="127.0.0.1", port=22),
            metadata=md,
            timeout=5,
        )
    third = await status_of(
        raw.stub.RegisterServe(
            pb.RegisterServeRequest(serveid=703, name="s", ip="127.0.0.1", port=22), metadata=md
        )
    )
    assert third == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "this vnet has 2 serves, the most the route allows",
    )
    # Re-registering one of its own is not a new serve.
    await raw.stub.RegisterServe(
        pb.RegisterServeRequest(serveid=702, name="s2", ip="127.0.0.1", port=23),
        metadata=md,
        timeout=5,
    )
    # Tunnels: one open (waiting for its accept) is the cap.
    dialer = Raw(route.port)
    dmd = dialer.md(None, (await dialer.join(None)).session)
    first = dialer.dial((*dmd, ("vnet-serveid", "701")))
    await first.write(wire.encode_data(b"x"))
    await wait_until(lambda: route.servicer.pending, "the first tunnel to be pending")
    second = await stream_status(dialer.dial((*dmd, ("vnet-serveid", "701"))))
    assert second == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "this vnet has 1 tunnels open, the most the route allows",
    )
    first.cancel()
    # Nodes: the third joins, the fourth does not.
    await raw.join(None)
    assert await status_of(raw.join(None)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the route is full (3 nodes)",
    )
    await raw.close()
    await dialer.close()


# --- penalties ------------------------------------------------------------------


async def test_guessing_is_penalised_per_address_and_recovers(make_route: MakeRoute) -> None:
    now = [1000.0]
    route = await make_route(
        security=_security(penalty=PenaltyPolicy(max_failures=5, window=60, penalty=30.0)),
        clock=lambda: now[0],
    )
    relay, _ = await tcp_relay(route.port, source_ip="127.0.0.2")
    attacker = Raw(relay.port)
    good = Raw(route.port)
    for _ in range(5):
        assert (await status_of(attacker.join("guess")))[0] == UNAUTH
    # Shut out now, even with the right token ...
    code, details = await status_of(attacker.join("token-a"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("too many failed attempts from 127.0.0.2; try again in 30s")
    # ... while a node from another address is unaffected.
    assert (await good.join("token-a")).group == "a"
    # The penalty ends by itself, when its time (the route's clock) is up.
    now[0] += 29.0
    assert (await status_of(attacker.join("token-a")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    now[0] += 1.5
    assert (await attacker.join("token-a")).group == "a"
    await attacker.close()
    await good.close()
    await relay.close()


# --- TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> object:
    import trustme

    return trustme.CA()


def _server_tls(ca: object, client_ca: object | None = None) -> object:
    from vnet.route.security import ServerTls

    cert = ca.issue_cert("127.0.0.1", "localhost")  # type: ignore[attr-defined]
    return ServerTls(
        cert_chain=b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        private_key=cert.private_key_pem.bytes(),
        client_ca=client_ca.cert_pem.bytes() if client_ca is not None else None,  # type: ignore[attr-defined]
    )


async def _tls_route(make_route: MakeRoute, tls: object) -> RunningRoute:
    return await make_route(security=RouteSecurity(tokens=TOKENS, tls=tls))  # type: ignore[arg-type]


async def _tls_node(
    make_node: MakeNode,
    route: RunningRoute,
    tls: object | None,
    connect: float = TIMEOUT,
    **kw: object,
) -> Node:
    """A node of group a with its token, over `tls` (None: plaintext)."""
    return await make_node(
        "n",
        "a",
        route=route,
        timeouts=NodeTimeouts(connect=connect),
        credentials=NodeCredentials(token="token-a", tls=tls),  # type: ignore[arg-type]
        **kw,
    )


def _client_tls(ca: object, client: object | None = None) -> object:
    from vnet.node.client import ClientTls

    if client is None:
        return ClientTls(root_ca=ca.cert_pem.bytes())  # type: ignore[attr-defined]
    return ClientTls(
        root_ca=ca.cert_pem.bytes(),  # type: ignore[attr-defined]
        cert_chain=b"".join(b.bytes() for b in client.cert_chain_pems),  # type: ignore[attr-defined]
        private_key=client.private_key_pem.bytes(),  # type: ignore[attr-defined]
    )


async def test_tunnels_are_byte_exact_over_tls(
    ca: object, make_route: MakeRoute, make_node: MakeNode
) -> None:
    route = await _tls_route(make_route, _server_tls(ca))
    service = await exchange_server()
    tls = _client_tls(ca)
    await _tls_node(
        make_node, route, tls, serves=(ServeConfig(key="s", port=service.port, serveid=701),)
    )
    office = await _tls_node(make_node, route, tls, uses=(UseConfig(key="s", serveid=701, port=0),))
    port = await use_port(office, "s")
    await exchange(port, 16 << 20, 16 << 20)
    await service.close()


async def test_plaintext_client_to_a_tls_route_is_refused(
    ca: object, make_route: MakeRoute, make_node: MakeNode
) -> None:
    from vnet.core.errors import RouteUnavailable

    route = await _tls_route(make_route, _server_tls(ca))
    with pytest.raises(RouteUnavailable, match="cannot reach the route"):
        await _tls_node(make_node, route, None, connect=1.0)


async def test_a_route_certificate_from_another_ca_is_refused(
    ca: object, make_route: MakeRoute, make_node: MakeNode
) -> None:
    import trustme

    from vnet.core.errors import RouteUnavailable

    route = await _tls_route(make_route, _server_tls(ca))
    with pytest.raises(
        RouteUnavailable, match="cannot reach the route.*not signed by the CA in \\[vnet\\] tls_ca"
    ):
        await _tls_node(make_node, route, _client_tls(trustme.CA()), connect=1.0)


async def test_client_certificates_required_when_tls_client_ca_is_set(
    ca: object, make_route: MakeRoute, make_node: MakeNode
) -> None:
    import trustme

    from vnet.core.errors import RouteUnavailable

    client_ca = trustme.CA()
    route = await _tls_route(make_route, _server_tls(ca, client_ca))
    with pytest.raises(RouteUnavailable, match="cannot reach the route"):
        await _tls_node(make_node, route, _client_tls(ca), connect=1.0)
    # A certificate from some other CA is no better than none.
    stranger = trustme.CA().issue_cert("node.example")
    with pytest.raises(RouteUnavailable, match="cannot reach the route"):
        await _tls_node(make_node, route, _client_tls(ca, stranger), connect=1.0)
    node = await _tls_node(make_node, route, _client_tls(ca, client_ca.issue_cert("node.example")))
    assert node.vnetid


async def test_stale_sessions_with_good_tokens_are_not_penalised(make_route: MakeRoute) -> None:
    # A node that reconnected has calls in flight on its old session: those
    # fail, but they are not guesses, and must not shut its address out.
    route = await make_route(
        security=_security(penalty=PenaltyPolicy(max_failures=3, window=60, penalty=60))
    )
    raw = Raw(route.port)
    stale = raw.md("token-a", "an-old-session")
    for _ in range(10):
        code, _ = await status_of(raw.stub.Ping(pb.PingRequest(), metadata=stale))
        assert code == UNAUTH
    assert (await raw.join("token-a")).group == "a"
    # With a bad token the same calls are guesses.
    for _ in range(3):
        await status_of(raw.stub.Ping(pb.PingRequest(), metadata=raw.md("bad", "x")))
    assert (await status_of(raw.join("token-a")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    await raw.close()
