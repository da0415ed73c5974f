"""BlobStore conformance (MemoryStore and DiskStore through ``store_factory``), then DiskStore's
persistence: restart, crash, corruption and garbage on disk."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
import trio
import trio.testing

from p2pull.errors import ChunkLost, ChunkMismatch, DigestMismatch, StoreError, StoreFull
from p2pull.reference import Digest
from p2pull.store import base
from p2pull.store.disk import DiskBlob, DiskStore
from p2pull.store.types import BlobStore, StoredBlob

if TYPE_CHECKING:
    from conftest import RecordingSink, StoreFactory

DEADLINE = 10
CHUNK = 4  # tiny chunks: a 10-byte blob is chunks of 4, 4 and 2 bytes


def make_data(size: int, *, seed: int = 0) -> tuple[Digest, bytes]:
    data = bytes((i * 7 + seed * 13 + 1) % 251 for i in range(size))
    return Digest.of(data), data


def chunk(data: bytes, index: int, chunk_size: int = CHUNK) -> bytes:
    return data[index * chunk_size : (index + 1) * chunk_size]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def fill(blob: StoredBlob, data: bytes, order: Sequence[int] | None = None) -> None:
    indexes = range(blob.bitfield.length) if order is None else order
    for index in indexes:
        await blob.write_chunk(index, chunk(data, index, blob.chunk_size))


async def put_data(store: BlobStore, size: int, *, seed: int) -> Digest:
    digest, data = make_data(size, seed=seed)
    await store.put(digest, data)
    return digest


# -- filling, sealing, reading ------------------------------------------------------------------


async def test_open_creates_an_empty_partial_blob(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(10)
        blob = await store.open(digest, size=10, media_type="application/octet-stream")
        assert (blob.digest, blob.size, blob.chunk_size) == (digest, 10, CHUNK)
        assert blob.media_type == "application/octet-stream"
        assert not blob.complete
        assert blob.bitfield.length == 3 and blob.bitfield.count == 0
        assert [blob.chunk_hash(i) for i in range(3)] == [None, None, None]
        assert [blob.chunk_span(i) for i in range(3)] == [(0, 4), (4, 4), (8, 2)]
        assert store.lookup(digest) is blob
        assert store.digests() == [digest]
        assert store.used_bytes == 10


@pytest.mark.parametrize(
    "order",
    [
        pytest.param([0, 1, 2], id="in-order"),
        pytest.param([2, 1, 0], id="reversed"),
        pytest.param([1, 2, 0], id="middle-first"),
        pytest.param([2, 0, 1], id="last-first"),
    ],
)
async def test_chunks_in_any_order_then_seal(
    store_factory: StoreFactory, sink: RecordingSink, order: list[int]
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        for step, index in enumerate(order):
            await blob.write_chunk(index, chunk(data, index))
            assert blob.bitfield.count == step + 1
            assert blob.chunk_hash(index) == sha256(chunk(data, index))
            assert await blob.read(*blob.chunk_span(index)) == chunk(data, index)
        assert not blob.complete
        await blob.seal()
        assert blob.complete
        assert store.lookup(digest) is blob
        assert await blob.read(0, 10) == data
        assert await blob.read(3, 6) == data[3:9]  # across chunk boundaries
        assert await blob.read(5, 0) == b""
        await blob.send(sink, offset=2, length=7)
        assert sink.data == data[2:9]


async def test_seal_is_idempotent(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await fill(blob, data)
        await blob.seal()
        await blob.seal()
        assert blob.complete and await blob.read(0, 10) == data


async def test_zero_size_blob(store_factory: StoreFactory, sink: RecordingSink) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(0)
        blob = await store.open(digest, size=0)
        assert blob.bitfield.length == 0
        await blob.seal()
        assert blob.complete
        assert await blob.read(0, 0) == b""
        await blob.send(sink, offset=0, length=0)
        assert sink.data == b""
        assert store.used_bytes == 0
        with pytest.raises(StoreError):
            await blob.read(0, 1)


async def test_zero_size_blob_with_wrong_digest_is_discarded(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(10)
        blob = await store.open(digest, size=0)
        with pytest.raises(DigestMismatch):
            await blob.seal()
        assert store.lookup(digest) is None


@pytest.mark.parametrize(
    ("size", "last_length"),
    [
        pytest.param(9, 1, id="one-byte-last-chunk"),
        pytest.param(11, 3, id="three-byte-last-chunk"),
        pytest.param(12, 4, id="exact-multiple"),
        pytest.param(3, 3, id="single-short-chunk"),
    ],
)
async def test_last_chunk_length(store_factory: StoreFactory, size: int, last_length: int) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(size)
        blob = await store.open(digest, size=size)
        last = blob.bitfield.length - 1
        assert blob.chunk_span(last) == (last * CHUNK, last_length)
        if last_length < CHUNK:
            with pytest.raises(ChunkMismatch):
                await blob.write_chunk(last, chunk(data, last).ljust(CHUNK, b"\0"))
            assert not blob.bitfield.has(last)
        await fill(blob, data)
        await blob.seal()
        assert await blob.read(0, size) == data


@pytest.mark.parametrize(
    ("index", "length"),
    [
        pytest.param(0, 3, id="short"),
        pytest.param(0, 5, id="long"),
        pytest.param(0, 0, id="empty"),
        pytest.param(2, 4, id="full-size-for-short-last"),
        pytest.param(2, 1, id="too-short-last"),
    ],
)
async def test_wrong_length_chunk_refused(
    store_factory: StoreFactory, index: int, length: int
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(10)
        blob = await store.open(digest, size=10)
        with pytest.raises(ChunkMismatch):
            await blob.write_chunk(index, b"x" * length)
        assert blob.bitfield.count == 0
        assert blob.chunk_hash(index) is None


@pytest.mark.parametrize("index", [pytest.param(3, id="past-end"), pytest.param(-1, id="negative")])
async def test_chunk_index_out_of_range(store_factory: StoreFactory, index: int) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(10)
        blob = await store.open(digest, size=10)
        with pytest.raises(IndexError):
            await blob.write_chunk(index, b"x" * CHUNK)
        with pytest.raises(IndexError):
            blob.chunk_span(index)


async def test_expected_hash_mismatch_stores_nothing(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        good = chunk(data, 1)
        with pytest.raises(ChunkMismatch):
            await blob.write_chunk(1, b"evil", expected=sha256(good))
        assert not blob.bitfield.has(1)
        assert blob.chunk_hash(1) is None
        with pytest.raises(StoreError):
            await blob.read(4, 4)
        await blob.write_chunk(1, good, expected=sha256(good))
        assert blob.bitfield.has(1)
        assert await blob.read(4, 4) == good


async def test_duplicate_write_is_a_noop(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(0, chunk(data, 0))
        await blob.write_chunk(0, chunk(data, 0))
        await blob.write_chunk(0, b"evil")  # already present: ignored, not stored
        await blob.write_chunk(0, b"evil", expected=sha256(b"nope"))  # ignored too
        assert blob.bitfield.count == 1
        assert blob.chunk_hash(0) == sha256(chunk(data, 0))
        assert await blob.read(0, 4) == chunk(data, 0)
        await fill(blob, data, order=[1, 2])
        await blob.seal()
        assert blob.complete


async def test_concurrent_writes_then_seal(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(50)
        blob = await store.open(digest, size=50)
        async with trio.open_nursery() as nursery:
            for index in [*reversed(range(13)), 0, 5, 12]:  # some twice
                nursery.start_soon(blob.write_chunk, index, chunk(data, index))
        await blob.seal()
        assert await blob.read(0, 50) == data


async def test_large_chunks_hashed_in_threads(
    store_factory: StoreFactory, sink: RecordingSink
) -> None:
    with trio.fail_after(DEADLINE):
        chunk_size = 256 * 1024  # at THREAD_THRESHOLD: hashing and I/O go to worker threads
        store = await store_factory(chunk_size=chunk_size)
        size = 2 * chunk_size + 1000
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        digest = Digest.of(data)
        blob = await store.open(digest, size=size)
        for index in (2, 0, 1):
            await blob.write_chunk(index, chunk(data, index, chunk_size))
        await blob.seal()
        assert await blob.read(0, size) == data
        await blob.send(sink, offset=chunk_size - 10, length=chunk_size + 20)
        assert sink.data == data[chunk_size - 10 : 2 * chunk_size + 10]


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        pytest.param(4, 4, id="missing-chunk"),
        pytest.param(3, 2, id="ends-in-missing"),
        pytest.param(7, 2, id="starts-in-missing"),
        pytest.param(0, 10, id="whole-blob"),
        pytest.param(8, 3, id="past-end"),
        pytest.param(-1, 2, id="negative-offset"),
        pytest.param(0, -1, id="negative-length"),
    ],
)
async def test_read_and_send_refuse_missing_bytes(
    store_factory: StoreFactory, sink: RecordingSink, offset: int, length: int
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await fill(blob, data, order=[0, 2])
        with pytest.raises(StoreError):
            await blob.read(offset, length)
        with pytest.raises(StoreError):
            await blob.send(sink, offset=offset, length=length)
        assert sink.calls == []


async def test_partial_blob_serves_present_chunks(
    store_factory: StoreFactory, sink: RecordingSink
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await fill(blob, data, order=[2, 0])
        assert await blob.read(0, 4) == data[:4]
        assert await blob.read(9, 1) == data[9:]
        await blob.send(sink, offset=8, length=2)
        assert sink.data == data[8:]


async def test_seal_before_all_chunks(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await fill(blob, data, order=[0, 2])
        with pytest.raises(StoreError) as info:
            await blob.seal()
        assert not isinstance(info.value, DigestMismatch)
        assert not blob.complete
        assert store.lookup(digest) is blob  # still there to be finished
        await blob.write_chunk(1, chunk(data, 1))
        await blob.seal()
        assert blob.complete


async def test_seal_with_wrong_bytes_discards_the_blob(
    store_factory: StoreFactory, sink: RecordingSink
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        _, other = make_data(10, seed=1)
        blob = await store.open(digest, size=10)
        await fill(blob, other)  # the chunks have no known hashes, so they are accepted
        with pytest.raises(DigestMismatch):
            await blob.seal()
        assert not blob.complete
        assert store.lookup(digest) is None
        assert store.digests() == []
        assert store.used_bytes == 0
        for stale_use in (
            lambda: blob.read(0, 4),
            lambda: blob.send(sink, offset=0, length=4),
            lambda: blob.write_chunk(0, chunk(data, 0)),
            blob.seal,
        ):
            with pytest.raises(StoreError):
                await stale_use()
        fresh = await store.open(digest, size=10)
        assert fresh is not blob and fresh.bitfield.count == 0
        await fill(fresh, data)
        await fresh.seal()
        assert await fresh.read(0, 10) == data


async def test_put_small_blob(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        manifest = b'{"schemaVersion":2,"layers":[]}'
        digest = Digest.of(manifest)
        media_type = "application/vnd.oci.image.manifest.v1+json"
        blob = await store.put(digest, manifest, media_type=media_type)
        assert blob.complete and blob.media_type == media_type and blob.size == len(manifest)
        assert store.lookup(digest) is blob
        assert await blob.read(0, len(manifest)) == manifest
        assert await store.put(digest, manifest, media_type=media_type) is blob


async def test_put_finishes_a_partial_blob(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(1, chunk(data, 1))
        assert await store.put(digest, data) is blob
        assert blob.complete and await blob.read(0, 10) == data


async def test_put_with_wrong_bytes(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, _ = make_data(10)
        with pytest.raises(DigestMismatch):
            await store.put(digest, b"not the blob")
        assert store.lookup(digest) is None
        assert store.used_bytes == 0


async def test_reopen_same_size_resumes(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(2, chunk(data, 2))
        again = await store.open(digest, size=10)
        assert again is blob
        assert list(again.bitfield.present()) == [2]
        assert again.chunk_hash(2) == sha256(chunk(data, 2))


async def test_min_chunks_makes_a_new_small_blob_finer(store_factory: StoreFactory) -> None:
    """A blob opened without a chunk size gets finer chunks while it would have fewer than
    ``min_chunks``; one opened with the swarm's chunk size keeps that, and so does a partial
    blob reopened later."""
    with trio.fail_after(DEADLINE):
        store = await store_factory(chunk_size=1 << 20)
        store.min_chunks = 16
        small, _ = make_data(10, seed=1)
        blob = await store.open(Digest.of(b"two MiB"), size=2 << 20)
        assert blob.chunk_size == 256 << 10 and blob.bitfield.length == 8  # not below 256 KiB
        blob = await store.open(Digest.of(b"sixteen MiB"), size=16 << 20)
        assert blob.chunk_size == 1 << 20
        blob = await store.open(Digest.of(b"four MiB"), size=4 << 20)
        assert blob.chunk_size == 256 << 10
        swarm = await store.open(Digest.of(b"from the swarm"), size=4 << 20, chunk_size=1 << 20)
        assert swarm.chunk_size == 1 << 20
        store.min_chunks = 1
        again = await store.open(Digest.of(b"four MiB"), size=4 << 20)
        assert again is blob and again.chunk_size == 256 << 10
        assert (await store.open(small, size=10)).chunk_size == 1 << 20


async def test_reopen_with_other_size_restarts(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        stale = await store.open(digest, size=12)
        await stale.write_chunk(0, chunk(data, 0))
        blob = await store.open(digest, size=10)
        assert blob is not stale
        assert blob.size == 10 and blob.bitfield.count == 0
        assert store.lookup(digest) is blob
        assert store.used_bytes == 10
        with pytest.raises(StoreError):
            await stale.write_chunk(1, chunk(data, 1))
        await fill(blob, data)
        await blob.seal()
        assert await blob.read(0, 10) == data


async def test_reopen_complete_blob_with_other_size(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest = await put_data(store, 10, seed=0)
        with pytest.raises(DigestMismatch):
            await store.open(digest, size=11)
        blob = store.lookup(digest)
        assert blob is not None and blob.complete


async def test_negative_size_refused(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        with pytest.raises(ValueError):
            await store.open(make_data(1)[0], size=-1)


async def test_concurrent_open_returns_one_blob(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        opened: list[StoredBlob] = []

        async def open_it() -> None:
            opened.append(await store.open(digest, size=10))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(open_it)
        assert all(blob is opened[0] for blob in opened)
        assert store.lookup(digest) is opened[0]
        await fill(opened[1], data)
        await opened[2].seal()
        assert await opened[0].read(0, 10) == data


async def test_remove(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        kept = await put_data(store, 10, seed=1)
        digest, data = make_data(10)
        blob = await store.put(digest, data)
        assert await store.remove(digest) is True
        assert store.lookup(digest) is None
        assert store.digests() == [kept]
        assert store.used_bytes == 10
        assert await store.remove(digest) is False
        assert await store.remove(make_data(3, seed=9)[0]) is False
        with pytest.raises(StoreError):
            await blob.read(0, 10)
        partial = await store.open(digest, size=10)
        await partial.write_chunk(0, chunk(data, 0))
        assert await store.remove(digest) is True
        with pytest.raises(StoreError):
            await partial.write_chunk(1, chunk(data, 1))


# -- chunks that rotted while the agent was stopped -----------------------------------------------


async def test_a_rotted_chunk_of_a_complete_blob_is_dropped_not_served(
    store_factory: StoreFactory, sink: RecordingSink
) -> None:
    """A complete blob with one byte flipped on disk was served with the wrong sha256 after a
    restart (the store trusted its 'complete'). Each chunk a restart loaded is now checked
    the first time it is read back; one that fails is dropped, and nothing of it goes out."""
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        await store.put(digest, data)
        store = await store_factory.rot(store, digest, 5)  # chunk 1 of 0-3, 4-7, 8-9
        blob = store.lookup(digest)
        assert blob is not None and blob.complete  # nothing read yet
        await blob.send(sink, offset=0, length=4)  # chunk 0 checks out
        with pytest.raises(ChunkLost) as info:
            await blob.send(sink, offset=4, length=6)
        assert info.value.index == 1
        assert sink.data == data[:4]  # nothing of the failing range was sent
        assert not blob.complete and list(blob.bitfield.present()) == [0, 2]
        assert blob.chunk_hash(1) is None
        assert store.chunks_lost == 1  # type: ignore[attr-defined]
        with pytest.raises(StoreError):
            await blob.read(4, 4)  # missing now
        await blob.write_chunk(1, chunk(data, 1))  # fetched again
        await blob.seal()
        assert blob.complete and await blob.read(0, 10) == data


async def test_read_checks_a_restarted_blob_too(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        await store.put(digest, data)
        store = await store_factory.rot(store, digest, 9)
        blob = store.lookup(digest)
        assert blob is not None
        assert await blob.read(0, 8) == data[:8]
        with pytest.raises(ChunkLost):
            await blob.read(0, 10)
        assert list(blob.bitfield.present()) == [0, 1]


async def test_a_rotted_chunk_of_a_partial_blob_is_dropped_at_the_seal(
    store_factory: StoreFactory,
) -> None:
    """Every chunk was stored, the seal had not run (the agent stopped): the seal reads them
    back for the whole-blob hash and finds the rotted one: ChunkLost (a chunk to fetch again,
    not a bad blob). The pull failed here before; the transfer now fetches it again."""
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(14)
        blob = await store.open(digest, size=14)
        await fill(blob, data)
        store = await store_factory.rot(store, digest, 9)  # chunk 2
        blob = store.lookup(digest)
        assert blob is not None
        with pytest.raises(ChunkLost) as info:
            await blob.seal()
        assert info.value.index == 2 and not isinstance(info.value, DigestMismatch)
        assert list(blob.bitfield.present()) == [0, 1, 3]
        await blob.write_chunk(2, chunk(data, 2))
        await blob.seal()
        assert blob.complete and await blob.read(0, 14) == data


async def test_a_rotted_chunk_folded_during_a_write_is_dropped(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(14)
        blob = await store.open(digest, size=14)
        await fill(blob, data, order=[2, 1])  # nothing folded yet: chunk 0 is missing
        store = await store_factory.rot(store, digest, 9)  # chunk 2
        blob = store.lookup(digest)
        assert blob is not None
        await fill(blob, data, order=[0, 3])  # 0 folds 1 and 2 in: 2 fails, the write does not
        assert list(blob.bitfield.present()) == [0, 1, 3]
        await blob.write_chunk(2, chunk(data, 2))
        await blob.seal()
        assert blob.complete and await blob.read(0, 14) == data


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every chunk the store hashes from now on."""
    hashed: list[int] = []
    real = base._sha256

    def counting(data: bytes) -> bytes:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(base, "_sha256", counting)
    return hashed


async def test_chunks_written_here_are_never_hashed_again_and_loaded_ones_once(
    store_factory: StoreFactory, sink: RecordingSink, calls: list[int]
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory()
        digest, data = make_data(10)
        await store.put(digest, data)
        blob = store.lookup(digest)
        assert blob is not None
        for _ in range(2):
            await blob.send(sink, offset=0, length=10)
        assert len(calls) == 3  # on the way in only
        store = await store_factory.rot(store, digest, 0)  # a restart, chunk 0 rotted
        calls.clear()
        blob = store.lookup(digest)
        assert blob is not None
        for _ in range(2):
            await blob.send(sink, offset=4, length=6)  # chunks 1 and 2 are intact
        assert len(calls) == 2  # each checked once, on its first read after the restart


# -- quota, LRU and pins ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("touched", "evicted"),
    [
        pytest.param(None, 0, id="oldest-evicted"),
        pytest.param(0, 1, id="touch-saves-oldest"),
        pytest.param(1, 0, id="touch-newest-changes-nothing"),
    ],
)
async def test_quota_evicts_least_recently_used(
    store_factory: StoreFactory, touched: int | None, evicted: int
) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        blobs = [await put_data(store, 10, seed=seed) for seed in (0, 1)]
        if touched is not None:
            store.touch(blobs[touched])
        newcomer, _ = make_data(10, seed=2)
        await store.open(newcomer, size=10)
        assert store.lookup(blobs[evicted]) is None
        assert store.lookup(blobs[1 - evicted]) is not None
        assert store.used_bytes == 20


async def test_reopen_counts_as_use(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        old, new = [await put_data(store, 10, seed=seed) for seed in (0, 1)]
        await store.open(old, size=10)
        await store.open(make_data(10, seed=2)[0], size=10)
        assert store.lookup(old) is not None and store.lookup(new) is None


async def test_eviction_makes_as_much_room_as_needed(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=30)
        blobs = [await put_data(store, 10, seed=seed) for seed in (0, 1, 2)]
        await store.open(make_data(20, seed=3)[0], size=20)
        assert [store.lookup(d) is not None for d in blobs] == [False, False, True]
        assert store.used_bytes == 30


async def test_pins_stop_eviction(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        oldest, newer = [await put_data(store, 10, seed=seed) for seed in (0, 1)]
        with store.pin(oldest):
            await store.open(make_data(10, seed=2)[0], size=10)
        assert store.lookup(oldest) is not None
        assert store.lookup(newer) is None


async def test_pinned_blobs_are_not_evictable(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        first, second = [await put_data(store, 10, seed=seed) for seed in (0, 1)]
        newcomer, _ = make_data(10, seed=2)
        with store.pin(first), store.pin(second):
            with store.pin(first):  # pins nest
                pass
            with pytest.raises(StoreFull):
                await store.open(newcomer, size=10)
            assert store.lookup(newcomer) is None
            assert store.used_bytes == 20
        await store.open(newcomer, size=10)  # released: evictable again
        assert store.lookup(first) is None


async def test_partial_blobs_are_not_evictable(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        partials = [make_data(10, seed=seed)[0] for seed in (0, 1)]
        for digest in partials:
            await store.open(digest, size=10)
        with pytest.raises(StoreFull):
            await store.open(make_data(1, seed=2)[0], size=1)
        assert all(store.lookup(d) is not None for d in partials)


async def test_blob_larger_than_quota(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=20)
        kept = await put_data(store, 10, seed=0)
        huge, _ = make_data(21, seed=1)
        with pytest.raises(StoreFull):
            await store.open(huge, size=21)
        assert store.lookup(huge) is None
        assert store.lookup(kept) is not None  # nothing evicted in vain


async def test_no_quota_means_unbounded(store_factory: StoreFactory) -> None:
    with trio.fail_after(DEADLINE):
        store = await store_factory(quota_bytes=0)
        blobs = [await put_data(store, 10, seed=seed) for seed in range(5)]
        assert sorted(store.digests()) == sorted(blobs)
        assert store.used_bytes == 50


# -- DiskStore: what survives a restart ---------------------------------------------------------


async def load(path: Path, *, chunk_size: int = CHUNK, quota_bytes: int = 0) -> DiskStore:
    return await DiskStore.load(path, chunk_size=chunk_size, quota_bytes=quota_bytes)


def disk_blob(store: DiskStore, digest: Digest) -> DiskBlob:
    blob = store.lookup(digest)
    assert isinstance(blob, DiskBlob)
    return blob


async def test_disk_send_is_zero_copy(tmp_path: Path, sink: RecordingSink) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        blob = await store.put(digest, data)
        await blob.send(sink, offset=3, length=6)
        assert sink.calls == [("sendfile", 3, 6)]
        assert sink.data == data[3:9]


async def test_disk_layout(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        await store.put(digest, data)
        directory = tmp_path / "blobs" / "sha256" / digest.hex
        assert (directory / "data").read_bytes() == data
        assert msgpack.unpackb((directory / "meta").read_bytes())["complete"] is True


async def test_disk_partial_survives_restart(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(14)
        blob = await store.open(digest, size=14, media_type="application/x")
        blob.persist_every = 100
        await fill(blob, data, order=[3, 1])
        await blob.checkpoint()

        restarted = await load(tmp_path)
        again = disk_blob(restarted, digest)
        assert not again.complete
        assert (again.size, again.chunk_size, again.media_type) == (14, CHUNK, "application/x")
        assert again.bitfield == blob.bitfield
        assert [again.chunk_hash(i) for i in range(4)] == [blob.chunk_hash(i) for i in range(4)]
        assert await again.read(4, 4) == chunk(data, 1)
        assert await restarted.open(digest, size=14) is again
        await fill(again, data, order=[0, 2])
        await again.seal()
        assert await again.read(0, 14) == data


async def test_disk_partial_keeps_its_chunk_size(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path, chunk_size=CHUNK)
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(0, chunk(data, 0))
        await blob.checkpoint()
        restarted = await load(tmp_path, chunk_size=8)
        again = disk_blob(restarted, digest)
        assert again.chunk_size == CHUNK and list(again.bitfield.present()) == [0]
        await fill(again, data, order=[1, 2])
        await again.seal()


async def test_disk_checkpoints_every_n_chunks(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(20)
        blob = await store.open(digest, size=20)
        blob.persist_every = 2
        await fill(blob, data, order=[4, 0, 2])  # persisted after the second write
        restarted = await load(tmp_path)
        assert list(disk_blob(restarted, digest).bitfield.present()) == [0, 4]


async def test_disk_crash_forgets_chunks_after_the_checkpoint(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(14)
        blob = await store.open(digest, size=14)
        blob.persist_every = 100
        await fill(blob, data, order=[0, 2])
        await blob.checkpoint()
        await fill(blob, data, order=[1])  # never checkpointed: lost in the "crash"

        crashed = await load(tmp_path)
        again = disk_blob(crashed, digest)
        assert list(again.bitfield.present()) == [0, 2]
        assert again.chunk_hash(1) is None
        with pytest.raises(StoreError):
            await again.read(4, 4)
        await fill(again, data, order=[3, 1])
        await again.seal()
        assert await again.read(0, 14) == data


async def test_disk_new_blob_survives_crash_before_any_checkpoint(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(0, chunk(data, 0))
        crashed = await load(tmp_path)
        again = disk_blob(crashed, digest)
        assert again.bitfield.count == 0 and again.size == 10


async def test_disk_corrupt_chunk_is_caught_at_seal(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(14)
        blob = await store.open(digest, size=14)
        await fill(blob, data, order=[0, 1, 2])
        await blob.checkpoint()
        data_path = tmp_path / "blobs" / "sha256" / digest.hex / "data"
        rotten = bytearray(data_path.read_bytes())
        rotten[5] ^= 0x01  # one bit rots in chunk 1
        data_path.write_bytes(rotten)

        restarted = await load(tmp_path)
        again = disk_blob(restarted, digest)
        await again.write_chunk(3, chunk(data, 3))
        with pytest.raises(StoreError) as info:
            await again.seal()
        assert not isinstance(info.value, DigestMismatch)  # a chunk to refetch, not a bad blob
        assert not again.complete
        assert list(again.bitfield.present()) == [0, 2, 3]
        assert again.chunk_hash(1) is None
        assert restarted.lookup(digest) is again
        await again.write_chunk(1, chunk(data, 1))
        await again.seal()
        assert again.complete and await again.read(0, 14) == data


async def test_folding_a_chunk_hashed_in_this_process_does_not_hash_it_again(
    tmp_path: Path, calls: list[int]
) -> None:
    """Chunks that land out of order are read back to fold them into the whole-blob hash. One
    this process hashed on its way in is not re-checked (one sha256 per chunk, not two); one
    found on disk after a restart is (test_disk_corrupt_chunk_is_caught_at_seal)."""
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(14)
        blob = await store.open(digest, size=14)
        await fill(blob, data, order=[3, 2, 1, 0])  # 0 lands last: 1, 2, 3 are read back
        await blob.seal()
    assert blob.complete and await blob.read(0, 14) == data
    assert len(calls) == 4


async def test_disk_a_dropped_chunk_stays_dropped_after_another_restart(
    tmp_path: Path, sink: RecordingSink
) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        await store.put(digest, data)
        path = tmp_path / "blobs" / "sha256" / digest.hex / "data"
        rotten = bytearray(path.read_bytes())
        rotten[2] ^= 0x40
        path.write_bytes(rotten)
        restarted = await load(tmp_path)
        with pytest.raises(ChunkLost):
            await disk_blob(restarted, digest).send(sink, offset=0, length=10)
        again = disk_blob(await load(tmp_path), digest)
    assert not again.complete and list(again.bitfield.present()) == [1, 2]


async def test_disk_complete_blobs_survive_restart(tmp_path: Path, sink: RecordingSink) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
        await store.put(digest, data, media_type=media_type)
        empty, _ = make_data(0)
        await store.put(empty, b"")

        restarted = await load(tmp_path)
        assert sorted(restarted.digests()) == sorted([digest, empty])
        blob = disk_blob(restarted, digest)
        assert blob.complete and blob.media_type == media_type
        assert blob.chunk_hash(2) == sha256(chunk(data, 2))
        assert await blob.read(0, 10) == data
        await blob.send(sink, offset=0, length=10)
        assert sink.data == data
        assert disk_blob(restarted, empty).complete
        assert restarted.used_bytes == 10


async def test_disk_lru_order_survives_restart(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path, quota_bytes=20)
        older, newer = [await put_data(store, 10, seed=seed) for seed in (0, 1)]
        an_hour_ago = time.time() - 3600
        for offset, digest in enumerate((older, newer)):  # file times are coarse: spread them
            meta = tmp_path / "blobs" / "sha256" / digest.hex / "meta"
            os.utime(meta, (an_hour_ago + offset, an_hour_ago + offset))
        store.touch(older)
        restarted = await load(tmp_path, quota_bytes=20)
        await restarted.open(make_data(10, seed=2)[0], size=10)
        assert restarted.lookup(older) is not None
        assert restarted.lookup(newer) is None


async def test_disk_removed_and_mismatching_blobs_leave_nothing(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        removed = await put_data(store, 10, seed=0)
        await store.remove(removed)
        digest, _ = make_data(10, seed=1)
        blob = await store.open(digest, size=10)
        await fill(blob, make_data(10, seed=2)[1])
        with pytest.raises(DigestMismatch):
            await blob.seal()
        assert list((tmp_path / "blobs" / "sha256").iterdir()) == []
        assert (await load(tmp_path)).digests() == []


async def test_disk_discarded_blob_leaves_the_index_before_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a mismatching blob's files are deleted, nobody may look it up or reopen it."""
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, _ = make_data(10)
        blob = await store.open(digest, size=10)
        await fill(blob, make_data(10, seed=1)[1])
        seen_during_delete: list[object] = []
        real_rmtree = shutil.rmtree

        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            seen_during_delete.append(trio.from_thread.run_sync(store.lookup, digest))
            real_rmtree(path, *args, **kwargs)

        monkeypatch.setattr(shutil, "rmtree", rmtree)
        with pytest.raises(DigestMismatch):
            await blob.seal()
        assert seen_during_delete == [None]


def _garble(meta: dict[str, Any], **changes: Any) -> bytes:
    packed: bytes = msgpack.packb({**meta, **changes})
    return packed


GARBAGE = [
    pytest.param(lambda meta: b"", id="empty"),
    pytest.param(lambda meta: b"\xc1\xff garbage \x00", id="random-bytes"),
    pytest.param(lambda meta: msgpack.packb(meta)[:-7], id="truncated"),
    pytest.param(lambda meta: bytes(64), id="zeros"),
    pytest.param(lambda meta: msgpack.packb([1, 2, 3]), id="list"),
    pytest.param(lambda meta: msgpack.packb(7), id="int"),
    pytest.param(
        lambda meta: msgpack.packb({k: v for k, v in meta.items() if k != "hashes"}),
        id="missing-key",
    ),
    pytest.param(lambda meta: _garble(meta, v=2), id="other-version"),
    pytest.param(lambda meta: _garble(meta, digest="sha256:" + "0" * 64), id="other-digest"),
    pytest.param(lambda meta: _garble(meta, chunk_size=0), id="zero-chunk-size"),
    pytest.param(lambda meta: _garble(meta, chunk_size=-4), id="negative-chunk-size"),
    pytest.param(lambda meta: _garble(meta, size=-1), id="negative-size"),
    pytest.param(lambda meta: _garble(meta, size=float("inf")), id="infinite-size"),
    pytest.param(lambda meta: _garble(meta, size=float("nan")), id="nan-size"),
    pytest.param(lambda meta: _garble(meta, size="10"), id="size-as-text"),
    pytest.param(lambda meta: _garble(meta, hashes=meta["hashes"][:2]), id="too-few-hashes"),
    pytest.param(lambda meta: _garble(meta, have=b"\xe0"), id="bitfield-without-hashes"),
    pytest.param(lambda meta: _garble(meta, have=b"\x90"), id="bits-past-length"),
    pytest.param(lambda meta: _garble(meta, have=b"\x80\x00"), id="bitfield-too-long"),
    pytest.param(lambda meta: _garble(meta, complete=True), id="complete-with-missing-chunks"),
]


@pytest.mark.parametrize("garble", GARBAGE)
async def test_disk_garbage_meta_is_discarded(tmp_path: Path, garble: Any) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        good, good_data = make_data(10, seed=1)
        await store.put(good, good_data)
        digest, data = make_data(10)
        blob = await store.open(digest, size=10)
        await blob.write_chunk(0, chunk(data, 0))
        await blob.checkpoint()
        meta_path = tmp_path / "blobs" / "sha256" / digest.hex / "meta"
        meta_path.write_bytes(garble(msgpack.unpackb(meta_path.read_bytes())))

        restarted = await load(tmp_path)
        assert restarted.digests() == [good]
        assert not meta_path.parent.exists()
        assert await disk_blob(restarted, good).read(0, 10) == good_data
        fresh = await restarted.open(digest, size=10)
        await fill(fresh, data)
        await fresh.seal()


@pytest.mark.parametrize(
    "damage", ["data-truncated", "data-missing", "meta-missing", "meta-is-a-directory"]
)
async def test_disk_damaged_blob_directory_is_discarded(tmp_path: Path, damage: str) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        await store.put(digest, data)
        directory = tmp_path / "blobs" / "sha256" / digest.hex
        if damage == "data-truncated":
            (directory / "data").write_bytes(data[:9])
        elif damage == "data-missing":
            (directory / "data").unlink()
        else:
            (directory / "meta").unlink()
            if damage == "meta-is-a-directory":
                (directory / "meta").mkdir()
        restarted = await load(tmp_path)
        assert restarted.digests() == []
        assert not directory.exists()


async def test_disk_stray_entries_are_ignored(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        store = await load(tmp_path)
        digest, data = make_data(10)
        await store.put(digest, data)
        root = tmp_path / "blobs" / "sha256"
        strays = [
            root / "tmp",
            root / digest.hex.upper(),
            root / digest.hex[:63],
            root / (digest.hex + "0"),
            root / (digest.hex + ".old"),
        ]
        for stray in strays:
            stray.mkdir()
            (stray / "meta").write_bytes(b"junk")
        hex_file = make_data(3, seed=5)[0].hex
        (root / hex_file).write_bytes(b"a file, not a blob directory")
        (root / digest.hex / "meta.tmp").write_bytes(b"half-written")

        restarted = await load(tmp_path)
        assert restarted.digests() == [digest]
        assert await disk_blob(restarted, digest).read(0, 10) == data
        assert all(stray.is_dir() for stray in strays)  # not ours to delete


async def test_disk_unusable_data_dir(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        not_a_dir = tmp_path / "file"
        not_a_dir.write_bytes(b"")
        with pytest.raises(StoreError):
            await load(not_a_dir)


async def test_concurrent_puts_of_one_small_blob(store_factory: StoreFactory) -> None:
    """Two clients fetching the same manifest by tag both store it: both puts succeed."""
    store = await store_factory(chunk_size=64)
    data = b'{"schemaVersion": 2}' * 5
    digest = Digest.of(data)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(
                    functools.partial(store.put, digest, data, media_type="application/json")
                )
    blob = store.lookup(digest)
    assert blob is not None and blob.complete
    assert await blob.read(0, len(data)) == data
