"""Authenticated peer connections: handshake, an ordered writer, a reader that dispatches.

Every link runs in the pool's nursery: its reader hands each message to the node's callback, its
writer drains one ordered queue of frames (so a Have never overtakes the BlobInfo sent before
it). An uploaded chunk goes out as a Piece header followed by the chunk straight from the store's
file (sendfile: no copy through Python); uploads wait for one of a few per-link piece slots, which
bounds what a slow peer can make us hold. A peer's errors end that link only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

import trio
from prometheus_client import Counter

from p2pull.errors import P2pullError
from p2pull.lowat import RecvLowat
from p2pull.membership import Member
from p2pull.peer.messages import LocalProtocolError, Message
from p2pull.peer.wire import (
    NEED_DATA,
    Authenticated,
    Closed,
    PeerConnection,
    RemoteProtocolError,
    State,
)
from p2pull.sendfile import FileRegion, send_all_eager, sendfile_all
from p2pull.store.types import StoredBlob
from p2pull.swarm.transport import PeerTransport

log = logging.getLogger(__name__)

RECEIVE_SIZE = 1024 * 1024
PIECE_SLOTS_PER_LINK = 2
COALESCE_MAX = 64 * 1024  # small frames queued together go out in one send, up to this much
# A peer that takes nothing (a hung process, a hostile one) would hold this link's uploads, and
# the node's upload slots they took, for as long as its kernel keeps the connection up. A send
# may take WRITE_STALL seconds plus the time to move the frame and a full send buffer at
# WRITE_MIN_RATE; after that the link is closed.
WRITE_STALL = 30.0
WRITE_MIN_RATE = 64 * 1024  # bytes per second
SEND_BUFFER_ALLOWANCE = 4 * 1024 * 1024  # what the kernel may still hold ahead of the frame
# Unauthenticated inbound connections at once; more are closed. A handshake takes milliseconds,
# so only a burst reaches it: every node of a large cluster dialing one seed at the start of a
# pull storm (200 at once in tests/test_swarm_memory.py), or strangers holding connections.
MAX_INBOUND_HANDSHAKES = 1024


Outgoing: TypeAlias = bytes | FileRegion
Queued: TypeAlias = "tuple[Outgoing, _Delivery | None]"


class PeerLink:
    """One authenticated connection. ``send`` never blocks; ``upload`` waits until its piece is
    on the wire. Whoever uploads holds one of ``piece_slots`` meanwhile (at most
    PIECE_SLOTS_PER_LINK pieces of one link in flight)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: PeerConnection,
        peer_id: str,
        *,
        sent: Counter | None = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.peer_id = peer_id
        self._sent = sent  # counts each message queued, pieces included
        self.closed = False
        self._queue_send, self._queue_receive = trio.open_memory_channel[
            tuple[Outgoing, _Delivery | None]
        ](math.inf)
        self.piece_slots = trio.Semaphore(PIECE_SLOTS_PER_LINK)

    def send(self, message: Message) -> None:
        if self.closed or self.conn.state is not State.OPEN:
            return
        self._enqueue(self.conn.send(message))
        if self._sent is not None:
            self._sent.inc()

    async def upload(self, digest: str, index: int, blob: StoredBlob) -> bool:
        """Send chunk ``index`` of ``blob`` as a Piece; True once it is on the wire (in the
        kernel's buffer), False if the link went away first. Store errors propagate."""
        offset, length = blob.chunk_span(index)
        if self.closed or self.conn.state is not State.OPEN:
            return False
        sink = _PieceSink(self, self.conn.send_piece_header(digest, index, length), length)
        if self._sent is not None:
            self._sent.inc()
        await blob.send(sink, offset=offset, length=length)
        return sink.sent

    def _enqueue(self, *items: Outgoing) -> _Delivery | None:
        """Queue ``items`` back to back (nothing can come between them); the returned delivery
        tells when the last is on the wire or dropped with the link (None: the link is closed)."""
        delivery = _Delivery()
        try:
            for item in items[:-1]:
                self._queue_send.send_nowait((item, None))
            self._queue_send.send_nowait((items[-1], delivery))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return None
        return delivery

    async def run_writer(self) -> None:
        async with self._queue_receive:
            ahead: Queued | None = None
            try:
                while True:
                    if ahead is None:
                        try:  # waits only when the queue is empty (receive always yields)
                            ahead = self._queue_receive.receive_nowait()
                        except trio.WouldBlock:
                            try:
                                ahead = await self._queue_receive.receive()
                            except trio.EndOfChannel:
                                return
                        except trio.EndOfChannel:
                            return
                    batch, ahead = self._batch(ahead)
                    try:
                        await self._send_batch(batch)
                        for _, delivery in batch:
                            if delivery is not None:
                                delivery.sent = True
                    finally:
                        for _, delivery in batch:
                            if delivery is not None:
                                delivery.done.set()
            finally:
                self.closed = True
                if ahead is not None and ahead[1] is not None:
                    ahead[1].done.set()
                while True:  # whoever waits on a queued upload learns it was dropped
                    try:
                        _, delivery = self._queue_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if delivery is not None:
                        delivery.done.set()

    async def _send_batch(self, batch: list[Queued]) -> None:
        """Write ``batch`` (one FileRegion, or frames joined), within the write deadline."""
        item = batch[0][0]
        size = sum(len(part) for part, _ in batch)
        deadline = WRITE_STALL + (size + SEND_BUFFER_ALLOWANCE) / WRITE_MIN_RATE
        with trio.move_on_after(deadline) as timer:
            if isinstance(item, FileRegion):
                await sendfile_all(self.stream, item)
            else:
                parts = [part for part, _ in batch if isinstance(part, bytes)]
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                await send_all_eager(self.stream, data)
        if timer.cancelled_caught:  # part of a frame may be out: the connection is unusable
            raise trio.BrokenResourceError(
                f"{self.peer_id} took no {size} bytes in {deadline:.0f} s: too slow, or stuck"
            )

    def _batch(self, first: Queued) -> tuple[list[Queued], Queued | None]:
        """``first`` and the small frames queued right behind it, to go out in one send (a
        burst of Haves and Requests is one system call, not one each); returns the batch and
        the item after it, if one was taken off the queue."""
        batch = [first]
        if isinstance(first[0], FileRegion) or len(first[0]) >= COALESCE_MAX:
            return batch, None
        size = len(first[0])
        while size < COALESCE_MAX:
            try:
                item = self._queue_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(item[0], FileRegion) or len(item[0]) >= COALESCE_MAX:
                return batch, item
            batch.append(item)
            size += len(item[0])
        return batch, None

    def close(self) -> None:
        self.closed = True
        self._queue_send.close()


@contextlib.asynccontextmanager
async def slot(semaphore: trio.Semaphore) -> AsyncIterator[None]:
    """Hold one of ``semaphore``'s slots; a free slot is taken without a scheduler trip (trio's
    acquire always yields), a taken one is waited for."""
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()
    try:
        yield
    finally:
        semaphore.release()


class _PieceSink:
    """The ByteSink a stored blob writes one chunk into: the Piece header goes first, then the
    chunk (bytes, or a file range sent with sendfile, waited for so the file stays open)."""

    def __init__(self, link: PeerLink, header: bytes, length: int) -> None:
        self._link, self._header, self._length = link, header, length
        self._used = False
        self.sent = False

    def _claim(self, count: int) -> None:
        if self._used or count != self._length:
            raise LocalProtocolError("a piece must be written in one call of its exact length")
        self._used = True

    async def write(self, data: bytes) -> None:
        self._claim(len(data))
        await self._wait(self._link._enqueue(self._header, data))

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None:
        self._claim(count)
        await self._wait(self._link._enqueue(self._header, FileRegion(fd, offset, count)))

    async def _wait(self, delivery: _Delivery | None) -> None:
        if delivery is not None:
            await delivery.done.wait()
            self.sent = delivery.sent


class _Delivery:
    """Set ``done`` once a queued item left (``sent``) or was dropped with its link."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.sent = False


OnMessage = Callable[[PeerLink, Message], Awaitable[None]]
OnClosed = Callable[[PeerLink], None]


class PeerPool:
    """Dials and accepts peer connections; sends on the newest live link per peer id."""

    def __init__(
        self,
        *,
        node_id: str,
        listen_port: int,
        secret: bytes,
        on_message: OnMessage,
        on_closed: OnClosed,
        transport: PeerTransport,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        max_frame: int,
        max_handshakes: int = MAX_INBOUND_HANDSHAKES,
        messages: Counter | None = None,
    ) -> None:
        self.transport = transport
        # Messages sent and received on every link, by direction (``messages``' one label).
        self._sent = messages.labels("sent") if messages is not None else None
        self._received = messages.labels("received") if messages is not None else None
        self.node_id = node_id
        self.listen_port = listen_port
        self._secret = secret
        self._on_message = on_message
        self._on_closed = on_closed
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._max_frame = max_frame
        self._max_handshakes = max_handshakes
        self._handshaking = 0  # inbound connections not authenticated yet
        self.links: dict[str, PeerLink] = {}
        self._all_links: dict[str, set[PeerLink]] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def link(self, peer_id: str) -> PeerLink | None:
        link = self.links.get(peer_id)
        return link if link is not None and not link.closed else None

    def send(self, peer_id: str, message: Message) -> bool:
        """Send on the live link to ``peer_id``; False (dropped) if there is none."""
        link = self.link(peer_id)
        if link is None:
            return False
        link.send(message)
        return True

    async def connect(self, member: Member) -> PeerLink:
        """The live link to ``member``, dialing it if needed (concurrent callers share a dial)."""
        while True:
            existing = self.link(member.node_id)
            if existing is not None:
                return existing
            pending = self._dialing.get(member.node_id)
            if pending is None:
                break
            await pending.wait()
        done = self._dialing[member.node_id] = trio.Event()
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await self.transport.connect(member.host, member.port)
            return await self._establish(stream, expect=member.node_id)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            # (broken: the peer closed during the handshake, e.g. at its handshake cap)
            why = str(exc) or type(exc).__name__  # TooSlowError says nothing itself
            raise PeerUnreachable(f"cannot reach peer {member.node_id}: {why}") from exc
        finally:
            del self._dialing[member.node_id]
            done.set()

    async def accept(self, stream: trio.abc.Stream) -> None:
        """Handler for the peer listener: handshake, then run the link here until it closes
        (trio closes the stream when this handler returns). Strangers cost at most
        ``max_handshakes`` connections at once, each for the handshake timeout."""
        if self._handshaking >= self._max_handshakes:
            await trio.aclose_forcefully(stream)
            return
        self._handshaking += 1
        try:
            link = await self._establish(stream, expect=None, run_here=True)
        except (P2pullError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.info("refused an inbound peer connection: %s", exc)
            await trio.aclose_forcefully(stream)
            return
        finally:
            self._handshaking -= 1
        await self._run_link(link)

    async def _establish(
        self, stream: trio.abc.Stream, *, expect: str | None, run_here: bool = False
    ) -> PeerLink:
        conn = PeerConnection(
            node_id=self.node_id,
            listen_port=self.listen_port,
            secret=self._secret,
            nonce=secrets.token_bytes(16),
            max_frame=self._max_frame,
        )
        try:
            with trio.fail_after(self._handshake_timeout):
                await stream.send_all(conn.start())
                authenticated = await _handshake(stream, conn)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if expect is not None and authenticated.node_id != expect:
            await trio.aclose_forcefully(stream)
            raise RemoteProtocolError(
                f"dialed {expect} but the peer says it is {authenticated.node_id}"
            )
        link = PeerLink(stream, conn, authenticated.node_id, sent=self._sent)
        assert self._nursery is not None, "PeerPool.run is not running"
        # When two nodes dial each other at once there are two links; both stay open (closing
        # one would drop the messages already queued or in flight on it) and the newest sends.
        self.links[link.peer_id] = link
        self._all_links.setdefault(link.peer_id, set()).add(link)
        if not run_here:
            self._nursery.start_soon(self._run_link, link)
        return link

    async def _run_link(self, link: PeerLink) -> None:
        """Reader and writer of one link; any error in either ends this link (only)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, link, link.run_writer, nursery.cancel_scope)
                await self._guarded(link, lambda: self._read(link), nursery.cancel_scope)
        finally:
            link.close()
            if self.links.get(link.peer_id) is link:
                del self.links[link.peer_id]
                for other in self._all_links.get(link.peer_id, ()):  # an older twin still up
                    if other is not link and not other.closed:
                        self.links[link.peer_id] = other
            self._all_links.get(link.peer_id, set()).discard(link)
            await trio.aclose_forcefully(link.stream)
            self._on_closed(link)

    async def _guarded(
        self, link: PeerLink, work: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        try:
            await work()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("link to %s closed: %s", link.peer_id, exc)
        except P2pullError as exc:
            log.warning("dropping peer %s: %s", link.peer_id, exc)
        finally:
            link.close()  # before anything can yield: nobody may send on a dead connection
            scope.cancel()

    async def _read(self, link: PeerLink) -> None:
        conn = link.conn
        sock = getattr(link.stream, "socket", None)  # a TCP link: fewer, larger reads
        lowat = RecvLowat(sock) if sock is not None else None
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if lowat is not None:
                    lowat.expect(conn.frame_remaining())  # a large frame: wake for big parts
                data = await link.stream.receive_some(RECEIVE_SIZE)
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, Closed):
                return
            if isinstance(event, Authenticated):
                continue
            if self._received is not None:
                self._received.inc()
            await self._on_message(link, event)


async def _handshake(stream: trio.abc.Stream, conn: PeerConnection) -> Authenticated:
    while True:
        event = conn.next_event()
        outgoing = conn.data_to_send()
        if outgoing:
            await stream.send_all(outgoing)
        if isinstance(event, Authenticated):
            return event
        if isinstance(event, Closed):
            raise RemoteProtocolError("peer closed during the handshake")
        if event is NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(64 * 1024)))
            continue
        raise RemoteProtocolError(f"unexpected {type(event).__name__} during the handshake")


class PeerUnreachable(P2pullError):
    """Dialing a peer failed (refused, timed out, or the handshake failed)."""
