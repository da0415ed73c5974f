"""Relaying, as peers see it: a leech pushes every chunk the seed gave it on to the members that
lack it, and takes a pushed chunk whose hash the seed has not sent yet, verifying it once the
hash comes. A real agent between two hand-driven peers: the seed (which the agent dials) and a
fellow leech (which dials the agent)."""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from p2pull.membership import Member, rank
from p2pull.peer.messages import (
    BlobInfo,
    Have,
    Interested,
    Message,
    Piece,
    Push,
    Reject,
    Request,
)
from p2pull.peer.wire import Authenticated, Closed
from p2pull.reference import Digest
from p2pull.swarm import links
from p2pull.swarm.driver import SessionDriver
from p2pull.testing.origin import TestOrigin
from tests.fake_peer import RawSession
from tests.swarm_harness import SECRET, Node, free_port, get_blob, swarm

NAME = "team/relay"
CHUNK = 64 * 1024
COUNT = 4


@dataclass
class Hand:
    """One hand-driven peer connection and everything the agent sent on it."""

    session: RawSession
    got: list[Message] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)
    authenticated: trio.Event = field(default_factory=trio.Event)

    async def send(self, *messages: Message) -> None:
        await self.session.send(*messages)

    async def read(
        self,
        *,
        answer: dict[int, Piece] | None = None,
        info: BlobInfo | None = None,
        stall: bool = False,
    ) -> None:
        """Record what comes; answer Requests with ``answer``'s pieces (else Reject), and
        Interested with ``info``; with ``stall``, read nothing more once authenticated."""
        while True:
            event = await self.session.next_event()
            if isinstance(event, Closed):
                return
            if isinstance(event, Authenticated):
                self.authenticated.set()
                if stall:
                    return
                continue
            self.got.append(event)
            self.arrived.set()
            self.arrived = trio.Event()
            if isinstance(event, Request):
                piece = (answer or {}).get(event.index)
                await self.send(piece or Reject(event.digest, event.index, "not held"))
            elif isinstance(event, Interested) and info is not None:
                await self.send(info)

    async def wait_for(self, wanted: type, count: int = 1) -> None:
        while sum(isinstance(m, wanted) for m in self.got) < count:
            await self.arrived.wait()


@dataclass
class Setup:
    node: Node
    digest: Digest
    data: bytes
    seed: Hand
    leech: Hand
    origin: TestOrigin

    def chunk(self, index: int) -> bytes:
        return self.data[index * CHUNK : (index + 1) * CHUNK]

    def sha(self, index: int) -> bytes:
        return hashlib.sha256(self.chunk(index)).digest()

    def piece(self, index: int, data: bytes | None = None) -> Piece:
        return Piece(str(self.digest), index, self.chunk(index) if data is None else data)

    async def early_push(self, data: bytes | None = None) -> SessionDriver:
        """The other leech pushes chunk 1 (``data``, else the right bytes) before the seed has
        said its hash; returns the agent's swarm for the blob once it has taken the piece."""
        await self.leech.send(Push(str(self.digest), 1, self.sha(1)), self.piece(1, data))
        await trio.testing.wait_all_tasks_blocked(cushion=0.1)
        assert self.node.agent.node is not None
        return self.node.agent.node.drivers[self.digest]


def _bits(indices: set[int]) -> bytes:
    out = bytearray((COUNT + 7) // 8)
    for index in indices:
        out[index >> 3] |= 0x80 >> (index & 7)
    return bytes(out)


@asynccontextmanager
async def agent_between_fakes(tmp_path: Path) -> AsyncIterator[Setup]:
    """A real agent pulling a blob whose seed is a fake; a second fake (a leech holding
    nothing) dials the agent and asks for the blob, so the agent counts it as a member. The
    fake seed describes the blob holding nothing yet and answers every request with the right
    piece: the test decides what it announces and when."""
    seed_member = Member.of("127.0.0.1", free_port())
    leech_member = Member.of("127.0.0.1", free_port())
    origin = TestOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        async with swarm(tmp_path, origin, 1, extra_peers=[seed_member, leech_member]) as nodes:
            node = nodes[0]
            real = Member.of("127.0.0.1", node.agent.config.peer_addr.port)
            rng = random.Random(3)
            while True:  # the fake must be the blob's seed
                data = rng.randbytes(COUNT * CHUNK)
                digest = Digest.of(data)
                if rank([real, seed_member, leech_member], str(digest))[0] == seed_member:
                    break
            origin.add_blob(NAME, data)
            d = str(digest)
            pieces = {i: Piece(d, i, data[i * CHUNK : (i + 1) * CHUNK]) for i in range(COUNT)}
            seed_info = BlobInfo(d, len(data), CHUNK, _bits(set()), (b"",) * COUNT)
            accepted, accepted_out = trio.open_memory_channel[Hand](1)

            async def serve_seed(stream: trio.SocketStream) -> None:
                session = RawSession(
                    stream, node_id=seed_member.node_id, port=seed_member.port, secret=SECRET
                )
                async with stream:
                    await session.start()
                    hand = Hand(session)
                    await accepted.send(hand)
                    await hand.read(answer=pieces, info=seed_info)

            listeners = await trio.open_tcp_listeners(seed_member.port, host="127.0.0.1")
            nursery.start_soon(trio.serve_listeners, serve_seed, listeners)
            async with httpx.AsyncClient(timeout=30) as http, trio.open_nursery() as inner:
                pulled: list[bytes] = []
                done = trio.Event()

                async def pull() -> None:
                    pulled.append(await get_blob(http, node, origin.netloc, NAME, digest))
                    done.set()

                inner.start_soon(pull)
                seed = await accepted_out.receive()
                stream = await trio.open_tcp_stream("127.0.0.1", real.port)
                inner.start_soon(_close_at_exit, stream)
                session = RawSession(
                    stream, node_id=leech_member.node_id, port=leech_member.port, secret=SECRET
                )
                await session.start()
                leech = Hand(session)
                inner.start_soon(leech.read)
                await leech.authenticated.wait()
                await leech.send(Interested(d, NAME, origin.netloc))
                await leech.wait_for(Interested)  # the agent asks back: answer "nothing held"
                await leech.send(BlobInfo(d, len(data), CHUNK, _bits(set()), (b"",) * COUNT))
                await leech.wait_for(BlobInfo)
                yield Setup(node, digest, data, seed, leech, origin)
                with trio.fail_after(20):
                    await done.wait()
                assert pulled == [data]
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def _close_at_exit(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


def _sent(hand: Hand, kind: type[Push | Piece | Have | Request]) -> list[int]:
    return [m.index for m in hand.got if isinstance(m, kind)]


async def test_a_leech_relays_what_the_seed_gave_it_and_keeps_a_push_until_its_hash_comes(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with agent_between_fakes(tmp_path) as run:
            d = str(run.digest)
            # the seed hands chunk 0 over unasked; the agent relays it to the other leech: a
            # Push, then the piece
            await run.seed.send(Push(d, 0, run.sha(0)), run.piece(0))
            await run.leech.wait_for(Piece)
            swarm = await run.early_push()  # before its hash: held
            assert swarm.session.chunks is not None
            assert list(swarm.session.chunks.held) == [1]
            assert not swarm.transfer.blob.bitfield.has(1)  # type: ignore[union-attr]
            await run.seed.send(Have(d, 1, run.sha(1)))  # now it is verified and stored
            # 2 and 3 the agent asks the seed for; what the seed gives, it relays too
            await run.seed.send(Have(d, 2, run.sha(2)), Have(d, 3, run.sha(3)))
    pushed = [m for m in run.leech.got if isinstance(m, Push | Piece)]
    by_index = {m.index: [type(x).__name__ for x in pushed if x.index == m.index] for m in pushed}
    assert by_index == {0: ["Push", "Piece"], 2: ["Push", "Piece"], 3: ["Push", "Piece"]}
    for message in pushed:
        if isinstance(message, Piece):
            assert message.data == run.chunk(message.index)
        else:
            assert message.sha256 == run.sha(message.index)
    assert _sent(run.leech, Request) == []  # chunk 1 was never asked for
    assert sorted(_sent(run.seed, Request)) == [2, 3]  # nor 0 or 1 of the seed
    assert run.node.metric("p2pull_chunks_pushed_total") == 3
    assert run.node.metric("p2pull_chunks_rejected_total") == 0


async def test_a_held_push_that_does_not_match_the_seeds_hash_is_dropped_with_its_sender(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with agent_between_fakes(tmp_path) as run:
            d = str(run.digest)
            swarm = await run.early_push(b"\0" * CHUNK)
            assert swarm.session.chunks is not None
            assert list(swarm.session.chunks.held) == [1]
            await run.seed.send(*(Have(d, i, run.sha(i)) for i in (1, 0, 2, 3)))
    assert sorted(_sent(run.seed, Request)) == [0, 1, 2, 3]
    assert run.node.metric("p2pull_chunks_rejected_total") == 1
    # the liar is dropped for this blob: what the seed gave is neither pushed nor announced
    # to it
    assert _sent(run.leech, Push) == [] and _sent(run.leech, Have) == []
    assert _sent(run.leech, Piece) == []


async def _seed_pushing_to(
    tmp_path: Path, count: int, chunk: int, *, stalled: bool = False
) -> tuple[Node, bytes, list[Hand], list[Member]]:
    """A real agent, the seed of a ``count``-chunk blob fetched from a throttled origin (a
    second in all: chunks land one by one), with two hand-driven members that asked for it; the
    first stops reading once authenticated if ``stalled``. Returns once the agent's own client
    got the blob and everything went quiet."""
    members = [Member.of("127.0.0.1", free_port()) for _ in range(2)]
    origin = TestOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        async with swarm(tmp_path, origin, 1, chunk_size=chunk, extra_peers=members) as nodes:
            node = nodes[0]
            real = Member.of("127.0.0.1", node.agent.config.peer_addr.port)
            rng = random.Random(5)
            while True:  # the real agent must be the seed
                data = rng.randbytes(count * chunk)
                digest = Digest.of(data)
                if rank([real, *members], str(digest))[0] == real:
                    break
            origin.add_blob(NAME, data)
            origin.fault(digest).rate = count * chunk
            hands: list[Hand] = []
            async with trio.open_nursery() as inner:
                for number, member in enumerate(members):
                    stream = await trio.open_tcp_stream("127.0.0.1", real.port)
                    inner.start_soon(_close_at_exit, stream)
                    session = RawSession(
                        stream, node_id=member.node_id, port=member.port, secret=SECRET
                    )
                    hand = Hand(session)
                    await session.start()
                    inner.start_soon(functools.partial(hand.read, stall=stalled and number == 0))
                    await hand.authenticated.wait()
                    await hand.send(Interested(str(digest), NAME, origin.netloc))
                    hands.append(hand)
                async with httpx.AsyncClient(timeout=30) as http:
                    assert await get_blob(http, node, origin.netloc, NAME, digest) == data
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return node, data, hands, members


async def test_the_seed_hands_each_chunk_from_the_origin_to_one_member_in_turn(
    tmp_path: Path,
) -> None:
    """Two members (hand-driven) ask a real agent, the blob's seed, for a blob it fetches from
    the origin: it pushes every chunk to one of them, in turn."""
    count = 16
    with trio.fail_after(60):
        node, data, hands, _ = await _seed_pushing_to(tmp_path, count, CHUNK)
    pushed = [_sent(hand, Push) for hand in hands]
    pieces = [_sent(hand, Piece) for hand in hands]
    assert pieces == pushed  # every push is followed by its piece, nothing else is sent
    everything = sorted(pushed[0] + pushed[1])
    assert everything == list(range(count))  # each chunk crossed the uplink once
    # in turn (the origin is throttled so chunks land one at a time, each finding both
    # members with nothing queued)
    assert sorted(pushed) == [list(range(0, count, 2)), list(range(1, count, 2))], pushed
    for hand in hands:
        for message in hand.got:
            if isinstance(message, Piece):
                assert message.data == data[message.index * CHUNK : (message.index + 1) * CHUNK]
    assert node.metric("p2pull_chunks_pushed_total") == len(everything)


async def test_a_member_that_stops_reading_does_not_stop_the_seeds_pushes_to_the_others(
    tmp_path: Path,
) -> None:
    """Uploads to a peer whose socket is full wait; they hold that link's piece slots, not all
    of the node's upload slots, and once two more wait for it the seed pushes elsewhere: the
    member that reads gets every chunk but the few stuck on the stalled link."""
    count, chunk = 32, 1 << 20  # far more than the kernel buffers of a link nobody reads
    with trio.fail_after(60):
        node, data, hands, _ = await _seed_pushing_to(tmp_path, count, chunk, stalled=True)
    reading = hands[1]
    received = _sent(reading, Piece)
    assert received == _sent(reading, Push)
    # in turn it would get 16; the stalled one holds 2 uploads and 2 waiting: at most 4 lost
    assert len(received) >= count - 4, received
    assert all(
        m.data == data[m.index * chunk : (m.index + 1) * chunk]
        for m in reading.got
        if isinstance(m, Piece)
    )
    assert node.metric("p2pull_chunks_pushed_total") <= count


async def test_a_member_that_takes_nothing_past_the_write_deadline_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its link's uploads would hold two of the node's upload slots for as long as the peer's
    kernel keeps the connection up; past the write deadline (shortened here) the link closes
    and the seed goes on without it."""
    monkeypatch.setattr(links, "WRITE_STALL", 0.5)
    monkeypatch.setattr(links, "WRITE_MIN_RATE", 1 << 40)  # the deadline is WRITE_STALL alone
    count, chunk = 32, 1 << 20
    with trio.fail_after(60):
        node, _, hands, members = await _seed_pushing_to(tmp_path, count, chunk, stalled=True)
    stalled_id = members[0].node_id
    assert node.agent.node is not None
    # its link was closed during the pull (the agent suspects a peer whose link breaks)
    assert node.agent.node.membership.suspected().keys() >= {stalled_id}
    # what was pushed to it before the drop is lost to the reading member; the rest came
    assert len(_sent(hands[1], Piece)) >= count - 4
