"""The route's sessions and the tunnels waiting for an Accept, with no I/O.

Everything the route decides about who is joined lives here: joining and
resuming (who may have which vnetid back), the one control stream a session
may open, expiry of a session that never opened it, departure, and the
rendezvous of a Dial with the serving node's Accept (who may accept, and
until when). The servicer feeds it what arrived, with the time, and carries
out the rest (streams, events, splices); secrets come from a function it
passes in, so tests are deterministic.

Sessions are indexed by token, by vnetid and by group (and those still to open
their control stream by join time), so whatever a group does costs the size of
that group, never of the route.

A node that rejoins after a route restart (its resume request names another
boot) claims its old vnetid and serveids: vnet.core.claims holds them for it,
and decides between two claimants of one id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vnet.core.claims import Conflict
from vnet.core.errors import InvalidRequest, LimitExceeded, NotFound
from vnet.core.registry import Registry, Serve, Vnet


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(eq=False, slots=True)
class Session:
    """One joined node."""

    token: str
    vnet: Vnet
    # SHA-256 of the secret that lets this node take the session over.
    resume_digest: bytes
    joined_at: float
    control_open: bool = False
    closed: bool = False
    # Tunnels this node is an end of, open or being set up.
    tunnels: int = 0
    # When this node last answered an OpenTunnel with an Accept.
    accepted_at: float = float("-inf")
    # Digest of the earlier boot's resume token it claimed its ids with (b"" if none).
    claimant: bytes = b""


@dataclass(frozen=True, slots=True)
class Joined:
    session: Session
    # Given to the node once; only its digest is kept.
    resume_token: str
    # The node's own stale session, ended so that it could come back.
    replaced: Session | None = None
    # What that stale session had registered (now withdrawn).
    withdrawn: tuple[Serve, ...] = ()
    # Ids this node claimed that another returning node holds (both are to be told).
    conflicts: tuple[Conflict, ...] = ()


class Sessions:
    """Every joined node of one route."""

    def __init__(self, registry: Registry, max_nodes: int, secret: Callable[[], str]) -> None:
        self.registry = registry
        self.max_nodes = max_nodes
        self._secret = secret
        self._by_token: dict[str, Session] = {}
        self._by_vnetid: dict[str, Session] = {}
        self._by_group: dict[str, dict[str, Session]] = {}
        # Joined, control stream not yet open: in join order (dicts keep it).
        self._uncontrolled: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_token.values()))

    def get(self, token: str) -> Session | None:
        """The live session with this token, if any."""
        session = self._by_token.get(token)
        return None if session is None or session.closed else session

    def of_vnet(self, vnetid: str) -> Session | None:
        return self._by_vnetid.get(vnetid)

    def in_group(self, group: str) -> list[Session]:
        """The group's sessions, in the order they joined."""
        return list(self._by_group.get(group, {}).values())

    def join(
        self,
        name: str,
        group: str,
        now: float,
        resume_vnetid: str = "",
        resume_token: str = "",
        earlier_boot: bool = False,
        resume_serveids: tuple[int, ...] = (),
        proven: bool = False,
    ) -> Joined:
        """A new session; raises LimitExceeded when the route is full.

        A rejoining node (resume_vnetid) gets its vnetid back when it is free
        (after a route restart), or when it proves with its resume token that
        the session holding it is its own stale one, which is ended first so
        its static serveids are free again. Otherwise it gets a new vnetid:
        nobody takes over another node's session.

        earlier_boot: its resume pair is from an earlier boot of the route
        (a restart): it claims its vnetid and resume_serveids (_claim).
        proven: the cluster store gave the node resume_vnetid (it proved its
        session there, on any route): a session here holding it is its stale one.
        """
        if earlier_boot and resume_vnetid and self.registry.claims is not None:
            return self._claim(name, group, now, resume_vnetid, resume_token, resume_serveids)
        replaced: Session | None = None
        withdrawn: tuple[Serve, ...] = ()
        wanted = ""
        # A vnetid held for a claimant after a restart is still this node's if it is that
        # claimant, back with the resume token of a session it got on this boot.
        own_claim = False
        if resume_vnetid:
            claims = self.registry.claims
            own_claim = claims is not None and claims.is_claimant(
                resume_vnetid, _digest(resume_token)
            )
            old = self._by_vnetid.get(resume_vnetid)
            if old is None:
                wanted = resume_vnetid
            elif old.vnet.group == group and (
                proven or hmac.compare_digest(_digest(resume_token), old.resume_digest)
            ):
                withdrawn = tuple(self.drop(old) or ())
                replaced = old
                wanted = resume_vnetid
                # Its own session: whatever it claimed is its own too.
                own_claim = own_claim or bool(old.claimant)
        self._room()
        vnet = self.registry.add_vnet(name, group, wanted=wanted, claimed=own_claim)
        claimant = b""
        claims = self.registry.claims
        if own_claim and claims is not None and vnet.vnetid == resume_vnetid:
            claimant = claims.vnetid_claimant(vnet.vnetid) or b""
        session, resume = self._add(vnet, now, claimant)
        if claimant and claims is not None:
            claims.alias(vnet.vnetid, _digest(resume))
        return Joined(session, resume, replaced, withdrawn)

    def _room(self) -> None:
        if len(self._by_token) >= self.max_nodes:
            raise LimitExceeded(f"the route is full ({self.max_nodes} nodes)")

    def _add(self, vnet: Vnet, now: float, claimant: bytes = b"") -> tuple[Session, str]:
        resume = self._secret()
        session = Session(
            token=self._secret(),
            vnet=vnet,
            resume_digest=_digest(resume),
            joined_at=now,
            claimant=claimant,
        )
        self._by_token[session.token] = session
        self._by_vnetid[vnet.vnetid] = session
        self._by_group.setdefault(vnet.group, {})[session.token] = session
        self._uncontrolled[session.token] = session
        return session, resume

    def _claim(
        self,
        name: str,
        group: str,
        now: float,
        vnetid: str,
        token: str,
        serveids: tuple[int, ...],
    ) -> Joined:
        """A node back from an earlier boot claims its vnetid and serveids.

        The claimant is known by the digest of the resume token it presents:
        the same one again (its first Join's answer was lost) ends its own
        stale session and takes its claim again; another one is a second
        claimant, and the first keeps the id (vnet.core.claims.decide).
        """
        claims = self.registry.claims
        assert claims is not None
        claimant = _digest(token)
        replaced: Session | None = None
        withdrawn: tuple[Serve, ...] = ()
        old = self._by_vnetid.get(vnetid)
        if old is not None and old.claimant == claimant and old.vnet.group == group:
            withdrawn = tuple(self.drop(old) or ())
            replaced, old = old, None
        self._room()
        found: list[Conflict] = []
        if not Registry.valid_vnetid(vnetid):
            verdict = "ignore"  # not an id this route could have given: nothing to claim
        elif old is None:
            verdict = claims.claim_vnetid(vnetid, claimant, group)
        else:
            verdict = "reassign"
        if verdict == "take":
            vnet = self.registry.add_vnet(name, group, wanted=vnetid, claimed=True)
        elif verdict == "ignore":
            vnet = self.registry.add_vnet(name, group)
        else:
            vnet = self.registry.add_vnet(name, group)
            keeper = old.vnet.vnetid if old is not None else vnetid
            found.append(claims.conflict("vnetid", vnetid, group, keeper, vnet.vnetid))
        session, resume = self._add(vnet, now, claimant)
        if verdict == "take":
            # Its later resumes on this boot present this session's token, not the old one.
            claims.alias(vnet.vnetid, _digest(resume))
        for serveid in claims.claim_serveids(group, vnet.vnetid, claimant, serveids):
            keeper = claims.serveid_holder(group, serveid) or self._serve_holder(group, serveid)
            found.append(claims.conflict("serveid", str(serveid), group, keeper, vnet.vnetid))
        return Joined(session, resume, replaced, withdrawn, tuple(found))

    def _serve_holder(self, group: str, serveid: int) -> str:
        try:
            return self.registry.find(group, serveid).vnetid
        except NotFound:
            return "?"

    def open_control(self, session: Session) -> None:
        """The session's control stream opens; a second one is refused."""
        if session.control_open:
            raise InvalidRequest("this session already has a control stream")
        session.control_open = True
        self._uncontrolled.pop(session.token, None)

    def drop(self, session: Session) -> list[Serve] | None:
        """End a session: its serves are withdrawn and returned; None if it had ended."""
        if self._by_token.pop(session.token, None) is None:
            return None
        session.closed = True
        self._uncontrolled.pop(session.token, None)
        if self._by_vnetid.get(session.vnet.vnetid) is session:
            del self._by_vnetid[session.vnet.vnetid]
        members = self._by_group.get(session.vnet.group)
        if members is not None:
            members.pop(session.token, None)
            if not members:
                del self._by_group[session.vnet.group]
        gone = self.registry.remove_vnet(session.vnet.vnetid)
        claims = self.registry.claims
        if gone and session.claimant and claims is not None:
            # A claimant's serveids stay its own across its sessions on this boot while the
            # grace lasts: one whose call timed out after it had registered (a storm) comes
            # back on a new session, and in a full group the id it freed would otherwise be
            # the only free one, the next fresh serveid anyone gets.
            claims.claim_serveids(
                session.vnet.group, session.vnet.vnetid, session.claimant, (s.serveid for s in gone)
            )
        return gone

    def uncontrolled(self, now: float, within: float) -> list[Session]:
        """Sessions that joined more than `within` ago and never opened their control stream.

        Only those still waiting are looked at, oldest first, and only up to the
        first that is not yet late: the cost is what expires, not the route's size.
        """
        late = []
        for session in self._uncontrolled.values():
            if now - session.joined_at < within:
                break
            late.append(session)
        return late

    @property
    def joining(self) -> int:
        """Sessions joined whose control stream is not open yet (admission counts them)."""
        return len(self._uncontrolled)


@dataclass(eq=False, slots=True)
class Pending:
    """A Dial waiting for its serving node's Accept."""

    tunnel_id: str
    owner: Session
    dialer: Session
    serveid: int
    dialled_at: float


@dataclass(slots=True)
class Rendezvous:
    """Dials waiting for an Accept, and until when they wait.

    A Dial waits `accept` seconds counted from the Dial or from the serving
    node's last Accept, whichever is later: under a burst a node answers
    hundreds of OpenTunnels in order, and the last are no less answered for
    coming late. However busy the node, no Dial waits longer than `limit`.
    """

    accept: float
    limit: float
    _waiting: dict[str, Pending] = field(default_factory=dict)

    def __contains__(self, tunnel_id: str) -> bool:
        return tunnel_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def add(
        self, tunnel_id: str, owner: Session, dialer: Session, serveid: int, now: float
    ) -> Pending:
        if tunnel_id in self._waiting:
            raise InvalidRequest(f"tunnel {tunnel_id} is already being set up")
        pending = Pending(tunnel_id, owner, dialer, serveid, now)
        self._waiting[tunnel_id] = pending
        return pending

    def take(self, tunnel_id: str, caller: Session, now: float) -> Pending:
        """The caller's Accept for tunnel_id. Only the serve's own node may accept it."""
        pending = self._waiting.get(tunnel_id)
        if pending is None or pending.owner is not caller:
            raise NotFound("no such tunnel waiting for this vnet")
        del self._waiting[tunnel_id]
        caller.accepted_at = max(caller.accepted_at, now)
        return pending

    def forget(self, pending: Pending) -> None:
        """The Dial is over: no Accept may take it any more.

        Only this very entry: once taken, its id may already name another Dial.
        """
        if self._waiting.get(pending.tunnel_id) is pending:
            del self._waiting[pending.tunnel_id]

    def deadline(self, pending: Pending) -> float:
        """When the Dial gives up, as things stand (each Accept of its node moves it)."""
        since = max(pending.dialled_at, pending.owner.accepted_at)
        return min(since + self.accept, pending.dialled_at + self.limit)

    def of_session(self, session: Session) -> list[Pending]:
        """Remove and return the waiting tunnels the session is an end of (it is leaving)."""
        gone = [p for p in self._waiting.values() if session in (p.owner, p.dialer)]
        for pending in gone:
            del self._waiting[pending.tunnel_id]
        return gone
