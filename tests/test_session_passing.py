"""BlobSession passing a blob through (BlobOpened.passing: no room in the store), on its own
(no network): it asks only for its reader's window, tells its peers so, and they neither push
to it, name it to others, nor take it for a seed."""

from __future__ import annotations

import hashlib

from p2pull.bitfield import Bitfield
from p2pull.membership import Member, Membership
from p2pull.peer.events import (
    Action,
    BlobOpened,
    ChunkLanded,
    Dial,
    LinkUp,
    OpenBlob,
    PeerMessage,
    PieceStored,
    PushPiece,
    ReaderWants,
    Send,
    SessionConfig,
    WritePiece,
)
from p2pull.peer.messages import BlobInfo, Have, Interested, Passing, Peers, Piece, Request
from p2pull.peer.serving import REJECT_SEEDED
from p2pull.peer.session import BlobSession
from tests import test_session_seed_dial as seed_dial
from tests.test_session_seed_dial import DIGEST

CHUNK = 1 << 20
COUNT = 32
HASHES = tuple(hashlib.sha256(bytes([i])).digest() for i in range(COUNT))
CONFIG = SessionConfig(pass_window_bytes=3 * CHUNK, max_in_flight_per_peer=8)


def sent(actions: list[Action], kind: type) -> list[tuple[str, object]]:
    return [
        (a.peer, a.message) for a in actions if isinstance(a, Send) and isinstance(a.message, kind)
    ]


MEMBERS = [Member.of(f"198.18.0.{i}", 5051) for i in range(1, 5)]


def hrw_order() -> list[str]:
    probe = Membership(self_member=MEMBERS[0])
    probe.update_source("static", MEMBERS, now=0.0)
    return [m.node_id for m in probe.ranking(DIGEST, now=0.0)[0]]


def session_of(node_id: str, config: SessionConfig = CONFIG) -> BlobSession:
    """The blob's session on ``node_id``, linked to every peer."""
    return seed_dial.session_of(node_id, MEMBERS, config, linked=True)


def opened_passing(
    config: SessionConfig = CONFIG, *, interested: str | None = None
) -> tuple[BlobSession, list[str], list[Action]]:
    """A leech that found its seed, learnt the blob's size and opened it to pass it through
    (``interested``: a peer that asked it for the blob before it knew the size)."""
    order = hrw_order()
    session, seed = session_of(order[-1], config), order[0]
    session.start(now=0.0)
    session.handle(LinkUp(seed), now=0.1)
    if interested is not None:
        session.handle(PeerMessage(interested, Interested(DIGEST, "lib/image", None)), now=0.15)
    info = BlobInfo(DIGEST, COUNT * CHUNK, CHUNK, Bitfield.full(COUNT).to_bytes(), HASHES)
    actions = session.handle(PeerMessage(seed, info), now=0.2)
    assert [a for a in actions if isinstance(a, OpenBlob)]
    have = Bitfield(COUNT)
    opened = BlobOpened(COUNT * CHUNK, CHUNK, have, (None,) * COUNT, passing=True)
    actions = session.handle(opened, now=0.3)
    actions += session.handle(ReaderWants(0), now=0.3)
    return session, order, actions + session.pump(now=0.3)


def test_it_tells_its_seed_and_asks_only_for_the_readers_window() -> None:
    _, order, actions = opened_passing()
    assert [peer for peer, _ in sent(actions, Passing)] == [order[0]]
    asked = sorted(m.index for _, m in sent(actions, Request))  # type: ignore[attr-defined]
    assert asked == [0, 1, 2]  # the window: not the rarest chunk, not the rest of the blob


def test_it_takes_no_members_and_tells_nobody_what_it_holds() -> None:
    order = hrw_order()
    early, late = order[1], order[2]
    session, _, actions = opened_passing(interested=early)
    assert early in {peer for peer, _ in sent(actions, Passing)}
    assert not sent(actions, BlobInfo) and not sent(actions, Peers)
    actions = session.handle(PeerMessage(late, Interested(DIGEST, "lib/image", None)), now=1.0)
    assert [peer for peer, _ in sent(actions, Passing)] == [late]
    assert not sent(actions, BlobInfo) and not sent(actions, Peers)
    assert session.members == set()
    written = session.handle(PeerMessage(order[0], Piece(DIGEST, 0, bytes([0]))), now=1.1)
    assert [a for a in written if isinstance(a, WritePiece)]
    stored = session.handle(PieceStored(order[0], 0), now=1.2)
    assert not sent(stored, Have) and not [a for a in stored if isinstance(a, PushPiece)]


def test_a_seed_that_passes_it_through_is_passed_over() -> None:
    # A leech that dialed the seed's successor (the seed died) and hears it passes the blob
    # through: the next one in HRW order is its seed.
    order = hrw_order()
    session = session_of(order[-1])
    session.start(now=0.0)
    session.handle(LinkUp(order[0]), now=0.1)
    actions = session.handle(PeerMessage(order[0], Passing(DIGEST, "full")), now=0.2)
    assert [a.member.node_id for a in actions if isinstance(a, Dial)] == [order[1]]
    assert order[0] in session.passers


def test_a_passer_is_neither_pushed_to_nor_handed_out() -> None:
    order = hrw_order()
    session = session_of(order[0])
    session.start(now=0.0)  # the seed: it fetches from the origin
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.1)
    passer, member, asker = order[3], order[1], order[2]
    for at, peer in enumerate([passer, member]):
        session.handle(PeerMessage(peer, Interested(DIGEST, "lib/image", None)), now=0.2 + at)
    session.handle(PeerMessage(passer, Passing(DIGEST, "full")), now=2.0)
    handed = session.handle(PeerMessage(asker, Interested(DIGEST, "lib/image", None)), now=2.1)
    named = {entry[0] for _, message in sent(handed, Peers) for entry in message.peers}
    assert member in named and passer not in named
    pushed = set()
    for index in range(4):  # the seed pushes fresh chunks to its members in turn
        landed = session.handle(ChunkLanded(index, HASHES[index], "origin"), now=3.0 + index)
        pushed |= {action.peer for action in landed if isinstance(action, PushPiece)}
    assert member in pushed and passer not in pushed


def test_a_chunk_granted_to_a_peer_that_turns_out_to_pass_is_handed_out_again() -> None:
    """The seed pushed chunk 0 to a member before it said it passes the blob through; a member
    that asked meanwhile was refused ("seeded") and leaves the seed alone for that chunk for a
    while, waiting for a Have the passer never sends. Told, the seed pushes it to a member that
    lacks it (which passes it on), and a request for it is granted again."""
    order = hrw_order()
    session = session_of(order[0])
    session.start(now=0.0)  # the seed
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.1)
    passer, member = order[3], order[1]
    session.handle(PeerMessage(passer, Interested(DIGEST, "lib/image", None)), now=0.2)
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=0.3)
    assert [a.peer for a in landed if isinstance(a, PushPiece)] == [passer]
    session.handle(PeerMessage(member, Interested(DIGEST, "lib/image", None)), now=0.4)
    serving = session.node.serving
    assert serving.request(member, DIGEST, 0, now=0.5) == REJECT_SEEDED
    actions = session.handle(PeerMessage(passer, Passing(DIGEST, "full")), now=0.6)
    again = [(a.peer, a.push.index) for a in actions if isinstance(a, PushPiece)]
    assert again == [(member, 0)]
    assert serving.request(order[2], DIGEST, 0, now=0.7) == REJECT_SEEDED  # member holds it
