"""What the disk and memory stores share: chunk bookkeeping, hashing, pins, LRU and quota.

Subclasses supply raw byte I/O (``_pwrite``/``_pread``), metadata persistence and deletion.
Hashing and I/O of whole chunks run in worker threads (hashlib releases the GIL), so a 2-core node
hashes on one core while the event loop keeps moving bytes on the other.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from p2pull.bitfield import Bitfield
from p2pull.errors import ChunkLost, ChunkMismatch, DigestMismatch, StoreError, StoreFull
from p2pull.reference import Digest
from p2pull.store.types import ByteSink, chunk_count, chunk_size_for

log = logging.getLogger(__name__)

THREAD_THRESHOLD = 256 * 1024
CHECKPOINT_BYTES = 64 * 1024 * 1024


async def _maybe_thread(fn: Any, *args: Any, size: int) -> Any:
    if size >= THREAD_THRESHOLD:
        return await trio.to_thread.run_sync(fn, *args)
    return fn(*args)


class BlobBase:
    """One blob: bitfield, per-chunk hashes, and a hasher over the contiguous present prefix."""

    def __init__(
        self,
        digest: Digest,
        *,
        size: int,
        chunk_size: int,
        media_type: str | None,
        have: Bitfield | None = None,
        hashes: list[bytes | None] | None = None,
        complete: bool = False,
    ) -> None:
        self.digest = digest
        self.size = size
        self.chunk_size = chunk_size
        self.media_type = media_type
        count = chunk_count(size, chunk_size)
        self._have = have if have is not None else Bitfield(count)
        self._hashes: list[bytes | None] = hashes if hashes is not None else [None] * count
        self._complete = complete
        self._discarded = False
        self._hasher = hashlib.sha256()
        self._hashed = 0  # chunks folded into _hasher
        # Chunks whose bytes this process hashed: on their way in, or read back and checked
        # against the recorded sha256. Only these are served or folded without a check; the
        # others (everything a restart loaded) are checked first (the disk may have rotted).
        self._checked = Bitfield(count)
        self._hash_lock = trio.Lock()
        self._seal_lock = trio.Lock()
        self.dirty = 0  # chunks written since the metadata was last persisted
        # Chunks between metadata checkpoints: every 64 MiB (at least 16 chunks), so a crash
        # costs at most that much refetching and small chunks do not rewrite the hash list often.
        self.persist_every = max(16, CHECKPOINT_BYTES // max(chunk_size, 1))
        self.on_discard: Callable[[Digest], None] = lambda digest: None
        self.on_chunk_lost: Callable[[], None] = lambda: None

    # -- to implement -------------------------------------------------------------------------
    def _pwrite(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def _pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    async def _persist(self) -> None:
        raise NotImplementedError

    async def _drop(self) -> None:
        raise NotImplementedError

    async def _send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        """Send a range of present, checked chunks (zero-copy where the store can)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def bitfield(self) -> Bitfield:
        return self._have

    def chunk_hash(self, index: int) -> bytes | None:
        return self._hashes[index]

    def chunk_span(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self._have.length:
            raise IndexError(f"chunk {index} out of range for {self.digest}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def _check_live(self) -> None:
        if self._discarded:
            raise StoreError(f"blob {self.digest} was removed from the store")

    async def write_chunk(self, index: int, data: bytes, *, expected: bytes | None = None) -> None:
        self._check_live()
        offset, length = self.chunk_span(index)
        if len(data) != length:
            raise ChunkMismatch(f"chunk {index} of {self.digest}: {len(data)} bytes, want {length}")
        if self._have.has(index):
            return
        if index == self._hashed and not self._hash_lock.locked():
            # The common case of an in-order download: hash, write and fold into the whole-blob
            # hash in one worker-thread trip.
            async with self._hash_lock:
                if index == self._hashed:
                    await self._write_folding(index, offset, data, expected)
                    await self._advance_locked()
                    if self.dirty >= self.persist_every:
                        await self._persist()
                    return
        try:
            digest = await _maybe_thread(self._hash_and_write, offset, data, expected, size=length)
        except OSError as exc:
            raise StoreError(f"writing chunk {index} of {self.digest}: {exc}") from exc
        if digest is None:
            raise ChunkMismatch(f"chunk {index} of {self.digest} does not match its sha256")
        self._check_live()
        if self._have.has(index):  # a concurrent writer of the same chunk won
            return
        self._hashes[index] = digest
        self._have.set(index)
        self._checked.set(index)
        self.dirty += 1
        if index == self._hashed:
            await self._advance_hasher(known=(index, data))
        if self.dirty >= self.persist_every:
            await self._persist()

    def _hash_and_write(self, offset: int, data: bytes, expected: bytes | None) -> bytes | None:
        """Hash a chunk and, if it matches ``expected`` (when given), write it: one worker-thread
        trip per chunk. Returns the sha256, or None for a mismatch (nothing written)."""
        digest = _sha256(data)
        if expected is not None and digest != expected:
            return None
        self._pwrite(offset, data)
        return digest

    async def _write_folding(
        self, index: int, offset: int, data: bytes, expected: bytes | None
    ) -> None:
        """Hash, check, write and fold chunk ``index`` (== the hasher's position; lock held)."""

        def work() -> bytes | None:
            digest = self._hash_and_write(offset, data, expected)
            if digest is not None:
                self._hasher.update(data)
            return digest

        try:
            digest = await _maybe_thread(work, size=len(data))
        except OSError as exc:
            raise StoreError(f"writing chunk {index} of {self.digest}: {exc}") from exc
        if digest is None:
            raise ChunkMismatch(f"chunk {index} of {self.digest} does not match its sha256")
        self._hashed += 1  # folded, whoever marks it present
        self._check_live()
        if not self._have.has(index):
            self._hashes[index] = digest
            self._have.set(index)
            self._checked.set(index)
            self.dirty += 1

    async def _advance_hasher(self, *, known: tuple[int, bytes] | None = None) -> None:
        """Fold present chunks into the whole-blob hasher while they are contiguous."""
        async with self._hash_lock:
            await self._advance_locked(known=known)

    async def _advance_locked(self, *, known: tuple[int, bytes] | None = None) -> None:
        """The body of _advance_hasher; the caller holds the hash lock."""
        while self._hashed < self._have.length and self._have.has(self._hashed):
            index = self._hashed
            _, length = self.chunk_span(index)
            if known is not None and known[0] == index:
                data = known[1]
            else:
                maybe = await self._read_verified(index)
                if maybe is None:
                    return
                data = maybe
            await _maybe_thread(self._hasher.update, data, size=length)
            self._hashed += 1

    async def _read_verified(self, index: int) -> bytes | None:
        """Read a present chunk back, checked against its recorded hash unless this process
        already has; None (and the chunk dropped) if it does not match."""
        offset, length = self.chunk_span(index)
        checked_before = self._checked.has(index)
        try:
            data: bytes = await _maybe_thread(self._pread, offset, length, size=length)
        except OSError as exc:
            raise StoreError(f"reading chunk {index} of {self.digest}: {exc}") from exc
        recorded = self._hashes[index]
        if len(data) == length and (
            checked_before or await _maybe_thread(_sha256, data, size=length) == recorded
        ):
            self._checked.set(index)
            return data
        if checked_before or not self._checked.has(index):  # not rewritten while we read
            self._drop_chunk(index)
        return None

    def _drop_chunk(self, index: int) -> None:
        """Forget a present chunk whose bytes do not match its recorded hash: it is missing
        again, and the blob no longer complete."""
        if not self._have.has(index):
            return
        log.warning(
            "chunk %d of %s does not match its recorded sha256 (disk rot or a torn write): "
            "dropped, it will be fetched again",
            index,
            self.digest,
        )
        self._have.clear(index)
        self._checked.clear(index)
        self._hashes[index] = None
        self._complete = False
        self.dirty += 1
        self.on_chunk_lost()

    async def _verify(self, offset: int, length: int) -> None:
        """Check every chunk of the range this process has not checked yet; ChunkLost (after
        dropping it and persisting that) for the first that does not match."""
        if length == 0:
            return
        first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
        for index in range(first, last + 1):
            if self._checked.has(index):
                continue
            if await self._read_verified(index) is None:
                await self._persist()  # a restart must not trust the chunk (or the blob) again
                raise ChunkLost(
                    f"chunk {index} of {self.digest} does not match its sha256", index=index
                )

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes of present chunks, each checked (ChunkLost for one that fails)."""
        self._check_range(offset, length)
        await self._verify(offset, length)
        try:
            data: bytes = await _maybe_thread(self._pread, offset, length, size=length)
        except OSError as exc:
            raise StoreError(f"reading {self.digest}: {exc}") from exc
        return data

    async def send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        """Send a range of present chunks, each checked first: ChunkLost, and nothing sent, if
        one fails (chunks a restart loaded are checked the first time they are served)."""
        self._check_range(offset, length)
        await self._verify(offset, length)
        self._check_range(offset, length)  # still all present after the checks' awaits
        await self._send(sink, offset=offset, length=length)

    def _check_range(self, offset: int, length: int) -> None:
        self._check_live()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise StoreError(f"range {offset}+{length} outside blob of {self.size} bytes")
        if length == 0:
            return
        first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
        for index in range(first, last + 1):
            if not self._have.has(index):
                raise StoreError(f"chunk {index} of {self.digest} is not present")

    async def seal(self) -> None:
        async with self._seal_lock:  # concurrent seals of one blob: the second finds it done
            await self._seal()

    async def _seal(self) -> None:
        self._check_live()
        if self._complete:
            return
        if not self._have.complete:
            raise StoreError(f"cannot seal {self.digest}: {self._have} chunks present")
        await self._advance_hasher()
        if self._hashed != self._have.length:  # a chunk failed its check and was dropped
            await self._persist()
            raise ChunkLost(
                f"cannot seal {self.digest}: chunk {self._hashed} does not match its sha256",
                index=self._hashed,
            )
        if self._hasher.hexdigest() != self.digest.hex:
            self._discarded = True
            self.on_discard(self.digest)  # out of the index before its files go
            await self._drop()
            raise DigestMismatch(
                f"blob bytes hash to sha256:{self._hasher.hexdigest()}, not {self.digest}"
            )
        self._complete = True
        await self._persist()

    async def checkpoint(self) -> None:
        if self.dirty and not self._discarded:
            await self._persist()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class StoreBase:
    """Index of blobs with pins, LRU order and a byte quota (0 means no quota)."""

    def __init__(self, *, chunk_size: int, quota_bytes: int) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.chunk_size = chunk_size
        self.quota_bytes = quota_bytes
        self._blobs: dict[Digest, BlobBase] = {}
        self._pins: dict[Digest, int] = {}
        self._last_used: dict[Digest, float] = {}
        self._open_lock = trio.Lock()  # one open at a time: no two blobs for one digest
        self.evictions = 0
        self.on_evict: Callable[[], None] = lambda: None
        self.chunks_lost = 0  # chunks that failed their check when read back, and were dropped
        self.on_chunk_lost: Callable[[], None] = lambda: None
        self.min_free_bytes = 0  # the low-disk guard: never fill the disk past this
        self.min_chunks = 1  # new blobs get finer chunks down to this count (chunk_size_for)
        self.free_bytes: Callable[[], int] | None = None

    def lookup(self, digest: Digest) -> BlobBase | None:
        return self._blobs.get(digest)

    def digests(self) -> list[Digest]:
        return list(self._blobs)

    @property
    def used_bytes(self) -> int:
        return sum(blob.size for blob in self._blobs.values())

    def touch(self, digest: Digest) -> None:
        self._last_used[digest] = time.time()

    @contextmanager
    def pin(self, digest: Digest) -> Iterator[None]:
        self._pins[digest] = self._pins.get(digest, 0) + 1
        try:
            yield
        finally:
            self._pins[digest] -= 1
            if not self._pins[digest]:
                del self._pins[digest]

    def _over_limits(self, size: int) -> str | None:
        """Why ``size`` more bytes do not fit now (quota or low disk), or None."""
        if self.quota_bytes and self.used_bytes + size > self.quota_bytes:
            return f"{self.used_bytes} of the {self.quota_bytes}-byte quota in use"
        if self.min_free_bytes and self.free_bytes is not None:
            free = self.free_bytes()
            if free - size < self.min_free_bytes:
                return f"only {free} bytes free on disk, keeping {self.min_free_bytes} free"
        return None

    async def _make_room(self, size: int) -> None:
        if self.quota_bytes and size > self.quota_bytes:
            raise StoreFull(f"blob of {size} bytes exceeds the store quota of {self.quota_bytes}")
        victims = sorted(
            (d for d, b in self._blobs.items() if b.complete and d not in self._pins),
            key=lambda d: self._last_used.get(d, 0.0),
        )
        while (reason := self._over_limits(size)) is not None:
            if not victims:
                raise StoreFull(
                    f"need {size} bytes; {reason}, and nothing evictable "
                    "(every complete blob is in use)"
                )
            victim = victims.pop(0)
            log.info("evicting %s (LRU) to make room for %d bytes: %s", victim, size, reason)
            await self.remove(victim)
            self.evictions += 1
            self.on_evict()

    async def remove(self, digest: Digest) -> bool:
        blob = self._blobs.pop(digest, None)
        self._last_used.pop(digest, None)
        if blob is None:
            return False
        blob._discarded = True
        await blob._drop()
        return True

    async def put(self, digest: Digest, data: bytes, *, media_type: str | None = None) -> BlobBase:
        existing = self.lookup(digest)
        if existing is not None and existing.complete:
            return existing
        blob = await self.open(digest, size=len(data), media_type=media_type)
        for index in blob.bitfield.missing():
            offset, length = blob.chunk_span(index)
            await blob.write_chunk(index, data[offset : offset + length])
        await blob.seal()
        return blob

    async def open(
        self,
        digest: Digest,
        *,
        size: int,
        media_type: str | None = None,
        chunk_size: int | None = None,
    ) -> BlobBase:
        if size < 0:
            raise ValueError("size must be >= 0")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        async with self._open_lock:
            existing = self._blobs.get(digest)
            if existing is not None:
                same_chunks = chunk_size is None or existing.chunk_size == chunk_size
                if existing.size == size and (same_chunks or existing.complete):
                    self.touch(digest)
                    return existing
                if existing.size == size:
                    log.warning(
                        "partial %s uses %d-byte chunks, the swarm %d: restarting",
                        digest,
                        existing.chunk_size,
                        chunk_size,
                    )
                    await self.remove(digest)
                    existing = None
            if existing is not None:
                if existing.complete:
                    raise DigestMismatch(
                        f"{digest} is stored with {existing.size} bytes, not {size}"
                    )
                log.warning(
                    "partial %s had size %d, now %d: restarting", digest, existing.size, size
                )
                await self.remove(digest)
            await self._make_room(size)
            blob = await self._create(
                digest,
                size=size,
                media_type=media_type,
                chunk_size=chunk_size or chunk_size_for(size, self.chunk_size, self.min_chunks),
            )
            self._adopt(blob)
            self.touch(digest)
            return blob

    def _adopt(self, blob: BlobBase) -> None:
        self._blobs[blob.digest] = blob
        blob.on_discard = self._forget
        blob.on_chunk_lost = self._chunk_lost

    def _chunk_lost(self) -> None:
        self.chunks_lost += 1
        self.on_chunk_lost()

    def _forget(self, digest: Digest) -> None:
        self._blobs.pop(digest, None)
        self._last_used.pop(digest, None)

    async def _create(
        self, digest: Digest, *, size: int, media_type: str | None, chunk_size: int
    ) -> BlobBase:
        raise NotImplementedError
