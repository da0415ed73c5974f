"""Super-seeding bookkeeping: one copy per chunk per window, dead recipients do not count."""

from __future__ import annotations

import pytest

from p2pull.peer.superseed import SuperSeeder

D = "sha256:" + "ab" * 32


def everyone(peer: str) -> bool:
    return True


def test_a_blob_not_seeded_here_is_never_capped() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    assert all(seeder.grant(D, 0, f"p{i}", now=0.0, alive=everyone) for i in range(5))


def test_each_chunk_goes_to_one_peer_then_the_others_are_refused() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert not seeder.grant(D, 0, "b", now=0.1, alive=everyone)
    assert seeder.grant(D, 1, "b", now=0.1, alive=everyone)  # another chunk: its own count
    assert seeder.grant(D, 0, "a", now=0.2, alive=everyone)  # the recipient asking again


def test_two_copies_when_configured() -> None:
    seeder = SuperSeeder(copies=2, window=15.0)
    seeder.start(D)
    granted = [seeder.grant(D, 3, p, now=1.0, alive=everyone) for p in "abc"]
    assert granted == [True, True, False]


def test_a_dead_recipient_frees_its_copy() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert seeder.grant(D, 0, "b", now=1.0, alive=lambda peer: peer != "a")
    assert not seeder.grant(D, 0, "c", now=1.5, alive=everyone)


def test_the_window_grants_another_copy_later() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert not seeder.grant(D, 0, "b", now=14.9, alive=everyone)
    assert seeder.grant(D, 0, "b", now=15.0, alive=everyone)


def test_capping_lingers_one_window_after_the_swarm_ends() -> None:
    seeder = SuperSeeder(copies=1, window=10.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    seeder.stop(D, now=5.0)
    assert not seeder.grant(D, 0, "b", now=9.0, alive=everyone)
    assert seeder.grant(D, 0, "c", now=15.0, alive=everyone)  # linger over: state dropped
    assert not seeder.seeding(D)
    assert seeder.grant(D, 0, "d", now=15.1, alive=everyone)


def test_recipients_are_the_live_peers_granted_a_chunk_within_the_window() -> None:
    seeder = SuperSeeder(copies=1, window=10.0)
    assert seeder.recipients(D, now=0.0, alive=everyone) == []  # not seeded here
    seeder.start(D)
    assert seeder.grant(D, 0, "b", now=0.0, alive=everyone)
    assert seeder.grant(D, 1, "a", now=4.0, alive=everyone)
    assert seeder.grant(D, 2, "b", now=5.0, alive=everyone)
    assert seeder.grant(D, 3, "c", now=6.0, alive=everyone)
    seeder.stop(D, now=6.5)
    assert seeder.recipients(D, now=7.0, alive=everyone) == ["a", "b", "c"]
    assert seeder.recipients(D, now=7.0, alive=lambda peer: peer != "c") == ["a", "b"]
    assert seeder.recipients(D, now=14.5, alive=everyone) == ["b", "c"]  # a's grant expired
    assert seeder.recipients(D, now=16.5, alive=everyone) == []  # capping over: none refused
    assert seeder.recipients("sha256:" + "cd" * 32, now=7.0, alive=everyone) == []


def test_zero_copies_means_no_cap_and_bad_window_is_refused() -> None:
    seeder = SuperSeeder(copies=0, window=1.0)
    seeder.start(D)
    assert all(seeder.grant(D, 0, p, now=0.0, alive=everyone) for p in "abc")
    with pytest.raises(ValueError):
        SuperSeeder(copies=1, window=0.0)


def test_a_recipient_that_cancels_frees_its_copy_and_no_other() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert seeder.grant(D, 1, "a", now=0.0, alive=everyone)
    seeder.revoke(D, 0, "a")  # "a" sent Cancel for chunk 0 (a push it did not take)
    seeder.revoke(D, 0, "nobody")  # a Cancel from a peer without a grant changes nothing
    seeder.revoke("sha256:" + "cd" * 32, 0, "a")
    assert seeder.grant(D, 0, "b", now=0.1, alive=everyone)
    assert not seeder.grant(D, 1, "b", now=0.1, alive=everyone)  # chunk 1 is still a's
    assert seeder.recipients(D, now=0.2, alive=everyone) == ["a", "b"]


def test_a_peer_passing_the_blob_through_holds_no_copy() -> None:
    """A passer (no room in its store) never passes a chunk on: the chunk it was granted before
    it said so goes to the next requester at once, and what it takes later is not counted."""
    seeder = SuperSeeder(copies=1, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "passer", now=0.0, alive=everyone)
    assert seeder.grant(D, 2, "a", now=0.0, alive=everyone)
    assert seeder.passing(D, "passer") == [0]  # to be handed out again
    assert seeder.grant(D, 0, "b", now=0.1, alive=everyone)
    assert seeder.grant(D, 1, "passer", now=0.2, alive=everyone)
    assert seeder.grant(D, 1, "c", now=0.3, alive=everyone)
    assert not seeder.grant(D, 1, "d", now=0.4, alive=everyone)  # c holds the one copy
    assert seeder.recipients(D, now=0.5, alive=everyone) == ["a", "b", "c"]


def test_refuses_says_what_grant_would_answer_a_new_peer_and_records_nothing() -> None:
    seeder = SuperSeeder(copies=1, window=15.0)
    assert not seeder.refuses(D, 0, now=0.0, alive=everyone)  # not seeding this blob
    seeder.start(D)
    assert not seeder.refuses(D, 0, now=0.0, alive=everyone)
    assert not seeder.refuses(D, 0, now=0.0, alive=everyone)  # asking twice granted nothing
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert seeder.refuses(D, 0, now=0.1, alive=everyone)
    assert not seeder.grant(D, 0, "b", now=0.1, alive=everyone)
    assert not seeder.refuses(D, 0, now=0.2, alive=lambda peer: peer != "a")  # its holder left
    assert not seeder.refuses(D, 0, now=15.0, alive=everyone)  # the window passed


def test_refuses_only_once_every_copy_is_granted() -> None:
    seeder = SuperSeeder(copies=2, window=15.0)
    seeder.start(D)
    assert seeder.grant(D, 0, "a", now=0.0, alive=everyone)
    assert not seeder.refuses(D, 0, now=0.0, alive=everyone)
    assert seeder.grant(D, 0, "b", now=0.0, alive=everyone)
    assert seeder.refuses(D, 0, now=0.0, alive=everyone)
