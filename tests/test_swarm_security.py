"""Fake peers: one serving corrupted chunks, one without the cluster secret, one that claims
the whole blob (and must get no Haves)."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from p2pull.membership import Member, rank
from p2pull.peer.messages import Interested, encode
from p2pull.peer.wire import (
    NEED_DATA,
    AuthenticationFailed,
    Closed,
    PeerConnection,
    RemoteProtocolError,
)
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.fake_peer import CorruptPeer
from tests.swarm_harness import SECRET, Node, free_port, get_blob, swarm

NAME = "team/model"
CHUNK = 1 << 20


@dataclass
class FakeInSwarm:
    origin: TestOrigin
    nodes: list[Node]
    fake: CorruptPeer
    data: bytes
    digest: Digest
    seed: Member


@asynccontextmanager
async def swarm_with_fake(
    tmp_path: Path, count: int, size: int, *, garbage: bool
) -> AsyncIterator[FakeInSwarm]:
    """``count`` real nodes and a fake peer claiming the whole blob (not its seed), which every
    node has been told about; then every node pulls the blob."""
    fake_member = Member.of("127.0.0.1", free_port())
    origin = TestOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        async with swarm(tmp_path, origin, count, extra_peers=[fake_member]) as nodes:
            members = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
            rng = random.Random(11)
            while True:  # the fake must be an ordinary peer, not the seed
                data = rng.randbytes(size)
                digest = Digest.of(data)
                if rank([*members, fake_member], str(digest))[0] != fake_member:
                    break
            origin.add_blob(NAME, data)
            fake = CorruptPeer(
                fake_member, SECRET, str(digest), len(data), CHUNK, NAME, origin.netloc,
                garbage=garbage,
            )  # fmt: skip
            await nursery.start(fake.run)
            await fake.join(members)  # every node now downloads it and knows the fake
            async with httpx.AsyncClient(timeout=60) as http, trio.open_nursery() as pulls:
                for node in nodes:
                    pulls.start_soon(get_blob, http, node, origin.netloc, NAME, digest)
            yield FakeInSwarm(origin, nodes, fake, data, digest, rank(members, str(digest))[0])
        nursery.cancel_scope.cancel()


async def test_a_peer_sending_corrupt_chunks_is_dropped_and_nothing_bad_is_stored(
    tmp_path: Path,
) -> None:
    with trio.fail_after(90):
        async with swarm_with_fake(tmp_path, 4, 24 * CHUNK + 123, garbage=True) as run:
            nodes, fake, data = run.nodes, run.fake, run.data
            rejected = sum(n.metric("p2pull_chunks_rejected_total") for n in nodes)
            assert fake.requests, "nobody asked the fake: the test proves nothing"
            assert rejected >= 1
            per_node: dict[str, int] = {}
            for peer_id, _ in fake.requests:
                per_node[peer_id] = per_node.get(peer_id, 0) + 1
            # once a bad chunk arrives the fake is dropped: only requests already in
            # flight (a few per node) ever reach it
            assert max(per_node.values()) <= 8, per_node
            for node in nodes:
                assert node.agent.store is not None
                blob = node.agent.store.lookup(run.digest)
                assert blob is not None and blob.complete
                for index in range(blob.bitfield.length):
                    offset, length = blob.chunk_span(index)
                    chunk = data[offset : offset + length]
                    assert blob.chunk_hash(index) == hashlib.sha256(chunk).digest()
            assert run.origin.bytes_sent <= 1.05 * len(data)


async def test_nodes_do_not_announce_chunks_to_a_peer_that_holds_them(tmp_path: Path) -> None:
    """A peer whose bitfield says it holds everything gets no Haves from the leeches (it needs
    nothing from them); only the seed, which never asked it what it holds, announces. The fake
    answers every request with Reject, so nobody drops it and it stays a member throughout."""
    with trio.fail_after(90):
        async with swarm_with_fake(tmp_path, 3, 12 * CHUNK, garbage=False) as run:
            fake, seed, count = run.fake, run.seed, len(run.nodes)
    assert fake.requests, "nobody took the fake for a holder: the test proves nothing"
    # a leech learns the fake's bitfield right after it learns the blob's size; a first chunk
    # racing that answer may still be announced, every later one must not be (12 chunks each)
    from_leeches = [(peer, index) for peer, index in fake.haves if peer != seed.node_id]
    assert len(from_leeches) <= 2 * (count - 1), from_leeches


async def test_a_peer_without_the_cluster_secret_is_refused(tmp_path: Path) -> None:
    origin = TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, b"secret model weights" * 1000)
            async with swarm(tmp_path, origin, 2) as nodes:
                target = nodes[0].agent.config.peer_addr
                stream = await trio.open_tcp_stream(target.host, target.port)
                conn = PeerConnection(
                    node_id="127.0.0.1:1",
                    listen_port=1,
                    secret=b"not-the-cluster-secret-at-all!!!",
                    nonce=secrets.token_bytes(16),
                )
                outcome: object = None
                async with stream:
                    await stream.send_all(conn.start())
                    # push a request for the blob right behind the handshake, raw
                    body = encode(Interested(str(digest), NAME, origin.netloc))
                    try:
                        while outcome is None:
                            event = conn.next_event()
                            if out := conn.data_to_send():
                                await stream.send_all(out)
                                await stream.send_all(len(body).to_bytes(4, "big") + body)
                            if isinstance(event, Closed):
                                outcome = "closed"
                            elif event is NEED_DATA:
                                data = await stream.receive_some(65536)
                                conn.receive_data(data)
                            else:
                                outcome = event
                    except AuthenticationFailed as exc:
                        outcome = exc
                    except (RemoteProtocolError, trio.BrokenResourceError) as exc:
                        outcome = exc
                assert isinstance(outcome, AuthenticationFailed | RemoteProtocolError) or (
                    outcome == "closed"
                ), outcome
                # give the node time to act on the Interested if it (wrongly) accepted it
                await trio.sleep(0.3)
                blobs_started = [n.metric("p2pull_swarms") for n in nodes]
                assert blobs_started == [0.0, 0.0]
                assert origin.bytes_sent == 0 and not origin.requests
            nursery.cancel_scope.cancel()
