"""An in-memory store with the disk store's semantics, for tests and fakes."""

from __future__ import annotations

import hashlib

from p2pull.bitfield import Bitfield
from p2pull.reference import Digest
from p2pull.store.base import BlobBase, StoreBase
from p2pull.store.types import ByteSink


class MemoryBlob(BlobBase):
    def __init__(self, digest: Digest, *, size: int, chunk_size: int, media_type: str | None):
        super().__init__(digest, size=size, chunk_size=chunk_size, media_type=media_type)
        self._data = bytearray(size)

    def _pwrite(self, offset: int, data: bytes) -> None:
        self._data[offset : offset + len(data)] = data

    def _pread(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset : offset + length])

    async def _persist(self) -> None:
        self.dirty = 0

    async def _drop(self) -> None:
        self._data = bytearray()

    async def _send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        await sink.write(self._pread(offset, length))

    def rot(self, offset: int) -> None:
        """Flip the byte at ``offset`` and forget what a restart forgets (which chunks were
        checked, the whole-blob hash so far), as a disk that rotted while the agent was stopped
        would look after a restart (for tests of the store's checks)."""
        self._data[offset] ^= 0xFF
        self._checked = Bitfield(self._have.length)
        self._hasher, self._hashed = hashlib.sha256(), 0


class MemoryStore(StoreBase):
    def __init__(self, *, chunk_size: int, quota_bytes: int = 0) -> None:
        super().__init__(chunk_size=chunk_size, quota_bytes=quota_bytes)

    async def _create(
        self, digest: Digest, *, size: int, media_type: str | None, chunk_size: int
    ) -> BlobBase:
        return MemoryBlob(digest, size=size, chunk_size=chunk_size, media_type=media_type)
