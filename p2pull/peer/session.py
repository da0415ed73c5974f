"""One blob's swarm, seen from one node, as a pure state machine.

No trio, no sockets, no clock reads, no store I/O: the shell feeds events with
``handle(event, now=...)``, calls ``pump(now=...)`` after a batch of events and whenever
``next_deadline()`` passes, and carries out the actions it gets back. The same code runs in the
agent (``p2pull.swarm.driver`` over TCP links), in the in-memory peer network of the tests and
in the simulator.

The session finds the blob's seed (the highest HRW member), learns the blob's size and chunk
hashes from it, asks peers for chunks as the scheduler decides, has each piece verified against
the seed's hash before it is stored, tells its members about every chunk it holds, and, as the
seed (from the start, or after the seed died), fetches from the origin only what no live peer
can give. Fresh chunks travel by push (``p2pull.peer.relay``).

Phases (``Phase``; the allowed moves are ``TRANSITIONS``)::

    LOCATING ──▶ ASKING ──▶ OPENING ──▶ LEECHING ──▶ DONE
       │  ▲        │                      │  ▲
       │  └────────┴──── seed lost ───────┘  │ (seed found again, size known)
       └──────────┴──────────┴──────────┴──▶ SEEDING ──▶ DONE
    any phase but DONE ──▶ FAILED

An event the shell should not have fed (a result nobody asked for, anything after the end)
raises ``LocalProtocolError``: the shell has a bug. What peers send is never an error here: a
peer that breaks the rules of the blob's swarm is dropped for it (``bad``).
"""

from __future__ import annotations

import logging
import random

from p2pull.membership import InvalidPeerAddress, Member
from p2pull.peer.events import (
    ENDED,
    TRANSITIONS,
    Action,
    BlobOpened,
    ChunkLanded,
    Dial,
    DialFailed,
    Event,
    Failed,
    Finish,
    LinkUp,
    NodeContext,
    OpenBlob,
    OriginDone,
    OriginRetrying,
    PeerGone,
    PeerMessage,
    Phase,
    PieceCorrupt,
    PieceStored,
    PushPiece,
    ReaderWants,
    Send,
    Snapshot,
    StartOrigin,
)
from p2pull.peer.exchange import ChunkExchange
from p2pull.peer.fanout import parent as fanout_parent
from p2pull.peer.messages import (
    UNAVAILABLE_WRONG_COPY,
    BlobInfo,
    Have,
    Interested,
    LocalProtocolError,
    Message,
    Passing,
    Peers,
    Piece,
    Push,
    Reject,
    Seeded,
    Unavailable,
    Waiting,
    peers_message,
)
from p2pull.peer.relay import Relay
from p2pull.store.types import chunk_count

log = logging.getLogger(__name__)

NOBODY: frozenset[str] = frozenset()
PASSING = "no room in its store: passing the blob through to its reader"


class BlobSession:
    def __init__(
        self,
        *,
        digest: str,
        name: str,
        ns: str | None,
        node: NodeContext,
        rng: random.Random | None = None,
    ) -> None:
        self.digest = digest
        self.name = name
        self.ns = ns
        self.node = node
        self.config = node.config
        self.rng = rng if rng is not None else random.Random(f"{node.node_id} {digest}")
        self.phase = Phase.LOCATING
        self.seeding = False
        self.seed_id: str | None = None
        self.error: str | None = None
        self.seed_copy_wrong = False  # ended because the seed's copy failed its digest
        self.members: set[str] = set()  # peers that asked us for updates (we send them Haves)
        self.asked: set[str] = set()  # peers we sent Interested to
        # This node passes the blob through (BlobOpened.passing): it asks only for its reader's
        # window, never announces, serves or seeds. ``passers``: peers that told us they do.
        self.passing = False
        self.passers: set[str] = set()
        self.chunks: ChunkExchange | None = None  # once the size is known
        self.relay = Relay()
        self._waiting_info: set[str] = set()  # asked us before we knew the size
        self._pending_info: tuple[str, BlobInfo] | None = None  # applied once opened
        self._dialing: set[str] = set()
        self._seed_dial: str | None = None
        self._seed_dials = 0  # dials to that seed that failed
        self._origin_running = False
        self._origin_trouble: str | None = None  # the origin's last failure, while it retries
        # seeds passed over: those that answered Unavailable, and those whose blob failed its
        # digest here lately (a seed that lied about its chunk hashes)
        self._gave_up: set[str] = set()
        self._distrusted: frozenset[str] = frozenset()
        self._told_at = 0.0  # when the seed last told its members anything
        self._seed_asked_at = 0.0
        self._progress_at = 0.0  # when a chunk last landed (or we last asked the seed)
        self._reader: int | None = None
        self._out: list[Action] = []

    # -- the interface ---------------------------------------------------------------------------

    @property
    def sized(self) -> bool:
        return self.chunks is not None

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    @property
    def bad(self) -> frozenset[str] | set[str]:
        """Peers ignored for this blob (they sent a bad chunk or a different description)."""
        return self.chunks.bad if self.chunks is not None else NOBODY

    def start(self, *, now: float) -> list[Action]:
        """Begin: find the seed (dial it, or become it)."""
        self._distrusted = frozenset(self.node.serving.distrusted(self.digest, now=now))
        self._locate(now)
        return self._flush()

    def handle(self, event: Event, *, now: float) -> list[Action]:
        """The direct consequences of ``event``; call ``pump`` after a batch of events."""
        if self.ended:
            raise LocalProtocolError(f"{type(event).__name__} fed to a session that has ended")
        if self.phase is Phase.OPENING and not isinstance(event, BlobOpened | Failed):
            raise LocalProtocolError(f"{type(event).__name__} fed before OpenBlob was answered")
        match event:
            case PeerMessage():
                self._on_peer_message(event.peer, event.message, now)
            case PeerGone():
                self._on_gone(event.peer, now)
            case LinkUp():
                self._on_link_up(event, now)
            case DialFailed():
                self._on_dial_failed(event, now)
            case BlobOpened():
                self._on_opened(event, now)
            case Failed():
                self._on_failed(event, now)
            case ChunkLanded():
                self._on_landed(event, now)
            case PieceStored():
                self._on_stored(event, now)
            case PieceCorrupt():
                self._exchange(event).on_corrupt(event.peer, event.index, now=now)
                self.members.discard(event.peer)
            case OriginDone():
                self._origin_ended(event)
            case OriginRetrying():
                self._on_origin_retrying(event, now)
            case ReaderWants():
                self._reader = event.index
        return self._flush()

    def pump(self, *, now: float) -> list[Action]:
        """Timeouts, requests and origin work due now, and the end of the session."""
        if not self.ended:
            self._pump(now)
        return self._flush()

    def next_deadline(self) -> float | None:
        """When ``pump`` must be called next if no event comes first (None: only events)."""
        if self.ended:
            return None
        timeout = self.config.info_timeout
        deadlines = []
        if self.seeding:
            deadlines.append(max(self._progress_at, self._told_at) + self.config.waiting_every)
        if self.chunks is None:
            if self.phase is Phase.ASKING:
                deadlines.append(self._seed_asked_at + timeout)
            return min(deadlines, default=None)
        deadline = self.chunks.scheduler.next_deadline()
        if deadline is not None:
            deadlines.append(deadline)
        if self.phase is Phase.LEECHING and self.seed_id is not None:
            deadlines.append(self._progress_at + timeout)
        return min(deadlines, default=None)

    def origin_wants(self, index: int) -> bool:
        """Should the origin fetch get chunk ``index``? Only what no live peer has (with a known
        hash) and nobody is sending."""
        return self.chunks is None or self.chunks.scheduler.unavailable(index)

    def blob_info(self) -> BlobInfo:
        """What this node holds of the blob, with the hash of every chunk it holds."""
        if self.chunks is None:
            raise LocalProtocolError("blob_info before the size is known")
        return self.chunks.describe()

    def snapshot(self) -> Snapshot:
        chunks = self.chunks
        return Snapshot(
            digest=self.digest,
            phase=self.phase,
            seeding=self.seeding,
            seed=self.seed_id,
            peers=len(chunks.peer_bits) if chunks is not None else 0,
            members=len(self.members),
            chunks=chunks.have.length if chunks is not None else 0,
            held=chunks.have.count if chunks is not None else 0,
        )

    # -- phases ----------------------------------------------------------------------------------

    def _to(self, phase: Phase) -> None:
        if phase is not Phase.FAILED and phase not in TRANSITIONS[self.phase]:
            raise LocalProtocolError(f"no move from {self.phase.name} to {phase.name}")
        log.debug("%s: %s -> %s", self.digest[:19], self.phase.name, phase.name)
        self.phase = phase

    def _flush(self) -> list[Action]:
        out = list(self._out)
        self._out.clear()  # the exchange appends to this very list
        return out

    def _send(self, peer: str, message: Message) -> None:
        self._out.append(Send(peer, message))

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._to(Phase.FAILED)
        self._out.append(Finish(reason))

    def _exchange(self, event: Event) -> ChunkExchange:
        if self.chunks is None:
            raise LocalProtocolError(f"{type(event).__name__} before the blob was opened")
        return self.chunks

    # -- the seed --------------------------------------------------------------------------------

    def _locate(self, now: float) -> None:
        """Dial the blob's seed (the highest live member that has not given up on it), or with
        a ``fanout``, this node's parent in the tree those members form (``p2pull.peer.fanout``)."""
        seed = self._upstream(now)
        if seed.node_id == self.node.node_id:
            if self.passing:  # it cannot fetch what it cannot keep: its reader goes elsewhere
                self._fail("no peer left to pass it through from")
                return
            self._become_seed(now)
            return
        self._to(Phase.LOCATING)
        if seed.node_id != self._seed_dial:
            self._seed_dials = 0
        self.seed_id, self._seed_dial = None, seed.node_id
        log.debug("%s: dialing its seed %s", self.digest[:19], seed.node_id)
        self._dial(seed)

    def _upstream(self, now: float) -> Member:
        membership, fanout, me = self.node.membership, self.config.fanout, self.node.node_id
        passed = self._gave_up | self._distrusted | self.passers
        if fanout <= 0 or self.passing:
            return membership.seed_for(self.digest, now=now, excluding=passed)
        ranked, places = membership.ranking(self.digest, now=now)
        if passed:  # passed over: after every other member (this node, if it is passed over)
            kept = [m for m in ranked if m.node_id not in passed]
            kept += [m for m in ranked if m.node_id == me and m.node_id in passed]
            ranked, places = tuple(kept), {m.node_id: i for i, m in enumerate(kept)}
        rack = self.node.rack
        return fanout_parent(ranked, places[me], fanout, lambda member: rack(member.node_id))

    def _dial(self, member: Member) -> None:
        if member.node_id not in self._dialing:
            self._dialing.add(member.node_id)
            self._out.append(Dial(member))

    def _become_seed(self, now: float) -> None:
        log.info("seeding %s from the origin", self.digest[:19])
        self._to(Phase.SEEDING)
        self._progress_at = self._told_at = now
        self.seeding, self.seed_id, self._seed_dial = True, self.node.node_id, None
        self.node.serving.seeding_started(self.digest)
        self._start_origin()

    def _tell_waiting(self, now: float) -> None:
        """Tell the members that this seed is still fetching (nothing new came for a while)."""
        self._told_at = now
        reason = self._origin_trouble or "fetching from the origin"
        for peer in sorted(self.members - self.bad):
            self._send(peer, Waiting(self.digest, reason[:1000]))

    def _seed_gave_up(self, peer: str, reason: str, now: float) -> None:
        """The seed cannot fetch the blob (the origin failed it for its whole patience, or says
        the blob is unknown): the next HRW member takes over, the same for every member, so one
        node goes to the origin, not all of them. After ``handovers`` such seeds, give up."""
        self._gave_up.add(peer)
        if len(self._gave_up) > self.config.handovers:
            log.warning("no seed could fetch %s (%s): giving up", self.digest[:19], reason)
            for member in sorted(self.members - self.bad):
                self._send(member, Unavailable(self.digest, reason[:1000]))
            self._fail(f"the seeds could not fetch it: {reason}")
            return
        log.warning(
            "seed %s cannot provide %s (%s): handing over to the next",
            peer,
            self.digest[:19],
            reason,
        )
        self.seed_id = None
        self._locate(now)

    def _start_origin(self) -> None:
        if not self._origin_running:
            self._origin_running = True
            self._out.append(StartOrigin())

    def _on_link_up(self, event: LinkUp, now: float) -> None:
        self._dial_ended(event.peer)
        if event.peer == self._seed_dial:
            self._seed_dial = None
            self.seed_id = event.peer
            self._seed_asked_at = self._progress_at = now
            self._to(Phase.LEECHING if self.chunks is not None else Phase.ASKING)
            self._ask(event.peer)
        elif event.peer not in self.asked and event.peer not in self.bad:
            self._ask(event.peer)

    def _ask(self, peer: str) -> None:
        """Join ``peer``'s swarm of the blob (and tell it this node only passes it through)."""
        self.asked.add(peer)
        self._send(peer, Interested(self.digest, self.name, self.ns))
        if self.passing:
            self._send(peer, Passing(self.digest, PASSING))

    def _on_dial_failed(self, event: DialFailed, now: float) -> None:
        self._dial_ended(event.peer)
        if event.peer == self._seed_dial:
            self._seed_dials += 1
            if event.timed_out and self._seed_dials < self.config.seed_dials:
                log.info("seed %s of %s timed out: dialing it again", event.peer, self.digest[:19])
                self._dial(Member.parse(event.peer))
                return
            log.info("seed %s of %s unreachable: %s", event.peer, self.digest[:19], event.reason)
            self.node.membership.suspect(event.peer, now=now)
            self._locate(now)

    def _dial_ended(self, peer: str) -> None:
        if peer not in self._dialing:
            raise LocalProtocolError(f"a dial result for {peer}, which was not dialed")
        self._dialing.discard(peer)

    # -- the local blob --------------------------------------------------------------------------

    def _on_opened(self, event: BlobOpened, now: float) -> None:
        if self.chunks is not None:
            raise LocalProtocolError("BlobOpened twice")
        count = chunk_count(event.size, event.chunk_size)
        if event.have.length != count or len(event.hashes) != count:
            raise LocalProtocolError(f"BlobOpened with {event.have.length} chunks for {count}")
        racked, fanout = bool(self.node.rack(self.node.node_id)), self.config.fanout > 0
        self.chunks = ChunkExchange(
            digest=self.digest,
            size=event.size,
            chunk_size=event.chunk_size,
            have=event.have,
            hashes=event.hashes,
            salt=self.node.node_id.encode(),
            config=self.config,
            out=self._out,
            near=self._near if racked else None,
            # in a fanout tree a rack's root is its only way in: it fetches across at once
            far_wait=self.config.far_wait if racked and not (self.seeding or fanout) else 0.0,
            node_id=self.node.node_id,
            passing=event.passing,
        )
        if event.passing:
            self._pass_through()
        if self.phase is Phase.OPENING:
            self._to(Phase.LEECHING)
        for peer in sorted(self._waiting_info):
            self._on_interested(peer)
        self._waiting_info.clear()
        if self._pending_info is not None:
            peer, info = self._pending_info
            self._pending_info = None
            self._on_info(peer, info, now)

    def _pass_through(self) -> None:
        """From now on, only pass the blob through: tell every peer (they stop pushing to us,
        naming us in Peers and taking us for a seed), and keep no members."""
        log.info("%s: %s", self.digest[:19], PASSING)
        self.passing = True
        self._reader = 0  # the window begins at the start; the reader moves it on
        for peer in sorted(self.asked | self.members):
            self._send(peer, Passing(self.digest, PASSING))
        self.members.clear()

    def _on_failed(self, event: Failed, now: float) -> None:
        if not (self.seeding or self.phase is Phase.OPENING):
            raise LocalProtocolError("Failed fed to a session that neither opened nor fetched")
        self._origin_running = False
        for peer in sorted(self.members - self.bad):
            self._send(peer, Unavailable(self.digest, event.reason[:1000]))
        self._fail(event.reason)

    def _on_landed(self, event: ChunkLanded, now: float) -> None:
        if self._exchange(event).land(event.index, event.sha256):
            self._announce(event.index, event.sha256, from_origin=event.source == "origin", now=now)

    def _on_stored(self, event: PieceStored, now: float) -> None:
        sha256 = self._exchange(event).on_stored(event.peer, event.index, now=now)
        if sha256 is None:
            return
        if self.passing:
            self._progress_at = now
            return  # held for its reader only: nobody is told
        small = len(self.members) <= self.config.relay_up_to
        if event.peer == self.seed_id and not self.seeding and small:
            self.relay.from_seed(event.index)  # ours to relay to every member
        self._announce(event.index, sha256, from_origin=False, now=now)

    def _announce(self, index: int, sha256: bytes, *, from_origin: bool, now: float) -> None:
        """Chunk ``index`` is ours now: tell the swarm (a push from the seed or a relay, a Have
        to the rest)."""
        assert self.chunks is not None
        self._progress_at = now
        if from_origin:
            self._origin_trouble = None  # it answers again
        push = Push(self.digest, index, sha256)
        lacking = self._lacking(index)
        # with racks, the seed's own rack gets each fresh chunk first: the other racks fetch it
        # across once each (far_wait), and the seed's rack need not fetch it back
        near = self.config.far_wait > 0 and bool(self.node.rack(self.node.node_id))
        pushed = self.relay.push_out(
            index,
            [peer for peer in lacking if peer not in self.passers],
            seeding=self.seeding,
            from_origin=from_origin,
            push=lambda peer: self._try_push(peer, push, now),
            first=self._near if near else lambda peer: False,
        )
        have = Have(self.digest, index, sha256)
        superseed, linked = self.node.serving.superseed, self.node.serving.linked
        # the members the seed would refuse it are told so with the hash: they ask its holder
        refused = self.seeding and superseed.refuses(self.digest, index, now=now, alive=linked)
        seeded = Seeded(self.digest, index, sha256) if refused else have
        for peer in lacking:
            if peer not in pushed:
                self._send(peer, have if peer in self.passers else seeded)

    def _lacking(self, index: int) -> list[str]:
        """Members (not dropped) that do not hold chunk ``index``, sorted: those that hold it
        need nothing from us."""
        assert self.chunks is not None
        holds = self.chunks.holds
        return [p for p in sorted(self.members) if p not in self.bad and not holds(p, index)]

    def _hand_out_again(self, index: int, now: float) -> None:
        """Push chunk ``index``, granted to a peer that turned out to pass the blob through,
        to one member that lacks it: the members refused it meanwhile get it from that one
        (they leave the seed alone for that chunk for a while)."""
        chunks = self.chunks
        sha256 = chunks.hashes[index] if chunks is not None else None
        if chunks is None or sha256 is None or not chunks.have.has(index):
            return
        push = Push(self.digest, index, sha256)
        for peer in self._lacking(index):
            if peer not in self.passers and self._try_push(peer, push, now):
                return

    def _try_push(self, peer: str, push: Push, now: float) -> bool:
        serving = self.node.serving
        if not serving.push(peer, self.digest, push.index, seeding=self.seeding, now=now):
            return False
        self._out.append(PushPiece(peer, push))
        return True

    def _origin_ended(self, event: OriginDone) -> None:
        if not self._origin_running:
            raise LocalProtocolError("OriginDone without StartOrigin")
        self._origin_running = False
        self._origin_trouble = None

    def _on_origin_retrying(self, event: OriginRetrying, now: float) -> None:
        if not self._origin_running:
            raise LocalProtocolError("OriginRetrying without StartOrigin")
        first = self._origin_trouble is None
        self._origin_trouble = event.reason
        if first:
            self._tell_waiting(now)  # at once: members learn why nothing comes

    # -- peers -----------------------------------------------------------------------------------

    def _on_gone(self, peer: str, now: float) -> None:
        self.members.discard(peer)
        self.asked.discard(peer)
        self.passers.discard(peer)
        if self.chunks is not None:
            self.chunks.remove(peer)
        if peer == self.seed_id and not self.seeding:
            log.info("seed %s of %s is gone: choosing the next", peer, self.digest[:19])
            self.seed_id = None
            self._locate(now)

    def _on_peer_message(self, peer: str, message: Message, now: float) -> None:
        if peer in self.bad:
            return
        chunks, from_seed = self.chunks, peer == self.seed_id
        if isinstance(message, Interested):
            self._on_interested(peer)
        elif isinstance(message, BlobInfo):
            self._on_info(peer, message, now)
        elif isinstance(message, Peers) and from_seed:
            self._on_peers(message)
        elif isinstance(message, Waiting) and from_seed:
            self._seed_asked_at = self._progress_at = now  # it is at it: keep waiting for it
        elif isinstance(message, Unavailable) and from_seed and not self.seeding:
            if message.reason == UNAVAILABLE_WRONG_COPY:
                self.seed_copy_wrong = True  # the shell drops what it stored of the blob
                self._fail(f"seed {peer}: {UNAVAILABLE_WRONG_COPY}")
            else:
                self._seed_gave_up(peer, message.reason, now)
        elif isinstance(message, Passing):
            self._on_passing(peer, now)
        elif chunks is None:
            return  # chunk traffic before we know the blob: nothing to do with it yet
        elif isinstance(message, Have):
            chunks.on_have(peer, message, from_seed=from_seed)
            if from_seed and chunks.held:
                chunks.verify_held(now)
        elif isinstance(message, Seeded):
            chunks.on_seeded(peer, message, from_seed=from_seed, now=now)
            if from_seed and chunks.held:
                chunks.verify_held(now)
        elif isinstance(message, Push):
            chunks.on_push(peer, message, from_seed=from_seed, now=now)
        elif isinstance(message, Piece):
            chunks.on_piece(peer, message, now)
        elif isinstance(message, Reject):
            chunks.on_reject(peer, message, now=now)

    def _on_passing(self, peer: str, now: float) -> None:
        """``peer`` passes the blob through: Haves only; and if we took it for the seed (its
        successor, after the seed died), the next one."""
        self.passers.add(peer)
        for index in self.node.serving.superseed.passing(self.digest, peer):
            self._hand_out_again(index, now)
        if peer in (self.seed_id, self._seed_dial) and not self.seeding:
            log.info("%s passes %s through: choosing the next seed", peer, self.digest[:19])
            self.seed_id = None
            self._locate(now)

    def _on_interested(self, peer: str) -> None:
        if self.passing:
            self._send(peer, Passing(self.digest, PASSING))
            return
        self.members.add(peer)
        if self.chunks is None:
            self._waiting_info.add(peer)
            if self.seeding and self._origin_trouble is not None:
                self._send(peer, Waiting(self.digest, self._origin_trouble[:1000]))
            return
        self._send(peer, self.chunks.describe())
        if self.seeding or self.config.fanout > 0:
            sample = self._handout(peer)
            if sample:
                self._send(peer, peers_message(self.digest, sample))
        if not self.seeding and peer not in self.asked:
            self._ask(peer)

    def _near(self, peer: str) -> bool:
        return self.node.rack(peer) == self.node.rack(self.node.node_id)

    def _handout(self, asker: str) -> list[str]:
        """Members to name to ``asker``: ``peers_handout`` at random, all but a quarter of
        them in its rack when racks are known (its chunks then mostly come from there, and
        each rack's uplink carries a chunk about once)."""
        others = sorted(
            m for m in self.members if m != asker and m not in self.bad and m not in self.passers
        )
        count = min(len(others), self.config.peers_handout)
        rack = self.node.rack
        near = [m for m in others if rack(m) == rack(asker)]
        far = [m for m in others if rack(m) != rack(asker)]
        far_count = min(len(far), max(count - len(near), count // 4))
        return self.rng.sample(near, min(len(near), count - far_count)) + self.rng.sample(
            far, far_count
        )

    def _on_info(self, peer: str, info: BlobInfo, now: float) -> None:
        if self.chunks is None:
            if peer != self.seed_id or self.phase is not Phase.ASKING:
                return
            self._pending_info = (peer, info)
            self._to(Phase.OPENING)
            self._out.append(OpenBlob(info.size, info.chunk_size))
            return
        self.chunks.on_info(peer, info, from_seed=peer == self.seed_id, now=now)
        if peer in self.chunks.bad:
            self.members.discard(peer)

    def _on_peers(self, peers: Peers) -> None:
        for node_id, host, port in peers.peers[: self.config.peers_handout]:
            if node_id == self.node.node_id or node_id in self.asked or node_id in self.bad:
                continue
            try:
                member = Member.of(host, port)
            except InvalidPeerAddress:
                continue
            if member.node_id == node_id:
                self._dial(member)

    # -- the pump --------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        chunks, timeout = self.chunks, self.config.info_timeout
        if (
            self.seeding
            and now >= max(self._progress_at, self._told_at) + self.config.waiting_every
        ):
            self._tell_waiting(now)
        if chunks is None:
            if self.phase is Phase.ASKING and now >= self._seed_asked_at + timeout:
                log.warning("seed %s did not describe %s in time", self.seed_id, self.digest[:19])
                if self.seed_id is not None:
                    self.node.membership.suspect(self.seed_id, now=now)
                self._locate(now)
            return
        if chunks.have.complete:
            self._to(Phase.DONE)
            self._out.append(Finish(None))
            return
        chunks.request(now=now, reader=self._reader, linked=self.node.serving.linked)
        if (
            self.phase is Phase.LEECHING
            and self.seed_id is not None
            and now >= self._progress_at + timeout
        ):
            # Stalled: ask the seed again; it answers with everything it has and knows (a
            # Have lost in a race is recovered this way).
            log.info("no progress on %s: asking seed %s again", self.digest[:19], self.seed_id)
            self._progress_at = now
            self._send(self.seed_id, Interested(self.digest, self.name, self.ns))
        if self.seeding and not self._origin_running and chunks.scheduler.missing_unavailable():
            self._start_origin()


__all__ = ["BlobSession"]
