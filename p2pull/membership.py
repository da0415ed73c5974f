"""Who is in the cluster, and which member seeds which blob.

Pure logic: no sockets, no trio, no clock reads (every time-dependent call takes ``now``).

A member's identity is its advertised peer address, ``"host:port"`` (``"[h]:p"`` for IPv6) with the
host an IP literal in canonical form, so every node computes the same identity for the same member
whichever discovery source found it. Discovery sources ("static", "dns", "mdns") each hand in
their full current view; the live view is the union of those views plus this node, minus the
members the peer layer found unreachable (suspected) within the last ``suspect_for`` seconds.

The seed of a blob is the live member with the highest rendezvous (HRW) score for its digest;
removing any other member never moves a blob's seed, and removing the seed hands the blob to the
old second. See tests/test_membership.py for the properties.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from p2pull.errors import P2pullError

RANKS_KEPT = 64  # digests whose HRW ranking a Membership remembers


class InvalidPeerAddress(P2pullError, ValueError):
    """A peer address that is not ``IP:port`` (the host must be an IP literal, port 1-65535)."""


def canonical_host(host: str) -> str:
    """The canonical text of an IP literal (``"::FFFF:1"`` -> ``"::ffff:1"``); raise otherwise."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidPeerAddress(
            f"peer host {host!r} is not an IP address (peer identities are IP:port; "
            "use DNS discovery for names)"
        ) from None


def format_node_id(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One agent. ``node_id`` is derived from ``host`` and ``port``; build with ``Member.of``."""

    node_id: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidPeerAddress(f"peer port {self.port} is outside 1-65535")
        if canonical_host(self.host) != self.host:
            raise InvalidPeerAddress(f"peer host {self.host!r} is not in canonical form")
        if self.node_id != format_node_id(self.host, self.port):
            raise InvalidPeerAddress(
                f"node_id {self.node_id!r} is not {format_node_id(self.host, self.port)!r}"
            )

    @classmethod
    def of(cls, host: str, port: int) -> Member:
        """The member at ``host`` (any textual form of an IP) and ``port``."""
        canonical = canonical_host(host)
        return cls(format_node_id(canonical, port), canonical, port)

    @classmethod
    def parse(cls, address: str) -> Member:
        """``"198.18.0.2:5051"`` or ``"[fd00::2]:5051"`` -> Member."""
        text = address.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise InvalidPeerAddress(f"peer address {address!r} is not host:port")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise InvalidPeerAddress(f"IPv6 peer address {address!r} needs brackets: [h]:p")
        if not port_text.isascii() or not port_text.isdigit():
            raise InvalidPeerAddress(f"peer address {address!r} has no numeric port")
        return cls.of(host, int(port_text))


@functools.lru_cache(maxsize=1 << 16)
def rack_of(node_id: str, prefix_bits: int) -> str:
    """The rack (or zone) of a member, from its address: the network of its first
    ``prefix_bits`` bits (an IPv6 address: of its first ``prefix_bits + 32``, at most 128);
    "" when racks are not known (``prefix_bits`` 0)."""
    if prefix_bits <= 0:
        return ""
    host = node_id.rpartition(":")[0].strip("[]")
    address = ipaddress.ip_address(host)
    bits = prefix_bits if address.version == 4 else min(128, prefix_bits + 32)
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def hrw_score(node_id: str, digest: str) -> int:
    """Rendezvous score of ``node_id`` for ``digest``: the first 8 bytes of a sha256, big-endian."""
    hashed = hashlib.sha256(node_id.encode() + b"\0" + digest.encode()).digest()
    return int.from_bytes(hashed[:8], "big")


def rank(members: Iterable[Member], digest: str) -> list[Member]:
    """Members by descending score for ``digest``; ties (practically never) by node_id."""
    return sorted(members, key=lambda m: (-hrw_score(m.node_id, digest), m.node_id))


class Membership:
    """The merged membership view of one node.

    ``version`` bumps each time the live set changes; ``on_change`` (if set) is called right after.
    Suspicion expires with time, which this class cannot observe by itself: every call that takes
    ``now`` applies expiries first, and a shell that wants to notice expiries promptly calls
    ``expire(now=...)`` at ``next_expiry()``. Not thread-safe: use it from the trio thread only.
    """

    __slots__ = (
        "_live",
        "_now",
        "_ranks",
        "_suspected",
        "_views",
        "on_change",
        "self_member",
        "suspect_for",
        "version",
    )

    def __init__(
        self,
        *,
        self_member: Member,
        suspect_for: float = 10.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if suspect_for < 0:
            raise ValueError("suspect_for must be >= 0")
        self.self_member = self_member
        self.suspect_for = suspect_for
        self.on_change = on_change
        self.version = 0
        self._views: dict[str, frozenset[Member]] = {}
        self._suspected: dict[str, float] = {}  # node_id -> when the suspicion ends
        self._now = float("-inf")  # the latest ``now`` seen
        self._live: tuple[Member, ...] = (self_member,)
        self._ranks: dict[str, tuple[int, tuple[Member, ...], dict[str, int]]] = {}

    # -- inputs --------------------------------------------------------------------------------

    def update_source(self, source: str, members: Iterable[Member], *, now: float) -> None:
        """Replace ``source``'s view with ``members`` (its full current view)."""
        view = frozenset(members)
        self._advance(now)
        if view:
            self._views[source] = view
        else:
            self._views.pop(source, None)
        self._refresh()

    def suspect(self, node_id: str, *, now: float) -> None:
        """A connection to ``node_id`` failed: leave the live view for ``suspect_for`` seconds."""
        self._advance(now)
        if node_id != self.self_member.node_id:
            until = now + self.suspect_for
            self._suspected[node_id] = max(self._suspected.get(node_id, until), until)
        self._refresh()

    def alive(self, node_id: str) -> None:
        """``node_id`` answered: clear its suspicion."""
        if self._suspected.pop(node_id, None) is not None:
            self._refresh()

    def expire(self, *, now: float) -> None:
        """Let the suspicions that ended by ``now`` lapse (every ``now``-taking call does this)."""
        if self._advance(now):
            self._refresh()

    # -- queries -------------------------------------------------------------------------------

    def live(self, *, now: float) -> list[Member]:
        """Every source's members plus this node, minus the suspected; sorted by node_id."""
        self.expire(now=now)
        return list(self._live)

    def seed_for(self, digest: str, *, now: float, excluding: Collection[str] = ()) -> Member:
        """The member that fetches ``digest`` from the origin: the live member with the highest
        HRW score, passing over those in ``excluding`` (seeds that gave up on it or whose copy
        failed its digest, this node's own included); this node if every one is passed over."""
        for member in self._ranked(digest, now):
            if member.node_id not in excluding:
                return member
        return self.self_member

    def successors(self, digest: str, *, now: float) -> list[Member]:
        """Live members in HRW order for ``digest``: the seed, then whoever takes over from it."""
        return list(self._ranked(digest, now))

    def ranking(self, digest: str, *, now: float) -> tuple[tuple[Member, ...], dict[str, int]]:
        """The live members in HRW order for ``digest``, and each one's place in it."""
        self._ranked(digest, now)
        _, ranked, places = self._ranks[digest]
        return ranked, places

    def _ranked(self, digest: str, now: float) -> tuple[Member, ...]:
        """The live view in HRW order for ``digest``, remembered for the last RANKS_KEPT
        digests until the view changes (a large cluster's ranking is a sort of every member)."""
        self.expire(now=now)
        cached = self._ranks.get(digest)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        ranked = tuple(rank(self._live, digest))
        self._ranks.pop(digest, None)
        places = {member.node_id: place for place, member in enumerate(ranked)}
        self._ranks[digest] = (self.version, ranked, places)
        while len(self._ranks) > RANKS_KEPT:
            del self._ranks[next(iter(self._ranks))]
        return ranked

    def next_expiry(self) -> float | None:
        """When the earliest suspicion ends (None if nobody is suspected)."""
        return min(self._suspected.values(), default=None)

    def sources(self) -> dict[str, list[Member]]:
        """Each source's current view (for status pages and logs)."""
        return {source: sorted(view) for source, view in sorted(self._views.items())}

    def suspected(self) -> dict[str, float]:
        """node_id -> when its suspicion ends."""
        return dict(self._suspected)

    # -- internals -----------------------------------------------------------------------------

    def _advance(self, now: float) -> bool:
        """Move the clock to ``now``; True if a suspicion lapsed."""
        self._now = max(self._now, now)
        lapsed = [node_id for node_id, until in self._suspected.items() if until <= self._now]
        for node_id in lapsed:
            del self._suspected[node_id]
        return bool(lapsed)

    def _refresh(self) -> None:
        by_id = {member.node_id: member for view in self._views.values() for member in view}
        by_id[self.self_member.node_id] = self.self_member
        live = tuple(
            member for node_id, member in sorted(by_id.items()) if node_id not in self._suspected
        )
        if live != self._live:
            self._live = live
            self.version += 1
            if self.on_change is not None:
                self.on_change()
