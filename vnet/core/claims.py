"""Ids that returning nodes claim after a route restart, held for them a while.

Pure: the clock is passed in. A route that starts knows nothing of the nodes that were
joined to the process before it; they come back with the vnetid and serveids they had (their
resume request says so, with the boot id of the route that gave them out, so the route can
tell a claim on an earlier boot from a resume on its own). The first to come back must not
take, as fresh ids, the ones the others are about to claim; so, for `grace` seconds from the
route's start:

- a claimed vnetid is given to its claimant; fresh vnetids are made only outside the claimed
  set;
- a claimed serveid is kept for its claimant's group until the claimant registers it; a node
  asking for it meanwhile (with 0, or as a wish) gets another one, fresh dynamic serveids are
  taken only outside the claimed set, and a static one is refused as if registered; a
  claimant's session that ends gives its serveids back to the hold (Sessions.drop), not to
  the free pool, so a claimant whose call timed out after it registered still finds them;
- the same claimant coming back twice (its first Join's answer was lost) is recognised by the
  resume token it presents, and simply takes its claim again;
- fresh dynamic serveids wait until claims have stopped coming for `quiet` seconds (a
  request for one meanwhile is answered "busy" with the wait as its retry hint): in a full
  group any free id is one a node not back yet is about to claim; and until the grace is
  over they are taken from the top of the range down, away from the low ones that a route
  handing out the lowest free id first gave out earliest;
- two claimants of one id: the static rules decide, as for two nodes registering one serveid
  (the first keeps it; a dynamic serveid or a vnetid is reassigned, a static serveid refused),
  and both are told: conflicts() returns what each must hear.

A store that keeps ids across a restart outright (a cluster's) has nothing to hold, and
uses the same conflict rule through decide().
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from vnet.core.config import STATIC_SERVEID_MIN

# How long a restarted route keeps returning nodes' ids for them. Nodes back off up to 15 s
# between attempts (vnet.node.state.Timeouts.reconnect_max), so one that found the route gone
# just before it came back still has a couple of tries inside the grace.
CLAIM_GRACE = 60.0
# Fresh dynamic serveids are handed out once no claim has come for this long.
CLAIM_QUIET = 5.0


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two nodes claimed one id; `kept_by` keeps it, `lost_by` was given another or refused."""

    kind: str  # "vnetid" or "serveid"
    ident: str  # the vnetid, or the serveid as text
    group: str
    kept_by: str  # vnetid of the node that keeps it
    lost_by: str  # vnetid (as now assigned) of the node that does not

    def words(self) -> str:
        what = f"vnetid {self.ident}" if self.kind == "vnetid" else f"serveid {self.ident}"
        return (
            f"{what} was claimed by two nodes after the route restarted: vnet {self.kept_by} "
            f"keeps it, vnet {self.lost_by} does not"
        )


def decide(kind: str, ident: str) -> str:
    """The static rule for the second claimant of an id (the first keeps it): "refuse" for a
    static serveid (as ALREADY_EXISTS refuses a second registration), else "reassign"."""
    if kind == "serveid" and int(ident) >= STATIC_SERVEID_MIN:
        return "refuse"
    return "reassign"


@dataclass(slots=True)
class _Claim:
    claimant: bytes  # digest of the resume token the claimant presented
    group: str
    vnetid: str  # the vnetid the claimant got (for serveid claims)
    # Digests of the resume tokens of the sessions this boot gave the claimant.
    aliases: set[bytes] = field(default_factory=set)


@dataclass
class Claims:
    """The ids held for returning nodes during the grace after this route's start
    (`started`, on `clock`)."""

    clock: Callable[[], float]
    started: float
    grace: float = CLAIM_GRACE
    quiet: float = CLAIM_QUIET
    _last_claim: float | None = None
    _vnetids: dict[str, _Claim] = field(default_factory=dict)
    # group -> serveid -> claim; removed once the claimant has registered it.
    _serveids: dict[str, dict[int, _Claim]] = field(default_factory=dict)
    _conflicts: list[Conflict] = field(default_factory=list)

    def active(self) -> bool:
        """Still within the grace; after it, everything is forgotten (nothing is held)."""
        if self.clock() - self.started < self.grace:
            return True
        if self._vnetids or self._serveids:
            self._vnetids.clear()
            self._serveids.clear()
        return False

    def claim_vnetid(self, vnetid: str, claimant: bytes, group: str) -> str:
        """A returning node claims vnetid. "take": it is its (again); "reassign": another
        node claimed it first (a conflict is noted once the loser's new vnetid is known)."""
        if not self.active():
            return "take"
        self._last_claim = self.clock()
        held = self._vnetids.get(vnetid)
        if held is None:
            self._vnetids[vnetid] = _Claim(claimant, group, vnetid)
            return "take"
        if held.claimant == claimant:
            return "take"
        return decide("vnetid", vnetid)

    def expect(self) -> None:
        """A claimant was told to come back later (the route is busy admitting): its claim
        is still to come, so fresh serveids wait for it too."""
        if self.active():
            self._last_claim = self.clock()

    def settling(self) -> float:
        """Seconds until fresh dynamic serveids may be assigned; 0: now (no claim has come
        for `quiet` seconds, none ever has, or the grace is over)."""
        if self._last_claim is None or not self.active():
            return 0.0
        wait = self._last_claim + self.quiet - self.clock()
        return max(0.0, min(wait, self.started + self.grace - self.clock()))

    def top_down(self) -> bool:
        """Fresh dynamic serveids from the highest free one down (within the grace)."""
        return self._last_claim is not None and self.active()

    def vnetid_held(self, vnetid: str) -> bool:
        """Claimed by a returning node: not to be made as a fresh vnetid."""
        return self.active() and vnetid in self._vnetids

    def alias(self, vnetid: str, digest: bytes) -> None:
        """A session for vnetid's claimant was made with this resume token digest: resuming
        it (a lost connection on this boot) is the claimant coming back."""
        held = self._vnetids.get(vnetid)
        if held is not None:
            held.aliases.add(digest)

    def is_claimant(self, vnetid: str, digest: bytes) -> bool:
        held = self._vnetids.get(vnetid) if self.active() else None
        return held is not None and (digest == held.claimant or digest in held.aliases)

    def vnetid_claimant(self, vnetid: str) -> bytes | None:
        held = self._vnetids.get(vnetid) if self.active() else None
        return None if held is None else held.claimant

    def claim_serveids(
        self, group: str, vnetid: str, claimant: bytes, serveids: Iterable[int]
    ) -> list[int]:
        """The node (now vnetid) claims its old serveids; returns those held by another
        claimant (it will be told when it registers them)."""
        if not self.active():
            return []
        lost = []
        held_here = self._serveids.setdefault(group, {})
        for serveid in serveids:
            held = held_here.get(serveid)
            if held is None or held.claimant == claimant:
                held_here[serveid] = _Claim(claimant, group, vnetid)
            else:
                lost.append(serveid)
        return lost

    def claimed_by(self, group: str, serveid: int) -> bytes | None:
        held = self._serveids.get(group, {}).get(serveid) if self.active() else None
        return None if held is None else held.claimant

    def serveid_holder(self, group: str, serveid: int) -> str | None:
        """The vnetid a serveid is held for, if any (for no one once it is registered)."""
        if not self._serveids or not self.active():
            return None
        held = self._serveids.get(group, {}).get(serveid)
        return None if held is None else held.vnetid

    def held_serveids(self, group: str) -> Collection[int]:
        """The group's serveids held for returning nodes (not to be assigned fresh)."""
        if not self._serveids or not self.active():
            return ()
        return self._serveids.get(group, {}).keys()

    def registered(self, group: str, serveid: int, vnetid: str) -> None:
        """vnetid registered serveid: its claim (if it was its own) is fulfilled."""
        held_here = self._serveids.get(group)
        held = None if held_here is None else held_here.get(serveid)
        if held_here is not None and held is not None and held.vnetid == vnetid:
            del held_here[serveid]
            if not held_here:
                del self._serveids[group]

    def conflict(self, kind: str, ident: str, group: str, kept_by: str, lost_by: str) -> Conflict:
        found = Conflict(kind, ident, group, kept_by, lost_by)
        self._conflicts.append(found)
        return found

    def conflicts(self) -> list[Conflict]:
        """The conflicts noted since the last call (each to be told to both nodes)."""
        out, self._conflicts = self._conflicts, []
        return out
