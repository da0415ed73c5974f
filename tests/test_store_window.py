"""WindowBlob: a blob passed through to one reader in a bounded window of memory."""

from __future__ import annotations

import hashlib

import pytest

from p2pull.errors import ChunkMismatch, DigestMismatch, StoreError, StoreFull
from p2pull.reference import Digest
from p2pull.store.window import WindowBlob
from tests.conftest import RecordingSink

CHUNK = 4
DATA = bytes(range(37))  # ten chunks, the last of one byte
COUNT = 10


def chunk(index: int, data: bytes = DATA) -> bytes:
    return data[index * CHUNK : (index + 1) * CHUNK]


def blob(window: int = 3, data: bytes = DATA, moved: list[int] | None = None) -> WindowBlob:
    return WindowBlob(
        Digest.of(data),
        size=len(data),
        chunk_size=CHUNK,
        window=window,
        on_read=(moved if moved is not None else []).append,
    )


async def send_chunk(b: WindowBlob, sink: RecordingSink, index: int) -> None:
    start = index * CHUNK
    await b.send(sink, offset=start, length=min(CHUNK, len(DATA) - start))


async def test_it_passes_the_blob_through_holding_at_most_the_window() -> None:
    moved: list[int] = []
    b, sink = blob(window=3, moved=moved), RecordingSink()
    assert b.claim(0, len(DATA))
    peak = 0
    for index in range(COUNT):
        for ahead in range(index, min(index + 3, COUNT)):
            if not b.bitfield.has(ahead):
                sha256 = hashlib.sha256(chunk(ahead)).digest()
                await b.write_chunk(ahead, chunk(ahead), expected=sha256)
        peak = max(peak, b.held_bytes)
        if index == COUNT - 1:
            await b.seal()
        await send_chunk(b, sink, index)
    assert sink.data == DATA
    assert peak <= 3 * CHUNK
    assert b.complete and b.held_bytes == 0
    assert moved == list(range(1, COUNT + 1))  # the window moved on with each chunk sent
    b.release()
    assert b.released.is_set()


async def test_a_chunk_outside_the_window_is_refused_not_held() -> None:
    b = blob(window=2)
    await b.write_chunk(1, chunk(1))
    with pytest.raises(StoreFull, match=r"outside the pass-through window 0\.\.1"):
        await b.write_chunk(2, chunk(2))
    assert not b.bitfield.has(2) and b.held_bytes == CHUNK
    await b.write_chunk(0, chunk(0))
    await send_chunk(b, RecordingSink(), 0)
    await b.write_chunk(2, chunk(2))  # the window moved on: 1..2
    assert b.reading == 1


async def test_a_chunk_that_does_not_match_the_seeds_hash_is_refused() -> None:
    b = blob()
    with pytest.raises(ChunkMismatch):
        await b.write_chunk(0, b"\0" * CHUNK, expected=hashlib.sha256(chunk(0)).digest())
    assert not b.bitfield.has(0) and b.held_bytes == 0


async def test_it_is_read_once_in_order() -> None:
    b, sink = blob(), RecordingSink()
    await b.write_chunk(0, chunk(0))
    await b.write_chunk(1, chunk(1))
    with pytest.raises(StoreError, match="read once, in order"):
        await send_chunk(b, sink, 1)
    await send_chunk(b, sink, 0)
    with pytest.raises(StoreError):  # sent, hashed and dropped: not there a second time
        await send_chunk(b, sink, 0)
    assert sink.data == chunk(0)


async def test_bytes_that_do_not_hash_to_the_digest_never_seal() -> None:
    wrong = bytes(reversed(DATA))
    b = blob(window=COUNT, data=DATA)
    for index in range(COUNT):
        await b.write_chunk(index, chunk(index, wrong))  # no chunk hashes: a lying seed
    with pytest.raises(DigestMismatch):
        await b.seal()
    assert not b.complete and b.held_bytes == 0


def test_one_reader_of_the_whole_blob() -> None:
    b = blob()
    assert not b.claim(0, CHUNK)  # a range: the origin's, not the window's
    assert not b.claim(CHUNK, len(DATA) - CHUNK)
    assert b.claim(0, len(DATA))
    assert not b.claim(0, len(DATA))  # a second reader
    assert b.claimed.is_set() and not b.released.is_set()


def test_a_window_holds_a_chunk_at_least() -> None:
    with pytest.raises(ValueError, match="at least one chunk"):
        blob(window=0)
