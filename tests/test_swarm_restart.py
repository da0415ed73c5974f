"""A node restarted with a partial blob, one of whose stored chunks rotted while it was down:
its next pull (through the swarm) detects the chunk, fetches it again and completes, whichever
node seeds the blob (found by ``bench/faults.py``'s agent_restart scenario: the swarm session
still counted the dropped chunk as held, finished without it, and the seal failed)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from p2pull.membership import Member, rank
from p2pull.reference import Digest
from p2pull.store.disk import DiskStore
from p2pull.testing.origin import TestOrigin
from tests.swarm_harness import get_blob, swarm

NAME = "team/restart"
CHUNK = 64 << 10
CHUNKS = 24
HELD = 16  # chunks the restarted node kept
ROTTED = 3  # the one that rotted
RATE = 1 << 20  # bytes/s: each node's uploads, and the origin for the second pull


def _partial_with_rot(data: bytes) -> Callable[[Path], Awaitable[None]]:
    """What an agent SIGKILLed mid-pull leaves in its store (chunks 0..HELD-1 checkpointed),
    with a byte of chunk ROTTED flipped on disk afterwards."""

    async def damage(data_dir: Path) -> None:
        digest = Digest.of(data)
        shutil.rmtree(data_dir / "blobs" / "sha256" / digest.hex, ignore_errors=True)
        store = await DiskStore.load(data_dir, chunk_size=CHUNK)
        blob = await store.open(digest, size=len(data))
        for index in range(HELD):
            await blob.write_chunk(index, data[index * CHUNK : (index + 1) * CHUNK])
        await blob.checkpoint()
        path = data_dir / "blobs" / "sha256" / digest.hex / "data"
        with path.open("r+b") as handle:
            handle.seek(ROTTED * CHUNK + 100)
            byte = handle.read(1)
            handle.seek(ROTTED * CHUNK + 100)
            handle.write(bytes([byte[0] ^ 0xFF]))

    return damage


@pytest.mark.parametrize("restarted_seeds", [False, True], ids=["peer-seeds", "it-seeds"])
async def test_a_chunk_rotted_in_a_partial_blob_is_fetched_again_and_the_pull_completes(
    tmp_path: Path, restarted_seeds: bool
) -> None:
    data = random.Random(11).randbytes(CHUNKS * CHUNK)
    origin = TestOrigin()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, data)
            # Slow uploads and origin: the restarted node's session is still running when its
            # reader finds the rotted chunk (a few chunks in), as in a real pull.
            async with swarm(tmp_path, origin, 2, chunk_size=CHUNK, upload_rate=RATE) as nodes:
                members = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
                seed = members.index(rank(members, str(digest))[0])
                restarted = nodes[seed] if restarted_seeds else nodes[1 - seed]
                other = nodes[1 - seed] if restarted_seeds else nodes[seed]
                async with httpx.AsyncClient(timeout=30) as http:
                    assert await get_blob(http, other, origin.netloc, NAME, digest) == data
                    await restarted.restart(while_down=_partial_with_rot(data))
                    origin.faults.rate = RATE
                    sent_before = origin.bytes_sent
                    # A first range read starts the transfer (its session opens with the
                    # partial blob as found), then the whole blob is read, rotted chunk and all.
                    url = f"{restarted.mirror_url}/v2/{NAME}/blobs/{digest}?ns={origin.netloc}"
                    first = await http.get(url, headers={"range": "bytes=0-99"})
                    assert first.status_code == 206 and first.content == data[:100]
                    assert await get_blob(http, restarted, origin.netloc, NAME, digest) == data
                assert restarted.metric("p2pull_store_chunks_lost_total") == 1
                # what it lacked, not the whole blob again (a stream stops at a chunk it holds;
                # what the origin had written ahead into the socket by then counts too)
                assert origin.bytes_sent - sent_before <= len(data) * 3 // 4
            nursery.cancel_scope.cancel()
