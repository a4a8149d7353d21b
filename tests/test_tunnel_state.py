"""The tunnel state machine, with no I/O: its table directly, then a whole
tunnel (two applications, two nodes and the route, each with its own
machine) over fake links, in many delivery orders, h11-style.

The invariants checked for every ending in every order: a receiver that saw
a clean end of a direction got every byte sent in it; one that did not, and
did not end the tunnel itself, sees a reset; every machine ends.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from vnet.core.tunnel_state import Action, Do, End, Event, Flow, Kind, Phase, TunnelState

A, B = End.A, End.B


def kinds(actions: Sequence[Action]) -> list[tuple[Do, End | None]]:
    return [(a.do, a.end) for a in actions]


# --- the table -----------------------------------------------------------------


def test_data_is_forwarded_to_the_other_end() -> None:
    t = TunnelState()
    assert kinds(t.receive(Event(A, Kind.DATA))) == [(Do.FORWARD, B)]
    assert kinds(t.receive(Event(B, Kind.DATA))) == [(Do.FORWARD, A)]
    assert t.phase is Phase.OPEN


def test_fin_each_way_closes_cleanly() -> None:
    t = TunnelState()
    assert kinds(t.receive(Event(A, Kind.FIN))) == [(Do.SEND_FIN, B)]
    assert t.phase is Phase.HALF_CLOSED
    assert t.flow(A) is Flow.FINISHED
    # The other direction goes on after a half-close.
    assert kinds(t.receive(Event(B, Kind.DATA))) == [(Do.FORWARD, A)]
    assert kinds(t.receive(Event(B, Kind.FIN))) == [(Do.SEND_FIN, A), (Do.CLOSE, None)]
    assert t.phase is Phase.CLOSED
    assert t.told(A)
    assert t.told(B)


def test_an_end_that_stops_after_its_fin_is_fine() -> None:
    t = TunnelState()
    t.receive(Event(A, Kind.FIN))
    assert t.receive(Event(A, Kind.ENDED)) == []
    assert t.phase is Phase.HALF_CLOSED


@pytest.mark.parametrize("after_fin", [False, True])
def test_a_reset_from_an_end_is_told_to_the_other_only(after_fin: bool) -> None:
    t = TunnelState()
    if after_fin:
        # Even the end that already had a fin hears of the reset: its own
        # direction toward the resetting end is cut.
        t.receive(Event(A, Kind.FIN))
    actions = t.receive(Event(A, Kind.RESET, "boom"))
    assert (Do.SEND_RESET, B) in kinds(actions)
    assert (Do.SEND_RESET, A) not in kinds(actions)
    assert (Do.STOP_READING, B) in kinds(actions)
    assert t.phase is Phase.RESET
    assert t.reason == "boom"
    assert t.reset_by is A
    assert not t.told(A)


def test_a_failed_end_resets_the_other() -> None:
    t = TunnelState()
    actions = t.receive(Event(B, Kind.FAILED, "went away"))
    assert kinds(actions) == [(Do.SEND_RESET, A), (Do.STOP_READING, A)]
    assert t.reason == "went away"


def test_data_that_stops_without_fin_is_a_truncation() -> None:
    t = TunnelState()
    actions = t.receive(Event(A, Kind.ENDED))
    assert (Do.SEND_RESET, B) in kinds(actions)
    assert t.phase is Phase.RESET
    assert t.reason == "ended without fin"


@pytest.mark.parametrize(
    ("kind", "why"), [(Kind.DATA, "frame after fin"), (Kind.FIN, "second fin")]
)
def test_anything_after_a_fin_is_a_protocol_error_told_to_both(kind: Kind, why: str) -> None:
    t = TunnelState()
    t.receive(Event(A, Kind.FIN))
    actions = t.receive(Event(A, kind))
    # B already has a fin for this direction, but B->A is cut: B hears too.
    assert (Do.SEND_RESET, B) in kinds(actions)
    assert (Do.SEND_RESET, A) in kinds(actions)
    assert t.reason == why


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_cancel_resets_both_ends_at_any_step_before_the_end(steps: int) -> None:
    t = TunnelState()
    for event in [Event(A, Kind.DATA), Event(A, Kind.FIN)][:steps]:
        t.receive(event)
    actions = t.cancel("node stopping")
    assert {(Do.SEND_RESET, A), (Do.SEND_RESET, B)} <= set(kinds(actions))
    assert t.phase is Phase.RESET
    assert t.reset_by is None


def test_nothing_changes_a_tunnel_that_ended() -> None:
    closed = TunnelState()
    closed.receive(Event(A, Kind.FIN))
    closed.receive(Event(B, Kind.FIN))
    reset = TunnelState()
    reset.receive(Event(A, Kind.RESET))
    for t in (closed, reset):
        phase = t.phase
        for end, kind in itertools.product((A, B), Kind):
            assert t.receive(Event(end, kind)) == []
        assert t.cancel("late") == []
        assert t.phase is phase


def test_every_state_and_event_has_a_rule() -> None:
    # No KeyError for any reachable (flow, kind) pair.
    for first, second in itertools.product(Kind, Kind):
        t = TunnelState()
        t.receive(Event(A, first))
        t.receive(Event(A, second))
        t.receive(Event(B, second))


# --- a whole tunnel over fake links ----------------------------------------------
#
# app_a <-> node_a [A=socket, B=stream] <-> route [A=dial, B=accept] <-> node_b
# [A=stream, B=socket] <-> app_b. Each arrow is two FIFO links. What travels:
# between an app and its node ("data", bytes), ("fin",), ("rst",), ("close",);
# between a node and the route ("data", bytes), ("fin",), ("reset",), and the
# call's own ends: ("cancel",) from a node, ("status", ok) from the route.


@dataclass
class App:
    sent: bytearray = field(default_factory=bytearray)
    got: bytearray = field(default_factory=bytearray)
    saw_fin: bool = False
    saw_rst: bool = False
    did_fin: bool = False
    did_rst: bool = False
    # The node closed the connection after a fin each way.
    closed: bool = False


Link = deque[tuple[object, ...]]


class Net:
    """Three machines and the links between them, driven one message at a time."""

    def __init__(self) -> None:
        self.app_a, self.app_b = App(), App()
        self.node_a, self.route, self.node_b = TunnelState(), TunnelState(), TunnelState()
        names = [
            "a>na",
            "na>a",
            "na>r",
            "r>na",
            "r>nb",
            "nb>r",
            "nb>b",
            "b>nb",
        ]
        self.links: dict[str, Link] = {n: deque() for n in names}
        # Readers told to stop, per machine and end: what arrives there is dropped.
        self.stopped: set[tuple[str, End]] = set()
        self.route_status_sent = False

    # The apps.
    def app_send(self, which: str, data: bytes) -> None:
        app, link = (self.app_a, "a>na") if which == "a" else (self.app_b, "b>nb")
        if app.did_fin or app.did_rst or app.saw_rst:
            return
        app.sent += data
        self.links[link].append(("data", data))

    def app_fin(self, which: str) -> None:
        app, link = (self.app_a, "a>na") if which == "a" else (self.app_b, "b>nb")
        if app.did_fin or app.did_rst or app.saw_rst:
            return
        app.did_fin = True
        self.links[link].append(("fin",))

    def app_rst(self, which: str) -> None:
        app, link = (self.app_a, "a>na") if which == "a" else (self.app_b, "b>nb")
        if app.did_rst or app.saw_rst or app.closed:
            return
        app.did_rst = True
        self.links[link].append(("rst",))

    # Deliveries.
    def deliver(self, name: str) -> None:
        msg = self.links[name].popleft()
        if name == "na>a":
            self._to_app(self.app_a, msg)
        elif name == "nb>b":
            self._to_app(self.app_b, msg)
        elif name == "a>na":
            self._node_socket("na", msg)
        elif name == "b>nb":
            self._node_socket("nb", msg)
        elif name == "r>na":
            self._node_stream("na", msg)
        elif name == "r>nb":
            self._node_stream("nb", msg)
        elif name == "na>r":
            self._route_leg(A, msg)
        else:
            self._route_leg(B, msg)

    @staticmethod
    def _to_app(app: App, msg: tuple[object, ...]) -> None:
        if app.saw_rst or app.did_rst:
            return
        if msg[0] == "data":
            assert not app.saw_fin, "data after fin reached an application"
            app.got += msg[1]  # type: ignore[arg-type]
        elif msg[0] == "fin":
            app.saw_fin = True
        elif msg[0] == "rst":
            app.saw_rst = True
        else:
            app.closed = True

    # A node: its socket is one end, its stream the other.
    def _node(self, which: str) -> tuple[TunnelState, End, End, str, str]:
        if which == "na":
            return self.node_a, A, B, "na>a", "na>r"
        return self.node_b, B, A, "nb>b", "nb>r"

    def _node_socket(self, which: str, msg: tuple[object, ...]) -> None:
        state, sock, stream, _, _ = self._node(which)
        if (which, sock) in self.stopped:
            return
        kind = {"data": Kind.DATA, "fin": Kind.FIN, "rst": Kind.FAILED}[str(msg[0])]
        self._node_do(which, state.receive(Event(sock, kind, "local reset")), msg)

    def _node_stream(self, which: str, msg: tuple[object, ...]) -> None:
        state, _, stream, _, _ = self._node(which)
        if (which, stream) in self.stopped:
            return
        if msg[0] == "status":
            event = Event(stream, Kind.ENDED if msg[1] else Kind.FAILED, "stream failed")
        else:
            kind = {"data": Kind.DATA, "fin": Kind.FIN, "reset": Kind.RESET}[str(msg[0])]
            event = Event(stream, kind, "reset by peer")
        self._node_do(which, state.receive(event), msg)

    def _node_do(self, which: str, actions: Sequence[Action], msg: tuple[object, ...]) -> None:
        state, sock, stream, to_app, to_route = self._node(which)
        for action in actions:
            if action.do is Do.FORWARD:
                self.links[to_app if action.end is sock else to_route].append(msg)
            elif action.do is Do.SEND_FIN:
                self.links[to_app if action.end is sock else to_route].append(("fin",))
            elif action.do is Do.SEND_RESET:
                # A node resets its socket with RST; it can end its call only
                # by cancelling it (the route then resets the far end).
                if action.end is sock:
                    self.links[to_app].append(("rst",))
                else:
                    self.links[to_route].append(("cancel",))
            elif action.do is Do.STOP_READING:
                assert action.end is not None
                self.stopped.add((which, action.end))
            else:
                self.links[to_app].append(("close",))

    # The route: the dialling node's stream is A, the serving node's B.
    def _route_leg(self, leg: End, msg: tuple[object, ...]) -> None:
        if ("r", leg) in self.stopped:
            return
        kind = {
            "data": Kind.DATA,
            "fin": Kind.FIN,
            "reset": Kind.RESET,
            "cancel": Kind.FAILED,
            "halfclose": Kind.ENDED,
        }[str(msg[0])]
        actions = self.route.receive(Event(leg, kind, "went away"))
        if kind is Kind.FIN:
            # The route stops reading a leg at its fin (nothing may follow).
            self.stopped.add(("r", leg))
        self._route_do(actions, msg)

    def route_cancel(self, reason: str) -> None:
        self._route_do(self.route.cancel(reason), ("none",))

    def node_cancel(self, which: str) -> None:
        state, *_ = self._node(which)
        self._node_do(which, state.cancel("node stopping"), ("none",))

    def _route_do(self, actions: Sequence[Action], msg: tuple[object, ...]) -> None:
        for action in actions:
            link = "r>na" if action.end is A else "r>nb"
            if action.do is Do.FORWARD:
                self.links[link].append(msg)
            elif action.do is Do.SEND_FIN:
                self.links[link].append(("fin",))
            elif action.do is Do.SEND_RESET:
                self.links[link].append(("reset",))
            elif action.do is Do.STOP_READING:
                assert action.end is not None
                self.stopped.add(("r", action.end))
        if self.route.done and not self.route_status_sent:
            # Both RPCs end now: OK for a leg that was told how it ended,
            # an error otherwise.
            self.route_status_sent = True
            self.links["r>na"].append(("status", self.route.told(A)))
            self.links["r>nb"].append(("status", self.route.told(B)))

    def pending(self) -> list[str]:
        return [n for n, q in self.links.items() if q]


Step = tuple[str, ...]


def run(script: list[Step], seed: int) -> Net:
    """Play the script's steps in order, interleaved at random with deliveries."""
    net = Net()
    rng = random.Random(seed)
    todo = deque(script)
    for _ in range(10_000):
        pending = net.pending()
        if not pending and not todo:
            break
        if todo and (not pending or rng.random() < 0.3):
            step = todo.popleft()
            if step[0] == "send":
                net.app_send(step[1], step[2].encode())
            elif step[0] == "fin":
                net.app_fin(step[1])
            elif step[0] == "rst":
                net.app_rst(step[1])
            elif step[0] == "route-cancel":
                net.route_cancel("route stopping")
            elif step[0] == "node-cancel":
                net.node_cancel(step[1])
            else:
                # A node misbehaves on its stream: ("raw", "na>r", kind).
                net.links[step[1]].append((step[2],) + ((b"x",) if step[2] == "data" else ()))
        else:
            net.deliver(rng.choice(pending))
    else:
        raise AssertionError("the tunnel never settled")
    return net


def check(net: Net, *, faults: bool) -> None:
    for sender, receiver in ((net.app_a, net.app_b), (net.app_b, net.app_a)):
        # A clean end of a direction means every byte of it arrived.
        if receiver.saw_fin and not receiver.saw_rst:
            assert bytes(receiver.got) == bytes(sender.sent)
        assert bytes(sender.sent).startswith(bytes(receiver.got))
        # A receiver that did not end things itself hears a fin or a reset.
        finished = receiver.closed or receiver.saw_rst or receiver.did_rst
        if sender.did_fin and not faults:
            assert receiver.saw_fin or receiver.saw_rst or receiver.did_rst
        if sender.did_rst or faults:
            assert finished or receiver.saw_fin, "a reset was not passed on"
    for machine in (net.node_a, net.route, net.node_b):
        assert machine.done
    # Either every machine closed cleanly, or a reset went through.
    phases = {m.phase for m in (net.node_a, net.route, net.node_b)}
    if phases == {Phase.CLOSED}:
        assert net.app_a.closed
        assert net.app_b.closed
        assert bytes(net.app_a.got) == bytes(net.app_b.sent)
        assert bytes(net.app_b.got) == bytes(net.app_a.sent)


ENDINGS: dict[str, list[Step]] = {
    "fin a then b": [("fin", "a"), ("fin", "b")],
    "fin b then a": [("fin", "b"), ("fin", "a")],
    "rst a": [("rst", "a")],
    "rst b": [("rst", "b")],
    "fin a, rst b": [("fin", "a"), ("rst", "b")],
    "fin b, rst a": [("fin", "b"), ("rst", "a")],
    "rst both": [("rst", "a"), ("rst", "b")],
}

FAULTS: dict[str, list[Step]] = {
    "dialling node gone": [("raw", "na>r", "cancel")],
    "serving node gone": [("raw", "nb>r", "cancel")],
    "dial ends without fin": [("raw", "na>r", "halfclose")],
    "accept ends without fin": [("raw", "nb>r", "halfclose")],
    "route stops": [("route-cancel",)],
    "dialling node stops": [("node-cancel", "na")],
    "serving node stops": [("node-cancel", "nb")],
}

TRAFFIC: list[Step] = [("send", "a", "hello "), ("send", "b", "world "), ("send", "a", "again")]


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_ending_in_many_orders(ending: str) -> None:
    for seed in range(150):
        # The ending can come before, amid or after the traffic.
        cut = seed % (len(TRAFFIC) + 1)
        script = TRAFFIC[:cut] + ENDINGS[ending] + TRAFFIC[cut:]
        check(run(script, seed), faults=False)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_every_fault_at_every_step(fault: str, ending: str) -> None:
    plain = TRAFFIC + ENDINGS[ending]
    for seed in range(40):
        at = seed % (len(plain) + 1)
        script = plain[:at] + FAULTS[fault] + plain[at:]
        net = run(script, seed)
        check(net, faults=True)


def test_the_clean_case_ends_clean_in_every_order() -> None:
    for seed in range(200):
        net = run(TRAFFIC + [("fin", "a"), ("fin", "b")], seed)
        assert {net.node_a.phase, net.route.phase, net.node_b.phase} == {Phase.CLOSED}
        assert net.app_b.got == b"hello again"
        assert net.app_a.got == b"world "


def test_a_reset_reaches_the_far_application() -> None:
    for seed in range(100):
        net = run([("send", "a", "abc"), ("rst", "a")], seed)
        assert net.app_b.saw_rst
        assert not net.app_b.saw_fin


def test_a_node_resets_on_a_frame_after_fin() -> None:
    # The route (here, a faulty one) sends data after its fin: the serving
    # node resets its socket instead of passing the bytes on.
    for seed in range(100):
        script: list[Step] = [("send", "a", "x"), ("raw", "r>nb", "fin"), ("raw", "r>nb", "data")]
        net = run(script, seed)
        assert net.app_b.saw_rst
        assert net.node_b.phase is Phase.RESET
        assert net.node_b.reason == "frame after fin"
