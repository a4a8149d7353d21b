"""The route's messages: what vnet.wire.route_messages builds is what the .proto says."""

from __future__ import annotations

from vnet.core.registry import Serve, Vnet
from vnet.wire import route_messages as rm
from vnetrpc.v1 import route_pb2 as pb

SERVE = Serve(700, "03", "ssh", "127.0.0.1", 22, "info", "tcp", unserve=True)


def _parse(name: str, request: object) -> object:
    parse, _ = rm.UNARY_CODECS[name]
    return parse(request.SerializeToString())  # type: ignore[attr-defined]


def _build(name: str, kind: type, answer: object) -> object:
    _, build = rm.UNARY_CODECS[name]
    return kind.FromString(build(answer))  # type: ignore[attr-defined]


def test_every_unary_method_of_the_service_is_in_the_table() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["RouteService"].methods_by_name)
    assert methods == {*rm.UNARY_METHODS, "Control", "Dial", "Accept"}


def test_requests_become_dataclasses() -> None:
    assert _parse("Join", pb.JoinRequest(name="n", group="g", resume_vnetid="04")) == rm.JoinAsk(
        "n", "g", "04", ""
    )
    assert _parse(
        "RegisterServe",
        pb.RegisterServeRequest(serveid=7, name="s", ip="h", port=9, info="i", unserve=True),
    ) == rm.ServeAsk(7, "s", "", "h", 9, "i", True)
    assert _parse("UnregisterServe", pb.UnregisterServeRequest(serveid=12)) == 12
    assert _parse("Ping", pb.PingRequest(nonce=2**63)) == rm.PingAsk(2**63, "")
    assert _parse("Ping", pb.PingRequest(nonce=1, via_vnetid="03")) == rm.PingAsk(1, "03")
    assert _parse("Echo", pb.EchoRequest(probe=9)) == 9
    assert _parse("Unserve", pb.UnserveRequest(vnetid="02", port=80)) == rm.UnserveAsk("02", "", 80)
    assert _parse(
        "AnswerUnserve", pb.AnswerUnserveRequest(request_id="r", refusal="no")
    ) == rm.UnserveAnswer("r", 0, "no")
    assert _parse("ListServes", pb.ListServesRequest()) is None


def test_answers_become_their_messages() -> None:
    info = pb.ServeInfo(
        serveid=700,
        vnetid="03",
        name="ssh",
        type="tcp",
        ip="127.0.0.1",
        port=22,
        info="info",
        unserve=True,
    )
    assert _build(
        "Join", pb.JoinResponse, rm.JoinAnswer("s", "01", "g", "boot", "resume")
    ) == pb.JoinResponse(session="s", vnetid="01", group="g", boot_id="boot", resume_token="resume")
    assert _build(
        "RegisterServe", pb.RegisterServeResponse, rm.Registered(SERVE, True)
    ) == pb.RegisterServeResponse(serve=info, reassigned=True)
    assert _build("ListServes", pb.ListServesResponse, [SERVE]) == pb.ListServesResponse(
        serves=[info]
    )
    assert _build(
        "ListVnets", pb.ListVnetsResponse, [(Vnet("03", "n", "g"), 2)]
    ) == pb.ListVnetsResponse(vnets=[pb.VnetInfo(vnetid="03", name="n", group="g", serves=2)])
    assert _build("Ping", pb.PingResponse, rm.Pong(5, "b", True)) == pb.PingResponse(
        nonce=5, boot_id="b", via_echoed=True
    )
    assert _build("Unserve", pb.UnserveResponse, SERVE) == pb.UnserveResponse(serve=info)
    assert _build("Leave", pb.LeaveResponse, None) == pb.LeaveResponse()


def test_control_events_are_encoded_ControlEvents() -> None:
    def event(data: bytes) -> pb.ControlEvent:
        return pb.ControlEvent.FromString(data)

    assert event(rm.snapshot_event([SERVE])).snapshot.serves[0].serveid == 700
    assert event(rm.serve_added_event(SERVE)).serve_added.unserve
    removed = event(rm.serve_removed_event(SERVE)).serve_removed
    assert (removed.serveid, removed.vnetid) == (700, "03")
    opened = event(rm.open_tunnel_event("ab" * 8, 700, "01")).open_tunnel
    assert (opened.tunnel_id, opened.serveid, opened.from_vnetid) == ("ab" * 8, 700, "01")
    asked = event(rm.unserve_asked_event("r", "01", "127.0.0.1", 80)).unserve_asked
    assert (asked.request_id, asked.from_vnetid, asked.ip, asked.port) == (
        "r",
        "01",
        "127.0.0.1",
        80,
    )
    going = event(rm.going_away_event("bye", 5000)).going_away
    assert (going.reason, going.grace_ms) == ("bye", 5000)
