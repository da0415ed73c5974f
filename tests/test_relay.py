"""Relay bookkeeping: who a fresh chunk is pushed to; pieces held until their hash comes."""

from __future__ import annotations

from p2pull.peer.messages import Piece
from p2pull.peer.relay import HeldPieces, Relay

D = "sha256:" + "cd" * 32


def test_the_seed_gives_each_origin_chunk_to_one_member_in_turn_skipping_refusals() -> None:
    relay = Relay()
    members = ["c", "a", "b"]
    taken = [
        relay.push_out(i, members, seeding=True, from_origin=True, push=lambda p: True)
        for i in range(4)
    ]
    assert taken == [{"a"}, {"b"}, {"c"}, {"a"}]
    # "b" cannot take one now: the next in turn does; then the turn goes on after it
    refusing = relay.push_out(4, members, seeding=True, from_origin=True, push=lambda p: p != "b")
    assert refusing == {"c"}
    assert relay.push_out(5, members, seeding=True, from_origin=True, push=lambda p: True) == {"a"}
    nobody = relay.push_out(6, members, seeding=True, from_origin=True, push=lambda p: False)
    assert nobody == set()
    # a chunk the seed got from a peer (after a failover, say) is only announced
    assert relay.push_out(7, members, seeding=True, from_origin=False, push=lambda p: True) == set()


def test_a_leech_relays_to_everyone_only_what_the_seed_gave_it_once() -> None:
    relay = Relay()
    pushed: list[str] = []

    def push(peer: str) -> bool:
        pushed.append(peer)
        return peer != "y"

    assert relay.push_out(3, ["x", "y"], seeding=False, from_origin=False, push=push) == set()
    relay.from_seed(3)
    assert relay.push_out(3, ["x", "y", "z"], seeding=False, from_origin=False, push=push) == {
        "x",
        "z",
    }
    assert pushed == ["x", "y", "z"]
    assert relay.push_out(3, ["x"], seeding=False, from_origin=False, push=push) == set()


def test_held_pieces_keep_within_the_budget_and_go_when_their_hash_is_known() -> None:
    held = HeldPieces(limit=10)
    assert held.hold("p", Piece(D, 0, b"x" * 6))
    assert not held.hold("q", Piece(D, 1, b"x" * 6))  # 12 > 10
    assert held.hold("q", Piece(D, 2, b"x" * 4))
    assert list(held) == [0, 2] and 2 in held and 1 not in held
    assert HeldPieces(limit=1).hold("p", Piece(D, 0, b"x" * 6))  # one piece always fits
    assert held.take(lambda i: i == 2) == [("q", Piece(D, 2, b"x" * 4))]
    held.forget("p")
    assert not held and held.take(lambda i: True) == []
