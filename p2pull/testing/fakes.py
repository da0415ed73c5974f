"""In-memory fakes of p2pull's I/O Protocols (no sockets): an upstream registry."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from p2pull.errors import BlobUnknown, ManifestUnknown, NameUnknown, TruncatedBody
from p2pull.reference import Digest, ManifestRef
from p2pull.upstream.types import (
    MANIFEST_MEDIA_TYPES,
    Manifest,
    ManifestDescriptor,
    Upstream,
)


@dataclass
class FakeBody:
    size: int
    start: int
    data: bytes
    piece: int
    truncate_at: int | None
    owner: MemoryUpstream
    rate: float = 0.0  # bytes per second (0: as fast as the reader takes them)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        end = len(self.data) if self.truncate_at is None else min(len(self.data), self.truncate_at)
        for offset in range(self.start, end, self.piece):
            piece = self.data[offset : min(end, offset + self.piece)]
            if self.rate > 0:
                await trio.sleep(len(piece) / self.rate)
            else:
                await trio.lowlevel.checkpoint()
            self.owner.sent(len(piece))
            yield piece
        if end < len(self.data):
            raise TruncatedBody(f"fake upstream cut the body at {end} of {len(self.data)}")


@dataclass
class MemoryUpstream:
    """An upstream registry held in memory; counts the blob bytes it hands out. With ``rate``,
    each response streams at that many bytes per second (trio's clock: simulated time under
    a MockClock)."""

    blobs: dict[Digest, bytes] = field(default_factory=dict)
    manifests: dict[Digest, tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[tuple[str, str], Digest] = field(default_factory=dict)
    piece: int = 64 * 1024
    truncate_at: dict[Digest, int] = field(default_factory=dict)
    rate: float = 0.0
    bytes_sent: int = 0
    opens: list[tuple[Digest, int]] = field(default_factory=list)
    _progress: trio.Event = field(default_factory=trio.Event)

    def sent(self, count: int) -> None:
        self.bytes_sent += count
        self._progress.set()
        self._progress = trio.Event()

    async def wait_sent(self, count: int) -> None:
        """Until the blob bytes handed out reach ``count``."""
        while self.bytes_sent < count:
            await self._progress.wait()

    def add_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, name: str, tag: str, body: bytes, media_type: str) -> Digest:
        digest = Digest.of(body)
        self.manifests[digest] = (media_type, body)
        self.tags[(name, tag)] = digest
        return digest

    def _manifest(self, name: str, ref: ManifestRef) -> Manifest:
        digest = ref.digest if ref.digest is not None else self.tags.get((name, str(ref.tag)))
        if digest is None or digest not in self.manifests:
            raise ManifestUnknown(f"manifest {name}:{ref} unknown")
        media_type, body = self.manifests[digest]
        return Manifest(ManifestDescriptor(digest, media_type, len(body)), body)

    async def head_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> ManifestDescriptor:
        await trio.lowlevel.checkpoint()
        return self._manifest(name, ref).descriptor

    async def get_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        await trio.lowlevel.checkpoint()
        return self._manifest(name, ref)

    async def head_blob(self, name: str, digest: Digest) -> int:
        await trio.lowlevel.checkpoint()
        if digest not in self.blobs:
            raise BlobUnknown(f"blob {digest} unknown")
        return len(self.blobs[digest])

    @asynccontextmanager
    async def open_blob(
        self, name: str, digest: Digest, *, start: int = 0
    ) -> AsyncIterator[FakeBody]:
        await trio.lowlevel.checkpoint()
        if digest not in self.blobs:
            raise BlobUnknown(f"blob {digest} unknown")
        self.opens.append((digest, start))
        data = self.blobs[digest]
        truncate = self.truncate_at.get(digest)
        yield FakeBody(len(data), start, data, self.piece, truncate, self, self.rate)


@dataclass
class FixedUpstreams:
    """Upstreams that answer every namespace (and none) with the same upstream."""

    upstream: Upstream
    require_ns: bool = False

    def for_namespace(self, ns: str | None) -> Upstream:
        if ns is None and self.require_ns:
            raise NameUnknown("no ns in the request and no default upstream configured")
        return self.upstream
