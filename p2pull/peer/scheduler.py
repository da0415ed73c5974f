"""Which chunk to ask of which peer: a pure policy, fed events and ``now`` by the swarm's loop.

The scheduler knows each peer's bitfield, what we hold, and every request in flight (with when it
was sent). ``next_requests`` hands out new requests in this order:

1. chunks of the reader window (``set_window``), lowest index first: a local reader waits on them;
2. then rarest first (fewest known peers have it), ties broken by lowest index;

each to the peer that has the chunk and the fewest requests in flight (ties: the per-node order
below, else lowest peer id), never above ``max_in_flight_per_peer`` (nor, in all, above
``downlink_cap``: what the node's downlink takes without a queue, plus ``queued``), never to a
penalized peer, never to a peer that recently failed that chunk, never a chunk we hold, and never a
chunk already in flight, except in the endgame: once every missing chunk is in flight, spare slots
duplicate in-flight chunks that are late (their newest request older than ``ENDGAME_LATE`` typical
pieces, ``piece_seconds``) to other peers (up to ``endgame_duplicates`` requests per chunk; window
chunks first, then the longest outstanding) and the first copy to arrive makes ``on_piece`` return
the others, to cancel.

A chunk a peer pushes unasked (``pushed``) counts as requested from it, and requests for it
elsewhere are returned to cancel.

With ``window_only`` (a blob passed through in a bounded window of memory) only the reader
window's chunks are asked for or taken pushed, and the endgame is the window's: every missing
chunk of it in flight.

``expire`` releases requests at or past ``request_timeout`` and penalizes their peers (no new
requests for ``stall_penalty`` seconds). Everything is deterministic: the same calls in the same
order give the same answers, whatever the dicts' insertion order.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from p2pull.bitfield import Bitfield

PUSHES_PER_PEER = 2  # chunks one peer may have on their way to us, in max_in_flight_per_peer
PIECE_SMOOTHING = 0.2  # weight of the newest piece in piece_seconds
RATE_PIECES = 8  # the downlink's rate is measured over the arrivals of this many pieces
DOWNLINK_GAIN = 2.0  # the chunks the downlink delivers in the quickest answer, times this
ENDGAME_LATE = 2.0  # an endgame request is duplicated once it is this many typical pieces old
# A node's last chunks are asked of any holder, near or far: every node of the rack wants the
# rack's last copies at once and their holders are busy, while far ones are done and idle.
FAR_TAIL = 4


@dataclass(frozen=True, slots=True, order=True)
class Assignment:
    """A request: ask ``peer`` for chunk ``index`` (or, from ``on_piece``/``expire``, cancel it)."""

    peer: str
    index: int


class Scheduler:
    def __init__(
        self,
        *,
        chunk_count: int,
        max_in_flight_per_peer: int = 4,
        max_in_flight: int = 0,
        queued: int = 0,
        request_timeout: float = 10.0,
        endgame_duplicates: int = 2,
        stall_penalty: float = 5.0,
        salt: bytes = b"",
        near: Callable[[str], bool] | None = None,
        far_wait: float = 0.0,
        node_id: str = "",
        blob_key: bytes = b"",
        window_only: bool = False,
    ) -> None:
        if max_in_flight_per_peer < 1 or endgame_duplicates < 1 or max_in_flight < 0:
            raise ValueError(
                "max_in_flight_per_peer and endgame_duplicates must be >= 1, max_in_flight >= 0"
            )
        if request_timeout <= 0 or stall_penalty < 0:
            raise ValueError("request_timeout must be > 0 and stall_penalty >= 0")
        self.chunk_count = chunk_count
        self.max_in_flight_per_peer = max_in_flight_per_peer
        # New requests stop while this many chunks are on their way in all (0: no cap): with
        # many peers, 4 each would ask for far more than the downlink takes before they expire.
        self.max_in_flight = max_in_flight
        self._in_flight = 0  # requests and pushes on their way, all peers together
        # With ``queued`` > 0, new requests also stop while more chunks are on their way than
        # twice what the downlink delivers in the quickest answer seen (DOWNLINK_GAIN), plus
        # ``queued``: every request beyond that waits in the downlink's queue and holds its
        # sender's upload slot meanwhile (a slow node asking dozens of holders keeps their
        # uploads from the rest).
        self.queued = queued
        self.quickest: float | None = None  # the quickest answer to a request (seconds)
        self._arrivals: deque[float] = deque(maxlen=RATE_PIECES)  # when the last pieces came
        self._pushes: set[tuple[str, int]] = set()  # in flight unasked: not timed as answers
        self.request_timeout = request_timeout
        self.endgame_duplicates = endgame_duplicates
        self.stall_penalty = stall_penalty
        # Ties in rarity are broken by a per-node order (the node's id as ``salt``), so nodes
        # that all see the same availability do not all ask for the same chunk first; without
        # a salt, by lowest index.
        # Ties between equally loaded peers are broken the same way: otherwise every node asks
        # the lowest-id holder first and that one uplink carries the chunk to everyone.
        self._salt = salt
        # Holders in this node's rack are asked before the others (each rack's uplink then
        # carries a chunk about once); None: racks are not known.
        self._near = near
        self._far: dict[str, int] = {}  # peer -> 0 near, 1 far (computed once per peer)
        self._far_complete: set[str] = set()  # far peers that hold the whole blob
        # A chunk no near peer holds is fetched across at once by its rack leader, and by the
        # rest of the rack once it has waited ``far_wait`` typical pieces for a near holder
        # (0: nobody waits). A chunk's rack leader is, of this node and the near peers it
        # knows, the one ranked first for the chunk (``blob_key``, the index, the node's id:
        # HRW), so each node leads a share of the chunks and each rack's uplink carries a
        # chunk about once. A near holder that is busy is waited for by everyone.
        self.far_wait = far_wait
        self._far_seen: dict[int, float] = {}  # chunk -> when it was first wanted from afar
        self._node_id = node_id
        self._blob_key = blob_key
        self._leads: dict[int, bool] = {}  # chunk -> this node leads it (until the rack changes)
        # Asked only when no other free holder has the chunk (the blob's seed: it hands each
        # chunk out once, and a finished seed asked by everyone carries the blob many times).
        self.last_resort: str | None = None
        self._tie_rank = list(range(chunk_count))  # chunk index -> its place among equals
        if salt:
            tie = [
                hashlib.sha256(salt + i.to_bytes(8, "big")).digest()[:4] for i in range(chunk_count)
            ]
            for rank, index in enumerate(sorted(range(chunk_count), key=tie.__getitem__)):
                self._tie_rank[index] = rank
        self._peer_tie: dict[str, bytes] = {}
        self._have = Bitfield(chunk_count)  # ValueError if chunk_count < 0
        self._missing = set(range(chunk_count))  # the same, for fast iteration
        self._peers: dict[str, Bitfield] = {}
        self._useful: dict[str, set[int]] = {}  # per peer: what it holds that we miss
        self._offering: set[str] = set()  # the peers whose ``_useful`` is not empty
        self._availability = [0] * chunk_count  # how many known peers hold each chunk
        self._near_availability = [0] * chunk_count  # how many of them are near
        self._by_chunk: dict[int, dict[str, float]] = {}  # in flight: index -> {peer: sent at}
        self._by_peer: dict[str, dict[int, float]] = {}  # the same, per peer
        # Requests for chunks we got meanwhile (have() came before on_piece()): on_piece cancels.
        self._stale: dict[int, set[str]] = {}
        self._penalized_until: dict[str, float] = {}
        # How long a request takes to be answered with its piece, smoothed (None: none yet).
        self.piece_seconds: float | None = None
        self._peer_seconds: dict[str, float] = {}  # the same, per peer
        self._avoid_until: dict[tuple[str, int], float] = {}  # (peer, index) that failed lately
        self._avoid_ends = math.inf  # the earliest of those avoidances ends then
        self._window = range(0)
        # Only the window's chunks are asked for (or taken pushed): a blob passed through to its
        # reader in a bounded window of memory (p2pull.store.window); its endgame is the window's.
        self.window_only = window_only
        # next_requests recomputes only after a change that can allow a new request, or once a
        # penalty or avoidance ends: the swarm loop calls it after every event (every Have).
        self._dirty = True
        self._wake_at = math.inf

    # --- what we and the peers hold -----------------------------------------------------------

    def have(self, index: int) -> None:
        """We hold chunk ``index`` now (verified). Its in-flight requests stop counting."""
        self._have.set(index)  # IndexError when out of range
        self._missing.discard(index)
        self._far_seen.pop(index, None)
        self._dirty = True
        for peer, useful in self._useful.items():
            if index in useful:
                useful.discard(index)
                if not useful:
                    self._offering.discard(peer)
        for peer in list(self._by_chunk.get(index, ())):
            self._release(peer, index)
            self._stale.setdefault(index, set()).add(peer)

    def add_peer(self, peer: str, bitfield: Bitfield) -> None:
        """A peer and what it holds; replaces the bitfield of a peer already known."""
        if bitfield.length != self.chunk_count:
            raise ValueError(f"bitfield of {bitfield.length} chunks for a {self.chunk_count}")
        old = self._peers.get(peer)
        if old is not None:
            near = self._far.get(peer) == 0
            for index in old.present():
                self._availability[index] -= 1
                self._near_availability[index] -= near
        self._peers[peer] = bitfield.copy()
        self._useful[peer] = {index for index in bitfield.present() if index in self._missing}
        if self._useful[peer]:
            self._offering.add(peer)
        else:
            self._offering.discard(peer)
        self._by_peer.setdefault(peer, {})
        if self._near is not None and peer not in self._far:
            self._far[peer] = 0 if self._near(peer) else 1
            if not self._far[peer]:
                self._leads.clear()
        self._dirty = True
        if self._salt and peer not in self._peer_tie:
            self._peer_tie[peer] = hashlib.sha256(self._salt + peer.encode()).digest()[:4]
        near = self._far.get(peer) == 0
        for index in bitfield.present():
            self._availability[index] += 1
            self._near_availability[index] += near
        self._note_complete(peer)

    def _note_complete(self, peer: str) -> None:
        """Keep ``_far_complete`` (what ``_near_offer`` looks for) up to date for ``peer``."""
        if self._far.get(peer) == 1 and self._peers[peer].complete:
            self._far_complete.add(peer)
        else:
            self._far_complete.discard(peer)

    def peer_has(self, peer: str, index: int) -> None:
        """``peer`` announced chunk ``index``. An unknown peer is added (holding just that)."""
        if peer not in self._peers:
            self.add_peer(peer, Bitfield(self.chunk_count))
        field = self._peers[peer]
        if not field.has(index):
            field.set(index)
            self._availability[index] += 1
            self._near_availability[index] += self._far.get(peer) == 0
            if field.complete:
                self._note_complete(peer)
            if index in self._missing:
                self._useful[peer].add(index)
                self._offering.add(peer)
                if len(self._by_peer[peer]) < self.max_in_flight_per_peer:
                    self._dirty = True

    def pushed(self, peer: str, index: int, *, now: float) -> list[Assignment] | None:
        """Known ``peer`` is sending chunk ``index`` unasked (a relayed chunk): it counts as
        requested from ``peer`` at ``now``, and the requests for it to other peers are
        released and returned, to cancel (the push is on its way; a request may only have
        crossed it); nothing changes if it was asked of ``peer`` already (the peer sends one
        piece for both, and a Cancel would drop that). None when we hold it, or ``peer`` is
        unknown or has PUSHES_PER_PEER times ``max_in_flight_per_peer`` chunks on their way (a
        hostile peer cannot claim every chunk and send none): the caller cancels the push.
        What ``peer`` holds is told apart, with ``peer_has``. Pushes may take a peer past
        ``max_in_flight_per_peer``: it is then asked for nothing more until they arrive."""
        if peer in self._by_chunk.get(index, ()):
            return []  # asked of it already: one upload answers both (a Cancel would drop it)
        if (
            peer not in self._peers
            or self._have.has(index)
            or len(self._by_peer[peer]) >= PUSHES_PER_PEER * self.max_in_flight_per_peer
            or (self.window_only and index not in self._window)
        ):
            return None
        others = sorted(self._by_chunk.get(index, ()))
        for other in others:
            self._release(other, index)
        self._by_chunk[index] = {peer: now}
        self._by_peer[peer][index] = now
        self._pushes.add((peer, index))
        self._in_flight += 1
        self._dirty = True
        return [Assignment(other, index) for other in others]

    def expecting(self, peer: str, index: int) -> bool:
        """Chunk ``index`` is requested from (or being pushed by) ``peer``."""
        return index in self._by_peer.get(peer, ())

    def remove_peer(self, peer: str) -> list[int]:
        """Forget ``peer``; returns the chunks it had in flight, now released (ascending)."""
        field = self._peers.pop(peer, None)
        self._useful.pop(peer, None)
        self._offering.discard(peer)
        self._far_complete.discard(peer)
        self._dirty = True
        if field is not None:
            near = self._far.get(peer) == 0
            for index in field.present():
                self._availability[index] -= 1
                self._near_availability[index] -= near
        released = sorted(self._by_peer.get(peer, ()))
        for index in released:
            self._release(peer, index)
        self._by_peer.pop(peer, None)
        self._penalized_until.pop(peer, None)
        self._peer_tie.pop(peer, None)
        if self._far.pop(peer, None) == 0:
            self._leads.clear()
        self._peer_seconds.pop(peer, None)
        self._avoid_until = {key: t for key, t in self._avoid_until.items() if key[0] != peer}
        self._avoid_ends = min(self._avoid_until.values(), default=math.inf)
        for index in list(self._stale):
            self._discard_stale(peer, index)
        return released

    def set_window(self, start: int, end: int) -> None:
        """The chunks ``[start, end)`` a local reader waits on: asked for first, in order."""
        start, end = max(0, start), min(self.chunk_count, end)
        window = range(start, max(start, end))
        if window != self._window:
            self._window = window
            self._dirty = True

    # --- outcomes of requests -----------------------------------------------------------------

    def on_piece(self, peer: str, index: int, *, now: float) -> list[Assignment]:
        """A verified piece arrived from ``peer``; returns the other requests for it, to cancel.

        Works whether the caller calls ``have(index)`` before or after this.
        """
        others = self._stale.pop(index, set())
        asked_at = self._by_peer.get(peer, {}).get(index)
        self._arrivals.append(now)
        if asked_at is not None:
            took = max(0.0, now - asked_at)
            self.piece_seconds = _smooth(self.piece_seconds, took)
            self._peer_seconds[peer] = _smooth(self._peer_seconds.get(peer), took)
            if (peer, index) not in self._pushes:
                self.quickest = took if self.quickest is None else min(self.quickest, took)
        for holder in list(self._by_chunk.get(index, ())):
            self._release(holder, index)
            others.add(holder)
        others.discard(peer)
        self._dirty = True
        return [Assignment(other, index) for other in sorted(others)]

    def on_failed(
        self, peer: str, index: int, *, now: float, retry_after: float | None = None
    ) -> None:
        """``peer`` rejected chunk ``index`` or sent a bad one: release it, ask others for it;
        ``peer`` is not asked for it again for ``retry_after`` (default ``stall_penalty``)."""
        if index in self._by_peer.get(peer, ()):
            self._release(peer, index)
        self._discard_stale(peer, index)
        wait = self.stall_penalty if retry_after is None else retry_after
        self._avoid_until[(peer, index)] = now + wait
        self._avoid_ends = min(self._avoid_ends, now + wait)
        self._dirty = True

    def expire(self, *, now: float) -> list[Assignment]:
        """Release requests at or past their deadline and penalize their peers; returns them."""
        self._stale.clear()  # requests for chunks we hold: the peer got its chance to answer
        timeout = self.request_timeout
        if not any(
            now >= sent + timeout for peers in self._by_chunk.values() for sent in peers.values()
        ):
            return []
        expired = [
            Assignment(peer, index)
            for index, peers in sorted(self._by_chunk.items())
            for peer, sent in sorted(peers.items())
            if now >= sent + self.request_timeout  # the very sum next_deadline gives
        ]
        for request in expired:
            self._release(request.peer, request.index)
            self._penalized_until[request.peer] = now + self.stall_penalty
            self._dirty = True
        return expired

    # --- the decision -------------------------------------------------------------------------

    def next_requests(self, *, now: float) -> list[Assignment]:
        """New requests to send now; they are registered as in flight (sent at ``now``)."""
        if not self._dirty and now < self._wake_at:
            return []  # nothing changed since the last call that could allow a request
        self._dirty = False
        if now >= self._avoid_ends:
            self._avoid_until = {key: t for key, t in self._avoid_until.items() if t > now}
            self._avoid_ends = min(self._avoid_until.values(), default=math.inf)
        penalties = (t for t in self._penalized_until.values() if t > now)
        self._wake_at = min(min(penalties, default=math.inf), self._avoid_ends)
        out: list[Assignment] = []
        room = self.max_in_flight - self._in_flight if self.max_in_flight else math.inf
        room = min(room, self.downlink_cap() - self._in_flight)
        if room <= 0:
            return out  # a piece arriving, or a request failing, makes room (and dirties)
        limit, penalized, by_peer = (
            self.max_in_flight_per_peer,
            self._penalized_until,
            self._by_peer,
        )
        free = {  # the peers that can be asked for something now
            peer: limit - len(by_peer[peer])
            for peer in self._offering
            if len(by_peer[peer]) < limit
            and (not penalized or penalized.get(peer, -math.inf) <= now)
        }
        if not free:
            return out
        near = self._near_offer(free)
        for index in self._wanted(free):
            if near is not None and index not in near and self._waits_near(index, now):
                continue  # no free near peer has it: not asked afar yet
            self._assign(index, free, now, out, gated=near is not None)
            if not free or len(out) >= room:
                return out
        if free and self._in_endgame():
            for index in self._endgame_order(now):
                while free and len(self._by_chunk[index]) < self.endgame_duplicates:
                    if len(out) >= room or not self._assign(index, free, now, out):
                        break
        return out

    def downlink_cap(self) -> float:
        """Chunks that may be on their way at once: DOWNLINK_GAIN times what the downlink
        delivers in the quickest answer seen (its rate over the last pieces' arrivals), plus
        ``queued``; unbounded with ``queued`` 0 or before two pieces and one answer came."""
        arrivals = self._arrivals
        if not self.queued or self.quickest is None or len(arrivals) < 2:
            return math.inf
        spent = arrivals[-1] - arrivals[0]
        if spent <= 0:
            return math.inf
        delivered = (len(arrivals) - 1) / spent * self.quickest
        return math.ceil(DOWNLINK_GAIN * delivered) + self.queued

    def next_deadline(self) -> float | None:
        """When ``expire`` or ``next_requests`` can next change something without a new event:
        the oldest request's expiry, or the end of a penalty or avoidance; ``-inf`` while a
        change waits for ``next_requests``; None when nothing is pending."""
        if self._dirty:
            return -math.inf
        expiry = min(
            (sent for peers in self._by_chunk.values() for sent in peers.values()),
            default=math.inf,
        )
        deadline = min(expiry + self.request_timeout, self._wake_at)
        return None if deadline == math.inf else deadline

    @property
    def complete(self) -> bool:
        return self._have.complete

    def unavailable(self, index: int) -> bool:
        """Chunk ``index`` is missing, no known peer has it and nobody is fetching it."""
        return (
            not self._have.has(index)
            and self._availability[index] == 0
            and index not in self._by_chunk
        )

    def missing_unavailable(self) -> list[int]:
        """Missing chunks that no known peer has and nobody is fetching (the seed's origin work)."""
        return sorted(
            index
            for index in self._missing
            if self._availability[index] == 0 and index not in self._by_chunk
        )

    def in_flight(self) -> list[Assignment]:
        """Every request in flight, sorted by (peer, index)."""
        return sorted(
            Assignment(peer, index) for peer, chunks in self._by_peer.items() for index in chunks
        )

    # --- internals ----------------------------------------------------------------------------

    def _release(self, peer: str, index: int) -> None:
        self._in_flight -= 1
        self._pushes.discard((peer, index))
        del self._by_peer[peer][index]
        holders = self._by_chunk[index]
        del holders[peer]
        if not holders:
            del self._by_chunk[index]

    def _discard_stale(self, peer: str, index: int) -> None:
        peers = self._stale.get(index)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._stale[index]

    def _wanted(self, free: dict[str, int]) -> Iterator[int]:
        """Missing chunks nobody is fetching that a free peer has, in the order to ask for them.

        Only chunks some free peer can give are considered (the others could not be assigned
        anyway): with many chunks missing, this keeps a pass proportional to what is on offer.
        """
        window, availability, in_flight = self._window, self._availability, self._by_chunk
        offer: set[int] = set().union(*(self._useful[peer] for peer in free))
        offer.difference_update(in_flight)
        yield from (i for i in window if i in offer)
        if self.window_only:
            return
        rank = self._tie_rank
        if self._near is None:
            rest = sorted(offer, key=lambda i: (availability[i], rank[i]))  # rarest, tie order
        else:  # rarest in the rack first
            near = self._near_availability
            rest = sorted(offer, key=lambda i: (near[i], availability[i], rank[i]))
        yield from (i for i in rest if i not in window)

    def _in_endgame(self) -> bool:
        if self.window_only:
            wanted = [i for i in self._window if i in self._missing]
            return bool(wanted) and all(i in self._by_chunk for i in wanted)
        missing = self.chunk_count - self._have.count
        return missing > 0 and len(self._by_chunk) == missing

    def _endgame_order(self, now: float) -> list[int]:
        """The chunks to ask another peer for too: those whose newest request is late (older
        than ``ENDGAME_LATE`` typical pieces; all of them before any piece came). A duplicate
        of a request that is on time costs a busy uplink a whole chunk for nothing. Sets the
        wake-up for when the next one turns late."""
        window, by_chunk = self._window, self._by_chunk
        late_after = ENDGAME_LATE * self.piece_seconds if self.piece_seconds is not None else 0.0
        late = []
        for index, asked in by_chunk.items():
            late_at = max(asked.values()) + late_after
            if late_at <= now:
                late.append(index)
            else:
                self._wake_at = min(self._wake_at, late_at)

        def key(index: int) -> tuple[bool, float, int]:
            if index in window:
                return (False, 0.0, index)
            return (True, min(by_chunk[index].values()), index)

        return sorted(late, key=key)

    def _assign(
        self,
        index: int,
        free: dict[str, int],
        now: float,
        out: list[Assignment],
        *,
        gated: bool = False,
    ) -> bool:
        """Ask the least-loaded free peer that has ``index`` (and may be asked) for it; with
        ``gated``, a far one only if ``_waits_near`` allows."""
        asked = self._by_chunk.get(index, {})
        tie, far, timed = self._peer_tie, self._far, self._peer_seconds
        typical = self.piece_seconds or 1.0
        # the holder expected to answer first: its requests in flight (and this one) times
        # how long its pieces take (untimed: like the others')
        last = self.last_resort
        candidates = [
            (
                peer == last,
                far.get(peer, 0),
                (len(self._by_peer[peer]) + 1) * timed.get(peer, typical),
                tie.get(peer, b""),
                peer,
            )
            for peer in free
            if peer not in asked
            and index in self._useful[peer]
            and (peer, index) not in self._avoid_until
        ]
        if not candidates:
            return False
        best = min(candidates)
        if best[1] and gated and self._waits_near(index, now):
            return False  # its near holders are all busy (the pass made them so)
        *_, peer = best
        self._by_chunk.setdefault(index, {})[peer] = now
        self._by_peer[peer][index] = now
        self._in_flight += 1
        out.append(Assignment(peer, index))
        free[peer] -= 1
        if not free[peer]:
            del free[peer]
        return True

    def _near_offer(self, free: dict[str, int]) -> set[int] | None:
        """What the free near peers offer, when chunks are to come near (else None): with
        ``far_wait``, racks known, more than FAR_TAIL chunks missing and no far peer free that
        holds the whole blob (its uplink has room to spare for other racks; the blob's seed,
        the last resort, aside)."""
        if not self.far_wait or self._near is None or len(self._missing) <= FAR_TAIL:
            return None
        far, last = self._far, self.last_resort
        if any(p in free for p in self._far_complete if p != last):
            return None
        return set().union(*(self._useful[p] for p in free if not far[p]))

    def _waits_near(self, index: int, now: float) -> bool:
        """Chunk ``index``, which no free near peer offers, is not to be asked of a far one
        now: a near peer holds it (it is asked there once one is free), or this node does not
        lead it and it has waited less than ``far_wait`` typical pieces."""
        near, last = self._near_availability[index], self.last_resort
        if last is not None and not self._far.get(last, 1) and self._peers[last].has(index):
            near -= 1  # the seed hands a chunk out once: not a holder to wait for
        if near:
            return True
        seen = self._far_seen.setdefault(index, now)
        typical = self.piece_seconds  # before the first piece: the request timeout
        ready = seen + (self.request_timeout if typical is None else self.far_wait * typical)
        if now < ready and not self._leading(index):
            self._wake_at = min(self._wake_at, ready)
            return True
        return False

    def _leading(self, index: int) -> bool:
        """This node is chunk ``index``'s rack leader: of it and the near peers it knows,
        ranked first for the chunk."""
        leads = self._leads.get(index)
        if leads is None:
            key = self._blob_key + index.to_bytes(8, "big")
            near = [peer for peer, far in self._far.items() if not far]
            mine = _rank_score(key, self._node_id)
            leads = self._leads[index] = all(_rank_score(key, p) < mine for p in near)
        return leads


def _rank_score(key: bytes, node_id: str) -> bytes:
    return hashlib.sha256(key + node_id.encode()).digest()[:8]


def _smooth(last: float | None, value: float) -> float:
    """``value`` folded into the running estimate ``last`` (None: the first value)."""
    return value if last is None else last + PIECE_SMOOTHING * (value - last)
