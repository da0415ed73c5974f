"""Shared fixtures: every BlobStore implementation, and a ByteSink that records what it got."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from p2pull.reference import Digest
from p2pull.store.disk import DiskStore
from p2pull.store.memory import MemoryBlob, MemoryStore
from p2pull.store.types import BlobStore
from tests.realparts import require_realparts, short_tmpdir


@pytest.fixture(autouse=True)
def _realparts(request: pytest.FixtureRequest) -> None:
    """Tests marked ``realparts`` skip, with the reason, where containerd and friends are not."""
    if request.node.get_closest_marker("realparts") is not None:
        require_realparts()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short scratch directory (unix socket paths must stay under 108 bytes)."""
    with short_tmpdir() as path:
        yield path


class StoreFactory(Protocol):
    def __call__(
        self, *, chunk_size: int = ..., quota_bytes: int = ...
    ) -> Awaitable[BlobStore]: ...

    def rot(self, store: BlobStore, digest: Digest, offset: int) -> Awaitable[BlobStore]:
        """Flip the byte at ``offset`` of a stored blob as a disk would while the agent was
        stopped, and restart: the store as the next run sees it."""
        ...


class _Factory:
    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.chunk_size = 4
        self.quota_bytes = 0

    async def __call__(self, *, chunk_size: int = 4, quota_bytes: int = 0) -> BlobStore:
        self.chunk_size, self.quota_bytes = chunk_size, quota_bytes
        if self.kind == "memory":
            return MemoryStore(chunk_size=chunk_size, quota_bytes=quota_bytes)
        return await self._load()

    async def _load(self) -> DiskStore:
        return await DiskStore.load(
            self.tmp_path, chunk_size=self.chunk_size, quota_bytes=self.quota_bytes
        )

    async def rot(self, store: BlobStore, digest: Digest, offset: int) -> BlobStore:
        if isinstance(store, MemoryStore):
            blob = store.lookup(digest)
            assert isinstance(blob, MemoryBlob)
            blob.rot(offset)
            return store
        blob = store.lookup(digest)
        assert blob is not None
        await blob.checkpoint()
        path = self.tmp_path / "blobs" / "sha256" / digest.hex / "data"
        with open(path, "r+b") as handle:  # noqa: ASYNC230 - a few bytes of a test file
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))
        return await self._load()


@pytest.fixture(params=["memory", "disk"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds a fresh store of each implementation; tests written against it are conformance
    tests that every BlobStore must pass."""
    return _Factory(request.param, tmp_path)


class RecordingSink:
    """A ByteSink recording each call; ``sendfile`` reads the fd region like the kernel would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []  # ("write", 0, n) / ("sendfile", offset, n)
        self._received = bytearray()

    @property
    def data(self) -> bytes:
        return bytes(self._received)

    async def write(self, data: bytes) -> None:
        self.calls.append(("write", 0, len(data)))
        self._received += data

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None:
        self.calls.append(("sendfile", offset, count))
        end = offset + count
        while offset < end:
            piece = os.pread(fd, end - offset, offset)
            if not piece:
                raise AssertionError(f"sendfile past the end of the file at {offset}")
            self._received += piece
            offset += len(piece)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
