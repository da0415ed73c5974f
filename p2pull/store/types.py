"""The store Protocols. Both the disk store and the in-memory store pass tests/test_store.py.

A blob is created with its size, filled chunk by chunk (each chunk's sha256 recorded, or checked
against a hash the caller already knows), and sealed: sealing hashes the whole blob and either
marks it complete or discards it. Only chunks marked present are ever read back, and never
without a check against their recorded sha256 by this process (ChunkLost: dropped, fetch again).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from p2pull.bitfield import Bitfield
from p2pull.reference import Digest

FINEST_CHUNK = 256 * 1024  # chunk_size_for never goes below this


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size)) if size else 0


def chunk_size_for(size: int, chunk_size: int, min_chunks: int) -> int:
    """The chunk size of a new blob of ``size`` bytes: ``chunk_size`` halved while the blob
    would have fewer than ``min_chunks`` chunks, never below FINEST_CHUNK (nor below a
    ``chunk_size`` that is already finer). A swarm pipelines a blob chunk by chunk, so a small
    layer in few chunks leaves most nodes waiting on the first holders of each one; every node
    with the same settings picks the same size, and a blob's chunk size travels with it
    (BlobInfo) in any case."""
    while size and chunk_size // 2 >= FINEST_CHUNK and chunk_count(size, chunk_size) < min_chunks:
        chunk_size //= 2
    return chunk_size


class ByteSink(Protocol):
    """Where a blob's bytes go; an HTTP response body sink satisfies it."""

    async def write(self, data: bytes) -> None: ...

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None: ...


class StoredBlob(Protocol):
    digest: Digest
    size: int
    chunk_size: int
    media_type: str | None

    @property
    def complete(self) -> bool: ...

    @property
    def bitfield(self) -> Bitfield: ...

    def chunk_hash(self, index: int) -> bytes | None: ...

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        ...

    async def write_chunk(self, index: int, data: bytes, *, expected: bytes | None = None) -> None:
        """Store chunk ``index``. With ``expected`` (a sha256), refuse mismatching bytes with
        ChunkMismatch and store nothing. Writing a chunk that is already present is a no-op."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Bytes of present chunks only (StoreError if any byte of the range is missing). Each
        chunk not yet checked by this process (a restart loaded it) is checked against its
        recorded sha256 first; one that fails is dropped (the blob is then not complete) and
        ChunkLost raised."""
        ...

    async def send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        """Send a range of present chunks to ``sink`` (zero-copy where the store can), checked
        like ``read``: on ChunkLost nothing was sent."""
        ...

    async def checkpoint(self) -> None:
        """Persist which chunks are present (a no-op for stores that need none)."""
        ...

    async def seal(self) -> None:
        """Verify the whole digest and mark the blob complete, or discard it (DigestMismatch)."""
        ...


class BlobStore(Protocol):
    chunk_size: int
    min_chunks: int  # a new blob opened without a chunk size gets chunk_size_for(...) chunks

    def lookup(self, digest: Digest) -> StoredBlob | None:
        """A complete or partial blob, or None."""
        ...

    async def open(
        self,
        digest: Digest,
        *,
        size: int,
        media_type: str | None = None,
        chunk_size: int | None = None,
    ) -> StoredBlob:
        """The existing blob (partial blobs resume) or a new empty one of ``size`` bytes.

        ``chunk_size`` (default: the store's) is the swarm's chunking for this blob; a partial
        blob recorded with another size or chunk size is discarded and recreated. May evict least
        recently used, unpinned complete blobs to make room; StoreFull when it cannot."""
        ...

    async def put(
        self, digest: Digest, data: bytes, *, media_type: str | None = None
    ) -> StoredBlob:
        """Store a small blob (a manifest) in one step: write, seal, return."""
        ...

    async def remove(self, digest: Digest) -> bool: ...

    def pin(self, digest: Digest) -> AbstractContextManager[None]:
        """Keep ``digest`` from eviction while the context is open (a reader is streaming it)."""
        ...

    def touch(self, digest: Digest) -> None:
        """Mark ``digest`` as just used (LRU)."""
        ...

    @property
    def used_bytes(self) -> int: ...

    def digests(self) -> list[Digest]: ...
