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

from p2pull.bitfield import Bitfield
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
    WritePiece,
)
from p2pull.peer.messages import (
    REJECT_BUSY,
    BlobInfo,
    Cancel,
    Have,
    Interested,
    LocalProtocolError,
    Message,
    Peers,
    Piece,
    Push,
    Reject,
    Request,
    Unavailable,
    peers_message,
)
from p2pull.peer.relay import HeldPieces, Relay
from p2pull.peer.scheduler import Scheduler
from p2pull.store.types import chunk_count

log = logging.getLogger(__name__)


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
        self.members: set[str] = set()  # peers that asked us for updates (we send them Haves)
        self.asked: set[str] = set()  # peers we sent Interested to
        self.bad: set[str] = set()  # peers that broke the swarm's rules: ignored for this blob
        self.peer_bits: dict[str, Bitfield] = {}
        self.hashes: list[bytes | None] = []  # trusted: from the seed, or our own chunks
        self.scheduler: Scheduler | None = None
        self.relay = Relay()
        self.held = HeldPieces()  # pieces that came before their hash
        self._size = 0
        self._chunk_size = 0
        self._have: Bitfield | None = None  # None until the size is known
        self._waiting_info: set[str] = set()  # asked us before we knew the size
        self._pending_info: tuple[str, BlobInfo] | None = None  # applied once opened
        self._dialing: set[str] = set()
        self._seed_dial: str | None = None
        self._writing: set[tuple[str, int]] = set()
        self._origin_running = False
        self._seed_asked_at = 0.0
        self._progress_at = 0.0  # when a chunk last landed (or we last asked the seed)
        self._reader: int | None = None
        self._out: list[Action] = []

    # -- the interface ---------------------------------------------------------------------------

    @property
    def sized(self) -> bool:
        return self._have is not None

    @property
    def ended(self) -> bool:
        return self.phase in ENDED

    def start(self, *, now: float) -> list[Action]:
        """Begin: find the seed (dial it, or become it)."""
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
                self._on_peer_message(event, now)
            case PeerGone():
                self._on_gone(event, now)
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
                self._on_corrupt(event, now)
            case OriginDone():
                self._on_origin_done(event, now)
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
        if self._have is None:
            return self._seed_asked_at + timeout if self.phase is Phase.ASKING else None
        deadlines = []
        if self.scheduler is not None:
            deadline = self.scheduler.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        if self.phase is Phase.LEECHING and self.seed_id is not None:
            deadlines.append(self._progress_at + timeout)
        return min(deadlines, default=None)

    def origin_wants(self, index: int) -> bool:
        """Should the origin fetch get chunk ``index``? Only what no live peer has (with a known
        hash) and nobody is sending."""
        return self.scheduler is None or self.scheduler.unavailable(index)

    def blob_info(self) -> BlobInfo:
        """What this node holds of the blob, with the hash of every chunk it holds."""
        have = self._have
        if have is None:
            raise LocalProtocolError("blob_info before the size is known")
        hashes = tuple((h or b"") if have.has(i) else b"" for i, h in enumerate(self.hashes))
        return BlobInfo(self.digest, self._size, self._chunk_size, have.to_bytes(), hashes)

    def snapshot(self) -> Snapshot:
        have = self._have
        return Snapshot(
            digest=self.digest,
            phase=self.phase,
            seeding=self.seeding,
            seed=self.seed_id,
            peers=len(self.peer_bits),
            members=len(self.members),
            chunks=have.length if have is not None else 0,
            held=have.count if have is not None else 0,
        )

    # -- phases ----------------------------------------------------------------------------------

    def _to(self, phase: Phase) -> None:
        if phase is not Phase.FAILED and phase not in TRANSITIONS[self.phase]:
            raise LocalProtocolError(f"no move from {self.phase.name} to {phase.name}")
        self.phase = phase

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _send(self, peer: str, message: Message) -> None:
        self._out.append(Send(peer, message))

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._to(Phase.FAILED)
        self._out.append(Finish(reason))

    # -- the seed --------------------------------------------------------------------------------

    def _locate(self, now: float) -> None:
        seed = self.node.membership.seed_for(self.digest, now=now)
        if seed.node_id == self.node.node_id:
            self._become_seed()
            return
        self._to(Phase.LOCATING)
        self.seed_id, self._seed_dial = None, seed.node_id
        self._dial(seed)

    def _dial(self, member: Member) -> None:
        if member.node_id not in self._dialing:
            self._dialing.add(member.node_id)
            self._out.append(Dial(member))

    def _become_seed(self) -> None:
        log.info("seeding %s from the origin", self.digest[:19])
        self._to(Phase.SEEDING)
        self.seeding, self.seed_id, self._seed_dial = True, self.node.node_id, None
        self.node.serving.seeding_started(self.digest)
        self._start_origin()

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
            self._to(Phase.LEECHING if self._have is not None else Phase.ASKING)
            self._send(event.peer, Interested(self.digest, self.name, self.ns))
            self.asked.add(event.peer)
        elif event.peer not in self.asked and event.peer not in self.bad:
            self.asked.add(event.peer)
            self._send(event.peer, Interested(self.digest, self.name, self.ns))

    def _on_dial_failed(self, event: DialFailed, now: float) -> None:
        self._dial_ended(event.peer)
        if event.peer == self._seed_dial:
            log.info("seed %s of %s unreachable: %s", event.peer, self.digest[:19], event.reason)
            self.node.membership.suspect(event.peer, now=now)
            self._locate(now)

    def _dial_ended(self, peer: str) -> None:
        if peer not in self._dialing:
            raise LocalProtocolError(f"a dial result for {peer}, which was not dialed")
        self._dialing.discard(peer)

    # -- the local blob --------------------------------------------------------------------------

    def _on_opened(self, event: BlobOpened, now: float) -> None:
        if self._have is not None:
            raise LocalProtocolError("BlobOpened twice")
        count = chunk_count(event.size, event.chunk_size)
        if event.have.length != count or len(event.hashes) != count:
            raise LocalProtocolError(f"BlobOpened with {event.have.length} chunks for {count}")
        self._size, self._chunk_size = event.size, event.chunk_size
        self._have = event.have.copy()
        self.hashes = list(event.hashes)
        config = self.config
        self.scheduler = Scheduler(
            chunk_count=count,
            max_in_flight_per_peer=config.max_in_flight_per_peer,
            request_timeout=config.request_timeout,
            salt=self.node.node_id.encode(),
        )
        for index in self._have.present():
            self.scheduler.have(index)  # held before this swarm began: BlobInfo tells them
        if self.phase is Phase.OPENING:
            self._to(Phase.LEECHING)
        for peer in sorted(self._waiting_info):
            self._on_interested(peer)
        self._waiting_info.clear()
        if self._pending_info is not None:
            peer, info = self._pending_info
            self._pending_info = None
            self._on_info(peer, info, now)

    def _on_failed(self, event: Failed, now: float) -> None:
        if self.seeding or self.phase is Phase.OPENING:
            self._origin_running = False
            for peer in sorted(self.members - self.bad):
                self._send(peer, Unavailable(self.digest, event.reason[:1000]))
            self._fail(event.reason)
        else:
            raise LocalProtocolError("Failed fed to a session that neither opened nor fetched")

    def _on_landed(self, event: ChunkLanded, now: float) -> None:
        have = self._have
        if have is None:
            raise LocalProtocolError(f"chunk {event.index} landed before the blob was opened")
        if have.has(event.index):
            return
        self._landed(event.index, event.sha256, from_origin=event.source == "origin", now=now)

    def _landed(self, index: int, sha256: bytes, *, from_origin: bool, now: float) -> None:
        """Chunk ``index`` is ours now: tell the swarm (a push from the seed or a relay, a Have
        to the rest)."""
        assert self._have is not None and self.scheduler is not None
        self._progress_at = now
        self._have.set(index)
        self.scheduler.have(index)
        if self.hashes[index] is None:
            self.hashes[index] = sha256
        push = Push(self.digest, index, sha256)
        lacking = [  # not to those that hold it: they need nothing from us
            peer
            for peer in sorted(self.members)
            if peer not in self.bad and not self._holds(peer, index)
        ]
        pushed = self.relay.push_out(
            index,
            lacking,
            seeding=self.seeding,
            from_origin=from_origin,
            push=lambda peer: self._try_push(peer, push, now),
        )
        have = Have(self.digest, index, sha256)
        for peer in lacking:
            if peer not in pushed:
                self._send(peer, have)

    def _try_push(self, peer: str, push: Push, now: float) -> bool:
        serving = self.node.serving
        if not serving.push(peer, self.digest, push.index, seeding=self.seeding, now=now):
            return False
        self._out.append(PushPiece(peer, push))
        return True

    def _holds(self, peer: str, index: int) -> bool:
        bits = self.peer_bits.get(peer)
        return bits is not None and bits.has(index)

    def _on_origin_done(self, event: OriginDone, now: float) -> None:
        if not self._origin_running:
            raise LocalProtocolError("OriginDone without StartOrigin")
        self._origin_running = False

    # -- peers -----------------------------------------------------------------------------------

    def _on_gone(self, event: PeerGone, now: float) -> None:
        peer = event.peer
        self.held.forget(peer)
        self.members.discard(peer)
        self.asked.discard(peer)
        self.peer_bits.pop(peer, None)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)
        if peer == self.seed_id and not self.seeding:
            log.info("seed %s of %s is gone: choosing the next", peer, self.digest[:19])
            self.seed_id = None
            self._locate(now)

    def _on_peer_message(self, event: PeerMessage, now: float) -> None:
        peer, message = event.peer, event.message
        if peer in self.bad:
            return
        if isinstance(message, Interested):
            self._on_interested(peer)
        elif isinstance(message, BlobInfo):
            self._on_info(peer, message, now)
        elif isinstance(message, Have):
            self._on_have(peer, message)
            if peer == self.seed_id and self.held:
                self._verify_held(now)
        elif isinstance(message, Push):
            self._on_push(peer, message, now)
        elif isinstance(message, Piece):
            self._on_piece(peer, message, now)
        elif isinstance(message, Reject) and self.scheduler is not None:
            busy = message.reason == REJECT_BUSY  # full upload queue: soon again, or elsewhere
            retry = self.config.busy_retry if busy else None
            self.scheduler.on_failed(peer, message.index, now=now, retry_after=retry)
        elif isinstance(message, Peers) and peer == self.seed_id:
            self._on_peers(message)
        elif isinstance(message, Unavailable) and peer == self.seed_id and not self.seeding:
            log.warning(
                "seed %s cannot provide %s (%s): fetching it myself",
                peer,
                self.digest[:19],
                message.reason,
            )
            self._become_seed()

    def _on_interested(self, peer: str) -> None:
        self.members.add(peer)
        if self._have is None:
            self._waiting_info.add(peer)
            return
        self._send(peer, self.blob_info())
        if self.seeding:
            others = sorted(m for m in self.members if m != peer and m not in self.bad)
            sample = self.rng.sample(others, min(len(others), self.config.peers_handout))
            if sample:
                self._send(peer, peers_message(self.digest, sample))
        elif peer not in self.asked:
            self._send(peer, Interested(self.digest, self.name, self.ns))
            self.asked.add(peer)

    def _on_info(self, peer: str, info: BlobInfo, now: float) -> None:
        if self._have is None:
            if peer != self.seed_id or self.phase is not Phase.ASKING:
                return
            self._pending_info = (peer, info)
            self._to(Phase.OPENING)
            self._out.append(OpenBlob(info.size, info.chunk_size))
            return
        if (info.size, info.chunk_size) != (self._size, self._chunk_size):
            log.warning("peer %s describes %s differently; ignoring it", peer, self.digest[:19])
            self._drop(peer)
            return
        self.peer_bits[peer] = Bitfield(self._have.length, info.bitfield)
        if peer == self.seed_id:
            for index, digest in enumerate(info.hashes):
                if digest and self.hashes[index] is None:
                    self.hashes[index] = digest
            for other in sorted(self.peer_bits):
                self._offer(other)
            self._verify_held(now)
        else:
            self._offer(peer)

    def _on_have(self, peer: str, have: Have) -> None:
        bits = self.peer_bits.get(peer)
        if bits is None or self.scheduler is None or have.index >= bits.length:
            return
        bits.set(have.index)
        if peer == self.seed_id and self.hashes[have.index] is None:
            self.hashes[have.index] = have.sha256
            for other, other_bits in sorted(self.peer_bits.items()):
                if other_bits.has(have.index) and other not in self.bad:
                    self.scheduler.peer_has(other, have.index)
        elif self.hashes[have.index] is not None:
            self.scheduler.peer_has(peer, have.index)

    def _on_push(self, peer: str, push: Push, now: float) -> None:
        """A chunk coming unasked: expected from ``peer`` like a request (requests for it to
        others are cancelled), unless we hold it (then the push is cancelled). Its hash may not
        be here yet: the piece then waits for it (``_hold``)."""
        self._on_have(peer, Have(push.digest, push.index, push.sha256))
        scheduler = self.scheduler
        crossed = None
        if scheduler is not None and peer in self.peer_bits and 0 <= push.index < len(self.hashes):
            crossed = scheduler.pushed(peer, push.index, now=now)
        if crossed is None:
            self._send(peer, Cancel(self.digest, push.index))
            return
        for request in crossed:
            self._send(request.peer, Cancel(self.digest, request.index))

    def _on_piece(self, peer: str, piece: Piece, now: float) -> None:
        have, scheduler = self._have, self.scheduler
        if have is None or scheduler is None or not 0 <= piece.index < have.length:
            return
        if have.has(piece.index) or (peer, piece.index) in self._writing:
            return  # a late duplicate
        expected = self.hashes[piece.index]
        if expected is None:
            self._hold(peer, piece, now)
            return
        self._writing.add((peer, piece.index))
        self._out.append(WritePiece(peer, piece.index, piece.data, expected))

    def _on_stored(self, event: PieceStored, now: float) -> None:
        peer, index = event.peer, event.index
        self._write_ended(peer, index)
        assert self.scheduler is not None
        if self._have is not None and self._have.has(index):
            return  # landed meanwhile (the origin, another peer)
        if peer == self.seed_id and not self.seeding:
            self.relay.from_seed(index)
        for duplicate in self.scheduler.on_piece(peer, index, now=now):
            self._send(duplicate.peer, Cancel(self.digest, duplicate.index))
        expected = self.hashes[index]
        assert expected is not None
        self._landed(index, expected, from_origin=False, now=now)

    def _on_corrupt(self, event: PieceCorrupt, now: float) -> None:
        self._write_ended(event.peer, event.index)
        log.warning(
            "peer %s sent a corrupt chunk %d of %s: dropping it for this blob",
            event.peer,
            event.index,
            self.digest[:19],
        )
        assert self.scheduler is not None
        self.scheduler.on_failed(event.peer, event.index, now=now)
        self._drop(event.peer)

    def _write_ended(self, peer: str, index: int) -> None:
        if (peer, index) not in self._writing:
            raise LocalProtocolError(f"a write result for chunk {index} from {peer}, not asked")
        self._writing.discard((peer, index))

    def _hold(self, peer: str, piece: Piece, now: float) -> None:
        """Keep a piece that came before its hash (``p2pull.peer.relay``). Pieces nobody
        expects from ``peer`` are dropped; beyond the held budget it is asked for again."""
        assert self.scheduler is not None
        if self.scheduler.expecting(peer, piece.index) and not self.held.hold(peer, piece):
            self.scheduler.on_failed(peer, piece.index, now=now, retry_after=self.config.busy_retry)

    def _verify_held(self, now: float) -> None:
        for peer, piece in self.held.take(lambda index: self.hashes[index] is not None):
            self._on_piece(peer, piece, now)

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

    def _offer(self, peer: str) -> None:
        """Tell the scheduler which chunks ``peer`` can give us (those we can verify)."""
        bits = self.peer_bits.get(peer)
        if bits is None or self.scheduler is None or peer in self.bad:
            return
        usable = Bitfield(bits.length)
        for index in bits.present():
            if self.hashes[index] is not None:
                usable.set(index)
        self.scheduler.add_peer(peer, usable)

    def _drop(self, peer: str) -> None:
        self.held.forget(peer)
        self.bad.add(peer)
        self.members.discard(peer)
        self.peer_bits.pop(peer, None)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)

    # -- the pump --------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        have, scheduler = self._have, self.scheduler
        timeout = self.config.info_timeout
        if have is None or scheduler is None:
            if self.phase is Phase.ASKING and now - self._seed_asked_at >= timeout:
                log.warning("seed %s did not describe %s in time", self.seed_id, self.digest[:19])
                if self.seed_id is not None:
                    self.node.membership.suspect(self.seed_id, now=now)
                self._locate(now)
            return
        if have.complete:
            self._to(Phase.DONE)
            self._out.append(Finish(None))
            return
        if self._reader is not None:
            scheduler.set_window(self._reader, min(self._reader + self.config.window, have.length))
        for stale in scheduler.expire(now=now):
            self._send(stale.peer, Cancel(self.digest, stale.index))
        for assignment in scheduler.next_requests(now=now):
            if not self.node.serving.linked(assignment.peer):
                scheduler.remove_peer(assignment.peer)
                continue
            self._send(assignment.peer, Request(self.digest, assignment.index))
        if (
            self.phase is Phase.LEECHING
            and self.seed_id is not None
            and now - self._progress_at >= timeout
        ):
            # Stalled: ask the seed again; it answers with everything it has and knows (a
            # Have lost in a race is recovered this way).
            log.info("no progress on %s: asking seed %s again", self.digest[:19], self.seed_id)
            self._progress_at = now
            self._send(self.seed_id, Interested(self.digest, self.name, self.ns))
        if self.seeding and not self._origin_running and scheduler.missing_unavailable():
            self._start_origin()


__all__ = ["BlobSession"]
