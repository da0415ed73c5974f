"""The origin down in the middle of a storm, in simulated time (the in-memory swarm): the seed
rides it out, its members wait for it, and at most one node per blob ever goes to the origin
at a time."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from p2pull.origin_fetch import ResumePolicy
from p2pull.reference import Digest
from p2pull.testing.fakes import MemoryUpstream
from tests.memswarm import MemNode, MemSwarm, deterministic, mem_swarm

MBIT = 1_000_000 / 8
NODES = 16
SIZE = 4 << 20


async def storm(swarm: MemSwarm, digest: Digest) -> tuple[dict[int, float], dict[int, str]]:
    """Every node pulls at once: seconds each took, and the error of each that failed."""
    took: dict[int, float] = {}
    failed: dict[int, str] = {}
    start = trio.current_time()

    async def pull(node: MemNode) -> None:
        try:
            await swarm.pull(node, digest)
        except Exception as exc:  # the test reports what each client saw
            failed[node.index] = f"{type(exc).__name__}: {exc}"
        else:
            took[node.index] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for node in swarm.nodes:
            nursery.start_soon(pull, node)
    return took, failed


@pytest.mark.parametrize(
    ("down_at", "down_for"),
    [(0.3, 10.0), (0.3, 60.0), (0.0, 60.0)],
    ids=["mid-storm-10s", "mid-storm-60s", "before-the-size-is-known-60s"],
)
async def test_the_origin_down_for_a_while_every_pull_completes_the_origin_sends_once(
    autojump_clock: trio.testing.MockClock, down_at: float, down_for: float
) -> None:
    """Mid-storm the leeches know the blob and wait for chunks; before the seed has the size
    they wait for its BlobInfo, kept from choosing another seed by its Waiting messages."""
    deterministic(int(down_for))
    origin = MemoryUpstream(rate=50 * MBIT)  # 0.67 s for the blob
    digest = origin.add_blob(random.Random(1).randbytes(SIZE))
    start = trio.current_time()
    origin.outages.append((start + down_at, start + down_at + down_for))
    async with mem_swarm(NODES, origin=origin, up=50 * MBIT, down=50 * MBIT) as swarm:
        took, failed = await storm(swarm, digest)
        seed = swarm.seed_of(digest)
        assert failed == {}
        assert len(took) == NODES
        assert origin.bytes_sent <= 1.10 * SIZE
        assert swarm.fetchers == {seed.index}  # the leeches waited for their seed
        assert max(took.values()) < down_for + 10


async def test_a_seed_that_gives_up_hands_over_to_one_successor_never_to_everyone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(3)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest = origin.add_blob(random.Random(2).randbytes(SIZE))
    start = trio.current_time()
    origin.outages.append((start + 0.3, start + 30))  # past the seed's patience, not the next's
    patience = ResumePolicy(patience=20.0)
    async with mem_swarm(
        NODES, origin=origin, up=50 * MBIT, down=50 * MBIT, resume=patience
    ) as swarm:
        ranked = swarm.nodes[0].membership.successors(str(digest), now=trio.current_time())
        seed, successor = (next(n for n in swarm.nodes if n.member == m) for m in ranked[:2])
        took, failed = await storm(swarm, digest)
        assert swarm.fetchers == {seed.index, successor.index}
        assert set(failed) == {seed.index}  # its own client got the error, the others waited
        assert len(took) == NODES - 1
        assert origin.bytes_sent <= 1.10 * SIZE


async def test_when_the_seed_and_its_successor_give_up_every_pull_fails_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(4)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest = origin.add_blob(random.Random(3).randbytes(SIZE))
    start = trio.current_time()
    origin.outages.append((start + 0.3, start + 1000))
    async with mem_swarm(
        NODES, origin=origin, up=50 * MBIT, down=50 * MBIT, resume=ResumePolicy(patience=20.0)
    ) as swarm:
        with trio.fail_after(300):
            took, failed = await storm(swarm, digest)
        assert took == {}
        assert len(failed) == NODES
        assert len(swarm.fetchers) == 2  # the seed, then one successor
