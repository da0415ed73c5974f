"""Membership: HRW seed choice, merging of discovery sources, suspicion, change notification."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pull.errors import P2pullError
from p2pull.membership import InvalidPeerAddress, Member, Membership, hrw_score, rack_of, rank

SELF = Member.of("198.18.0.1", 5051)


def m(last: int, port: int = 5051) -> Member:
    return Member.of(f"198.18.0.{last}", port)


def digest(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


members_st = st.lists(
    st.builds(m, st.integers(1, 254), st.integers(1, 65535)),
    min_size=1,
    max_size=12,
    unique_by=lambda member: member.node_id,
)
digests_st = st.integers(0, 10**9).map(digest)


# -- Member --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "node_id"),
    [
        ("198.18.0.2:5051", "198.18.0.2:5051"),
        (" 127.0.0.1:40001 ", "127.0.0.1:40001"),
        ("[fd00::2]:5051", "[fd00::2]:5051"),
        ("[FD00:0::2]:5051", "[fd00::2]:5051"),
    ],
    ids=["ipv4", "whitespace", "ipv6", "ipv6-canonicalised"],
)
def test_parse_member(text: str, node_id: str) -> None:
    member = Member.parse(text)
    assert member.node_id == node_id
    assert Member.of(member.host, member.port) == member


@pytest.mark.parametrize(
    "text",
    ["198.18.0.2", "198.18.0.2:", ":5051", "198.18.0.2:0", "198.18.0.2:65536", "node-a:5051",
     "fd00::2:5051", "198.18.0.2:50x1", "198.18.0.256:1"],
    ids=["no-port", "empty-port", "no-host", "port-0", "port-too-big", "hostname",
         "ipv6-no-brackets", "port-not-numeric", "bad-octet"],
)  # fmt: skip
def test_parse_member_rejects(text: str) -> None:
    with pytest.raises(InvalidPeerAddress):
        Member.parse(text)


def test_member_fields_must_agree() -> None:
    with pytest.raises(InvalidPeerAddress):
        Member("198.18.0.2:1", "198.18.0.2", 2)
    with pytest.raises(InvalidPeerAddress):
        Member("198.018.0.2:1", "198.018.0.2", 1)
    assert issubclass(InvalidPeerAddress, ValueError)
    assert issubclass(InvalidPeerAddress, P2pullError)


# -- HRW -----------------------------------------------------------------------------------------


def test_hrw_score_is_the_documented_hash() -> None:
    expected = hashlib.sha256(b"198.18.0.2:5051\0sha256:ab").digest()[:8]
    assert hrw_score("198.18.0.2:5051", "sha256:ab") == int.from_bytes(expected, "big")


@given(members=members_st, digest=digests_st, data=st.data())
def test_every_node_computes_the_same_seed_whatever_the_discovery_order(
    members: list[Member], digest: str, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    assert rank(shuffled, digest) == rank(members, digest)
    a = Membership(self_member=members[0])
    b = Membership(self_member=shuffled[-1])
    a.update_source("dns", members, now=0)
    b.update_source("mdns", shuffled[: len(shuffled) // 2], now=0)
    b.update_source("static", shuffled[len(shuffled) // 2 :], now=0)
    assert a.seed_for(digest, now=1) == b.seed_for(digest, now=1)
    assert a.successors(digest, now=1) == b.successors(digest, now=1)


@given(members=members_st.filter(lambda ms: len(ms) >= 2), digest=digests_st, data=st.data())
def test_removing_a_non_seed_member_keeps_the_seed(
    members: list[Member], digest: str, data: st.DataObject
) -> None:
    seed = rank(members, digest)[0]
    gone = data.draw(st.sampled_from([member for member in members if member != seed]))
    assert rank([member for member in members if member != gone], digest)[0] == seed


@given(members=members_st.filter(lambda ms: len(ms) >= 2), digest=digests_st)
def test_removing_the_seed_promotes_the_second(members: list[Member], digest: str) -> None:
    seed, second, *_ = rank(members, digest)
    assert rank([member for member in members if member != seed], digest)[0] == second


def test_seeds_spread_roughly_uniformly() -> None:
    members = [m(10 + i) for i in range(8)]
    counts = Counter(rank(members, digest(n))[0] for n in range(2000))
    assert set(counts) == set(members)
    for member in members:
        assert 0.05 * 2000 <= counts[member] <= 0.25 * 2000, counts


def test_rank_breaks_ties_by_node_id() -> None:
    members = [m(3), m(2)]
    assert rank(members + members, "sha256:x")[:2] == [rank(members, "sha256:x")[0]] * 2


# -- sources, suspicion, notification -------------------------------------------------------------


def test_live_is_the_union_of_sources_plus_self_sorted() -> None:
    ms = Membership(self_member=SELF)
    assert ms.live(now=0) == [SELF]
    ms.update_source("static", [m(3), m(2)], now=0)
    ms.update_source("dns", [m(2), m(4), SELF], now=0)
    assert ms.live(now=0) == [SELF, m(2), m(3), m(4)]
    ms.update_source("static", [], now=1)  # a source's new view replaces its old one
    assert ms.live(now=1) == [SELF, m(2), m(4)]
    assert ms.sources() == {"dns": [SELF, m(2), m(4)]}


def test_suspected_member_leaves_for_suspect_for_seconds() -> None:
    ms = Membership(self_member=SELF, suspect_for=10.0)
    ms.update_source("dns", [m(2), m(3)], now=0)
    ms.suspect(m(2).node_id, now=5)
    assert ms.live(now=5) == [SELF, m(3)]
    assert ms.next_expiry() == 15
    assert ms.live(now=14.9) == [SELF, m(3)]
    assert ms.live(now=15) == [SELF, m(2), m(3)]
    assert ms.next_expiry() is None


def test_suspecting_again_extends_and_alive_clears() -> None:
    ms = Membership(self_member=SELF, suspect_for=10.0)
    ms.update_source("dns", [m(2)], now=0)
    ms.suspect(m(2).node_id, now=0)
    ms.suspect(m(2).node_id, now=8)
    assert ms.live(now=12) == [SELF]
    ms.alive(m(2).node_id)
    assert ms.live(now=12) == [SELF, m(2)]


def test_self_is_never_suspected() -> None:
    ms = Membership(self_member=SELF)
    ms.suspect(SELF.node_id, now=0)
    assert ms.live(now=0) == [SELF]
    assert ms.next_expiry() is None


def test_seed_moves_to_the_next_when_the_seed_is_suspected() -> None:
    ms = Membership(self_member=SELF)
    ms.update_source("mdns", [m(2), m(3), m(4)], now=0)
    blob = next(digest(n) for n in range(100) if ms.seed_for(digest(n), now=0) != SELF)
    seed, second, *_ = ms.successors(blob, now=0)
    ms.suspect(seed.node_id, now=1)
    assert ms.seed_for(blob, now=1) == second
    assert ms.seed_for(blob, now=100) == seed  # suspicion lapsed


def test_version_bumps_and_on_change_fires_only_when_the_live_set_changes() -> None:
    calls: list[int] = []
    ms = Membership(self_member=SELF, suspect_for=10.0)
    ms.on_change = lambda: calls.append(ms.version)
    assert ms.version == 0
    ms.update_source("dns", [m(2)], now=0)
    ms.update_source("dns", [m(2)], now=1)  # same view
    ms.update_source("static", [m(2)], now=1)  # already live through dns
    assert calls == [1]
    ms.suspect(m(2).node_id, now=2)
    ms.suspect(m(3).node_id, now=2)  # not a member: nothing visible changes
    assert calls == [1, 2]
    ms.expire(now=11.9)
    assert calls == [1, 2]
    ms.expire(now=12)
    assert calls == [1, 2, 3]
    assert ms.version == 3
    ms.alive(m(2).node_id)  # not suspected any more
    assert calls == [1, 2, 3]


def test_time_never_runs_backwards() -> None:
    ms = Membership(self_member=SELF, suspect_for=10.0)
    ms.update_source("dns", [m(2)], now=0)
    ms.suspect(m(2).node_id, now=0)
    assert ms.live(now=20) == [SELF, m(2)]
    assert ms.live(now=5) == [SELF, m(2)]  # an older `now` does not resurrect the suspicion


@settings(max_examples=50)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["update", "suspect", "alive", "live"]),
            st.sampled_from(["static", "dns", "mdns"]),
            st.lists(st.integers(1, 6), max_size=6),
            st.floats(0, 3),
        ),
        max_size=30,
    )
)
def test_version_counts_exactly_the_changes_of_the_live_set(
    steps: list[tuple[str, str, list[int], float]],
) -> None:
    calls = []
    ms = Membership(self_member=m(1), suspect_for=2.0)
    ms.on_change = lambda: calls.append(1)
    now = 0.0
    previous = ms.live(now=now)
    changes = 0
    for action, source, lasts, step in steps:
        now += step
        # Time passes first: a suspicion may lapse before the action. ``alive`` takes no clock,
        # so without this look its change and a lapse would land in one observation (a real
        # sequence hypothesis found: alive(2) brings 2 back, then now=2.0 ends 3's suspicion).
        current = ms.live(now=now)
        changes += current != previous
        previous = current
        if action == "update":
            ms.update_source(source, [m(last) for last in lasts], now=now)
        elif action == "suspect" and lasts:
            ms.suspect(m(lasts[0]).node_id, now=now)
        elif action == "alive" and lasts:
            ms.alive(m(lasts[0]).node_id)
        current = ms.live(now=now)
        assert m(1) in current
        assert current == sorted(current, key=lambda member: member.node_id)
        changes += current != previous
        previous = current
    assert ms.version == changes == len(calls)


@pytest.mark.parametrize(
    ("node_id", "bits", "rack"),
    [
        ("198.18.3.7:5051", 24, "198.18.3.0/24"),
        ("198.18.3.7:5051", 16, "198.18.0.0/16"),
        ("198.18.3.7:5051", 0, ""),
        ("[2001:db8:0:12::5]:5051", 32, "2001:db8:0:12::/64"),
    ],
)
def test_rack_of_is_the_members_network(node_id: str, bits: int, rack: str) -> None:
    assert rack_of(node_id, bits) == rack
