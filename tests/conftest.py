"""Shared fixtures: every BlobStore implementation, and a ByteSink that records what it got."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from p2pull.store.disk import DiskStore
from p2pull.store.memory import MemoryStore
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


@pytest.fixture(params=["memory", "disk"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds a fresh store of each implementation; tests written against it are conformance
    tests that every BlobStore must pass."""

    async def make(*, chunk_size: int = 4, quota_bytes: int = 0) -> BlobStore:
        if request.param == "memory":
            return MemoryStore(chunk_size=chunk_size, quota_bytes=quota_bytes)
        return await DiskStore.load(tmp_path, chunk_size=chunk_size, quota_bytes=quota_bytes)

    return make


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
