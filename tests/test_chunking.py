"""ChunkAssembler: any split of a stream gives back exactly the chunks of the blob; and the
chunk size a new blob gets (chunk_size_for)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pull.chunking import ChunkAssembler
from p2pull.store.types import FINEST_CHUNK, chunk_count, chunk_size_for

KiB, MiB = 1 << 10, 1 << 20


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int, int, list[int]]:
    chunk_size = draw(st.integers(1, 64))
    size = draw(st.integers(0, 400))
    start_chunk = draw(st.integers(0, max(0, (size - 1) // chunk_size)))
    data = bytes(i % 251 for i in range(size))
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=30)))
    return data, chunk_size, start_chunk, cuts


@settings(max_examples=300, deadline=None)
@given(streams())
def test_any_split_of_the_stream_yields_the_blob_chunks(
    case: tuple[bytes, int, int, list[int]],
) -> None:
    data, chunk_size, start_chunk, cuts = case
    start = min(start_chunk * chunk_size, len(data))
    assembler = ChunkAssembler(size=len(data), chunk_size=chunk_size, start=start)
    bounds = [start, *[c for c in cuts if c > start], len(data)]
    got: list[tuple[int, bytes]] = []
    for low, high in itertools.pairwise(bounds):
        if high > low:
            got.extend(assembler.feed(data[low:high]))
        assert assembler.position == high
    expected = [
        (i, data[i * chunk_size : (i + 1) * chunk_size])
        for i in range(start // chunk_size, -(-len(data) // chunk_size))
    ]
    assert got == expected


def test_bytes_past_the_size_are_refused() -> None:
    assembler = ChunkAssembler(size=10, chunk_size=4, start=0)
    assembler.feed(b"12345678")
    with pytest.raises(ValueError, match="past the blob size"):
        assembler.feed(b"abc")


def test_a_new_assembler_starts_on_a_chunk_boundary() -> None:
    with pytest.raises(ValueError):
        ChunkAssembler(size=10, chunk_size=4, start=3)


@pytest.mark.parametrize(
    ("size", "chunk_size", "min_chunks", "expected"),
    [
        (128 * MiB, MiB, 128, MiB),  # enough chunks already
        (64 * MiB, MiB, 128, 512 * KiB),
        (32 * MiB, MiB, 128, 256 * KiB),
        (16 * MiB, MiB, 128, 256 * KiB),  # 64 chunks: not finer than FINEST_CHUNK
        (5 * MiB, 4 * MiB, 8, 512 * KiB),
        (10 * MiB, MiB, 1, MiB),  # min_chunks 1: the configured size
        (MiB, 128 * KiB, 128, 128 * KiB),  # a configured size finer than FINEST_CHUNK stays
        (0, MiB, 128, MiB),  # an empty blob has no chunks to split
    ],
)
def test_chunk_size_for(size: int, chunk_size: int, min_chunks: int, expected: int) -> None:
    assert chunk_size_for(size, chunk_size, min_chunks) == expected


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 1 << 36),
    chunk_size=st.sampled_from([64 * KiB, 256 * KiB, MiB, 4 * MiB, 64 * MiB]),
    min_chunks=st.integers(1, 4096),
)
def test_chunk_size_for_halves_only_while_too_few_chunks(
    size: int, chunk_size: int, min_chunks: int
) -> None:
    got = chunk_size_for(size, chunk_size, min_chunks)
    assert got <= chunk_size and chunk_size % got == 0
    assert got >= min(chunk_size, FINEST_CHUNK)
    if got < chunk_size:  # halved: the coarser size before it had too few chunks
        assert chunk_count(size, got * 2) < min_chunks
    if size and got // 2 >= FINEST_CHUNK:  # could have halved again: it did not need to
        assert chunk_count(size, got) >= min_chunks
