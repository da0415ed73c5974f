"""This node in the swarm: the peer listener, message dispatch, uploads, and one BlobSwarm task
per blob being downloaded (the ``SwarmStrategy`` that ``BlobService`` hands transfers to)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2pull.blobs import BlobService
from p2pull.errors import InvalidReference, P2pullError, StoreError
from p2pull.membership import Member, Membership
from p2pull.metrics import Metrics
from p2pull.mirror import NS_RE
from p2pull.origin_fetch import OriginFetcher
from p2pull.peer.messages import (
    REJECT_BUSY,
    Auth,
    Bye,
    Cancel,
    Hello,
    Interested,
    Message,
    Purge,
    Push,
    Reject,
    Request,
    Unavailable,
)
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.reference import Digest, validate_name
from p2pull.store.types import BlobStore
from p2pull.swarm.blobswarm import BlobSwarm, blob_info, peers_message
from p2pull.swarm.latecomers import Latecomers
from p2pull.swarm.links import PeerLink, PeerPool, slot
from p2pull.swarm.superseed import SuperSeeder
from p2pull.transfer import Transfer

log = logging.getLogger(__name__)

PUSH_BACKLOG = 2  # relayed chunks (or requests) of one peer waiting for an upload slot, at most


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    member: Member  # this node as the others know it (advertised address)
    secret: bytes
    bind_host: str = "0.0.0.0"
    request_timeout: float = 30.0  # a 4 MiB piece behind a few others on a slow uplink
    max_in_flight_per_peer: int = 4
    upload_slots: int = 4  # few pieces at once: each finishes fast, requests do not expire
    # Requests that may wait for a slot; beyond them a node answers "busy" and the requester
    # asks another holder at once instead of queueing behind a busy uplink while others idle.
    upload_queue: int = 0  # measured: 0-2 best, 4 and more slower (docs/benchmarks.md)
    window: int = 4
    peers_handout: int = 32
    info_timeout: float = 15.0
    connect_timeout: float = 5.0
    max_chunk_size: int = 64 * 1024 * 1024
    upload_rate: float = 0.0  # bytes/s to all peers together; 0: unlimited
    seed_copies: int = 1  # super-seeding: grants of one chunk per seed_window (0: no cap)
    seed_window: float = 15.0
    latecomer_window: float = 60.0  # late askers of a blob are named to the next for this long


class SwarmNode:
    """Start with ``await nursery.start(node.run)``; set ``blobs.swarm = node``."""

    def __init__(
        self,
        *,
        config: SwarmConfig,
        membership: Membership,
        store: BlobStore,
        blobs: BlobService,
        metrics: Metrics,
        clock: Callable[[], float] = trio.current_time,
        download_limit: RateLimiter = UNLIMITED,
    ) -> None:
        self.config = config
        self.node_id = config.member.node_id
        self.membership = membership
        self.store = store
        self.blobs = blobs
        self.metrics = metrics
        self.clock = clock
        self.pool = PeerPool(
            node_id=self.node_id,
            listen_port=config.member.port,
            secret=config.secret,
            on_message=self._on_message,
            on_closed=self._on_closed,
            connect_timeout=config.connect_timeout,
            max_frame=config.max_chunk_size + 65536,
        )
        self.swarms: dict[Digest, BlobSwarm] = {}
        self._uploads = trio.Semaphore(config.upload_slots)
        self.upload_limit = RateLimiter(config.upload_rate)
        self.download_limit = download_limit  # shared with the origin fetcher: one node budget
        self._waiting: set[tuple[str, str, int]] = set()  # (peer, digest, index) before a slot
        self.superseed = SuperSeeder(copies=config.seed_copies, window=config.seed_window)
        self.latecomers = Latecomers(window=config.latecomer_window)
        self._nursery: trio.Nursery | None = None
        metrics.peer_links.set_function(lambda: len(self.pool.links))
        metrics.swarms.set_function(lambda: len(self.swarms))
        metrics.swarm_members.set_function(
            lambda: sum(len(swarm.peer_bits) for swarm in self.swarms.values())
        )

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(
            self.config.member.port, host=self.config.bind_host
        )
        port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.pool.run)
            nursery.start_soon(trio.serve_listeners, self.pool.accept, listeners)
            task_status.started(port)

    # -- SwarmStrategy ---------------------------------------------------------------------------

    async def download(self, transfer: Transfer, *, origin: OriginFetcher) -> None:
        swarm = self._swarm(transfer)
        try:
            await swarm.run(origin)
        finally:
            if self.swarms.get(transfer.digest) is swarm:
                del self.swarms[transfer.digest]
            self.superseed.stop(str(transfer.digest), now=self.clock())
            self.latecomers.add(str(transfer.digest), swarm.members - swarm.bad, now=self.clock())
            self._answer_late_interest(swarm, transfer.digest)

    def _answer_late_interest(self, swarm: BlobSwarm, digest: Digest) -> None:
        """Peers whose Interested reached the swarm's inbox after its last look (a small blob
        completes in milliseconds) would wait for a BlobInfo that never comes: answer them
        here, now that this node holds the blob (unanswered, such a peer waits out its 15 s
        info timeout and then fetches from the origin itself)."""
        for peer in swarm.unhandled_interest():
            link = self.pool.link(peer)
            if link is not None:
                # if the swarm failed, it told its members; these time out and retry
                self._describe_complete(link, digest)

    def _describe_complete(self, link: PeerLink, digest: Digest) -> bool:
        """Send ``link``'s peer our BlobInfo if we hold all of ``digest``; True if sent. No swarm
        for it runs here any more, so the peer also learns whom else to ask: the peers this
        node gave chunks to while it still hands each chunk out once (super-seeding lasts a
        window past the swarm's end: it will refuse the asker those), then the others that
        asked late and the members of the swarm that ended (``p2pull.swarm.latecomers``).
        Told of no one else, a late asker would wait out the 15 s window, and late joiners of
        a big blob would all pull it from this node alone (docs/benchmarks.md, late joiners)."""
        blob = self.store.lookup(digest)
        if blob is None or not blob.bitfield.complete:
            return False
        link.send(blob_info(str(digest), blob))
        now, asker = self.clock(), link.peer_id
        holders = self.superseed.recipients(str(digest), now=now, alive=self._linked)
        referrals = [peer for peer in holders if peer != asker]
        late = self.latecomers.refer(str(digest), asker, now=now, alive=self._linked)
        referrals += [peer for peer in late if peer not in referrals]
        if referrals:
            link.send(peers_message(str(digest), referrals[: self.config.peers_handout]))
        return True

    def _linked(self, peer: str) -> bool:
        """A live link to ``peer`` is up."""
        return self.pool.link(peer) is not None

    def _swarm(self, transfer: Transfer) -> BlobSwarm:
        swarm = self.swarms.get(transfer.digest)
        if swarm is None or swarm.transfer is not transfer:
            swarm = self.swarms[transfer.digest] = BlobSwarm(self, transfer)
        return swarm

    # -- links -----------------------------------------------------------------------------------

    def _on_closed(self, link: PeerLink) -> None:
        if self.pool.link(link.peer_id) is not None:
            return  # a newer link to the same peer is up
        self.membership.suspect(link.peer_id, now=self.clock())
        for swarm in list(self.swarms.values()):
            try:
                swarm.inbox.send_nowait(("gone", link.peer_id, None))
            except trio.WouldBlock:
                log.warning("swarm inbox full; %s loses a peer-gone event", swarm.digest[:19])

    async def _on_message(self, link: PeerLink, message: Message) -> None:
        self.membership.alive(link.peer_id)
        if isinstance(message, Bye):
            link.close()
            return
        if isinstance(message, Request):
            self._on_request(link, message)
            return
        if isinstance(message, Cancel):
            self._waiting.discard((link.peer_id, message.digest, message.index))
            return  # an upload already under way finishes; the peer ignores the late copy
        if isinstance(message, Hello | Auth):
            return
        digest = Digest.parse(message.digest)  # decode() already checked the grammar
        if isinstance(message, Purge):
            await self.purge(digest, origin=link.peer_id)
            return
        swarm = self.swarms.get(digest)
        if swarm is not None:
            await swarm.post(("msg", link.peer_id, message))
        elif isinstance(message, Interested):
            await self._on_interested(link, digest, message)
        elif isinstance(message, Push):
            link.send(Cancel(message.digest, message.index))  # no download of it here (any more)

    async def _on_interested(self, link: PeerLink, digest: Digest, message: Interested) -> None:
        if self._describe_complete(link, digest):
            return
        try:
            name = validate_name(message.name)
            if message.ns is not None and NS_RE.fullmatch(message.ns) is None:
                raise InvalidReference(f"bad ns {message.ns[:80]!r}")
        except InvalidReference as exc:
            link.send(Unavailable(message.digest, f"refused: {exc}"))
            return
        transfer = self.blobs.ensure(message.ns, name, digest)
        if transfer is None:
            await self._on_interested(link, digest, message)  # it completed meanwhile
            return
        await self._swarm(transfer).post(("msg", link.peer_id, message))

    async def purge(self, digest: Digest, *, origin: str) -> bool:
        """Drop a blob on a peer's request (an operator's ``purge --all-nodes``); a blob being
        downloaded or served right now stays."""
        if digest in self.blobs.transfers or self.store.lookup(digest) is None:
            return False
        removed = await self.store.remove(digest)
        self.superseed.forget(str(digest))
        self.latecomers.forget(str(digest))
        log.info("purged %s at the request of %s", digest, origin)
        return removed

    def _on_request(self, link: PeerLink, request: Request) -> None:
        if (
            self._upload_backlog() >= self.config.upload_slots + self.config.upload_queue
            or self._nursery is None
        ):
            link.send(Reject(request.digest, request.index, REJECT_BUSY))
            return
        if not self._seeding_grant(request.digest, request.index, link.peer_id):
            link.send(Reject(request.digest, request.index, "seeded: ask the peers"))
            return
        self._waiting.add((link.peer_id, request.digest, request.index))
        self._nursery.start_soon(self._upload, link, request)

    def push(self, link: PeerLink, push: Push, *, seeding: bool = False) -> bool:
        """Send ``push`` (a Have) and then its chunk to ``link``'s peer unasked; the piece waits
        for an upload slot like a requested one, and the peer may Cancel it. False, and nothing
        is sent, while PUSH_BACKLOG pushes or requests of that peer already wait for a slot (a
        receiver whose link is slow asks for the chunk itself when it can take it), or, when
        ``seeding``, if super-seeding does not grant the chunk to that peer (a grant is spent
        only on a push that goes out)."""
        peer = link.peer_id
        waiting = sum(1 for key in self._waiting if key[0] == peer)
        if self._nursery is None or waiting >= PUSH_BACKLOG:
            return False
        if seeding and not self._seeding_grant(push.digest, push.index, peer):
            return False
        link.send(push)
        self.metrics.chunks_pushed.inc()
        self._waiting.add((peer, push.digest, push.index))
        self._nursery.start_soon(self._upload, link, Request(push.digest, push.index))
        return True

    def _upload_backlog(self) -> int:
        """Uploads under way plus requests waiting for a slot."""
        return self.config.upload_slots - self._uploads.value + len(self._waiting)

    def _seeding_grant(self, digest: str, index: int, peer: str) -> bool:
        """May ``peer`` have chunk ``index`` of ``digest`` from us (super-seeding,
        ``p2pull.swarm.superseed``: a chunk this node fetched from the origin goes to one peer,
        the others get it from that peer)? Records the grant."""
        return self.superseed.grant(digest, index, peer, now=self.clock(), alive=self._linked)

    async def _upload(self, link: PeerLink, request: Request) -> None:
        key = (link.peer_id, request.digest, request.index)
        try:
            # The link's slot first: a peer that stops reading holds at most its own
            # PIECE_SLOTS_PER_LINK of the node's upload slots, the others keep serving.
            async with slot(link.piece_slots), slot(self._uploads):
                if key not in self._waiting:
                    return  # cancelled while it waited
                self._waiting.discard(key)
                blob = self.store.lookup(Digest.parse(request.digest))
                if (
                    blob is None
                    or not 0 <= request.index < blob.bitfield.length
                    or not blob.bitfield.has(request.index)
                ):
                    link.send(Reject(request.digest, request.index, "not held"))
                    return
                _, length = blob.chunk_span(request.index)
                await self.upload_limit.acquire(length)
                try:
                    sent = await link.upload(request.digest, request.index, blob)
                except (StoreError, P2pullError) as exc:
                    link.send(Reject(request.digest, request.index, f"store: {exc}"[:1000]))
                    return
                if sent:
                    self.metrics.peer_upload_bytes.inc(length)
        finally:
            self._waiting.discard(key)
