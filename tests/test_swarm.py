"""Agents exchanging chunks on 127.0.0.1: one origin download per blob for the whole swarm."""

from __future__ import annotations

import contextlib
import hashlib
import random
from pathlib import Path

import httpx
import pytest
import trio

from agent.config import DEFAULT_MIN_CHUNKS
from p2pull.membership import Member, rank
from p2pull.peer.messages import BlobInfo, Interested, Peers
from p2pull.peer.wire import Authenticated
from p2pull.reference import Digest
from p2pull.swarm.driver import SessionDriver
from p2pull.testing.origin import TestOrigin
from tests.fake_peer import RawSession
from tests.swarm_harness import SECRET, free_port, get_blob, swarm

NAME = "team/model"


async def test_five_agents_pull_one_blob_at_once_origin_sends_it_once(tmp_path: Path) -> None:
    """With the agent's default chunking: the 64 MiB blob is split finer than the 1 MiB
    --chunk-size (chunk_size_for), by the seed, and every node stores it in the seed's chunks."""
    data = random.Random(5).randbytes(64 << 20)
    origin = TestOrigin()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, data)
            async with (
                swarm(tmp_path, origin, 5, min_chunks=DEFAULT_MIN_CHUNKS) as nodes,
                httpx.AsyncClient(timeout=60) as http,
            ):
                results: list[bytes] = []

                async def pull(node_index: int) -> None:
                    results.append(
                        await get_blob(http, nodes[node_index], origin.netloc, NAME, digest)
                    )

                async with trio.open_nursery() as pulls:
                    for index in range(5):
                        pulls.start_soon(pull, index)
                assert results == [data] * 5
                assert origin.bytes_sent <= 1.05 * len(data), origin.bytes_sent / len(data)
                from_peers = sum(
                    n.metric("p2pull_fetched_bytes_total", source="peer") for n in nodes
                )
                assert from_peers >= 3.9 * len(data)
                served = {
                    source: sum(n.metric("p2pull_served_bytes_total", source=source) for n in nodes)
                    for source in ("local", "peer", "origin")
                }
                assert sum(served.values()) == 5 * len(data)
                assert served["peer"] >= 3.9 * len(data) and served["origin"] <= 1.05 * len(data)
                for node in nodes:
                    assert node.agent.store is not None
                    blob = node.agent.store.lookup(digest)
                    assert blob is not None and blob.complete
                    assert blob.chunk_size == 512 << 10
            nursery.cancel_scope.cancel()


async def ask_as(fake: Member, stream: trio.SocketStream, digest: Digest, ns: str) -> RawSession:
    """Authenticate on ``stream`` as peer ``fake`` and send an Interested for ``digest``."""
    session = RawSession(stream, node_id=fake.node_id, port=fake.port, secret=SECRET)
    await session.start()
    while not isinstance(await session.next_event(), Authenticated):
        pass
    await session.send(Interested(str(digest), NAME, ns))
    return session


async def test_an_interested_that_reaches_a_finishing_swarm_is_still_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-chunk blob (an image config) completes at its seed in milliseconds. A peer's
    Interested that reached the swarm task's inbox after its last look was never answered: the
    peer waited 15 s for a BlobInfo, then went to the origin itself (half the demo runs). The
    task's exit is widened here (it sleeps after its loop) so the Interested lands in it."""
    real_run = SessionDriver.run

    async def slow_exit(self: SessionDriver) -> None:
        await real_run(self)
        await trio.sleep(0.5)

    monkeypatch.setattr(SessionDriver, "run", slow_exit)
    fake = Member.of("127.0.0.1", free_port())
    origin = TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            async with swarm(tmp_path, origin, 1, extra_peers=[fake]) as nodes:
                node = nodes[0]
                real = Member.of("127.0.0.1", node.agent.config.peer_addr.port)
                rng = random.Random(9)
                while True:  # the real agent must be the seed
                    data = rng.randbytes(402)
                    if rank([real, fake], str(Digest.of(data)))[0] == real:
                        break
                digest = origin.add_blob(NAME, data)
                async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as pulls:
                    pulls.start_soon(get_blob, http, node, origin.netloc, NAME, digest)
                    await trio.sleep(0.25)  # the blob is complete, the task not yet gone
                    assert node.agent.node is not None and digest in node.agent.node.drivers
                    stream = await trio.open_tcp_stream("127.0.0.1", real.port)
                    async with stream:
                        session = await ask_as(fake, stream, digest, origin.netloc)
                        answer: object = None
                        with trio.move_on_after(5):
                            while not isinstance(answer := await session.next_event(), BlobInfo):
                                pass
            nursery.cancel_scope.cancel()
    assert isinstance(answer, BlobInfo), "no BlobInfo within 5 s"
    assert answer.size == len(data) and answer.hashes == (hashlib.sha256(data).digest(),)


async def test_a_node_that_asks_after_the_swarm_ended_learns_who_holds_the_chunks(
    tmp_path: Path,
) -> None:
    """A small blob's swarm is over in milliseconds. A node that asks for it a moment later
    knows only the seed, and the seed, still handing each chunk out once (super-seeding, a
    15 s window), refuses it the chunks it gave the other node. The seed's BlobInfo comes with
    the names of those who got the chunks, so the node asks them instead of waiting out the
    window."""
    origin = TestOrigin()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            async with (
                swarm(tmp_path, origin, 3, chunk_size=64 * 1024) as nodes,
                httpx.AsyncClient(timeout=30) as http,
            ):
                members = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
                rng = random.Random(11)
                while True:  # nodes[0] must be the seed
                    data = rng.randbytes(3 * 64 * 1024 + 7)
                    if rank(members, str(Digest.of(data)))[0] == members[0]:
                        break
                digest = origin.add_blob(NAME, data)
                await get_blob(http, nodes[0], origin.netloc, NAME, digest)  # fetches, seeds
                await get_blob(http, nodes[1], origin.netloc, NAME, digest)  # granted each chunk
                with trio.fail_after(10):  # the super-seeding window is 15 s
                    assert await get_blob(http, nodes[2], origin.netloc, NAME, digest) == data
                late_from_peers = nodes[2].metric("p2pull_fetched_bytes_total", source="peer")
            nursery.cancel_scope.cancel()
    assert late_from_peers == len(data)
    assert origin.bytes_sent == len(data)


async def test_late_askers_of_a_finished_seed_are_told_of_the_holders_and_of_each_other(
    tmp_path: Path,
) -> None:
    """Two peers ask the seed for a blob after its swarm ended: each gets the BlobInfo and a
    Peers message naming the node it gave the chunks to, and the second also the first (so
    that latecomers pull from each other, not all from the seed)."""
    fakes = [Member.of("127.0.0.1", free_port()) for _ in range(2)]
    origin = TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            async with (
                swarm(tmp_path, origin, 2, chunk_size=64 * 1024, extra_peers=fakes) as nodes,
                httpx.AsyncClient(timeout=30) as http,
            ):
                real = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
                rng = random.Random(12)
                while True:  # nodes[0] must be the seed, for the real nodes and the fakes
                    data = rng.randbytes(2 * 64 * 1024)
                    if rank([*real, *fakes], str(Digest.of(data)))[0] == real[0]:
                        break
                digest = origin.add_blob(NAME, data)
                await get_blob(http, nodes[0], origin.netloc, NAME, digest)  # fetches, seeds
                await get_blob(http, nodes[1], origin.netloc, NAME, digest)  # granted the chunks
                told: list[tuple[str, ...]] = []
                async with contextlib.AsyncExitStack() as sessions:
                    for fake in fakes:  # each stays connected: a gone asker is not named
                        stream = await trio.open_tcp_stream("127.0.0.1", real[0].port)
                        await sessions.enter_async_context(stream)
                        session = await ask_as(fake, stream, digest, origin.netloc)
                        while not isinstance(event := await session.next_event(), BlobInfo):
                            pass
                        assert event.bitfield == b"\xc0"  # both chunks
                        peers = await session.next_event()
                        assert isinstance(peers, Peers)
                        told.append(tuple(node_id for node_id, _, _ in peers.peers))
            nursery.cancel_scope.cancel()
    assert told == [(real[1].node_id,), (real[1].node_id, fakes[0].node_id)]
