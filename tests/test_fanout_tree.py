"""p2pull.peer.fanout: the tree a blob's members form with ``SessionConfig.fanout``."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2pull.peer.fanout import parent


def no_racks(member: str) -> str:
    return ""


def rack_of(member: str) -> str:
    return member.split("/")[0]


def test_without_racks_the_ranking_is_a_heap_of_fanout_children() -> None:
    ranked = [f"n{i}" for i in range(10)]
    parents = [parent(ranked, place, 3, no_racks) for place in range(10)]
    assert parents == ["n0", "n0", "n0", "n0", "n1", "n1", "n1", "n2", "n2", "n2"]


def test_with_racks_each_rack_hangs_from_its_root_and_the_roots_from_the_seed() -> None:
    ranked = ["a/0", "b/0", "a/1", "b/1", "c/0", "a/2", "b/2", "c/1", "b/3"]
    parents = {m: parent(ranked, place, 2, rack_of) for place, m in enumerate(ranked)}
    assert parents == {
        "a/0": "a/0",  # the seed
        "b/0": "a/0",  # rack b's root
        "a/1": "a/0",  # the seed's rack hangs from the seed
        "b/1": "b/0",
        "c/0": "a/0",  # rack c's root
        "a/2": "a/0",
        "b/2": "b/0",
        "c/1": "c/0",
        "b/3": "b/1",  # b/0 has two children: the next goes under b/1
    }


def test_the_roots_form_a_tree_of_their_own() -> None:
    ranked = ["s/0", *(f"r{i}/0" for i in range(5))]
    parents = [parent(ranked, place, 2, rack_of) for place in range(1, 6)]
    assert parents == ["s/0", "s/0", "r0/0", "r0/0", "r1/0"]


def heap_depth(nodes: int, fanout: int) -> int:
    """The levels below the top of a heap of ``nodes`` with ``fanout`` children each."""
    depth, level, placed = 0, 1, 1
    while placed < nodes:
        level *= fanout
        placed += level
        depth += 1
    return depth


@pytest.mark.parametrize("fanout", [1, 4, 32])
def test_every_member_reaches_the_seed_in_its_rack_or_through_its_root(fanout: int) -> None:
    rng = random.Random(fanout)
    ranked = [f"{rng.randrange(20)}/{i}" for i in range(600)]
    parents = [parent(ranked, place, fanout, rack_of) for place in range(len(ranked))]
    index = {m: i for i, m in enumerate(ranked)}
    askers = Counter(parents[1:])
    largest = max(Counter(rack_of(m) for m in ranked).values())
    assert max(askers.values()) <= 2 * fanout  # its rack's tree and the roots' tree
    for place in range(1, len(ranked)):
        hops, at = 0, place
        while at != 0:
            up = index[parents[at]]
            assert up < at  # a parent ranks before its children: no cycles
            crossing = rack_of(ranked[up]) != rack_of(ranked[at])
            # a rack is entered once, at its root (the first of it in the ranking)
            assert not crossing or all(rack_of(m) != rack_of(ranked[at]) for m in ranked[:at])
            at, hops = up, hops + 1
        assert hops <= heap_depth(21, fanout) + heap_depth(largest + 1, fanout)


def test_a_fanout_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="fanout must be at least 1"):
        parent(["a", "b"], 1, 0, no_racks)
