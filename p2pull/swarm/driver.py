"""The trio driver of one blob session: events in, actions carried out.

``p2pull.peer.session.BlobSession`` decides everything; this task feeds it what happens (peer
messages from its inbox, chunks landing in the store, the local reader's position, the origin
fetch ending) and does what it says: send on links, dial, open the blob in the store, verify and
write pieces, run the origin fetch, push chunks. It waits for the next event or the session's
next deadline, never on a fixed tick. Results that the session needs before anything else (an
opened blob, a written piece) are fed back at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from p2pull.errors import BlobUnavailable, ChunkMismatch, P2pullError
from p2pull.membership import Member
from p2pull.metrics import Metrics
from p2pull.origin_fetch import OriginFetcher
from p2pull.peer.events import (
    Action,
    BlobOpened,
    ChunkLanded,
    Dial,
    DialFailed,
    Event,
    Failed,
    LinkUp,
    NodeContext,
    OpenBlob,
    OriginDone,
    OriginRetrying,
    PeerMessage,
    PieceCorrupt,
    PieceStored,
    PushPiece,
    ReaderWants,
    Send,
    StartOrigin,
    WritePiece,
)
from p2pull.peer.messages import Interested, Message, Push
from p2pull.peer.session import BlobSession
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.swarm.links import PeerUnreachable
from p2pull.transfer import Transfer

log = logging.getLogger(__name__)

BATCH = 64  # events handled between two pumps at most (Haves come in bursts)
INBOX = 256


class Links(Protocol):
    """The node's peer links, as a session's driver uses them."""

    def send(self, peer: str, message: Message) -> bool: ...

    async def connect(self, member: Member) -> object: ...


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What a driver may touch: the node's pure state, its links, store and budgets."""

    node: NodeContext
    links: Links
    store: BlobStore
    push: Callable[[str, Push], None]  # send a Push and start that upload (admitted already)
    metrics: Metrics
    clock: Callable[[], float] = trio.current_time
    download_limit: RateLimiter = UNLIMITED


def opened(blob: StoredBlob) -> BlobOpened:
    have = blob.bitfield.copy()
    hashes = tuple(blob.chunk_hash(i) if have.has(i) else None for i in range(have.length))
    return BlobOpened(blob.size, blob.chunk_size, have, hashes)


class SessionDriver:
    def __init__(self, transfer: Transfer, *, origin: OriginFetcher, context: DriverContext):
        self.transfer = transfer
        self.origin = origin
        self.context = context
        self.session = BlobSession(
            digest=str(transfer.digest), name=transfer.name, ns=transfer.ns, node=context.node
        )
        self._post, self._inbox = trio.open_memory_channel[Event | None](INBOX)
        self._failure: P2pullError | None = None
        self._nursery: trio.Nursery | None = None

    async def post(self, event: Event | None) -> None:
        """Put ``event`` in the inbox (None: look at the transfer); waits only while it is full.
        (trio's ``send`` always passes through the scheduler: once per peer message that cost
        ~10 % of an agent's CPU in a storm with 128 KiB chunks.)"""
        try:
            self._post.send_nowait(event)
        except trio.WouldBlock:
            await self._post.send(event)

    def post_soon(self, event: Event) -> None:
        """``post`` from synchronous code: at once, or from a task if the inbox is full."""
        try:
            self._post.send_nowait(event)
        except trio.WouldBlock:
            if self._nursery is not None:
                self._nursery.start_soon(self.post, event)

    async def run(self) -> None:
        transfer, session, clock = self.transfer, self.session, self.context.clock
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forward_landed, transfer.subscribe())
            nursery.start_soon(self._watch_reader)
            nursery.start_soon(self._watch_blob)
            await self._feed(None)  # a partial blob from an earlier run is known at once
            await self._execute(session.start(now=clock()))
            while not session.ended:
                deadline = session.next_deadline()
                event: Event | None = None
                got = False
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    event, got = await self._inbox.receive(), True
                if got:
                    await self._feed(event)
                    for _ in range(BATCH):
                        if session.ended:
                            break
                        try:
                            event = self._inbox.receive_nowait()
                        except trio.WouldBlock:
                            break
                        await self._feed(event)
                await self._execute(session.pump(now=clock()))
            nursery.cancel_scope.cancel()
        if session.error is not None:
            raise self._failure or BlobUnavailable(f"{transfer.digest}: {session.error}")

    def unhandled_interest(self) -> list[str]:
        """Peers whose Interested is still in the inbox (once the session has ended)."""
        left: list[str] = []
        while True:
            try:
                event = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return left
            if isinstance(event, PeerMessage) and isinstance(event.message, Interested):
                left.append(event.peer)

    async def _feed(self, event: Event | None) -> None:
        session, blob = self.session, self.transfer.blob
        if not session.sized and blob is not None and not session.ended:
            await self._execute(session.handle(opened(blob), now=self.context.clock()))
        if event is not None and not session.ended:
            await self._execute(session.handle(event, now=self.context.clock()))

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            follow = await self._carry_out(action)
            if follow is not None and not self.session.ended:
                await self._execute(self.session.handle(follow, now=self.context.clock()))

    async def _carry_out(self, action: Action) -> Event | None:
        """Do ``action``; returns the event that answers it at once, if any."""
        match action:
            case Send(peer, message):
                self.context.links.send(peer, message)
            case PushPiece(peer, push):
                self.context.push(peer, push)
            case WritePiece():
                return await self._write(action)
            case Dial(member):
                self._spawn(self._dial, member)
            case OpenBlob(size, chunk_size):
                return await self._open(size, chunk_size)
            case StartOrigin():
                self._spawn(self._run_origin)
        return None

    def _spawn(self, work: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(work, *args)

    async def _open(self, size: int, chunk_size: int) -> Event:
        transfer = self.transfer
        try:
            blob = await self.context.store.open(transfer.digest, size=size, chunk_size=chunk_size)
        except P2pullError as exc:
            self._failure = exc
            return Failed(str(exc))
        transfer.blob = blob
        transfer.notify()
        return opened(blob)

    async def _write(self, write: WritePiece) -> Event:
        transfer, metrics = self.transfer, self.context.metrics
        blob = transfer.blob
        assert blob is not None
        await self.context.download_limit.acquire(len(write.data))
        present = blob.bitfield.has(write.index)
        if not present:
            transfer.sources[write.index] = "peer"  # before readers can see it
        try:
            await blob.write_chunk(write.index, write.data, expected=write.expected)
        except ChunkMismatch:
            if not blob.bitfield.has(write.index):
                transfer.sources.pop(write.index, None)
            metrics.chunks_rejected.inc()
            return PieceCorrupt(write.peer, write.index)
        if not present:
            metrics.chunks_verified.inc()
            metrics.fetched_bytes.labels("peer").inc(len(write.data))
            transfer.chunk_landed(write.index)
        return PieceStored(write.peer, write.index)

    async def _dial(self, member: Member) -> None:
        try:
            await self.context.links.connect(member)
        except PeerUnreachable as exc:
            await self.post(DialFailed(member.node_id, str(exc)))
        else:
            await self.post(LinkUp(member.node_id))

    async def _run_origin(self) -> None:
        transfer = self.transfer
        try:
            with self.context.metrics.origin_fetchers.track_inprogress():
                await self.origin.fetch(
                    transfer,
                    wanted=self.session.origin_wants,
                    on_retry=lambda reason, delay: self.post_soon(OriginRetrying(reason, delay)),
                )
        except P2pullError as exc:
            self._failure = exc
            await self.post(Failed(str(exc)))
        else:
            await self.post(OriginDone())

    async def _forward_landed(self, landed: trio.MemoryReceiveChannel[int]) -> None:
        async with landed:
            async for index in landed:
                blob = self.transfer.blob
                digest = blob.chunk_hash(index) if blob is not None else None
                if digest is not None:
                    source = self.transfer.sources.get(index, "origin")
                    await self.post(ChunkLanded(index, digest, source))

    async def _watch_reader(self) -> None:
        last: int | None = None
        while True:
            last = await self.transfer.wait_wanted(last)
            await self.post(ReaderWants(last))

    async def _watch_blob(self) -> None:
        """Wake the loop once the origin fetch has made the store entry (the seed's waiting
        askers get their BlobInfo then, not with the first chunk)."""
        if self.transfer.blob is None:
            with contextlib.suppress(P2pullError):
                await self.transfer.wait_blob()
                await self.post(None)


__all__ = ["DriverContext", "Links", "SessionDriver", "opened"]
