"""One blob's swarm, seen from this node: one task owns all of its state.

Events reach the task through its inbox: peer messages, peers going away, and chunks landing in
the local store (from peers or from the origin). The task finds the blob's seed (the highest HRW
member), learns the blob's size and chunk hashes from it, asks peers for chunks as the pure
scheduler decides, verifies each piece against the seed's hash before storing it, tells its swarm
about every chunk it holds, and, when it is the seed (from the start, or after the seed died),
fetches from the origin only the chunks no live peer can give. Fresh chunks travel by push
(``p2pull.swarm.relay``): the seed hands each to one member, which relays it to the others.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from p2pull.bitfield import Bitfield
from p2pull.errors import ChunkMismatch, P2pullError
from p2pull.membership import InvalidPeerAddress, Member
from p2pull.origin_fetch import OriginFetcher
from p2pull.peer.messages import (
    REJECT_BUSY,
    BlobInfo,
    Cancel,
    Have,
    Interested,
    Message,
    Peers,
    Piece,
    Push,
    Reject,
    Request,
    Unavailable,
)
from p2pull.peer.scheduler import Scheduler
from p2pull.store.types import StoredBlob, chunk_count
from p2pull.swarm.links import PeerUnreachable
from p2pull.swarm.relay import HeldPieces, Relay
from p2pull.transfer import Transfer

if TYPE_CHECKING:
    from p2pull.swarm.node import SwarmNode

log = logging.getLogger(__name__)

TICK = 0.5  # the longest the task waits before re-checking timeouts and the reader window
BATCH = 64  # events handled between two scheduler passes at most
BUSY_RETRY = 0.5  # seconds before asking a peer that answered "busy" for that chunk again


class Role(enum.Enum):
    SEED = "seed"
    LEECH = "leech"


class BlobSwarm:
    def __init__(self, node: SwarmNode, transfer: Transfer) -> None:
        self.node = node
        self.transfer = transfer
        self.digest = str(transfer.digest)
        self.inbox, self._inbox = trio.open_memory_channel[tuple[str, str, object]](256)
        self.role = Role.LEECH
        self.seed_id: str | None = None
        self.members: set[str] = set()  # peers that asked us for updates (we send them Haves)
        self.asked: set[str] = set()  # peers we sent Interested to
        self.bad: set[str] = set()  # peers that sent a bad chunk: ignored for this blob
        self.peer_bits: dict[str, Bitfield] = {}
        self.hashes: list[bytes | None] = []
        self.scheduler: Scheduler | None = None
        self._waiting_info: set[str] = set()  # asked before we knew the size
        self._origin: OriginFetcher | None = None
        self._origin_running = False
        self._origin_error: P2pullError | None = None
        self._seed_asked_at = 0.0
        self._progress_at = 0.0  # when a chunk last landed (or we last asked the seed)
        self._announced: Bitfield | None = None
        self.relay = Relay()
        self.held = HeldPieces()  # pieces that came before their hash
        self._nursery: trio.Nursery | None = None

    # -- the task --------------------------------------------------------------------------------

    async def run(self, origin: OriginFetcher) -> None:
        self._origin = origin
        landed = self.transfer.subscribe()
        failed: P2pullError | None = None  # raised outside the nursery: no ExceptionGroup
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forward_landed, landed)
            await self._find_seed()
            while not self._finished():
                if self._origin_error is not None:
                    self._broadcast(Unavailable(self.digest, str(self._origin_error)[:1000]))
                    failed = self._origin_error
                    break
                event = None
                with trio.move_on_after(TICK):  # only the wait: never cut a handler short
                    event = await self._inbox.receive()
                if event is not None:
                    await self._handle(*event)
                    await self._handle_queued()
                await self._pump()
            nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _handle_queued(self) -> None:
        """Events that queued up meanwhile (Haves come in bursts): one pump for all of them."""
        for _ in range(BATCH):
            try:
                event = self._inbox.receive_nowait()
            except trio.WouldBlock:
                return
            await self._handle(*event)

    def unhandled_interest(self) -> list[str]:
        """Peers whose Interested is still in the inbox (once the task has ended)."""
        left: list[str] = []
        while True:
            try:
                kind, peer, item = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return left
            if kind == "msg" and isinstance(item, Interested):
                left.append(peer)

    async def post(self, event: tuple[str, str, object]) -> None:
        """Put ``event`` in the inbox; waits only while the inbox is full. (trio's ``send``
        always passes through the scheduler; once per peer message that cost ~10 % of an
        agent's CPU in a storm with 128 KiB chunks.)"""
        try:
            self.inbox.send_nowait(event)
        except trio.WouldBlock:
            await self.inbox.send(event)

    async def _forward_landed(self, landed: trio.MemoryReceiveChannel[int]) -> None:
        async with landed:
            async for index in landed:
                await self.post(("landed", "", index))

    def _complete(self) -> bool:
        blob = self.transfer.blob
        return blob is not None and blob.bitfield.complete

    def _finished(self) -> bool:
        """Complete, and every chunk announced to the swarm (the last Haves matter most: a
        peer that misses one waits for a hash it can never verify with)."""
        return self._complete() and self._announced is not None and self._announced.complete

    # -- the seed --------------------------------------------------------------------------------

    async def _find_seed(self) -> None:
        membership, now = self.node.membership, self.node.clock()
        while True:
            seed = membership.seed_for(self.digest, now=now)
            if seed.node_id == self.node.node_id:
                self._become_seed()
                return
            try:
                link = await self.node.pool.connect(seed)
            except PeerUnreachable as exc:
                log.info("seed %s of %s unreachable: %s", seed.node_id, self.digest[:19], exc)
                membership.suspect(seed.node_id, now=self.node.clock())
                continue
            self.role, self.seed_id = Role.LEECH, seed.node_id
            self._seed_asked_at = self._progress_at = self.node.clock()
            link.send(Interested(self.digest, self.transfer.name, self.transfer.ns))
            self.asked.add(seed.node_id)
            return

    def _become_seed(self) -> None:
        log.info("seeding %s from the origin", self.digest[:19])
        self.role, self.seed_id = Role.SEED, self.node.node_id
        self.node.superseed.start(self.digest)
        self._start_origin()

    def _start_origin(self) -> None:
        if self._origin_running or self._nursery is None:
            return
        self._origin_running = True
        self._nursery.start_soon(self._origin_task)

    async def _origin_task(self) -> None:
        assert self._origin is not None
        try:
            with self.node.metrics.origin_fetchers.track_inprogress():
                await self._origin.fetch(self.transfer, wanted=self._origin_wanted)
        except P2pullError as exc:
            self._origin_error = exc
        finally:
            self._origin_running = False
            if self.transfer.blob is not None:
                self.inbox.send_nowait(("origin-done", "", None))

    def _origin_wanted(self, index: int) -> bool:
        """Fetch from the origin only what no live peer has (with a known hash) or is sending."""
        if self.scheduler is None:
            return True
        return self.scheduler.unavailable(index)

    # -- events ----------------------------------------------------------------------------------

    async def _handle(self, kind: str, peer: str, item: object) -> None:
        if kind == "landed":
            assert isinstance(item, int)
            self._progress_at = self.node.clock()
            self._announce(item)
        elif kind == "gone":
            await self._peer_gone(peer)
        elif kind == "msg" and peer not in self.bad:
            await self._on_message(peer, item)  # type: ignore[arg-type]
        if self.scheduler is None and self.transfer.blob is not None:
            self._blob_known(self.transfer.blob)

    async def _on_message(self, peer: str, message: Message) -> None:
        if isinstance(message, Interested):
            self._on_interested(peer)
        elif isinstance(message, BlobInfo):
            await self._on_info(peer, message)
        elif isinstance(message, Have):
            self._on_have(peer, message)
            if peer == self.seed_id and self.held:
                await self._verify_held()
        elif isinstance(message, Push):
            self._on_push(peer, message)
        elif isinstance(message, Piece):
            await self._on_piece(peer, message)
        elif isinstance(message, Reject) and self.scheduler is not None:
            busy = message.reason == REJECT_BUSY  # full upload queue: soon again, or elsewhere
            self.scheduler.on_failed(
                peer, message.index, now=self.node.clock(), retry_after=BUSY_RETRY if busy else None
            )
        elif isinstance(message, Peers) and peer == self.seed_id:
            self._on_peers(message)
        elif isinstance(message, Unavailable) and peer == self.seed_id:
            log.warning(
                "seed %s cannot provide %s (%s): fetching it myself",
                peer,
                self.digest[:19],
                message.reason,
            )
            self._become_seed()

    def _on_interested(self, peer: str) -> None:
        self.members.add(peer)
        if self.transfer.blob is None:
            self._waiting_info.add(peer)
            return
        self._send_info(peer)
        if peer not in self.asked and self.role is Role.LEECH:
            self._send(peer, Interested(self.digest, self.transfer.name, self.transfer.ns))
            self.asked.add(peer)

    def _send_info(self, peer: str) -> None:
        blob = self.transfer.blob
        assert blob is not None
        self._send(peer, blob_info(self.digest, blob))
        if self.role is Role.SEED:
            others = [m for m in self.members if m != peer and m not in self.bad]
            sample = random.sample(others, min(len(others), self.node.config.peers_handout))
            if sample:
                self._send(peer, peers_message(self.digest, sample))

    async def _on_info(self, peer: str, info: BlobInfo) -> None:
        blob = self.transfer.blob
        if blob is None:
            if peer != self.seed_id:
                return
            try:
                blob = await self.node.store.open(
                    self.transfer.digest, size=info.size, chunk_size=info.chunk_size
                )
            except P2pullError as exc:
                self._origin_error = exc
                return
            self.transfer.blob = blob
            self.transfer.notify()
            self._blob_known(blob)
        if (info.size, info.chunk_size) != (blob.size, blob.chunk_size):
            log.warning("peer %s describes %s differently; ignoring it", peer, self.digest[:19])
            self._drop(peer)
            return
        self.peer_bits[peer] = Bitfield(blob.bitfield.length, info.bitfield)
        if peer == self.seed_id:
            for index, digest in enumerate(info.hashes):
                if digest and self.hashes[index] is None:
                    self.hashes[index] = digest
            for other in self.peer_bits:
                self._offer(other)
            await self._verify_held()
        else:
            self._offer(peer)

    def _on_have(self, peer: str, have: Have) -> None:
        bits = self.peer_bits.get(peer)
        if bits is None or self.scheduler is None or have.index >= bits.length:
            return
        bits.set(have.index)
        if peer == self.seed_id and self.hashes[have.index] is None:
            self.hashes[have.index] = have.sha256
            for other, other_bits in self.peer_bits.items():
                if other_bits.has(have.index) and other not in self.bad:
                    self.scheduler.peer_has(other, have.index)
        elif self.hashes[have.index] is not None:
            self.scheduler.peer_has(peer, have.index)

    def _on_push(self, peer: str, push: Push) -> None:
        """A chunk coming unasked: expected from ``peer`` like a request (requests for it to
        others are cancelled), unless we hold it (then the push is cancelled). Its hash may not
        be here yet: the piece then waits for it (``_hold``)."""
        self._on_have(peer, Have(push.digest, push.index, push.sha256))
        scheduler = self.scheduler
        crossed = None
        if scheduler is not None and peer in self.peer_bits and 0 <= push.index < len(self.hashes):
            crossed = scheduler.pushed(peer, push.index, now=self.node.clock())
        if crossed is None:
            self._send(peer, Cancel(self.digest, push.index))
            return
        for request in crossed:
            self._send(request.peer, Cancel(self.digest, request.index))

    async def _on_piece(self, peer: str, piece: Piece) -> None:
        blob, scheduler = self.transfer.blob, self.scheduler
        if blob is None or scheduler is None or not 0 <= piece.index < blob.bitfield.length:
            return
        if blob.bitfield.has(piece.index):
            return  # a late duplicate
        expected = self.hashes[piece.index]
        if expected is None:
            self._hold(peer, piece)
            return
        await self.node.download_limit.acquire(len(piece.data))
        now = self.node.clock()
        try:
            self.transfer.sources[piece.index] = "peer"  # before readers can see it
            await blob.write_chunk(piece.index, piece.data, expected=expected)
        except ChunkMismatch:
            if not blob.bitfield.has(piece.index):
                self.transfer.sources.pop(piece.index, None)
            self.node.metrics.chunks_rejected.inc()
            log.warning(
                "peer %s sent a corrupt chunk %d of %s: dropping it for this blob",
                peer,
                piece.index,
                self.digest[:19],
            )
            scheduler.on_failed(peer, piece.index, now=now)
            self._drop(peer)
            return
        self.node.metrics.chunks_verified.inc()
        self.node.metrics.fetched_bytes.labels("peer").inc(len(piece.data))
        scheduler.have(piece.index)
        if peer == self.seed_id and self.role is Role.LEECH:
            self.relay.from_seed(piece.index)
        for duplicate in scheduler.on_piece(peer, piece.index, now=now):
            self._send(duplicate.peer, Cancel(self.digest, duplicate.index))
        self.transfer.chunk_landed(piece.index)

    def _hold(self, peer: str, piece: Piece) -> None:
        """Keep a piece that came before its hash (``p2pull.swarm.relay``). Pieces nobody
        expects from ``peer`` are dropped; beyond the held budget it is asked for again."""
        assert self.scheduler is not None
        if self.scheduler.expecting(peer, piece.index) and not self.held.hold(peer, piece):
            self.scheduler.on_failed(
                peer, piece.index, now=self.node.clock(), retry_after=BUSY_RETRY
            )

    async def _verify_held(self) -> None:
        for peer, piece in self.held.take(lambda index: self.hashes[index] is not None):
            await self._on_piece(peer, piece)

    def _on_peers(self, peers: Peers) -> None:
        assert self._nursery is not None
        for node_id, host, port in peers.peers[: self.node.config.peers_handout]:
            if node_id == self.node.node_id or node_id in self.asked or node_id in self.bad:
                continue
            try:
                member = Member.of(host, port)
            except InvalidPeerAddress:
                continue
            if member.node_id == node_id:
                self._nursery.start_soon(self._join, member)

    async def _join(self, member: Member) -> None:
        try:
            link = await self.node.pool.connect(member)
        except PeerUnreachable:
            return
        if member.node_id not in self.asked:
            self.asked.add(member.node_id)
            link.send(Interested(self.digest, self.transfer.name, self.transfer.ns))

    async def _peer_gone(self, peer: str) -> None:
        self.held.forget(peer)
        self.members.discard(peer)
        self.asked.discard(peer)
        self.peer_bits.pop(peer, None)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)
        if peer == self.seed_id and self.role is Role.LEECH:
            log.info("seed %s of %s is gone: choosing the next", peer, self.digest[:19])
            await self._find_seed()

    # -- helpers ---------------------------------------------------------------------------------

    def _blob_known(self, blob: StoredBlob) -> None:
        count = chunk_count(blob.size, blob.chunk_size)
        if len(self.hashes) != count:
            self.hashes = [blob.chunk_hash(i) for i in range(count)]
        config = self.node.config
        self.scheduler = Scheduler(
            chunk_count=count,
            max_in_flight_per_peer=config.max_in_flight_per_peer,
            request_timeout=config.request_timeout,
            salt=self.node.node_id.encode(),
        )
        self._announced = Bitfield(count)
        for index in blob.bitfield.present():
            self.scheduler.have(index)
            self._announced.set(index)  # held before this swarm began: BlobInfo tells them
        for peer in list(self._waiting_info):
            self._on_interested(peer)
        self._waiting_info.clear()

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

    def _announce(self, index: int) -> None:
        blob = self.transfer.blob
        if blob is None:
            return
        if self._announced is not None:
            self._announced.set(index)
        if self.scheduler is not None:
            self.scheduler.have(index)
        digest = blob.chunk_hash(index)
        if digest is not None:
            if self.hashes and self.hashes[index] is None:
                self.hashes[index] = digest
            have, push = Have(self.digest, index, digest), Push(self.digest, index, digest)
            lacking = [  # not to those that hold it: they need nothing from us
                peer
                for peer in self.members
                if peer not in self.bad and not self._holds(peer, index)
            ]
            pushed = self.relay.push_out(
                index,
                lacking,
                seeding=self.role is Role.SEED,
                from_origin=self.transfer.sources.get(index) == "origin",
                push=lambda peer: self._push(peer, push),
            )
            for peer in lacking:
                if peer not in pushed:
                    self._send(peer, have)

    def _holds(self, peer: str, index: int) -> bool:
        bits = self.peer_bits.get(peer)
        return bits is not None and bits.has(index)

    def _push(self, peer: str, push: Push) -> bool:
        link = self.node.pool.link(peer)
        return link is not None and self.node.push(link, push, seeding=self.role is Role.SEED)

    def _broadcast(self, message: Message) -> None:
        for peer in self.members:
            if peer not in self.bad:
                self._send(peer, message)

    def _send(self, peer: str, message: Message) -> None:
        link = self.node.pool.link(peer)
        if link is not None:
            link.send(message)

    def _drop(self, peer: str) -> None:
        self.held.forget(peer)
        self.bad.add(peer)
        self.members.discard(peer)
        self.peer_bits.pop(peer, None)
        if self.scheduler is not None:
            self.scheduler.remove_peer(peer)

    async def _pump(self) -> None:
        now = self.node.clock()
        blob, scheduler = self.transfer.blob, self.scheduler
        if blob is None or scheduler is None:
            if (
                self.role is Role.LEECH
                and now - self._seed_asked_at > self.node.config.info_timeout
            ):
                log.warning("seed %s did not describe %s in time", self.seed_id, self.digest[:19])
                if self.seed_id is not None:
                    self.node.membership.suspect(self.seed_id, now=now)
                await self._find_seed()
            return
        if blob.bitfield.complete and self._announced is not None:
            # Every chunk is here: announce any whose landing event is still on its way, so the
            # task can end now instead of on the next event.
            for index in list(self._announced.missing()):
                self._announce(index)
            return
        wanted = self.transfer.wanted_index
        if wanted is not None:
            scheduler.set_window(
                wanted, min(wanted + self.node.config.window, blob.bitfield.length)
            )
        for stale in scheduler.expire(now=now):
            self._send(stale.peer, Cancel(self.digest, stale.index))
        for assignment in scheduler.next_requests(now=now):
            link = self.node.pool.link(assignment.peer)
            if link is None:
                scheduler.remove_peer(assignment.peer)
                continue
            link.send(Request(self.digest, assignment.index))
        if (
            self.role is Role.LEECH
            and self.seed_id is not None
            and now - self._progress_at > self.node.config.info_timeout
        ):
            # Stalled: ask the seed again; it answers with everything it has and knows (a
            # Have lost in a race is recovered this way).
            log.info("no progress on %s: asking seed %s again", self.digest[:19], self.seed_id)
            missing = list(blob.bitfield.missing())[:8]
            log.debug(
                "stall detail for %s: missing %s, hash known %s, holders %s, in flight %s",
                self.digest[:19],
                missing,
                [self.hashes[i] is not None for i in missing],
                {p: [i for i in missing if b.has(i)] for p, b in self.peer_bits.items()},
                scheduler.in_flight()[:8],
            )
            if self._announced is not None:
                log.debug("unannounced: %s", list(self._announced.missing())[:8])
            self._progress_at = now
            self._send(self.seed_id, Interested(self.digest, self.transfer.name, self.transfer.ns))
        if (
            self.role is Role.SEED
            and not self._origin_running
            and not blob.bitfield.complete
            and scheduler.missing_unavailable()
        ):
            self._start_origin()


def blob_info(digest: str, blob: StoredBlob) -> BlobInfo:
    """What this node holds of ``blob``, with every chunk hash it knows."""
    hashes = tuple(blob.chunk_hash(i) or b"" for i in range(blob.bitfield.length))
    return BlobInfo(digest, blob.size, blob.chunk_size, blob.bitfield.to_bytes(), hashes)


def peers_message(digest: str, node_ids: Iterable[str]) -> Peers:
    """The Peers message that hands out ``node_ids`` (``host:port``) for ``digest``."""
    return Peers(digest, tuple((m, *_split(m)) for m in node_ids))


def _split(node_id: str) -> tuple[str, int]:
    host, _, port = node_id.rpartition(":")
    return host.strip("[]"), int(port)


__all__ = ["BlobSwarm", "Role", "blob_info", "peers_message"]
