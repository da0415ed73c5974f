"""A node whose store cannot take a blob (quota, or a full disk) passes it through from the
origin; the other nodes of the swarm are not held up by it (found by ``bench/faults.py``'s
disk_full scenario: the seed still pushed chunks to that node, the node cancelled them, and the
seed's super-seeding kept each such chunk granted to it for 15 s, refusing everyone else)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import httpx
import trio

from agent.config import AgentConfig
from p2pull.membership import Member, rank
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.swarm_harness import get_blob, swarm

NAME = "team/full"
CHUNK = 256 << 10
SIZE = 8 << 20
NODES = 4
RATE = 8 << 20  # origin bytes/s: the storm lasts about a second, pushes spread over it
SEED_WINDOW = 15.0  # the super-seeding window a wrong grant holds others back for


async def test_a_node_that_cannot_store_the_blob_does_not_hold_the_others_up(
    tmp_path: Path,
) -> None:
    origin = TestOrigin()
    origin.faults.rate = RATE
    full: list[int] = []

    def tiny_store_on_a_leech(index: int, config: AgentConfig) -> AgentConfig:
        # the lowest-ranked node (never the seed) gets a store quota no blob fits in
        if index == NODES - 1:
            full.append(config.peer_addr.port)
            return dataclasses.replace(config, store_quota=1024)
        return config

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            async with (
                swarm(
                    tmp_path, origin, NODES, chunk_size=CHUNK, configure=tiny_store_on_a_leech
                ) as nodes,
                httpx.AsyncClient(timeout=60) as http,
            ):
                members = [Member.of("127.0.0.1", n.agent.config.peer_addr.port) for n in nodes]
                for seed_value in range(100):  # a blob the small store does not seed
                    data = random.Random(seed_value).randbytes(SIZE)
                    if rank(members, str(Digest.of(data)))[0].port not in full:
                        break
                digest = origin.add_blob(NAME, data)
                took: dict[int, float] = {}

                async def pull(index: int) -> None:
                    began = trio.current_time()
                    assert await get_blob(http, nodes[index], origin.netloc, NAME, digest) == data
                    took[index] = trio.current_time() - began

                async with trio.open_nursery() as pulls:
                    for index in range(NODES):
                        pulls.start_soon(pull, index)
            nursery.cancel_scope.cancel()
    assert nodes[-1].metric("p2pull_passthrough_blobs_total") == 1
    others = [took[i] for i in range(NODES - 1)]
    # The origin needs ~2 s for two copies (the seed's and the pass-through); nobody waits out
    # a super-seeding window on top.
    assert max(others) < SEED_WINDOW / 2, took
