"""``SessionConfig.fanout``: members form a tree in HRW order and each asks its parent; a parent
asks its children back, or it would never hear what they hold (the seed grants each fresh chunk
to one child and refuses it to the rest)."""

from __future__ import annotations

import hashlib

from p2pull.bitfield import Bitfield
from p2pull.membership import Member
from p2pull.peer.events import BlobOpened, LinkUp, PeerMessage, SessionConfig
from p2pull.peer.messages import BlobInfo, Interested, Peers
from p2pull.peer.session import BlobSession
from tests import test_session_seed_dial as seed_dial
from tests.test_session_passing import sent
from tests.test_session_seed_dial import DIGEST

CHUNK = 1 << 20
COUNT = 4
HASHES = tuple(hashlib.sha256(bytes([i])).digest() for i in range(COUNT))
MEMBERS = [Member.of(f"198.18.0.{i}", 5051) for i in range(1, 8)]
CONFIG = SessionConfig(fanout=2)
INTERESTED = Interested(DIGEST, "lib/image", None)


def hrw_order() -> list[str]:
    probe = seed_dial.session_of(MEMBERS[0].node_id, MEMBERS, CONFIG).node.membership
    return [m.node_id for m in probe.ranking(DIGEST, now=0.0)[0]]


def opened(node_id: str, parent: str) -> BlobSession:
    """``node_id``'s session, linked to its ``parent``, which described the blob."""
    session = seed_dial.session_of(node_id, MEMBERS, CONFIG, linked=True)
    session.start(now=0.0)
    assert sent(session.handle(LinkUp(parent), now=0.1), Interested) == [(parent, INTERESTED)]
    info = BlobInfo(DIGEST, COUNT * CHUNK, CHUNK, Bitfield(COUNT).to_bytes(), HASHES)
    session.handle(PeerMessage(parent, info), now=0.2)
    session.handle(BlobOpened(COUNT * CHUNK, CHUNK, Bitfield(COUNT), (None,) * COUNT), now=0.3)
    return session


def test_each_member_asks_its_parent_in_the_tree() -> None:
    order = hrw_order()  # seed, its children order[1:3], theirs order[3:5] and order[5:7]
    for place in range(1, len(order)):
        session = seed_dial.session_of(order[place], MEMBERS, CONFIG, linked=True)
        (dial,) = session.start(now=0.0)
        assert dial.member.node_id == order[(place - 1) // 2]  # type: ignore[attr-defined]


def test_a_parent_asks_its_child_back_and_hands_it_its_other_members() -> None:
    order = hrw_order()
    parent = opened(order[1], order[0])
    first = parent.handle(PeerMessage(order[3], INTERESTED), now=0.4)
    assert sent(first, Interested) == [(order[3], INTERESTED)]
    second = parent.handle(PeerMessage(order[4], INTERESTED), now=0.5)
    assert sent(second, Interested) == [(order[4], INTERESTED)]
    (handed,) = [m for _, m in sent(second, Peers)]
    assert isinstance(handed, Peers) and [p[0] for p in handed.peers] == [order[3]]
