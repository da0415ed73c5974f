"""A reader following a transfer: chunks that land out of order go out in as few sends as the
order allows, each accounted to its source, and the last chunk waits for the whole digest."""

from __future__ import annotations

import trio

from p2pull.reference import Digest
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.transfer import BlobReader, Transfer
from tests.conftest import RecordingSink, StoreFactory

CHUNK = 4


async def _transfer(
    store_factory: StoreFactory, *, chunks: int
) -> tuple[BlobStore, StoredBlob, Transfer, bytes]:
    """An empty blob of ``chunks`` 4-byte chunks in a fresh store, and its transfer."""
    store = await store_factory(chunk_size=CHUNK)
    data = bytes(range(chunks * CHUNK))
    digest = Digest.of(data)
    blob = await store.open(digest, size=len(data))
    return store, blob, Transfer(digest, blob, ns=None, name="team/app"), data


async def test_a_run_of_landed_chunks_after_the_awaited_one_goes_out_in_one_send(
    store_factory: StoreFactory,
) -> None:
    store, blob, transfer, data = await _transfer(store_factory, chunks=10)
    reader = BlobReader(blob=blob, transfer=transfer, store=store)
    sink = RecordingSink()
    sent: list[tuple[str, int]] = []

    async def land(*indices: int, source: str = "peer") -> None:
        for index in indices:
            transfer.sources[index] = source
            await blob.write_chunk(index, data[index * CHUNK : (index + 1) * CHUNK])
            transfer.chunk_landed(index)
        await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: reader.send(
                    sink, offset=2, length=37, on_sent=lambda s, n: sent.append((s, n))
                )
            )
            await trio.testing.wait_all_tasks_blocked()
            await land(1, 2, 3, 5)  # the reader waits for chunk 0: nothing goes out
            assert sink.calls == []
            await land(0, source="origin")  # 0-3 are there: one send from byte 2 to 16
            await land(6, 7, 8, 9)  # still waiting for 4
            assert [call[2] for call in sink.calls] == [14]
            await land(4)  # 4-8 in one send; 9 (the last) only once the blob is sealed
            assert [call[2] for call in sink.calls] == [14, 20]
            await blob.seal()
            transfer.notify()
    assert [call[2] for call in sink.calls] == [14, 20, 3]  # sends of bytes 2-16, 16-36, 36-39
    assert sink.data == data[2:39]
    assert sent == [
        ("origin", 2), ("peer", 4), ("peer", 4), ("peer", 4), ("peer", 4),
        ("peer", 4), ("peer", 4), ("peer", 4), ("peer", 4), ("peer", 3),
    ]  # fmt: skip


async def test_a_reader_waiting_for_a_chunk_sleeps_while_other_chunks_land(
    store_factory: StoreFactory,
) -> None:
    _, blob, transfer, data = await _transfer(store_factory, chunks=25)
    steps: list[str] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("wait_for_chunk_20"):
                steps.append(task.name)

    async def wait_for_chunk_20() -> None:
        await transfer.wait_chunk(20)

    async def land(index: int) -> None:
        await blob.write_chunk(index, data[index * CHUNK : (index + 1) * CHUNK])
        transfer.chunk_landed(index)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_chunk_20)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(Steps())
            for index in range(20):
                await land(index)
            await trio.testing.wait_all_tasks_blocked()
            assert steps == []  # 20 chunks landed, none of them the one it waits for
            await land(20)
    assert len(steps) == 1  # woken once, by its chunk
