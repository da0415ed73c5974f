"""The chunk-level half of a blob session: who holds what, which hashes are trusted, requests
and pieces. Pure, owned by its ``p2pull.peer.session.BlobSession`` once the blob's size is
known; the messages it sends go to the session's outbox.

Hashes are trusted only from the seed (its BlobInfo and Haves) and from this node's own
chunks. A chunk is offered to the scheduler only once its hash is known; a piece is written
only with the hash it must match (``WritePiece``); a piece that comes before its hash (a
relay can overtake the seed's Have) is held in memory until the hash comes (``HeldPieces``).
A peer that sends a bad piece or describes the blob differently is dropped for this blob.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from p2pull.bitfield import Bitfield
from p2pull.peer.events import Action, Send, SessionConfig, WritePiece
from p2pull.peer.messages import (
    REJECT_BUSY,
    BlobInfo,
    Cancel,
    Have,
    LocalProtocolError,
    Piece,
    Push,
    Reject,
    Request,
    Seeded,
)
from p2pull.peer.relay import HeldPieces
from p2pull.peer.scheduler import Scheduler

log = logging.getLogger(__name__)
BUSY_RETRY_MIN = 0.005  # seconds: the least a busy holder is left alone for a chunk


class ChunkExchange:
    def __init__(
        self,
        *,
        digest: str,
        size: int,
        chunk_size: int,
        have: Bitfield,
        hashes: tuple[bytes | None, ...],
        salt: bytes,
        config: SessionConfig,
        out: list[Action],
        near: Callable[[str], bool] | None = None,
        far_wait: float = 0.0,
        node_id: str = "",
        passing: bool = False,
    ) -> None:
        self.digest = digest
        self.size = size
        self.chunk_size = chunk_size
        self.have = have.copy()
        self.hashes: list[bytes | None] = list(hashes)  # the seed's, or our own chunks'
        self.peer_bits: dict[str, Bitfield] = {}
        self.bad: set[str] = set()  # peers that broke the swarm's rules: ignored for this blob
        self.held = HeldPieces()  # pieces that came before their hash
        self.config = config
        self.scheduler = Scheduler(
            chunk_count=have.length,
            max_in_flight_per_peer=config.max_in_flight_per_peer,
            max_in_flight=config.max_in_flight,
            queued=config.downlink_queue,
            request_timeout=config.request_timeout,
            salt=salt,
            near=near,
            far_wait=far_wait,
            node_id=node_id,
            blob_key=digest.encode(),
            window_only=passing,
        )
        # chunks from the reader's asked first (passing through, p2pull.store.window: the only
        # ones asked)
        self.window = config.pass_window(chunk_size) if passing else config.window
        for index in self.have.present():
            self.scheduler.have(index)  # held before this swarm began: BlobInfo tells them
        self._writing: set[tuple[str, int]] = set()
        self._out = out

    def _send(self, peer: str, message: Request | Cancel) -> None:
        self._out.append(Send(peer, message))

    def describe(self) -> BlobInfo:
        """What this node holds of the blob, with the hash of every chunk it holds."""
        have = self.have
        hashes = tuple((h or b"") if have.has(i) else b"" for i, h in enumerate(self.hashes))
        return BlobInfo(self.digest, self.size, self.chunk_size, have.to_bytes(), hashes)

    def holds(self, peer: str, index: int) -> bool:
        bits = self.peer_bits.get(peer)
        return bits is not None and bits.has(index)

    def land(self, index: int, sha256: bytes) -> bool:
        """Chunk ``index`` is ours now; False if it already was."""
        if self.have.has(index):
            return False
        self.have.set(index)
        self.scheduler.have(index)
        if self.hashes[index] is None:
            self.hashes[index] = sha256
        return True

    # -- what peers tell -------------------------------------------------------------------------

    def on_info(self, peer: str, info: BlobInfo, *, from_seed: bool, now: float) -> None:
        if (info.size, info.chunk_size) != (self.size, self.chunk_size):
            log.warning("peer %s describes %s differently; ignoring it", peer, self.digest[:19])
            self.drop(peer)
            return
        self.peer_bits[peer] = Bitfield(self.have.length, info.bitfield)
        if from_seed:
            self.scheduler.last_resort = peer
            for index, digest in enumerate(info.hashes):
                if digest and self.hashes[index] is None:
                    self.hashes[index] = digest
            for other in sorted(self.peer_bits):
                self._offer(other)
            self.verify_held(now)
        else:
            self._offer(peer)

    def on_have(self, peer: str, have: Have, *, from_seed: bool) -> None:
        bits = self.peer_bits.get(peer)
        if bits is None or have.index >= bits.length:
            return
        bits.set(have.index)
        if from_seed and self.hashes[have.index] is None:
            self.hashes[have.index] = have.sha256
            for other, other_bits in sorted(self.peer_bits.items()):
                if other_bits.has(have.index) and other not in self.bad:
                    self.scheduler.peer_has(other, have.index)
        elif self.hashes[have.index] is not None:
            self.scheduler.peer_has(peer, have.index)

    def on_seeded(self, peer: str, seeded: Seeded, *, from_seed: bool, now: float) -> None:
        """``peer`` holds the chunk but has handed it to another member: a Have, and ``peer``
        is not asked for it for the stall penalty (as if it had refused it), while the member
        it went to announces it."""
        self.on_have(peer, Have(seeded.digest, seeded.index, seeded.sha256), from_seed=from_seed)
        index = seeded.index
        if peer in self.peer_bits and 0 <= index < self.have.length and not self.have.has(index):
            self.scheduler.on_failed(peer, index, now=now)

    def on_push(self, peer: str, push: Push, *, from_seed: bool, now: float) -> None:
        """A chunk coming unasked: expected from ``peer`` like a request (requests for it to
        others are cancelled), unless we hold it (then the push is cancelled). Its hash may not
        be here yet: the piece then waits for it (``_hold``)."""
        self.on_have(peer, Have(push.digest, push.index, push.sha256), from_seed=from_seed)
        crossed = None
        if peer in self.peer_bits and 0 <= push.index < len(self.hashes):
            crossed = self.scheduler.pushed(peer, push.index, now=now)
        if crossed is None:
            self._send(peer, Cancel(self.digest, push.index))
            return
        for request in crossed:
            self._send(request.peer, Cancel(self.digest, request.index))

    def on_reject(self, peer: str, reject: Reject, *, now: float) -> None:
        busy = reject.reason == REJECT_BUSY  # a full upload queue: soon again, or elsewhere
        retry = self.busy_retry() if busy else None
        self.scheduler.on_failed(peer, reject.index, now=now, retry_after=retry)

    def busy_retry(self) -> float:
        """How long a holder that answered "busy" is not asked for that chunk again: about
        the time a piece takes to come (one of its upload slots frees as fast), between
        ``BUSY_RETRY_MIN`` and ``config.busy_retry``. A fixed wait that suits a slow link
        leaves a fast swarm idle at its end, where the last chunks have few holders."""
        typical = self.scheduler.piece_seconds
        if typical is None:
            return self.config.busy_retry
        return min(self.config.busy_retry, max(BUSY_RETRY_MIN, typical))

    def on_piece(self, peer: str, piece: Piece, now: float) -> None:
        if not 0 <= piece.index < self.have.length:
            return
        if self.have.has(piece.index) or (peer, piece.index) in self._writing:
            return  # a late duplicate
        expected = self.hashes[piece.index]
        if expected is None:
            self._hold(peer, piece, now)
            return
        self._writing.add((peer, piece.index))
        self._out.append(WritePiece(peer, piece.index, piece.data, expected))

    def on_stored(self, peer: str, index: int, *, now: float) -> bytes | None:
        """The piece matched and is stored; its sha256 if it is new here (to announce)."""
        self._write_ended(peer, index)
        if self.have.has(index):
            return None  # landed meanwhile (the origin, another peer)
        for duplicate in self.scheduler.on_piece(peer, index, now=now):
            self._send(duplicate.peer, Cancel(self.digest, duplicate.index))
        sha256 = self.hashes[index]
        assert sha256 is not None
        self.land(index, sha256)
        return sha256

    def on_corrupt(self, peer: str, index: int, *, now: float) -> None:
        self._write_ended(peer, index)
        log.warning(
            "peer %s sent a corrupt chunk %d of %s: dropping it for this blob",
            peer,
            index,
            self.digest[:19],
        )
        self.scheduler.on_failed(peer, index, now=now)
        self.drop(peer)

    def _write_ended(self, peer: str, index: int) -> None:
        if (peer, index) not in self._writing:
            raise LocalProtocolError(f"a write result for chunk {index} from {peer}, not asked")
        self._writing.discard((peer, index))

    def _hold(self, peer: str, piece: Piece, now: float) -> None:
        """Keep a piece that came before its hash. Pieces nobody expects from ``peer`` are
        dropped; beyond the held budget it is asked for again."""
        if self.scheduler.expecting(peer, piece.index) and not self.held.hold(peer, piece):
            self.scheduler.on_failed(peer, piece.index, now=now, retry_after=self.config.busy_retry)

    def verify_held(self, now: float) -> None:
        for peer, piece in self.held.take(lambda index: self.hashes[index] is not None):
            self.on_piece(peer, piece, now)

    def _offer(self, peer: str) -> None:
        """Tell the scheduler which chunks ``peer`` can give us (those we can verify)."""
        bits = self.peer_bits.get(peer)
        if bits is None or peer in self.bad:
            return
        usable = Bitfield(bits.length)
        for index in bits.present():
            if self.hashes[index] is not None:
                usable.set(index)
        self.scheduler.add_peer(peer, usable)

    def remove(self, peer: str) -> None:
        """``peer`` is gone."""
        self.held.forget(peer)
        self.peer_bits.pop(peer, None)
        self.scheduler.remove_peer(peer)

    def drop(self, peer: str) -> None:
        """``peer`` broke the rules: ignore it for this blob."""
        self.remove(peer)
        self.bad.add(peer)

    # -- requests --------------------------------------------------------------------------------

    def request(self, *, now: float, reader: int | None, linked: Callable[[str], bool]) -> None:
        """Cancel what expired, ask for what the scheduler picks (``reader``: the chunk a local
        reader waits on, asked for first with the ``window`` after it); a peer whose link is
        gone is forgotten instead."""
        scheduler = self.scheduler
        if reader is not None:
            scheduler.set_window(reader, min(reader + self.window, self.have.length))
        for stale in scheduler.expire(now=now):
            log.debug("%s: chunk %d from %s timed out", self.digest[:19], stale.index, stale.peer)
            self._send(stale.peer, Cancel(self.digest, stale.index))
        for assignment in scheduler.next_requests(now=now):
            if not linked(assignment.peer):
                scheduler.remove_peer(assignment.peer)
                continue
            self._send(assignment.peer, Request(self.digest, assignment.index))


__all__ = ["ChunkExchange"]
