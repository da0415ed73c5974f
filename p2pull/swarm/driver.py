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

import trio

from p2pull.errors import BlobUnavailable, ChunkMismatch, P2pullError, StoreFull
from p2pull.membership import Member
from p2pull.origin_fetch import OriginFetcher
from p2pull.peer import events as ev
from p2pull.peer.messages import Interested
from p2pull.peer.session import BlobSession
from p2pull.store.types import StoredBlob
from p2pull.store.window import WindowBlob
from p2pull.swarm.context import DriverContext, opened
from p2pull.swarm.links import PeerUnreachable
from p2pull.transfer import Transfer

log = logging.getLogger(__name__)

BATCH = 64  # events handled between two pumps at most
INBOX = 256
STALE_WAKE = 0.05  # seconds slept when the session asks to be woken in the past (a bug)
# A blob passed through (p2pull.store.window) whose reader has not begun within this is given
# up: its window would otherwise stay full and its session wait forever.
CLAIM_WITHIN = 30.0


class SessionDriver:
    def __init__(self, transfer: Transfer, *, origin: OriginFetcher, context: DriverContext):
        self.transfer = transfer
        self.origin = origin
        self.context = context
        self.session = BlobSession(
            digest=str(transfer.digest), name=transfer.name, ns=transfer.ns, node=context.node
        )
        self._post, self._inbox = trio.open_memory_channel[ev.Event | None](INBOX)
        self._failure: P2pullError | None = None
        self._nursery: trio.Nursery | None = None
        self._stale_logged = False
        self._late_interest: list[str] = []  # peers whose Interested the ended session never saw

    async def post(self, event: ev.Event | None) -> None:
        """Put ``event`` in the inbox (None: look at the transfer); waits only while it is full
        (trio's ``send`` always yields: per peer message, ~10 % of an agent's CPU)."""
        try:
            self._post.send_nowait(event)
        except trio.WouldBlock:
            await self._post.send(event)

    def post_soon(self, event: ev.Event) -> None:
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
            pumped = clock()  # a deadline is asked after a pump
            await self._execute(session.pump(now=pumped))
            while not session.ended:
                for event in await self._batch(self._deadline(pumped)):
                    await self._feed(event)
                pumped = clock()
                await self._execute(session.pump(now=pumped))
            nursery.cancel_scope.cancel()
        if session.error is not None:
            raise self._failure or BlobUnavailable(f"{transfer.digest}: {session.error}")
        if not session.ended:  # cancelled by _watch_window
            assert self._failure is not None
            raise self._failure

    def _deadline(self, pumped: float) -> float | None:
        """The session's next deadline. One that falls while the pump's actions were carried
        out (a piece written, a task started) is simply due; one at or before the ``now`` the
        pump was given is a bug in the session (it would spin the node's CPU): logged once, and
        slept over for STALE_WAKE."""
        deadline = self.session.next_deadline()
        if deadline is None or deadline > pumped:
            return deadline
        now = self.context.clock()
        if not self._stale_logged:
            self._stale_logged = True
            log.error(
                "session of %s asks to be woken in the past (%.3f s ago, a bug): "
                "pumping it every %.2f s instead",
                self.transfer.digest,
                now - deadline,
                STALE_WAKE,
            )
        return now + STALE_WAKE

    async def _batch(self, deadline: float | None) -> list[ev.Event | None]:
        """The events queued (up to BATCH: Haves come in bursts, one pump serves them all) once
        one is there, or none when ``deadline`` passes first."""
        batch: list[ev.Event | None] = []
        try:  # what is queued is taken even when the deadline has passed already
            batch.append(self._inbox.receive_nowait())
            await trio.lowlevel.checkpoint()  # the others run between two batches
        except trio.WouldBlock:
            with trio.move_on_at(math.inf if deadline is None else deadline):
                batch.append(await self._inbox.receive())
        while batch and len(batch) < BATCH:
            try:
                batch.append(self._inbox.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    def unhandled_interest(self) -> list[str]:
        """Peers whose Interested the session never saw (once it has ended): those that came
        in the batch it ended in, and those still in the inbox."""
        left = list(self._late_interest)
        while True:
            try:
                event = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return left
            peer = _interest(event)
            if peer is not None:
                left.append(peer)

    async def _feed(self, event: ev.Event | None) -> None:
        session, blob = self.session, self.transfer.blob
        if not session.sized and blob is not None and not session.ended:
            await self._execute(session.handle(opened(blob), now=self.context.clock()))
        if event is None:
            return
        if not session.ended:
            await self._execute(session.handle(event, now=self.context.clock()))
        elif (peer := _interest(event)) is not None:
            self._late_interest.append(peer)  # came in the batch the session ended in

    async def _execute(self, actions: list[ev.Action]) -> None:
        for action in actions:
            follow = await self._carry_out(action)
            if follow is not None and not self.session.ended:
                await self._execute(self.session.handle(follow, now=self.context.clock()))

    async def _carry_out(self, action: ev.Action) -> ev.Event | None:
        """Do ``action``; returns the event that answers it at once, if any."""
        match action:
            case ev.Send(peer, message):
                self.context.links.send(peer, message)
            case ev.PushPiece(peer, push):
                self.context.push(peer, push)
            case ev.WritePiece():
                return await self._write(action)
            case ev.Dial(member):
                self._spawn(self._dial, member)
            case ev.OpenBlob(size, chunk_size):
                return await self._open(size, chunk_size)
            case ev.StartOrigin():
                self._spawn(self._run_origin)
        return None

    def _spawn(self, work: Callable[..., Awaitable[None]], *args: object) -> None:
        assert self._nursery is not None, "SessionDriver.run is not running"
        self._nursery.start_soon(work, *args)

    async def _open(self, size: int, chunk_size: int) -> ev.Event:
        transfer = self.transfer
        blob: StoredBlob
        try:
            blob = await self.context.store.open(transfer.digest, size=size, chunk_size=chunk_size)
        except StoreFull as exc:
            if self.session.seeding:  # it cannot seed what it cannot keep: the next seed does
                self._failure = exc
                return ev.Failed(str(exc))
            blob = self._window(exc, size, chunk_size)
        except P2pullError as exc:
            self._failure = exc
            return ev.Failed(str(exc))
        transfer.blob = blob
        transfer.notify()
        return opened(blob)

    def _window(self, full: StoreFull, size: int, chunk_size: int) -> WindowBlob:
        """The blob the store has no room for, passed through from peers in a window of memory
        (p2pull.store.window)."""
        transfer, window = self.transfer, self.context.node.config.pass_window(chunk_size)
        log.warning(
            "not caching %s: %s; passing it through from peers (%d chunks in memory)",
            transfer.digest,
            full,
            window,
        )
        blob = WindowBlob(
            transfer.digest,
            size=size,
            chunk_size=chunk_size,
            window=window,
            on_read=transfer.read_to,
        )
        self.context.metrics.passthrough_blobs.inc()
        transfer.read_to(0)
        self._spawn(self._watch_window, blob)
        return blob

    async def _watch_window(self, blob: WindowBlob) -> None:
        """End the session of a blob passed through once its one reader is gone (or never
        came): nothing else would ever move its window."""
        with trio.move_on_after(CLAIM_WITHIN):
            await blob.claimed.wait()
        if blob.claimed.is_set():
            await blob.released.wait()
            reason = "its reader went away"
        else:
            reason = f"no reader began within {CLAIM_WITHIN:.0f} s"
        if not self.session.ended:
            self._failure = BlobUnavailable(f"{self.transfer.digest} (passed through): {reason}")
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def _write(self, write: ev.WritePiece) -> ev.Event:
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
            return ev.PieceCorrupt(write.peer, write.index)
        if not present:
            metrics.chunks_verified.inc()
            metrics.fetched_bytes.labels("peer").inc(len(write.data))
            transfer.chunk_landed(write.index)
        return ev.PieceStored(write.peer, write.index)

    async def _dial(self, member: Member) -> None:
        try:
            await self.context.links.connect(member)
        except PeerUnreachable as exc:
            timed_out = isinstance(exc.__cause__, trio.TooSlowError)
            await self.post(ev.DialFailed(member.node_id, str(exc), timed_out))
        else:
            await self.post(ev.LinkUp(member.node_id))

    async def _run_origin(self) -> None:
        transfer = self.transfer
        try:
            with self.context.metrics.origin_fetchers.track_inprogress():
                await self.origin.fetch(
                    transfer,
                    wanted=self.session.origin_wants,
                    on_retry=lambda reason, delay: self.post_soon(ev.OriginRetrying(reason, delay)),
                )
        except P2pullError as exc:
            self._failure = exc
            await self.post(ev.Failed(str(exc)))
        else:
            await self.post(ev.OriginDone())

    async def _forward_landed(self, landed: trio.MemoryReceiveChannel[int]) -> None:
        async with landed:
            async for index in landed:
                blob = self.transfer.blob
                if blob is not None and (digest := blob.chunk_hash(index)) is not None:
                    source = self.transfer.sources.get(index, "origin")
                    await self.post(ev.ChunkLanded(index, digest, source))

    async def _watch_reader(self) -> None:
        last: int | None = None
        while True:
            last = await self.transfer.wait_wanted(last)
            await self.post(ev.ReaderWants(last))

    async def _watch_blob(self) -> None:
        """Wake the loop once the origin fetch has made the store entry (the seed's waiting
        askers get their BlobInfo then, not with the first chunk)."""
        if self.transfer.blob is None:
            with contextlib.suppress(P2pullError):
                await self.transfer.wait_blob()
                await self.post(None)


def _interest(event: ev.Event | None) -> str | None:
    """The peer whose Interested ``event`` is, if it is one."""
    if isinstance(event, ev.PeerMessage) and isinstance(event.message, Interested):
        return event.peer
    return None


__all__ = ["SessionDriver"]
