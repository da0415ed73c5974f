"""A blob being filled in the store, and the readers that follow it chunk by chunk."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from p2pull.errors import BlobUnavailable, ChunkLost, P2pullError, StoreFull
from p2pull.reference import Digest
from p2pull.store.types import BlobStore, ByteSink, StoredBlob
from p2pull.store.window import WindowBlob

log = logging.getLogger(__name__)


class Transfer:
    """One blob being filled in the store. Owned by its fetch task; readers only wait on it."""

    def __init__(
        self, digest: Digest, blob: StoredBlob | None, *, ns: str | None, name: str
    ) -> None:
        self.digest = digest
        self.blob = blob
        self.ns = ns
        self.name = name
        self.error: P2pullError | None = None
        self._changed = trio.Event()
        self._landing: dict[int, trio.Event] = {}  # chunk index -> set when it lands
        self._subscribers: list[trio.MemorySendChannel[int]] = []
        self._waiting: dict[int, int] = {}  # chunk index -> readers waiting for it
        self._wanted_changed = trio.Event()
        self.sources: dict[int, str] = {}  # chunk index -> where it came from, this transfer
        # A blob passed through (p2pull.store.window): the chunk its one reader sends next.
        self.reading: int | None = None

    def notify(self) -> None:
        """Anything may have changed (size known, sealed, failed): wake every waiter."""
        self._changed.set()
        self._changed = trio.Event()
        for event in self._landing.values():
            event.set()
        self._landing.clear()

    def chunk_landed(self, index: int) -> None:
        """A chunk was stored (verified): wake readers and tell subscribers which one. The
        fetcher recorded the chunk's source in ``sources`` just before writing it, so a reader
        woken by the write itself never sees the chunk without its source."""
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(index)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)
        event = self._landing.pop(index, None)  # only the readers of this chunk wake
        if event is not None:
            event.set()

    def subscribe(self) -> trio.MemoryReceiveChannel[int]:
        """A channel of the indices of chunks landing from now on (unbounded, never blocks)."""
        send, receive = trio.open_memory_channel[int](math.inf)
        self._subscribers.append(send)
        return receive

    @property
    def wanted_index(self) -> int | None:
        """The lowest chunk a local reader is waiting on (the swarm fetches it first); for a
        blob passed through, the one its reader sends next, waiting or not."""
        if self.reading is not None:
            return self.reading
        return min(self._waiting) if self._waiting else None

    def read_to(self, index: int) -> None:
        """The reader of a blob passed through sends chunk ``index`` next."""
        self.reading = index
        self._wanted_moved()

    async def wait_wanted(self, last: int | None) -> int | None:
        """Wait until ``wanted_index`` is other than ``last``, and return it."""
        while self.wanted_index == last:
            await self._wanted_changed.wait()
        return self.wanted_index

    def _wanted_moved(self) -> None:
        self._wanted_changed.set()
        self._wanted_changed = trio.Event()

    def fail(self, error: P2pullError) -> None:
        self.error = error
        self.notify()

    async def wait_blob(self) -> StoredBlob:
        """Wait until the size is known (the store entry exists)."""
        while self.blob is None:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return self.blob

    def servable(self, index: int) -> bool:
        """May chunk ``index`` be served now? (The last one only once the blob is verified.)"""
        blob = self.blob
        if blob is None:
            return False
        return blob.complete or (index != blob.bitfield.length - 1 and blob.bitfield.has(index))

    async def wait_chunk(self, index: int) -> StoredBlob:
        """Wait until chunk ``index`` may be served (the last one: until the blob is verified)."""
        blob = await self.wait_blob()
        if self.servable(index):
            return blob
        self._waiting[index] = self._waiting.get(index, 0) + 1
        self._wanted_moved()
        try:
            while not self.servable(index):
                if self.error is not None:
                    raise self.error
                event = self._landing.get(index)
                if event is None:
                    event = self._landing[index] = trio.Event()
                await event.wait()
        finally:
            self._waiting[index] -= 1
            if not self._waiting[index]:
                del self._waiting[index]
            self._wanted_moved()
        return blob


# Tells a reader which transfer to follow instead: ``refetch(None)`` after the store dropped a
# rotted chunk (the transfer that refills it, or None if the blob is complete again),
# ``refetch(failed)`` after ``failed`` failed (one from the reader's own ns, or None: give up).
Refetch = Callable[["Transfer | None"], "Transfer | None"]
MAX_REFETCHES = 3  # per reader: a store that keeps losing chunks, or ns after ns failing


class BlobReader:
    """Streams a blob (or a range of it) to a sink as chunks become servable. With ``refetch``,
    a chunk the store finds rotted, or a transfer that fails for another client's ns, does not
    fail the read: it follows the transfer ``refetch`` names."""

    def __init__(
        self,
        *,
        blob: StoredBlob,
        transfer: Transfer | None,
        store: BlobStore,
        refetch: Refetch | None = None,
        pass_through: Callable[[], Awaitable[Sendable]] | None = None,
    ) -> None:
        self.blob = blob
        self.digest = blob.digest
        self.size = blob.size
        self.transfer = transfer
        self._store = store
        self._refetch = refetch
        self._refetches = 0
        self._pass_through = pass_through  # from the origin: a second reader of a WindowBlob

    @property
    def passing(self) -> bool:
        """The blob passes through in a window of memory: one whole read, never a range."""
        return isinstance(self.blob, WindowBlob)

    @property
    def local(self) -> bool:
        return self.transfer is None

    async def send(
        self,
        sink: ByteSink,
        *,
        offset: int,
        length: int,
        on_sent: Callable[[str, int], None] = lambda source, count: None,
    ) -> None:
        """Send a range; ``on_sent(source, count)`` after each piece ("local" for chunks that
        were in the store before this transfer, else where the transfer got them). A blob
        passed through is read by one reader, whole; another gets it from the origin."""
        blob = self.blob
        if not isinstance(blob, WindowBlob):
            await self._send(sink, offset=offset, length=length, on_sent=on_sent)
            return
        if blob.claim(offset, length):
            sent = 0

            def counted(source: str, count: int) -> None:
                nonlocal sent
                sent += count
                on_sent(source, count)

            try:
                await self._send(sink, offset=offset, length=length, on_sent=counted)
                return
            except P2pullError as exc:
                if sent or self._pass_through is None:
                    raise  # the response is cut short; its client asks again
                why = f"no peer passed it through ({exc})"
            finally:
                blob.release()
        elif self._pass_through is None or offset != 0 or length != blob.size:
            raise StoreFull(f"{self.digest}: the store is full; ranges are not passed through")
        else:
            why = "another reader takes it from peers"
        log.warning("not caching %s: %s; passing it through from the origin", self.digest, why)
        reader = await self._pass_through()
        await reader.send(sink, offset=offset, length=length, on_sent=on_sent)

    async def _send(
        self,
        sink: ByteSink,
        *,
        offset: int,
        length: int,
        on_sent: Callable[[str, int], None],
    ) -> None:
        blob = self.blob
        end = offset + length
        with self._store.pin(blob.digest):
            if not self.passing:  # not in the store: nothing to keep from eviction
                self._store.touch(blob.digest)
            while offset < end:
                index = offset // blob.chunk_size
                if self.transfer is not None:
                    try:
                        await self.transfer.wait_chunk(index)
                    except P2pullError:
                        if not self._follow(self.transfer):
                            raise
                        continue
                # with it, every servable chunk right after it: one send for the run (chunks
                # land out of order, so several are often waiting when the awaited one comes)
                last = index
                while (
                    last + 1 < blob.bitfield.length
                    and (last + 1) * blob.chunk_size < end
                    and (self.transfer is None or self.transfer.servable(last + 1))
                ):
                    last += 1
                stop = min(end, sum(blob.chunk_span(last)))
                try:
                    await blob.send(sink, offset=offset, length=stop - offset)
                except ChunkLost:  # nothing of the run was sent; the chunk must come again
                    if not self._follow(None):
                        raise
                    continue
                for i in range(index, last + 1):
                    chunk_offset, chunk_length = blob.chunk_span(i)
                    count = min(stop, chunk_offset + chunk_length) - max(offset, chunk_offset)
                    source = "local"
                    if self.transfer is not None:
                        source = self.transfer.sources.get(i, "local")
                    on_sent(source, count)
                offset = stop

    def _follow(self, failed: Transfer | None) -> bool:
        """Switch to the transfer ``refetch`` names instead of ``failed`` (see Refetch); False
        if there is none to follow."""
        if self._refetch is None or self._refetches >= MAX_REFETCHES or self.passing:
            return False  # a blob passed through has its one transfer: another has another blob
        self._refetches += 1
        transfer = self._refetch(failed)
        if transfer is None and failed is not None:
            return False
        self.transfer = transfer
        return True


class PendingReader:
    """A blob whose size a manifest named before its transfer knew it (``p2pull.sizes``): the
    response headers go out now, the bytes follow once the transfer has them. A transfer that
    turns out to have another size is cut off; one the store cannot take (StoreFull) is passed
    through by ``pass_through``."""

    local = False

    def __init__(
        self,
        *,
        transfer: Transfer,
        size: int,
        store: BlobStore,
        pass_through: Callable[[], Awaitable[Sendable]],
        refetch: Refetch | None = None,
    ) -> None:
        self.transfer = transfer
        self.digest = transfer.digest
        self.size = size
        self._store = store
        self._pass_through = pass_through
        self._refetch = refetch

    async def send(
        self,
        sink: ByteSink,
        *,
        offset: int,
        length: int,
        on_sent: Callable[[str, int], None] = lambda source, count: None,
    ) -> None:
        reader: Sendable
        transfer = self.transfer
        for _ in range(MAX_REFETCHES + 1):
            try:
                blob = await transfer.wait_blob()
            except StoreFull:
                reader = await self._pass_through()
                break
            except P2pullError:
                again = self._refetch(transfer) if self._refetch is not None else None
                if again is None:
                    raise
                transfer = again
                continue
            if blob.size != self.size:
                raise BlobUnavailable(
                    f"{self.digest}: {blob.size} bytes, but its manifest said {self.size}"
                )
            reader = BlobReader(
                blob=blob,
                transfer=transfer,
                store=self._store,
                refetch=self._refetch,
                pass_through=self._pass_through,
            )
            break
        else:
            raise BlobUnavailable(f"{self.digest}: every transfer of it failed")
        await reader.send(sink, offset=offset, length=length, on_sent=on_sent)


class Sendable(Protocol):
    size: int

    async def send(
        self,
        sink: ByteSink,
        *,
        offset: int,
        length: int,
        on_sent: Callable[[str, int], None] = ...,
    ) -> None: ...
