"""The seed's word that a fresh chunk went to another member (``Seeded``): the members it would
refuse that chunk learn its hash and ask the member it went to, not the seed."""

from __future__ import annotations

import hashlib

from p2pull.bitfield import Bitfield
from p2pull.membership import Member, Membership
from p2pull.peer.events import (
    Action,
    BlobOpened,
    ChunkLanded,
    LinkUp,
    PeerMessage,
    PushPiece,
    SessionConfig,
)
from p2pull.peer.messages import BlobInfo, Have, Interested, Passing, Request, Seeded
from p2pull.peer.session import BlobSession
from tests import test_session_seed_dial as seed_dial
from tests.test_session_passing import sent
from tests.test_session_seed_dial import DIGEST

CHUNK = 1 << 20
COUNT = 8
HASHES = tuple(hashlib.sha256(bytes([i])).digest() for i in range(COUNT))
MEMBERS = [Member.of(f"198.18.0.{i}", 5051) for i in range(1, 6)]
CONFIG = SessionConfig()


def hrw_order() -> list[str]:
    probe = Membership(self_member=MEMBERS[0])
    probe.update_source("static", MEMBERS, now=0.0)
    return [m.node_id for m in probe.ranking(DIGEST, now=0.0)[0]]


def seeding(*, copies: int = 1) -> tuple[BlobSession, list[str], str]:
    """The blob's seed with every other member interested, the last of them passing the blob
    through; returns it, its members and the passer."""
    order = hrw_order()
    session = seed_dial.session_of(order[0], MEMBERS, CONFIG, linked=True)
    session.node.serving.superseed.copies = copies
    session.start(now=0.0)
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.1)
    for peer in order[1:]:
        session.handle(PeerMessage(peer, Interested(DIGEST, "lib/image", None)), now=0.2)
    session.handle(PeerMessage(order[-1], Passing(DIGEST, "full")), now=0.3)
    return session, order[1:], order[-1]


def test_the_seed_says_seeded_to_those_it_would_refuse_and_have_to_a_passer() -> None:
    session, members, passer = seeding()
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=1.0)
    pushed = [a.peer for a in landed if isinstance(a, PushPiece)]
    assert len(pushed) == 1 and pushed[0] != passer
    told = {peer: type(message) for peer, message in sent(landed, Have | Seeded)}
    others = set(members) - set(pushed) - {passer}
    assert told == {passer: Have} | dict.fromkeys(others, Seeded)
    assert all(m == Seeded(DIGEST, 0, HASHES[0]) for _, m in sent(landed, Seeded))


def test_with_a_copy_left_to_grant_the_seed_says_have() -> None:
    session, members, _ = seeding(copies=2)
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=1.0)
    assert len([a for a in landed if isinstance(a, PushPiece)]) == 1
    assert not sent(landed, Seeded)
    assert len(sent(landed, Have)) == len(members) - 1


def leech() -> tuple[BlobSession, str, str]:
    """A leech that opened the blob from its seed, which holds none of it yet, and one more
    member that holds none of it either; returns it, the seed and that member."""
    order = hrw_order()
    seed, member = order[0], order[1]
    session = seed_dial.session_of(order[-1], MEMBERS, CONFIG, linked=True)
    session.start(now=0.0)
    session.handle(LinkUp(seed), now=0.1)
    empty = Bitfield(COUNT).to_bytes()
    session.handle(PeerMessage(seed, BlobInfo(DIGEST, COUNT * CHUNK, CHUNK, empty, ())), now=0.2)
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.3)
    session.handle(PeerMessage(member, Interested(DIGEST, "lib/image", None)), now=0.4)
    session.handle(PeerMessage(member, BlobInfo(DIGEST, COUNT * CHUNK, CHUNK, empty, ())), now=0.4)
    session.pump(now=0.4)
    return session, seed, member


def requests(actions: list[Action]) -> list[tuple[str, int]]:
    return [(peer, message.index) for peer, message in sent(actions, Request)]  # type: ignore[attr-defined]


def test_a_leech_told_seeded_asks_the_member_that_announces_the_chunk() -> None:
    session, seed, member = leech()
    actions = session.handle(PeerMessage(seed, Seeded(DIGEST, 0, HASHES[0])), now=1.0)
    assert requests(actions + session.pump(now=1.0)) == []
    actions = session.handle(PeerMessage(member, Have(DIGEST, 0, HASHES[0])), now=1.1)
    assert requests(actions + session.pump(now=1.1)) == [(member, 0)]


def test_a_leech_told_have_by_the_seed_asks_the_seed() -> None:
    session, seed, _ = leech()
    actions = session.handle(PeerMessage(seed, Have(DIGEST, 0, HASHES[0])), now=1.0)
    assert requests(actions + session.pump(now=1.0)) == [(seed, 0)]


def test_the_seed_is_asked_again_after_the_stall_penalty_if_nobody_announces_it() -> None:
    """The member it went to may die before it announces the chunk: the seed then grants it
    again, and the leech asks it once the stall penalty has passed."""
    session, seed, _ = leech()
    session.handle(PeerMessage(seed, Seeded(DIGEST, 0, HASHES[0])), now=1.0)
    assert requests(session.pump(now=1.0)) == []
    later = 1.0 + session.chunks.scheduler.stall_penalty  # type: ignore[union-attr]
    assert requests(session.pump(now=later)) == [(seed, 0)]


def test_with_racks_the_seed_pushes_each_fresh_chunk_into_its_own_rack() -> None:
    """The other racks fetch it across once each (their chunk's rack leader); the seed's own
    rack need not fetch back what went elsewhere first."""
    order = hrw_order()
    rack = {m: "a" if k % 2 == 0 else "b" for k, m in enumerate(order)}  # the seed in "a"
    config = SessionConfig(far_wait=8.0)
    session = seed_dial.session_of(order[0], MEMBERS, config, linked=True, rack=rack.__getitem__)
    session.start(now=0.0)
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.1)
    for peer in order[1:]:
        session.handle(PeerMessage(peer, Interested(DIGEST, "lib/image", None)), now=0.2)
    pushed = []
    for index in range(COUNT):
        landed = session.handle(ChunkLanded(index, HASHES[index], "origin"), now=1.0 + index)
        pushed += [a.peer for a in landed if isinstance(a, PushPiece)]
    near = sorted(m for m in order[1:] if rack[m] == "a")
    room = session.node.serving.push_backlog  # pushes waiting for one member's upload at most
    assert len(near) == 2 and len(pushed) == COUNT
    assert pushed[: 2 * room] == near * room  # in turn while they take it; then the others
    assert {rack[peer] for peer in pushed[2 * room :]} == {"b"}
