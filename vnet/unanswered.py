"""When a serving node counts as unresponsive: the route's fail-fast rule for tunnels.

A node that is frozen (SIGSTOP, a debugger, a swapped-out VM) keeps its TCP
connection, so the route only declares it dead after its keepalive runs out
(up to twice [route] keepalive). Until then every Dial to its serves would
wait the whole accept timeout for an answer that is not coming. The rule
here cuts that short: once the node has left an open_tunnel unanswered for
STALL_AFTER seconds, and has answered nothing at all in that time, new Dials
to it are refused at once; any answer (an Accept, even a late one for a
tunnel the route already gave up on) clears it.

A node that is merely slow (a burst of a thousand connections, accepted late
but surely) keeps answering, so it does not trip the rule: what counts is
silence, not a backlog. Its first answer to a burst can take a while,
though (the route and the node are busy with the same burst), so the
silence allowed grows with the requests waiting, by BACKLOG_ALLOWANCE each,
up to MAX_SILENCE: never longer than the route's accept timeout would have
taken anyway.

Pure: no I/O, no clocks (the caller passes `now`, in seconds).
"""

from __future__ import annotations

# How long a node may leave every open_tunnel unanswered before new Dials to
# its serves are refused at once (seconds).
STALL_AFTER = 2.0
# More silence allowed per request waiting (seconds), and the most in all:
# 1,000 requests at once give the node 7 s for its first answer. (Measured:
# the in-process 1,000-tunnel test on a loaded 2-core machine went 2.5 s
# without an answer, and then answered all.)
BACKLOG_ALLOWANCE = 0.005
MAX_SILENCE = 10.0
# An unanswered request older than this is forgotten (seconds): a node that
# never answers one (a bug, another implementation) must not be shut out for
# good. Longer than the route's accept timeout and its keepalive's verdict.
FORGET_AFTER = 60.0


class AnswerWatch:
    """One node's open_tunnel requests still waiting for its answer."""

    def __init__(
        self,
        stall_after: float = STALL_AFTER,
        forget_after: float = FORGET_AFTER,
        backlog_allowance: float = BACKLOG_ALLOWANCE,
        max_silence: float = MAX_SILENCE,
    ) -> None:
        self.stall_after = stall_after
        self.forget_after = forget_after
        self.backlog_allowance = backlog_allowance
        self.max_silence = max_silence
        # tunnel id -> when it was asked; insertion order is oldest first.
        self._asked: dict[str, float] = {}
        self._last_answer = float("-inf")

    def asked(self, tunnel_id: str, now: float) -> None:
        """An open_tunnel was sent to the node."""
        self._asked[tunnel_id] = now

    def answered(self, tunnel_id: str, now: float) -> None:
        """The node answered (Accept): it is alive, whatever the tunnel's fate."""
        self._asked.pop(tunnel_id, None)
        self._last_answer = now

    def allowed(self) -> float:
        """The silence allowed now, with this many requests waiting (seconds)."""
        extra = self.backlog_allowance * len(self._asked)
        return min(self.stall_after + extra, max(self.max_silence, self.stall_after))

    def silent_for(self, now: float) -> float:
        """Seconds the node has been silent with requests waiting; 0 unless
        that is at least allowed(), i.e. when new Dials should be refused."""
        while self._asked:
            oldest_id, oldest = next(iter(self._asked.items()))
            if now - oldest < self.forget_after:
                break
            del self._asked[oldest_id]
        if not self._asked:
            return 0.0
        oldest = next(iter(self._asked.values()))
        silent = now - max(oldest, self._last_answer)
        return silent if silent >= self.allowed() else 0.0

    @property
    def waiting(self) -> int:
        """Requests asked and not answered (nor forgotten yet)."""
        return len(self._asked)
