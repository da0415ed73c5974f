"""This node in the swarm: the peer listener, message dispatch, uploads, and one session driver
per blob being downloaded (the ``SwarmStrategy`` that ``BlobService`` hands transfers to).

What to answer and whom to serve is decided by pure code (``p2pull.peer.session`` per blob,
``p2pull.peer.serving`` for uploads and blobs held whole); this module does the I/O.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2pull.blobs import BlobService
from p2pull.errors import InvalidReference, P2pullError, StoreError
from p2pull.membership import Member, Membership, rack_of
from p2pull.metrics import Metrics
from p2pull.origin_fetch import OriginFetcher
from p2pull.peer.events import NodeContext, PeerGone, PeerMessage, SessionConfig, Snapshot
from p2pull.peer.latecomers import Latecomers
from p2pull.peer.messages import (
    REJECT_BUSY,
    UNAVAILABLE_WRONG_COPY,
    Auth,
    BlobInfo,
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
from p2pull.peer.serving import Serving
from p2pull.peer.superseed import SuperSeeder
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.reference import Digest, RegistryHost, validate_name
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.swarm.context import DriverContext
from p2pull.swarm.driver import SessionDriver
from p2pull.swarm.links import PeerLink, PeerPool, slot
from p2pull.swarm.transport import PeerTransport, TcpTransport
from p2pull.transfer import Transfer

log = logging.getLogger(__name__)

LAST_SEEDS_KEPT = 1024  # blobs whose seed is remembered until their digest is checked


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
    rack_prefix: int = 0  # leading address bits naming a member's rack (0: racks not known)

    @property
    def session(self) -> SessionConfig:
        return SessionConfig(
            max_in_flight_per_peer=self.max_in_flight_per_peer,
            request_timeout=self.request_timeout,
            window=self.window,
            peers_handout=self.peers_handout,
            info_timeout=self.info_timeout,
        )


def describe(blob: StoredBlob) -> BlobInfo:
    """What this node holds of ``blob``, with every chunk hash it knows."""
    hashes = tuple(blob.chunk_hash(i) or b"" for i in range(blob.bitfield.length))
    return BlobInfo(str(blob.digest), blob.size, blob.chunk_size, blob.bitfield.to_bytes(), hashes)


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
        transport: PeerTransport | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.member.node_id
        self.membership = membership
        self.store = store
        self.blobs = blobs
        self.metrics = metrics
        self.clock = clock
        self.transport = transport or TcpTransport(host=config.bind_host, port=config.member.port)
        self.pool = PeerPool(
            node_id=self.node_id,
            listen_port=config.member.port,
            secret=config.secret,
            on_message=self._on_message,
            on_closed=self._on_closed,
            transport=self.transport,
            connect_timeout=config.connect_timeout,
            max_frame=config.max_chunk_size + 65536,
            messages=metrics.peer_messages,
        )
        self.serving = Serving(
            slots=config.upload_slots,
            queue=config.upload_queue,
            superseed=SuperSeeder(copies=config.seed_copies, window=config.seed_window),
            latecomers=Latecomers(window=config.latecomer_window),
            linked=self._linked,
        )
        self.drivers: dict[Digest, SessionDriver] = {}
        # whose hashes the last session of a blob used, and its members if this node seeded it
        self._last_seed: dict[Digest, tuple[str, frozenset[str] | None]] = {}
        self._context = DriverContext(
            node=NodeContext(
                self.node_id,
                membership,
                self.serving,
                config.session,
                rack=functools.partial(rack_of, prefix_bits=config.rack_prefix),
            ),
            links=self.pool,
            store=store,
            push=self._push,
            metrics=metrics,
            clock=clock,
            download_limit=download_limit,
        )
        self._uploads = trio.Semaphore(config.upload_slots)
        self.upload_limit = RateLimiter(config.upload_rate)
        self.download_limit = download_limit  # shared with the origin fetcher: one node budget
        self._nursery: trio.Nursery | None = None
        metrics.peer_links.set_function(lambda: len(self.pool.links))
        metrics.swarms.set_function(lambda: len(self.drivers))
        metrics.swarm_members.set_function(
            lambda: sum(d.session.snapshot().peers for d in self.drivers.values())
        )

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.pool.run)
            port = await nursery.start(self.transport.serve, self.pool.accept)
            task_status.started(port)

    def snapshots(self) -> list[Snapshot]:
        """The running sessions, as admin pages show them."""
        return [driver.session.snapshot() for driver in self.drivers.values()]

    # -- SwarmStrategy ---------------------------------------------------------------------------

    async def download(self, transfer: Transfer, *, origin: OriginFetcher) -> None:
        driver = self._driver(transfer, origin)
        try:
            await driver.run()
        finally:
            if self.drivers.get(transfer.digest) is driver:
                del self.drivers[transfer.digest]
            session = driver.session
            if session.seed_copy_wrong and session.seed_id is not None:
                await self._drop_wrong_copy(transfer.digest, session.seed_id)
            elif session.seed_id is not None:  # this node's own id if it seeded
                members = frozenset(session.members - session.bad) if session.seeding else None
                self._last_seed[transfer.digest] = (session.seed_id, members)
                while len(self._last_seed) > LAST_SEEDS_KEPT:
                    del self._last_seed[next(iter(self._last_seed))]
            self.serving.session_ended(
                session.digest,
                session.members - session.bad,
                now=self.clock(),
                failed_seeding=session.error if session.seeding else None,
            )
            self._answer_late_interest(driver, transfer.digest)

    def rejected(self, digest: Digest) -> None:
        """The blob this node's last session filled failed its digest: its seed described
        chunks that are not the blob's (a lying or broken peer, or the origin gave the seed
        wrong bytes; they were never served whole). The next session for it passes that seed
        over, also when the seed was this node: every member of that swarm saw the same
        failure and turns to the same next seed, so one node goes to the origin again."""
        seed, members = self._last_seed.pop(digest, (None, None))
        if seed is None:
            return
        if members is not None:  # this node seeded it: its members must not wait for it
            log.warning(
                "the bytes this node fetched for %s were wrong: the next seed fetches it", digest
            )
            for peer in sorted(members):  # those still linked
                self.pool.send(peer, Unavailable(str(digest), UNAVAILABLE_WRONG_COPY))
        else:
            log.warning(
                "the chunks %s described for %s were wrong: not asking it again", seed, digest
            )
        self.serving.distrust(str(digest), seed, now=self.clock())

    async def _drop_wrong_copy(self, digest: Digest, seed: str) -> None:
        """``seed`` said its copy of ``digest`` failed the digest: drop the chunks taken from it
        (they would fail it here too) and pass it over next time."""
        log.warning("%s's copy of %s failed its digest: dropping the chunks from it", seed, digest)
        self._last_seed.pop(digest, None)
        self.serving.distrust(str(digest), seed, now=self.clock())
        await self.store.remove(digest)

    def _answer_late_interest(self, driver: SessionDriver, digest: Digest) -> None:
        """Peers whose Interested reached the session's inbox after its last look (a small blob
        completes in milliseconds) would wait for a BlobInfo that never comes: answer them
        here, now that this node holds the blob (otherwise: 15 s of info timeout, then an
        origin fetch)."""
        for peer in driver.unhandled_interest():
            link = self.pool.link(peer)
            if link is not None:
                # if the session failed, it told its members; these time out and retry
                self._describe_complete(link, digest)

    def _describe_complete(self, link: PeerLink, digest: Digest) -> bool:
        """Answer ``link``'s peer's Interested in ``digest`` if no session is needed for it
        (``Serving.answer_interest``: this node holds the blob whole, or gave up on it lately);
        True if answered."""
        blob = self.store.lookup(digest)
        held = describe(blob) if blob is not None and blob.bitfield.complete else None
        answer = self.serving.answer_interest(
            str(digest), link.peer_id, held, now=self.clock(), limit=self.config.peers_handout
        )
        for message in answer or ():
            link.send(message)
        return answer is not None

    def _linked(self, peer: str) -> bool:
        """A live link to ``peer`` is up."""
        return self.pool.link(peer) is not None

    def _driver(self, transfer: Transfer, origin: OriginFetcher | None = None) -> SessionDriver:
        driver = self.drivers.get(transfer.digest)
        if driver is None or driver.transfer is not transfer:
            driver = self.drivers[transfer.digest] = SessionDriver(
                transfer, origin=origin or self.blobs.origin, context=self._context
            )
        return driver

    # -- links -----------------------------------------------------------------------------------

    def _on_closed(self, link: PeerLink) -> None:
        if self.pool.link(link.peer_id) is not None:
            return  # a newer link to the same peer is up
        self.membership.suspect(link.peer_id, now=self.clock())
        for driver in list(self.drivers.values()):
            driver.post_soon(PeerGone(link.peer_id))

    async def _on_message(self, link: PeerLink, message: Message) -> None:
        self.membership.alive(link.peer_id)
        if isinstance(message, Bye):
            link.close()
            return
        if isinstance(message, Request):
            self._on_request(link, message)
            return
        if isinstance(message, Cancel):
            self.serving.cancelled(link.peer_id, message.digest, message.index)
            return  # an upload already under way finishes; the peer ignores the late copy
        if isinstance(message, Hello | Auth):
            return
        digest = Digest.parse(message.digest)  # decode() already checked the grammar
        if isinstance(message, Purge):
            await self.purge(digest, origin=link.peer_id)
            return
        driver = self.drivers.get(digest)
        if driver is not None:
            await driver.post(PeerMessage(link.peer_id, message))
        elif isinstance(message, Interested):
            await self._on_interested(link, digest, message)
        elif isinstance(message, Push):
            link.send(Cancel(message.digest, message.index))  # no download of it here (any more)

    async def _on_interested(self, link: PeerLink, digest: Digest, message: Interested) -> None:
        if self._describe_complete(link, digest):
            return
        try:
            name = validate_name(message.name)
            if message.ns is not None:
                RegistryHost.parse(message.ns)  # NameInvalid: an InvalidReference
        except InvalidReference as exc:
            link.send(Unavailable(message.digest, f"refused: {exc}"))
            return
        transfer = self.blobs.ensure(message.ns, name, digest)
        if transfer is None:
            await self._on_interested(link, digest, message)  # it completed meanwhile
            return
        await self._driver(transfer).post(PeerMessage(link.peer_id, message))

    async def purge(self, digest: Digest, *, origin: str) -> bool:
        """Drop a blob on a peer's request (an operator's ``purge --all-nodes``); a blob being
        downloaded or served right now stays."""
        if digest in self.blobs.transfers or self.store.lookup(digest) is None:
            return False
        removed = await self.store.remove(digest)
        self.serving.forget(str(digest))
        log.info("purged %s at the request of %s", digest, origin)
        return removed

    # -- uploads ---------------------------------------------------------------------------------

    def _on_request(self, link: PeerLink, request: Request) -> None:
        reason: str | None = REJECT_BUSY
        if self._nursery is not None:
            reason = self.serving.request(
                link.peer_id, request.digest, request.index, now=self.clock()
            )
        if reason is not None:
            link.send(Reject(request.digest, request.index, reason))
            return
        self._start_upload(link, request)

    def _push(self, peer: str, push: Push) -> None:
        """Send ``push`` (a Have) and then its chunk to ``peer`` unasked (``Serving.push``
        admitted it); the piece waits for an upload slot like a requested one, and the peer
        may Cancel it."""
        link = self.pool.link(peer)
        if link is None or self._nursery is None:
            self.serving.cancel(peer, push.digest, push.index)
            return
        link.send(push)
        self.metrics.chunks_pushed.inc()
        self._start_upload(link, Request(push.digest, push.index))

    def _start_upload(self, link: PeerLink, request: Request) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._upload, link, request)

    async def _upload(self, link: PeerLink, request: Request) -> None:
        peer, digest, index = link.peer_id, request.digest, request.index
        try:
            # The link's slot first: a peer that stops reading holds at most its own
            # PIECE_SLOTS_PER_LINK of the node's upload slots, the others keep serving.
            async with slot(link.piece_slots), slot(self._uploads):
                if not self.serving.begin(peer, digest, index):
                    return  # cancelled while it waited
                try:
                    await self._send_piece(link, request)
                finally:
                    self.serving.end()
        finally:
            self.serving.cancel(peer, digest, index)  # never began: no longer waiting

    async def _send_piece(self, link: PeerLink, request: Request) -> None:
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
