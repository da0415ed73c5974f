"""ChunkAssembler: any split of a stream gives back exactly the chunks of the blob."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pull.chunking import ChunkAssembler


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
