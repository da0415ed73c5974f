"""OriginFetcher: only the wanted gaps are asked of the origin, with Range requests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from p2pull.metrics import Metrics
from p2pull.origin_fetch import OriginFetcher
from p2pull.store.memory import MemoryStore
from p2pull.testing.fakes import FixedUpstreams, MemoryUpstream
from p2pull.transfer import Transfer

CHUNK = 64 * 1024


def drain(channel: trio.MemoryReceiveChannel[int]) -> set[int]:
    """The chunk indices a transfer's subscription has received so far."""
    got = set()
    while True:
        try:
            got.add(channel.receive_nowait())
        except trio.WouldBlock:
            return got


@pytest.mark.parametrize(
    ("wanted_chunks", "expected_opens"),
    [
        pytest.param(set(range(10)), [0], id="everything"),
        pytest.param({0, 1, 2, 6, 7}, [0, 6 * CHUNK], id="two-runs"),
        pytest.param({3}, [3 * CHUNK], id="single-chunk"),
        pytest.param({9}, [9 * CHUNK], id="last-chunk"),
        pytest.param(set(), [], id="nothing"),
    ],
)
async def test_fetches_only_wanted_runs(
    tmp_path: Path, wanted_chunks: set[int], expected_opens: list[int]
) -> None:
    data = random.Random(3).randbytes(10 * CHUNK - 100)
    upstream = MemoryUpstream(piece=16 * 1024)
    digest = upstream.add_blob(data)
    store = MemoryStore(chunk_size=CHUNK)
    blob = await store.open(digest, size=len(data))
    transfer = Transfer(digest, blob, ns=None, name="a/b")
    landed = transfer.subscribe()
    fetcher = OriginFetcher(
        store=store, upstreams=FixedUpstreams(upstream), metrics=Metrics(), read_through=0
    )
    with trio.fail_after(10):
        await fetcher.fetch(transfer, wanted=lambda index: index in wanted_chunks)
    assert set(blob.bitfield.present()) == wanted_chunks
    assert [start for _, start in upstream.opens] == expected_opens
    wanted_bytes = sum(blob.chunk_span(i)[1] for i in wanted_chunks)
    assert upstream.bytes_sent == wanted_bytes
    assert drain(landed) == wanted_chunks
    for index in wanted_chunks:
        offset, length = blob.chunk_span(index)
        assert await blob.read(offset, length) == data[offset : offset + length]


async def test_chunks_arriving_from_elsewhere_end_the_stream(tmp_path: Path) -> None:
    data = random.Random(4).randbytes(8 * CHUNK)
    upstream = MemoryUpstream(piece=16 * 1024)
    digest = upstream.add_blob(data)
    store = MemoryStore(chunk_size=CHUNK)
    blob = await store.open(digest, size=len(data))
    # chunks 4 and 5 "came from a peer" before the origin stream reached them
    for index in (4, 5):
        offset, length = blob.chunk_span(index)
        await blob.write_chunk(index, data[offset : offset + length])
    transfer = Transfer(digest, blob, ns=None, name="a/b")
    fetcher = OriginFetcher(
        store=store, upstreams=FixedUpstreams(upstream), metrics=Metrics(), read_through=0
    )
    with trio.fail_after(10):
        await fetcher.fetch(transfer)
    await blob.seal()
    assert [start for _, start in upstream.opens] == [0, 6 * CHUNK]
    assert upstream.bytes_sent == 6 * CHUNK


@pytest.mark.parametrize(
    ("read_through", "expected_opens", "sent_chunks"),
    [
        pytest.param(2 * CHUNK, [0], 10, id="gap-read-through"),
        pytest.param(2 * CHUNK - 1, [0, 6 * CHUNK], 8, id="gap-too-long"),
    ],
)
async def test_a_short_run_of_unneeded_chunks_is_read_through(
    read_through: int, expected_opens: list[int], sent_chunks: int
) -> None:
    # Giving a stream up loses what is on its way; a run of up to read_through bytes that
    # peers have is cheaper to read on through (what is held already is not written again).
    data = random.Random(5).randbytes(10 * CHUNK)
    upstream = MemoryUpstream(piece=16 * 1024)
    digest = upstream.add_blob(data)
    store = MemoryStore(chunk_size=CHUNK)
    blob = await store.open(digest, size=len(data))
    held = {4, 5}
    for index in held:
        offset, length = blob.chunk_span(index)
        await blob.write_chunk(index, data[offset : offset + length])
    transfer = Transfer(digest, blob, ns=None, name="a/b")
    landed = transfer.subscribe()
    fetcher = OriginFetcher(
        store=store,
        upstreams=FixedUpstreams(upstream),
        metrics=Metrics(),
        read_through=read_through,
    )
    with trio.fail_after(10):
        await fetcher.fetch(transfer, wanted=lambda index: index not in held)
    assert [start for _, start in upstream.opens] == expected_opens
    assert upstream.bytes_sent == sent_chunks * CHUNK
    assert drain(landed) == set(range(10)) - held  # the held chunks were not stored again
    await blob.seal()
