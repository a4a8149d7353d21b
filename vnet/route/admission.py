"""Who may call the route: the token on every call, the session, penalties,
and how many may be joining at once.

Reads the call's metadata, asks vnet.core.auth (tokens, the penalty box)
with the servicer's clock, and raises the VnetError the caller gets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from vnet import wire
from vnet.core.auth import PenaltyBox, digest, peer_address
from vnet.core.errors import Busy, LimitExceeded, SessionUnknown, Unauthenticated
from vnet.route.security import RouteSecurity

# Logged as the servicer's: the same lines as before it had this module.
log = logging.getLogger("vnet.route.service")

# Sessions joined whose control stream is not open yet, past which a Join is answered
# "busy" (RESOURCE_EXHAUSTED with a retry hint) instead of queueing behind them.
MAX_JOINING = 1000
# The route counts as behind when its timer runs this much late.
LAG_BEHIND = 0.1
# Bounds of the retry hint, in seconds: long enough to spread the returns, short enough
# that a node is not kept waiting long after the route has caught up.
HINT_MIN = 0.1
HINT_MAX = 3.0

# One answer for every authentication failure, so it tells nothing.
BAD_CREDENTIALS = "invalid or missing credentials (token, or session: join again)"


def metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    """The call's metadata value for key ("" when absent)."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("ascii", "replace")
    return ""


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    auth = metadata(context, wire.MD_AUTH)
    return auth[7:] if auth[:7].lower() == "bearer " else ""


def bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The call's "authorization: Bearer TOKEN" token ("" when absent)."""
    return _bearer(context)


def cert_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """The caller's verified client certificate's names: common name, then
    subject alternative names (none without client certificates)."""
    auth = context.auth_context() or {}
    names = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key) or []:
            name = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            # An empty common name (a certificate with SANs only) names nothing.
            if name and name not in names:
                names.append(name)
    return names


def admin_facts(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
    """What the admin API shows of a joining node, and the digest of its token."""
    names = cert_names(context)
    return {
        "peer": context.peer() or "",
        "identity": names[0] if names else "",
        "joined_at_ms": int(time.time() * 1000),
        "credential": digest(_bearer(context)),
    }


class Admission:
    """The route's checks on its callers, and its count of failures."""

    def __init__(self, security: RouteSecurity, clock: Callable[[], float]) -> None:
        self.tokens = security.tokens
        self.penalties = PenaltyBox(security.penalty)
        self.clock = clock
        self.failures = 0

    def admit(self, context: grpc.aio.ServicerContext[Any, Any], group: str) -> None:
        """Check the caller's token for `group`; count and penalise failures.

        An address with too many failures is refused before anything else is
        looked at.
        """
        address = peer_address(context.peer() or "")
        now = self.clock()
        self._not_penalised(address, now)
        if not self.tokens.admits(_bearer(context), group):
            self._failed(address, now)
            raise Unauthenticated(BAD_CREDENTIALS)

    def unknown_session(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        """Refuse a call whose session is not (or no longer) joined."""
        address = peer_address(context.peer() or "")
        now = self.clock()
        self._not_penalised(address, now)
        # A good token with a stale session is a node that reconnected
        # while calls on its old session were in flight: not guessing.
        # With a bad token, a session id is one more thing to guess.
        if not self.tokens.admits_somewhere(_bearer(context)):
            self._failed(address, now)
        raise SessionUnknown(BAD_CREDENTIALS)

    def not_penalised(self, address: str) -> None:
        """Refuse an address with too many failures (the admin API's check too)."""
        self._not_penalised(address, self.clock())

    def failed(self, address: str) -> None:
        """Count and penalise a failed authentication (a wrong admin token too)."""
        self._failed(address, self.clock())

    def _not_penalised(self, address: str, now: float) -> None:
        wait = self.penalties.blocked_for(address, now)
        if wait > 0:
            raise LimitExceeded(
                f"too many failed attempts from {address}; try again in {wait:.0f}s"
            )

    def _failed(self, address: str, now: float) -> None:
        self.penalties.failure(address, now)
        self.failures += 1
        log.warning("authentication failed from %s", address)


class JoinGate:
    """Join back-pressure in a storm.

    A Join makes a session that must open its Control stream next. While more
    than `limit` have not, and the route's loop has been running late (`lag`,
    seconds, set by the servicer's timer: the route itself is behind, not only
    slow clients), one more Join only makes every one of them later (and,
    before this, timed them out). So it is refused at once with a hint: the
    time the route needs, at the rate it has been opening control streams, to
    get through the ones waiting. Nodes wait at least that long, with jitter
    (vnet.node.node), so they come back spread out instead of all together.
    """

    def __init__(self, limit: int = MAX_JOINING) -> None:
        self.limit = limit
        self.refused = 0
        # How late the route's own timer last ran (the servicer sets it each tick).
        self.lag = 0.0
        # Control streams opened per second, smoothed (a one-second window).
        self.rate = 0.0
        self._window_start = float("nan")
        self._in_window = 0

    def admit(self, joining: int) -> None:
        if joining < self.limit or self.lag < LAG_BEHIND:
            return
        hint = min(max(joining / max(self.rate, 1.0), HINT_MIN), HINT_MAX)
        self.refused += 1
        raise Busy(f"the route is busy admitting {joining} nodes; try again in {hint:.1f}s", hint)

    def controlled(self, now: float) -> None:
        """A session opened its control stream (it is in)."""
        self._in_window += 1
        if not now - self._window_start < 1.0:  # also true for the first (nan)
            elapsed = now - self._window_start
            if elapsed == elapsed and elapsed > 0:  # not nan
                measured = self._in_window / elapsed
                self.rate = measured if self.rate == 0 else (self.rate + measured) / 2
            self._window_start = now
            self._in_window = 0
