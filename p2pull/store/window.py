"""A blob the store cannot keep, passed through from peers to one local reader in a bounded
window of memory.

When the store has no room for a blob (quota or disk full, nothing evictable), its node still
takes the blob from the swarm instead of going to the origin a second time: the session asks
only for the chunks from the one the reader sends next up to ``window`` chunks after it
(``BlobOpened.passing``), each is checked against the seed's sha256 as it is written and folded
into the whole-blob hash in order (``BlobBase``), and a chunk is dropped once it has been sent and
hashed. The blob is never in the store, so never announced or served to peers; the last chunk is
released only once the whole digest matched (``Transfer.servable``), like any other blob.

One reader, reading the whole blob from its start: a second reader (or a range) is passed
through from the origin instead (``p2pull.transfer.BlobReader``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from p2pull.errors import StoreError, StoreFull
from p2pull.reference import Digest
from p2pull.store.base import BlobBase
from p2pull.store.types import ByteSink


class WindowBlob(BlobBase):
    def __init__(
        self,
        digest: Digest,
        *,
        size: int,
        chunk_size: int,
        window: int,
        on_read: Callable[[int], None] = lambda index: None,
    ) -> None:
        super().__init__(digest, size=size, chunk_size=chunk_size, media_type=None)
        if window < 1:
            raise ValueError("a pass-through window holds at least one chunk")
        self.window = window
        self._chunks: dict[int, bytes] = {}
        self._next = 0  # the chunk the reader sends next: every one before it was sent
        self._on_read = on_read  # told the new ``_next`` as the reader moves on
        self.claimed = trio.Event()  # the one reader began
        self.released = trio.Event()  # ... and ended, whole or not

    @property
    def reading(self) -> int:
        """The chunk the reader sends next (the window begins there)."""
        return self._next

    @property
    def held_bytes(self) -> int:
        return sum(len(data) for data in self._chunks.values())

    def claim(self, offset: int, length: int) -> bool:
        """Take the blob for one reader of the whole of it; False for a range, or if it is
        taken already (that reader goes to the origin instead)."""
        if self.claimed.is_set() or offset != 0 or length != self.size:
            return False
        self.claimed.set()
        return True

    def release(self) -> None:
        self.released.set()

    async def write_chunk(self, index: int, data: bytes, *, expected: bytes | None = None) -> None:
        if not self._next <= index < self._next + self.window and not self._have.has(index):
            # The session asks only within the window; anything else is a bug, not a reason
            # to hold an unbounded part of the blob in memory.
            raise StoreFull(
                f"chunk {index} of {self.digest} is outside the pass-through window "
                f"{self._next}..{self._next + self.window - 1}"
            )
        await super().write_chunk(index, data, expected=expected)
        self._evict()

    def _pwrite(self, offset: int, data: bytes) -> None:
        self._chunks[offset // self.chunk_size] = data

    def _pread(self, offset: int, length: int) -> bytes:
        first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
        if any(index not in self._chunks for index in range(first, last + 1)):
            raise StoreError(f"{self.digest} is passed through: chunks {first}..{last} are gone")
        data = b"".join(self._chunks[index] for index in range(first, last + 1))
        start = offset - first * self.chunk_size
        return data[start : start + length]

    async def _send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        if offset != self._next * self.chunk_size:
            raise StoreError(f"{self.digest} is passed through: it is read once, in order")
        await sink.write(self._pread(offset, length))
        end = offset + length
        self._next = self._have.length if end >= self.size else end // self.chunk_size
        self._evict()
        self._on_read(self._next)

    def _evict(self) -> None:
        """Drop what the reader has sent and the whole-blob hash has folded."""
        for index in [i for i in self._chunks if i < min(self._next, self._hashed)]:
            del self._chunks[index]

    async def _persist(self) -> None:
        self.dirty = 0

    async def _drop(self) -> None:
        self._chunks.clear()


__all__ = ["WindowBlob"]
