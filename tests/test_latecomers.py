"""Latecomers bookkeeping: who asked for a blob after its swarm ended, named to the next."""

from __future__ import annotations

import pytest

from p2pull.peer.latecomers import Latecomers

D, E = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32


def everyone(peer: str) -> bool:
    return True


def test_each_asker_is_told_of_the_earlier_ones_most_recent_first() -> None:
    late = Latecomers(window=60.0)
    assert late.refer(D, "a", now=0.0, alive=everyone) == []
    assert late.refer(D, "b", now=1.0, alive=everyone) == ["a"]
    assert late.refer(D, "c", now=2.0, alive=everyone) == ["b", "a"]
    assert late.refer(E, "d", now=2.5, alive=everyone) == []  # per blob
    assert late.refer(D, "a", now=3.0, alive=everyone) == ["c", "b"]  # asking again: not itself


def test_gone_and_old_askers_are_not_named() -> None:
    late = Latecomers(window=10.0)
    late.refer(D, "a", now=0.0, alive=everyone)
    late.refer(D, "b", now=5.0, alive=everyone)
    assert late.refer(D, "c", now=6.0, alive=lambda peer: peer != "b") == ["a"]
    assert late.refer(D, "d", now=12.0, alive=everyone) == ["c", "b"]  # a asked 12 s ago


def test_only_the_most_recent_are_kept_and_forget_drops_a_blob() -> None:
    late = Latecomers(window=60.0, keep=3)
    for index, peer in enumerate("abcde"):
        late.refer(D, peer, now=float(index), alive=everyone)
    assert late.refer(D, "f", now=10.0, alive=everyone) == ["e", "d", "c"]
    late.forget(D)
    assert late.refer(D, "g", now=11.0, alive=everyone) == []
    with pytest.raises(ValueError):
        Latecomers(window=0.0)


def test_the_members_of_an_ended_swarm_are_named_too() -> None:
    late = Latecomers(window=10.0)
    late.add(D, ["m1", "m2"], now=0.0)
    late.add(E, [], now=0.0)
    assert late.refer(D, "a", now=1.0, alive=everyone) == ["m2", "m1"]
    assert late.refer(E, "b", now=1.0, alive=everyone) == []
    assert late.refer(D, "c", now=10.5, alive=everyone) == ["a"]  # the members' 10 s are over
