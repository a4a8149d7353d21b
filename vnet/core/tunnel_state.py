"""How one tunnel ends, with no I/O: events in, actions out.

Rule 1, as in h11's state machine: everything that decides how a tunnel
ends lives here, and nowhere else. The node's pumps and the route's splice
read their ends, feed what they saw to a `TunnelState`, and carry out the
actions it returns; they decide nothing themselves.

A tunnel joins two ends, A and B. Bytes flow both ways, and each direction
is named by the end it is read from. On a node the ends are the local socket
and the gRPC stream to the route; at the route they are the dialling node's
stream and the serving node's. The rules are the same at both:

- a direction ends cleanly with a fin, which is passed on to the other end
  (a socket's write side is shut down; a stream gets a fin frame). The
  tunnel is closed when both directions have ended so;
- anything else ends the whole tunnel with a reset, told to every end that
  does not already know, so a truncated transfer never looks complete:
  a reset from an end, an end failing (an I/O error, the peer gone, a
  cancel), an end whose data stops without a fin, and a protocol error
  (data or a second fin after a fin);
- after a tunnel is closed or reset, nothing changes it any more.

An I/O layer may stop reading an end at its fin (the route does: nothing
may follow a fin on the wire), or keep reading to see how it ends (a node
does, to catch a peer that breaks the protocol).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class End(enum.Enum):
    """One end of a tunnel."""

    A = "a"
    B = "b"

    @property
    def other(self) -> End:
        return End.B if self is End.A else End.A


class Flow(enum.Enum):
    """The state of one direction of a tunnel."""

    OPEN = "open"  # data may come
    FINISHED = "finished"  # a fin came and was passed on
    BROKEN = "broken"  # it ended by a reset of the tunnel


class Phase(enum.Enum):
    """The state of the tunnel as a whole."""

    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one direction finished
    CLOSED = "closed"  # both directions finished: a clean end
    RESET = "reset"


class Kind(enum.Enum):
    """What an end did, as its reader saw it (or, for FAILED, as writing to it found)."""

    DATA = "data"
    FIN = "fin"
    RESET = "reset"  # the end said the tunnel is reset (a reset frame)
    ENDED = "ended"  # the end's data stopped, with or without a fin before
    FAILED = "failed"  # reading or writing the end failed, or it went away


@dataclass(frozen=True, slots=True)
class Event:
    end: End
    kind: Kind
    reason: str = ""


class Do(enum.Enum):
    """What an I/O layer must do."""

    FORWARD = "forward"  # pass the data just read on to `end`
    SEND_FIN = "send-fin"  # tell `end` the direction toward it is over
    SEND_RESET = "send-reset"  # tell `end` the tunnel is reset (RST, reset frame, cancel)
    STOP_READING = "stop-reading"  # the reader of `end` stops
    CLOSE = "close"  # both directions ended cleanly: close both ends


@dataclass(frozen=True, slots=True)
class Action:
    do: Do
    end: End | None = None
    reason: str = ""


class _Then(enum.Enum):
    """What an event on a direction leads to."""

    FINISH = "finish"
    NOTHING = "nothing"
    TRUNCATED = "truncated"  # reset: the source's data stopped without a fin
    PROTOCOL = "protocol"  # reset: the source broke the protocol; tell it too


# The direction read from an end, by its state and what that end did. RESET
# and FAILED are about the whole tunnel, not one direction, and are not here;
# nor is data on an open direction (forwarded: receive's fast path).
_TABLE: dict[tuple[Flow, Kind], tuple[Flow, _Then, str]] = {
    (Flow.OPEN, Kind.FIN): (Flow.FINISHED, _Then.FINISH, ""),
    (Flow.OPEN, Kind.ENDED): (Flow.BROKEN, _Then.TRUNCATED, "ended without fin"),
    (Flow.FINISHED, Kind.DATA): (Flow.BROKEN, _Then.PROTOCOL, "frame after fin"),
    (Flow.FINISHED, Kind.FIN): (Flow.BROKEN, _Then.PROTOCOL, "second fin"),
    (Flow.FINISHED, Kind.ENDED): (Flow.FINISHED, _Then.NOTHING, ""),
}


# What data read from an end while its direction is open comes to: a tuple,
# so callers cannot change it.
_FORWARD_FROM: dict[End, tuple[Action, ...]] = {
    End.A: (Action(Do.FORWARD, End.B),),
    End.B: (Action(Do.FORWARD, End.A),),
}


class TunnelState:
    """One tunnel's ending rules. Not thread-safe; one event at a time."""

    __slots__ = ("_flows", "_reading", "_reset_sent", "_told", "phase", "reason", "reset_by")

    def __init__(self) -> None:
        self._flows = {End.A: Flow.OPEN, End.B: Flow.OPEN}
        self._reading = {End.A: True, End.B: True}
        # A fin or reset was sent to the end: it knows how its side ended.
        self._told = {End.A: False, End.B: False}
        # A fin tells an end about one direction only; a reset is sent even so.
        self._reset_sent = {End.A: False, End.B: False}
        self.phase = Phase.OPEN
        # Why the tunnel was reset, and which end it came from (None: ours).
        self.reason = ""
        self.reset_by: End | None = None

    def flow(self, end: End) -> Flow:
        """The direction read from end."""
        return self._flows[end]

    def told(self, end: End) -> bool:
        """Whether end was sent a fin or a reset: if not, it must not be left
        thinking the tunnel ended well (the route ends its RPC with an error)."""
        return self._told[end]

    @property
    def done(self) -> bool:
        return self.phase in (Phase.CLOSED, Phase.RESET)

    def receive(self, event: Event) -> Sequence[Action]:
        """Apply what an end did; return what the I/O layer must do, in order."""
        if self.done:
            return []
        src = event.end
        # The hot path, once per frame relayed: data on an open direction is
        # forwarded, and nothing is made for it (the answer is a constant).
        if event.kind is Kind.DATA and self._flows[src] is Flow.OPEN:
            return _FORWARD_FROM[src]
        dst = src.other
        if event.kind is Kind.RESET:
            self._reading[src] = False
            return self._reset(event.reason or "reset by peer", src, tell=(dst,))
        if event.kind is Kind.FAILED:
            self._reading[src] = False
            # A failed end cannot be told; the I/O layer tears it down.
            return self._reset(event.reason or "failed", src, tell=(dst,))
        flow, then, why = _TABLE[self._flows[src], event.kind]
        self._flows[src] = flow
        if event.kind is Kind.ENDED:
            self._reading[src] = False
        if then is _Then.NOTHING:
            return []
        if then is _Then.TRUNCATED:
            return self._reset(why, src, tell=(dst,))
        if then is _Then.PROTOCOL:
            return self._reset(why, src, tell=(dst, src))
        # A fin: pass it on.
        self._told[dst] = True
        actions = [Action(Do.SEND_FIN, dst)]
        if self._flows[dst] is Flow.FINISHED:
            self.phase = Phase.CLOSED
            actions.append(Action(Do.CLOSE))
        else:
            self.phase = Phase.HALF_CLOSED
        return actions

    def cancel(self, reason: str) -> list[Action]:
        """A local decision to end the tunnel now (stopping, idle, shutdown):
        a reset, unless it already ended."""
        if self.done:
            return []
        return self._reset(reason, None, tell=(End.A, End.B))

    def _reset(self, reason: str, by: End | None, tell: tuple[End, ...]) -> list[Action]:
        self.phase = Phase.RESET
        self.reason = reason
        self.reset_by = by
        actions: list[Action] = []
        for end in tell:
            if not self._reset_sent[end]:
                self._reset_sent[end] = self._told[end] = True
                actions.append(Action(Do.SEND_RESET, end, reason))
        for end in (End.A, End.B):
            if self._flows[end] is Flow.OPEN:
                self._flows[end] = Flow.BROKEN
            if self._reading[end]:
                self._reading[end] = False
                actions.append(Action(Do.STOP_READING, end))
        return actions
