"""Who may use the route: tokens, penalties for guessing, and protected mode.

Pure: no I/O, no clocks (the caller passes `now`). The route's servicer asks
these on every call, including each new tunnel stream.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass


def digest(token: str) -> bytes:
    """SHA-256 of a token: what the route keeps of the token each session joined with."""
    return _digest(token)


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent
    # of the presented token's length and content.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenTable:
    """The route's tokens: one valid for every group, and one per group."""

    def __init__(self, all_groups: str = "", per_group: Mapping[str, str] | None = None) -> None:
        self._all = _digest(all_groups) if all_groups else None
        self._groups = {g: _digest(t) for g, t in (per_group or {}).items() if t}

    @property
    def enabled(self) -> bool:
        """Without any token the route admits everyone (loopback use)."""
        return self._all is not None or bool(self._groups)

    def admits(self, presented: str, group: str) -> bool:
        """Whether `presented` is a valid credential for `group`.

        Every candidate is compared, so the time taken does not tell which
        one (if any) matched, or whether the group has a token at all.
        """
        if not self.enabled:
            return True
        got = _digest(presented)
        unused = _digest("")
        ok_all = hmac.compare_digest(got, self._all or unused) and self._all is not None
        group_digest = self._groups.get(group)
        ok_group = hmac.compare_digest(got, group_digest or unused) and group_digest is not None
        return bool(presented) and (ok_all or ok_group)

    def admits_digest(self, got: bytes, group: str) -> bool:
        """admits() for a token known only by its digest (a session's, on reload).

        The digest of "" is the credential of a session that joined a route
        without tokens: valid only while the route has none.
        """
        if not self.enabled:
            return True
        if got == _digest(""):
            return False
        ok_all = self._all is not None and hmac.compare_digest(got, self._all)
        group_digest = self._groups.get(group)
        ok_group = group_digest is not None and hmac.compare_digest(got, group_digest)
        return ok_all or ok_group

    def changes(self, new: TokenTable) -> list[str]:
        """What differs from this table to new, one line each (never a secret)."""
        found = []
        if self._all != new._all:
            found.append(_changed("[route] token", self._all, new._all))
        for group in sorted(set(self._groups) | set(new._groups)):
            old_d, new_d = self._groups.get(group), new._groups.get(group)
            if old_d != new_d:
                found.append(_changed(f"[group.{group}] token", old_d, new_d))
        return found

    def admits_somewhere(self, presented: str) -> bool:
        """Whether `presented` is valid for at least one group.

        A caller whose session is gone (a node that reconnected, calls still
        in flight on the old one) holds a good token: that is no guessing.
        """
        if not self.enabled:
            return True
        got = _digest(presented)
        hits = [hmac.compare_digest(got, d) for d in (self._all, *self._groups.values()) if d]
        return bool(presented) and any(hits)


def _changed(what: str, old: bytes | None, new: bytes | None) -> str:
    if old is None:
        return f"{what} added"
    if new is None:
        return f"{what} removed"
    return f"{what} changed"


@dataclass(frozen=True)
class PenaltyPolicy:
    """How failed authentications from one source address are penalised."""

    # This many failures within `window` seconds ...
    max_failures: int = 10
    window: float = 60.0
    # ... shut the address out for `penalty` seconds.
    penalty: float = 30.0
    # Bounded memory: the oldest entries go first.
    max_entries: int = 10_000


@dataclass
class _Entry:
    failures: int
    first: float
    blocked_until: float = 0.0


class PenaltyBox:
    """Per-source-address failure counts (cf. OpenSSH PerSourcePenalties)."""

    def __init__(self, policy: PenaltyPolicy | None = None) -> None:
        self.policy = policy or PenaltyPolicy()
        self._entries: dict[str, _Entry] = {}

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds the address must still wait; 0 when it may try."""
        entry = self._entries.get(address)
        if entry is None:
            return 0.0
        if entry.blocked_until > now:
            return entry.blocked_until - now
        if now - entry.first > self.policy.window and entry.blocked_until <= now:
            del self._entries[address]
        return 0.0

    def failure(self, address: str, now: float) -> None:
        entry = self._entries.get(address)
        if entry is None or (now - entry.first > self.policy.window and entry.blocked_until <= now):
            entry = _Entry(failures=0, first=now)
            self._entries.pop(address, None)
            self._entries[address] = entry
            while len(self._entries) > self.policy.max_entries:
                del self._entries[next(iter(self._entries))]
        entry.failures += 1
        if entry.failures >= self.policy.max_failures:
            entry.blocked_until = now + self.policy.penalty
            # The next window starts after the penalty.
            entry.first = entry.blocked_until
            entry.failures = 0

    def __len__(self) -> int:
        return len(self._entries)


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, IPv4-mapped loopback, or the name localhost."""
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def insecure_reason(ip: str, has_tokens: bool, client_certs: bool, allow_insecure: bool) -> str:
    """Why the route must not start as configured ("" when it may).

    Like Redis's protected mode: a route reachable from other machines with
    no credential at all is an open relay into every node's services.
    """
    if allow_insecure or has_tokens or client_certs or is_loopback(ip):
        return ""
    return (
        f"refusing to listen on {ip} without a token: anyone who can reach it could use "
        "every node's services. Set [route] token= (or [group.NAME] token=, token_env=, "
        "token_file=), or require client certificates with tls_client_ca=, or set "
        "[route] allow_insecure=true to accept the risk"
    )
