"""A node whose store cannot take a blob (quota, or a full disk) passes it through from its
peers in a bounded window of memory: the origin still sends the blob once, the full node keeps
none of it, and the other nodes of the swarm are not held up by it (neither by pushes granted to
a node that cannot take them, nor by super-seeding waiting on it). A second reader, or a full
node that would be the seed, goes to the origin instead; a range is refused."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from agent.config import AgentConfig
from p2pull.membership import Member, rank
from p2pull.peer.events import SessionConfig
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.swarm_harness import Node, get_blob, swarm

NAME = "team/full"
CHUNK = 256 << 10
SIZE = 8 << 20
NODES = 4
FULL = NODES - 1  # the node whose store no blob fits in
RATE = 8 << 20  # origin bytes/s: the storm lasts about a second, pushes spread over it
SEED_WINDOW = 15.0  # the super-seeding window a wrong grant holds others back for
INFO_TIMEOUT = SessionConfig().info_timeout  # a leech's wait for its seed's answer


@dataclass
class Storm:
    origin: TestOrigin
    nodes: list[Node]
    http: httpx.AsyncClient
    data: bytes
    digest: Digest

    async def pull(self, index: int) -> bytes:
        return await get_blob(self.http, self.nodes[index], self.origin.netloc, NAME, self.digest)

    def kept(self, tmp_path: Path) -> list[Path]:
        """What the full node's data dir holds of the blob."""
        return [p for p in (tmp_path / f"node{FULL}").rglob("*") if self.digest.hex in str(p)]


@asynccontextmanager
async def storm(tmp_path: Path, *, full_seeds: bool = False) -> AsyncIterator[Storm]:
    """NODES agents, the last with a store quota no blob fits in; a blob the full node seeds
    (``full_seeds``) or not."""
    origin = TestOrigin()
    origin.faults.rate = RATE

    def tiny_store(index: int, config: AgentConfig) -> AgentConfig:
        return dataclasses.replace(config, store_quota=1024) if index == FULL else config

    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        async with (
            swarm(tmp_path, origin, NODES, chunk_size=CHUNK, configure=tiny_store) as nodes,
            httpx.AsyncClient(timeout=60) as http,
        ):
            members = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
            full_port = nodes[FULL].agent.config.peer_addr.port
            for seed_value in range(100):
                data = random.Random(seed_value).randbytes(SIZE)
                seeded_by_full = rank(members, str(Digest.of(data)))[0].port == full_port
                if seeded_by_full == full_seeds:
                    break
            yield Storm(origin, nodes, http, data, origin.add_blob(NAME, data))
        nursery.cancel_scope.cancel()


async def test_a_full_node_passes_the_blob_through_from_peers(tmp_path: Path) -> None:
    took: dict[int, float] = {}
    with trio.fail_after(60):
        async with storm(tmp_path) as s:

            async def pull(index: int) -> None:
                began = trio.current_time()
                assert await s.pull(index) == s.data
                took[index] = trio.current_time() - began

            async with trio.open_nursery() as pulls:
                for index in range(NODES):
                    pulls.start_soon(pull, index)
            full = s.nodes[FULL]
            assert full.metric("p2pull_passthrough_blobs_total") == 1
            assert full.metric("p2pull_served_bytes_total", source="peer") == SIZE
            assert s.origin.bytes_sent_by_digest[s.digest] == SIZE  # once, by the seed
            assert s.kept(tmp_path) == []
            # Nobody waits out a super-seeding window for chunks granted to the full node.
            assert max(took[i] for i in range(FULL)) < SEED_WINDOW / 2, took


async def test_a_second_reader_on_the_full_node_is_passed_through_from_the_origin(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with storm(tmp_path) as s:
            got: list[bytes] = []

            async def pull(index: int) -> None:
                got.append(await s.pull(index))

            async with trio.open_nursery() as pulls:
                for index in [*range(NODES), FULL]:
                    pulls.start_soon(pull, index)
            assert got == [s.data] * (NODES + 1)
            assert s.origin.bytes_sent_by_digest[s.digest] == 2 * SIZE  # the seed; the second
            assert s.nodes[FULL].metric("p2pull_passthrough_blobs_total") == 2
            assert s.kept(tmp_path) == []


async def test_a_range_on_the_full_node_is_refused(tmp_path: Path) -> None:
    """Neither in the store nor whole in memory, a range cannot be verified: 503, and containerd
    asks its next host (the registry) for it."""
    with trio.fail_after(60):
        async with storm(tmp_path) as s:
            url = f"{s.nodes[FULL].mirror_url}/v2/{NAME}/blobs/{s.digest}?ns={s.origin.netloc}"
            response = await s.http.get(url, headers={"range": "bytes=100-"})
            assert response.status_code == 503
            assert "range cannot be verified" in response.text
            assert s.kept(tmp_path) == []


async def test_a_full_node_that_would_seed_leaves_it_to_the_next(tmp_path: Path) -> None:
    """Every leech that asked the full seed hears that it cannot seed, also those whose
    Interested reached it in the batch of events its session failed in (they were dropped:
    those leeches waited out the 15 s info timeout, suspected their new seed too, and a second
    successor fetched the blob, 3x, in about a third of the runs)."""
    began = trio.current_time()
    with trio.fail_after(60):
        async with storm(tmp_path, full_seeds=True) as s:
            got: list[bytes] = []

            async def pull(index: int) -> None:
                got.append(await s.pull(index))

            async with trio.open_nursery() as pulls:
                for index in range(NODES):
                    pulls.start_soon(pull, index)
            assert got == [s.data] * NODES
            # The full node's own copy comes from the origin, and one successor seeds the rest.
            assert s.origin.bytes_sent_by_digest[s.digest] <= 2 * SIZE
            assert trio.current_time() - began < INFO_TIMEOUT  # nobody waited for an answer
            assert s.nodes[FULL].metric("p2pull_passthrough_blobs_total") == 1
            assert s.kept(tmp_path) == []


async def test_a_reader_that_goes_away_ends_the_pass_through(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with storm(tmp_path) as s:
            full = s.nodes[FULL]
            url = f"{full.mirror_url}/v2/{NAME}/blobs/{s.digest}?ns={s.origin.netloc}"

            async def leave_early() -> None:
                async with s.http.stream("GET", url) as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_bytes():
                        return  # gone after its first bytes

            async with trio.open_nursery() as pulls:
                pulls.start_soon(leave_early)
                for index in range(FULL):
                    pulls.start_soon(s.pull, index)
            while full.metric("p2pull_swarms"):  # noqa: ASYNC110 - its session ends by itself
                await trio.sleep(0.05)
            assert await s.pull(FULL) == s.data  # a new pull passes it through again
            assert full.metric("p2pull_passthrough_blobs_total") == 2
            assert s.origin.bytes_sent_by_digest[s.digest] == SIZE
            assert s.kept(tmp_path) == []
