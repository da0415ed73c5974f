"""A seed gives a fresh chunk to a member that takes it quickly: ``Serving`` times each upload
per receiver, and the seed's pushes pass over the slow receivers while a quicker one lacks the
chunk (a fresh chunk is held only where it goes; at a slow node every other member waits)."""

from __future__ import annotations

from p2pull.peer.events import ChunkLanded, PushPiece
from p2pull.peer.latecomers import Latecomers
from p2pull.peer.messages import Seeded
from p2pull.peer.serving import Serving
from p2pull.peer.superseed import SuperSeeder
from tests.test_session_seeded import HASHES, seeding, sent


def serving() -> Serving:
    return Serving(
        slots=4,
        superseed=SuperSeeder(copies=1, window=15.0),
        latecomers=Latecomers(window=60.0),
        linked=lambda peer: True,
    )


def test_no_receiver_is_slow_until_three_are_timed() -> None:
    node = serving()
    node.timed("a", 0.001)
    node.timed("b", 0.1)
    assert node.slow_receivers() == set()
    node.timed("c", 0.001)
    assert node.slow_receivers() == {"b"}


def test_slow_is_over_four_times_the_median_receiver() -> None:
    node = serving()
    times = {"a": 0.001, "b": 0.001, "c": 0.001, "d": 0.0039, "e": 0.0041}  # median 0.001
    for peer, seconds in times.items():
        node.timed(peer, seconds)
    assert node.slow_receivers() == {"e"}


def test_one_slow_upload_does_not_make_a_receiver_slow() -> None:
    node = serving()
    for peer in "abc":
        node.timed(peer, 0.001)
    node.timed("a", 0.01)  # a queue on its downlink, once: smoothed to 0.0037
    assert node.slow_receivers() == set()
    node.timed("a", 0.01)
    node.timed("a", 0.01)
    assert node.slow_receivers() == {"a"}


def test_the_seed_pushes_a_fresh_chunk_past_a_slow_receiver() -> None:
    session, _, _ = seeding()
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=1.0)
    turn = next(a.peer for a in landed if isinstance(a, PushPiece))  # whose turn it is
    session, members, passer = seeding()  # the same seed again, knowing that one is slow
    for peer in members:
        session.node.serving.timed(peer, 0.05 if peer == turn else 0.001)
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=1.0)
    pushed = [a.peer for a in landed if isinstance(a, PushPiece)]
    assert len(pushed) == 1 and pushed[0] not in (turn, passer)
    assert turn in [peer for peer, _ in sent(landed, Seeded)]


def test_when_every_member_is_slow_one_still_gets_the_push() -> None:
    session, members, passer = seeding()
    for peer in members:
        session.node.serving.timed(peer, 0.05 if peer != passer else 0.001)
    landed = session.handle(ChunkLanded(0, HASHES[0], "origin"), now=1.0)
    pushed = [a.peer for a in landed if isinstance(a, PushPiece)]
    assert len(pushed) == 1 and pushed[0] != passer
