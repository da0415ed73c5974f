"""Whole swarms in one process: the agent's swarm code over the in-memory peer network, in
simulated time (MockClock, autojump). No sleeps: a test that waits 30 s of protocol time takes
milliseconds, and the same seed replays the same message trace."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from dataclasses import replace

import pytest
import trio
import trio.testing

from p2pull.peer.events import SessionConfig
from p2pull.reference import Digest
from p2pull.store.types import ByteSink, StoredBlob
from p2pull.swarm.links import PeerLink
from p2pull.swarm.node import SwarmConfig
from p2pull.testing.fakes import MemoryUpstream
from tests.memswarm import MemNode, MemSwarm, deterministic, mem_swarm

KIB = 1024
MBIT = 1_000_000 / 8  # bytes per second


def blob(origin: MemoryUpstream, size: int, seed: int = 1) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return origin.add_blob(data), data


async def pull_all(
    swarm: MemSwarm, digest: Digest, nodes: list[MemNode] | None = None
) -> dict[int, float]:
    """Every node (or ``nodes``) pulls ``digest`` at once; seconds each took, by node index."""
    took: dict[int, float] = {}
    start = trio.current_time()

    async def pull(node: MemNode) -> None:
        await swarm.pull(node, digest)
        took[node.index] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for node in swarm.nodes if nodes is None else nodes:
            nursery.start_soon(pull, node)
    return took


async def three_nodes_pull_once() -> None:
    """Three nodes pull a 1 MiB blob at once: every pull completes, the origin sends it once."""
    origin = MemoryUpstream(rate=100 * MBIT)
    digest, data = blob(origin, 1 << 20)
    async with mem_swarm(3, origin=origin, up=100 * MBIT, down=100 * MBIT) as swarm:
        took = await pull_all(swarm, digest)
    assert sorted(took) == [0, 1, 2]
    assert origin.bytes_sent == len(data)


def total(swarm: MemSwarm, metric: str, **labels: str) -> float:
    return sum(node.value(metric, **labels) for node in swarm.nodes)


async def test_three_nodes_pull_a_blob_the_origin_sends_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(1)
    origin = MemoryUpstream(rate=100 * MBIT)
    digest, data = blob(origin, 1 << 20)
    async with mem_swarm(3, origin=origin, up=100 * MBIT, down=100 * MBIT) as swarm:
        took = await pull_all(swarm, digest)
        seed = swarm.seed_of(digest)
        assert sorted(took) == [0, 1, 2]
        assert origin.bytes_sent == len(data)
        for node in swarm.nodes:
            from_peers = node.value("p2pull_fetched_bytes_total", source="peer")
            assert from_peers == (0 if node is seed else len(data))
        # 1 MiB at 100 Mbit/s is 0.084 s: the leeches are at most one hop of chunks behind
        assert max(took.values()) < 0.2


async def test_two_hundred_nodes_pull_a_blob_the_origin_sends_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(2)
    origin = MemoryUpstream(rate=100 * MBIT)
    digest, data = blob(origin, 256 * KIB)

    def few_peers(config: SwarmConfig) -> SwarmConfig:
        return replace(config, peers_handout=8)

    async with mem_swarm(
        200, origin=origin, up=100 * MBIT, down=100 * MBIT, config=few_peers
    ) as swarm:
        took = await pull_all(swarm, digest)
        assert len(took) == 200
        assert origin.bytes_sent == len(data)
        links = [len(node.node.pool.links) for node in swarm.nodes]
        assert max(links) < 200  # not a full mesh


async def _small_storm(seed: int) -> list[tuple[float, str, str, str, int]]:
    deterministic(seed)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest, _ = blob(origin, 512 * KIB)
    async with mem_swarm(5, origin=origin, up=50 * MBIT, down=50 * MBIT, seed=seed) as swarm:
        await pull_all(swarm, digest)
        return list(swarm.trace)


def test_the_same_seed_replays_the_same_message_trace() -> None:
    def storm(seed: int) -> list[tuple[float, str, str, str, int]]:
        clock = trio.testing.MockClock(autojump_threshold=0)  # each run's clock starts at 0
        return trio.run(_small_storm, seed, clock=clock)

    first = storm(7)
    assert len(first) > 100
    assert storm(7) == first


async def test_the_seed_killed_mid_transfer_the_next_takes_over_with_what_nobody_has(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(3)
    size = 2 << 20
    origin = MemoryUpstream(rate=8 * MBIT)  # 2 s for the blob
    digest, _ = blob(origin, size)
    async with mem_swarm(5, origin=origin, up=100 * MBIT, down=100 * MBIT) as swarm:
        seed = swarm.seed_of(digest)
        others = [node for node in swarm.nodes if node is not seed]
        took: dict[int, float] = {}
        async with trio.open_nursery() as nursery:

            async def pull(node: MemNode) -> None:
                await swarm.pull(node, digest)
                took[node.index] = trio.current_time()

            for node in others:
                nursery.start_soon(pull, node)
            nursery.start_soon(swarm.pull, seed, digest)  # ends with the node
            await origin.wait_sent(int(0.4 * size))
            swarm.kill(seed)
        assert sorted(took) == sorted(node.index for node in others)
        assert origin.bytes_sent <= 1.5 * size
        resumed = [start for _, start in origin.opens if start > 0]
        assert resumed and min(resumed) >= 0.3 * size  # from what nobody had, not from 0


class _Corrupting:
    """A store that hands its peers every chunk with one byte flipped (its own reads are fine)."""

    def __init__(self, inner: StoredBlob) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        data = bytearray(await self._inner.read(offset, length))
        data[0] ^= 0xFF
        await sink.write(bytes(data))


async def test_a_peer_serving_corrupt_chunks_is_dropped_and_every_pull_is_right(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(4)
    origin = MemoryUpstream(rate=20 * MBIT)
    digest, _ = blob(origin, 1 << 20)
    async with mem_swarm(5, origin=origin, up=20 * MBIT, down=20 * MBIT) as swarm:
        liar = next(node for node in swarm.nodes if node is not swarm.seed_of(digest))
        real_send_piece = liar.node._send_piece

        async def send_corrupt(link: PeerLink, request: object) -> None:
            real = liar.store.lookup(digest)
            assert real is not None
            lookup = liar.store.lookup
            liar.store.lookup = lambda d: _Corrupting(real)  # type: ignore[method-assign,assignment,return-value]
            try:
                await real_send_piece(link, request)  # type: ignore[arg-type]
            finally:
                liar.store.lookup = lookup  # type: ignore[method-assign]

        liar.node._send_piece = send_corrupt  # type: ignore[method-assign]
        took = await pull_all(swarm, digest)  # each pull checks the digest of what it got
        assert len(took) == 5
        assert total(swarm, "p2pull_chunks_rejected_total") > 0
        assert liar.value("p2pull_chunks_rejected_total") == 0  # nobody lied to it


async def test_a_peer_that_never_sends_the_pieces_it_promised_is_worked_around(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(5)
    origin = MemoryUpstream(rate=20 * MBIT)
    digest, _ = blob(origin, 1 << 20)
    async with mem_swarm(5, origin=origin, up=20 * MBIT, down=20 * MBIT) as swarm:
        staller = next(node for node in swarm.nodes if node is not swarm.seed_of(digest))

        async def stall(link: PeerLink, request: object) -> None:
            await trio.sleep_forever()

        staller.node._send_piece = stall  # type: ignore[method-assign]
        others = [node for node in swarm.nodes if node is not staller]
        took = await pull_all(swarm, digest, others)
        assert len(took) == 4
        # requests to it expire after the 30 s request timeout and go elsewhere
        assert max(took.values()) < 2 * SessionConfig().request_timeout


async def test_late_askers_pull_from_the_holders_and_each_other_not_the_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(6)
    size = 2 << 20
    origin = MemoryUpstream(rate=100 * MBIT)
    digest, _ = blob(origin, size)
    async with mem_swarm(8, origin=origin, up=50 * MBIT, down=50 * MBIT) as swarm:
        seed = swarm.seed_of(digest)
        early = [seed, *[n for n in swarm.nodes if n is not seed][:3]]
        late = [n for n in swarm.nodes if n not in early]
        await pull_all(swarm, digest, early)
        uploaded = seed.value("p2pull_peer_upload_bytes_total")
        await trio.sleep(9)  # the storm is over; super-seeding still caps the seed
        took = await pull_all(swarm, digest, late)
        assert len(took) == 4
        assert origin.bytes_sent == size
        # the seed still hands each chunk out once (super-seeding): the late four get the blob
        # from the others (without the cap: 0.84 copies from the seed)
        assert seed.value("p2pull_peer_upload_bytes_total") - uploaded <= 0.25 * size
        # 2 MiB at 50 Mbit/s is 0.34 s: nobody waited for a window or a timeout
        assert max(took.values()) < 2


async def test_fresh_chunks_travel_by_push_and_the_seed_uploads_each_about_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(8)
    size = 4 << 20
    origin = MemoryUpstream(rate=50 * MBIT)
    digest, _ = blob(origin, size)
    async with mem_swarm(8, origin=origin, up=50 * MBIT, down=50 * MBIT) as swarm:
        await pull_all(swarm, digest)
        seed = swarm.seed_of(digest)
        kinds = collections.Counter(entry[3] for entry in swarm.trace)
        chunks = size // (64 * KIB)
        # 7 leeches x 64 chunks: most arrive pushed (the seed to one relay, the relay to all)
        assert kinds["Push"] >= 0.8 * 7 * chunks
        assert kinds["Request"] < kinds["Push"]
        # super-seeding: each chunk leaves the seed's uplink once (without the cap: 1.2 copies)
        assert seed.value("p2pull_peer_upload_bytes_total") <= 1.1 * size


async def test_a_member_leaving_mid_blob_changes_nothing_for_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deterministic(9)
    size = 2 << 20
    origin = MemoryUpstream(rate=10 * MBIT)
    digest, _ = blob(origin, size)
    async with mem_swarm(6, origin=origin, up=50 * MBIT, down=50 * MBIT) as swarm:
        seed = swarm.seed_of(digest)
        leaver = next(n for n in swarm.nodes if n is not seed)
        stay = [n for n in swarm.nodes if n is not leaver]
        took: dict[int, float] = {}
        async with trio.open_nursery() as nursery:

            async def pull(node: MemNode) -> None:
                await swarm.pull(node, digest)
                took[node.index] = trio.current_time()

            for node in stay:
                nursery.start_soon(pull, node)
            nursery.start_soon(swarm.pull, leaver, digest)
            await origin.wait_sent(size // 2)
            swarm.kill(leaver)
            for node in stay:
                others = [n.member for n in swarm.nodes if n is not leaver]
                node.membership.update_source("static", others, now=trio.current_time())
        assert len(took) == len(stay)
        assert origin.bytes_sent == size


@pytest.mark.parametrize("count", [2, 4])
async def test_small_swarms_finish_within_a_hop_of_the_origin(
    autojump_clock: trio.testing.MockClock, count: int
) -> None:
    deterministic(count)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest, data = blob(origin, 1 << 20)
    rates: Callable[[int], float] = lambda i: 50 * MBIT  # noqa: E731
    async with mem_swarm(count, origin=origin, up=rates(0), down=rates(0)) as swarm:
        took = await pull_all(swarm, digest)
    bound = len(data) / (50 * MBIT)
    assert max(took.values()) < 1.5 * bound


async def test_a_seed_whose_chunks_are_not_the_blob_is_passed_over_on_the_next_pull(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The seed hashes and serves bytes that are not the blob's and never says so (an
    authenticated peer that lies): every leech's copy fails the whole digest and nothing of it
    is served whole. The next pulls do not ask that seed again: the next HRW member fetches
    from the origin, and everyone gets the right bytes."""
    deterministic(10)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest, data = blob(origin, 1 << 20)
    lying = MemoryUpstream(rate=50 * MBIT)
    lying.blobs[digest] = bytes(b ^ 0x5A for b in data)  # the same size, other bytes
    async with mem_swarm(4, origin=origin, up=50 * MBIT, down=50 * MBIT) as first:
        liar = first.seed_of(digest).index
    async with mem_swarm(
        4, origin=origin, up=50 * MBIT, down=50 * MBIT, origins={liar: lying}
    ) as swarm:
        honest = [node for node in swarm.nodes if node.index != liar]
        swarm.nodes[liar].node.rejected = lambda digest: None  # type: ignore[method-assign]
        failed: list[str] = []

        async def pull(node: MemNode) -> None:
            try:
                await swarm.pull(node, digest)
            except Exception as exc:  # the reset a client would see
                failed.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for node in honest:
                nursery.start_soon(pull, node)
        assert len(failed) == len(honest)  # nobody got the wrong bytes whole
        assert all(node.value("p2pull_blob_digest_mismatches_total") == 1 for node in honest)
        took = await pull_all(swarm, digest, honest)  # the clients try again
        assert len(took) == len(honest)
        assert origin.bytes_sent == len(data)  # the next seed went to the right origin, once


async def test_wrong_bytes_from_the_origin_are_fetched_again_by_one_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The origin answers the seed with wrong bytes of the right length: every node's copy,
    the seed's own included, fails the whole digest; a slow node still fetching when the
    seed's copy failed is told so, drops what it took and fails too (rather than waiting for
    a seed that no longer holds the chunks). On the clients' retry every node, the seed too,
    passes that seed over and turns to the same next one: the origin sends the blob once
    more, not once per node that failed (two fetchers would make it three copies)."""
    deterministic(11)
    origin = MemoryUpstream(rate=50 * MBIT)
    digest, data = blob(origin, 1 << 20)
    async with mem_swarm(4, origin=origin) as first:
        seed_index = first.seed_of(digest).index
    slow = (seed_index + 1) % 4
    origin.blobs[digest] = bytes(b ^ 0x5A for b in data)  # a broken cache in front of it
    async with mem_swarm(
        4, origin=origin, up=50 * MBIT, down=50 * MBIT, rates={slow: (5 * MBIT, 5 * MBIT)}
    ) as swarm:
        failed: list[int] = []

        async def pull(node: MemNode) -> None:
            try:
                await swarm.pull(node, digest)
            except Exception:  # the reset a client would see
                failed.append(node.index)

        async with trio.open_nursery() as nursery:
            for node in swarm.nodes:
                nursery.start_soon(pull, node)
        assert sorted(failed) == [0, 1, 2, 3]
        seed = swarm.nodes[seed_index]
        assert seed.value("p2pull_blob_digest_mismatches_total") == 1
        assert swarm.nodes[slow].value("p2pull_blob_digest_mismatches_total") == 0  # told
        assert all(node.store.lookup(digest) is None for node in swarm.nodes)  # nothing kept
        assert origin.bytes_sent == len(data)
        origin.blobs[digest] = data  # the cache is fixed
        took = await pull_all(swarm, digest)
        assert len(took) == 4
        assert origin.bytes_sent == 2 * len(data)
        assert seed.value("p2pull_fetched_bytes_total", source="origin") == len(data)


async def test_a_session_asking_to_be_woken_in_the_past_does_not_spin_its_node(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A bug of that kind (a wake-up left in the past) once spun every leech at full CPU and
    # stalled the storm: the driver sleeps over such a deadline and says so, once per session.
    from p2pull.peer.session import BlobSession

    deterministic(9)
    looks = 0

    def in_the_past(self: BlobSession) -> float:
        nonlocal looks
        looks += 1
        if looks > 100_000:
            raise AssertionError("the driver spins on a deadline in the past")
        return -math.inf

    monkeypatch.setattr(BlobSession, "next_deadline", in_the_past)
    await three_nodes_pull_once()
    stale = [r for r in caplog.records if "woken in the past" in r.getMessage()]
    assert stale and all(r.levelname == "ERROR" for r in stale)
    assert len(stale) <= 3  # once per session


async def test_a_deadline_that_falls_while_the_pump_is_carried_out_is_due_not_a_bug(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Carrying out a pump's actions takes time (a piece written, a task started); a deadline
    # that passes meanwhile is due at once, not a session asking to be woken in the past.
    from p2pull.peer.session import BlobSession
    from p2pull.swarm.driver import SessionDriver

    deterministic(9)
    pumped_at: dict[int, float] = {}
    real_pump, real_deadline = BlobSession.pump, BlobSession.next_deadline
    real_execute = SessionDriver._execute

    def pump(self: BlobSession, *, now: float) -> list[object]:
        pumped_at[id(self)] = now
        return real_pump(self, now=now)

    def soon_after_the_pump(self: BlobSession) -> float | None:
        deadline = real_deadline(self)
        if id(self) not in pumped_at or deadline is None:
            return deadline
        return min(deadline, pumped_at[id(self)] + 0.001)

    async def slowly(self: SessionDriver, actions: list[object]) -> None:
        await trio.sleep(0.005)
        await real_execute(self, actions)  # type: ignore[arg-type]

    monkeypatch.setattr(BlobSession, "pump", pump)
    monkeypatch.setattr(BlobSession, "next_deadline", soon_after_the_pump)
    monkeypatch.setattr(SessionDriver, "_execute", slowly)
    await three_nodes_pull_once()
    assert not [r for r in caplog.records if "woken in the past" in r.getMessage()]


async def test_peer_messages_are_counted_both_ways(autojump_clock: trio.testing.MockClock) -> None:
    deterministic(1)
    origin = MemoryUpstream(rate=100 * MBIT)
    digest, data = blob(origin, 1 << 20)  # 16 chunks of 64 KiB
    async with mem_swarm(3, origin=origin, up=100 * MBIT, down=100 * MBIT) as swarm:
        await pull_all(swarm, digest)
        await trio.sleep(1.0)  # what is still on its way lands
        sent = total(swarm, "p2pull_peer_messages_total", direction="sent")
        received = total(swarm, "p2pull_peer_messages_total", direction="received")
        pieces_in = sum(n.value("p2pull_fetched_bytes_total", source="peer") for n in swarm.nodes)
    assert pieces_in == 2 * len(data)  # the two leeches took every chunk from peers
    assert received == sent  # the in-memory network loses nothing
    # every node sent something; the leeches received at least their 2 x 16 pieces
    assert all(n.value("p2pull_peer_messages_total", direction="sent") > 0 for n in swarm.nodes)
    assert received >= 2 * 16
