"""``SessionConfig.fanout``: members form a tree in HRW order and each asks its parent; a parent
asks its children back, or it would never hear what they hold (the seed grants each fresh chunk
to one child and refuses it to the rest)."""

from __future__ import annotations

import hashlib

from p2pull.bitfield import Bitfield
from p2pull.membership import Member
from p2pull.peer.events import BlobOpened, LinkUp, PeerMessage, SessionConfig
from p2pull.peer.messages import BlobInfo, Interested, Peers, Request
from p2pull.peer.session import BlobSession
from tests import test_session_seed_dial as seed_dial
from tests.test_session_passing import sent
from tests.test_session_seed_dial import DIGEST

CHUNK = 1 << 20
COUNT = 4
HASHES = tuple(hashlib.sha256(bytes([i])).digest() for i in range(COUNT))
MANY = 16  # more chunks than a node's last ones, asked anywhere (FAR_TAIL)
MANY_HASHES = tuple(hashlib.sha256(bytes([i])).digest() for i in range(MANY))
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


def test_a_racks_root_fetches_across_at_once_what_its_far_parent_holds() -> None:
    """With racks known a rack hangs from its root, its only way in: the root does not wait
    ``far_wait`` for a near copy of the chunks it does not lead (no near peer will have them)."""
    order = hrw_order()
    rack = {m: "far" for m in order}
    rack.update({order[1]: "a", order[3]: "a", order[4]: "a"})  # order[1] roots rack "a"
    config = SessionConfig(fanout=2, far_wait=1000.0, max_in_flight_per_peer=MANY)
    root = seed_dial.session_of(order[1], MEMBERS, config, linked=True, rack=rack.__getitem__)
    (dial,) = root.start(now=0.0)
    assert dial.member.node_id == order[0]  # type: ignore[attr-defined]
    root.handle(LinkUp(order[0]), now=0.1)
    info = BlobInfo(DIGEST, MANY * CHUNK, CHUNK, Bitfield.full(MANY).to_bytes(), MANY_HASHES)
    root.handle(PeerMessage(order[0], info), now=0.2)
    root.handle(BlobOpened(MANY * CHUNK, CHUNK, Bitfield(MANY), (None,) * MANY), now=0.3)
    empty = BlobInfo(DIGEST, MANY * CHUNK, CHUNK, Bitfield(MANY).to_bytes(), (b"",) * MANY)
    for child in (order[3], order[4]):  # its rack's members ask it and describe what they hold
        root.handle(PeerMessage(child, INTERESTED), now=0.4)
        root.handle(PeerMessage(child, empty), now=0.4)
    asked = sorted(m.index for _, m in sent(root.pump(now=0.5), Request))  # type: ignore[attr-defined]
    assert asked == list(range(MANY))  # those it leads and those it does not
