"""Chunk scheduler: which chunk to ask of which peer (pure policy, driven with explicit ``now``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pull.bitfield import Bitfield
from p2pull.peer.scheduler import (
    DOWNLINK_GAIN,
    FAR_TAIL,
    PUSHES_PER_PEER,
    Assignment,
    Scheduler,
)


def bits(pattern: str) -> Bitfield:
    """``"1101"``: chunks 0, 1 and 3."""
    out = Bitfield(len(pattern))
    for index, char in enumerate(pattern):
        if char == "1":
            out.set(index)
    return out


def reqs(text: str) -> list[Assignment]:
    """``"a:0 b:3"`` -> [Assignment("a", 0), Assignment("b", 3)]."""
    out = []
    for item in text.split():
        peer, index = item.split(":")
        out.append(Assignment(peer, int(index)))
    return out


# A case is a scheduler, peers, and steps; each step is (operation, *arguments, expected result).
Step = tuple[object, ...]


@dataclass
class Case:
    id: str
    chunks: int
    peers: dict[str, str]
    steps: list[Step]
    options: dict[str, float] = field(default_factory=dict)


CASES = [
    Case(
        "window-first-in-order-then-lowest-index",
        8,
        {"a": "11111111", "b": "11111111"},
        [("window", 5, 7), ("next", 0, "a:5 b:6 a:0 b:1")],
        {"max_in_flight_per_peer": 2},
    ),
    Case(
        "window-is-clamped-and-skips-chunks-we-have",
        4,
        {"a": "1111"},
        [("have", 2), ("window", 1, 99), ("next", 0, "a:1 a:3 a:0")],
    ),
    Case(
        "rarest-first",
        4,
        {"a": "1111", "b": "0110", "c": "0010"},
        [("next", 0, "a:0 b:1 c:2")],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "rarest-first-ties-broken-by-lowest-index",
        4,
        {"a": "1111", "b": "1111", "c": "0101"},
        [("next", 0, "a:0 b:2 c:1")],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "peer-has-changes-rarity",
        3,
        {"a": "111", "b": "011"},
        [("peer_has", "b", 0), ("peer_has", "c", 1), ("next", 0, "a:0 b:2 c:1")],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "per-peer-limit",
        10,
        {"a": "1111111111"},
        [("next", 0, "a:0 a:1 a:2"), ("next", 1, "")],
        {"max_in_flight_per_peer": 3},
    ),
    Case(
        "spread-to-least-loaded-peer",
        6,
        {"c": "111111", "a": "111111", "b": "111111"},
        [("next", 0, "a:0 b:1 c:2 a:3 b:4 c:5")],
        {"max_in_flight_per_peer": 2},
    ),
    Case(
        "least-loaded-peer-wins-over-the-rarer-holder",
        4,
        {"a": "1111", "b": "0011"},
        [("next", 0, "a:0 a:1 b:2 b:3")],
        {"max_in_flight_per_peer": 3, "endgame_duplicates": 1},
    ),
    Case(
        "never-a-chunk-we-have",
        4,
        {"a": "1111"},
        [("have", 0), ("have", 1), ("next", 0, "a:2 a:3"), ("unavailable", [])],
    ),
    Case(
        "only-chunks-the-peer-has",
        4,
        {"a": "1000", "b": "0000"},
        [("next", 0, "a:0"), ("unavailable", [1, 2, 3])],
    ),
    Case(
        "no-duplicates-outside-endgame",
        3,
        {"a": "111", "b": "111"},
        [
            ("next", 0, "a:0 b:1"),
            ("next", 1, ""),
            ("add_peer", "c", "110"),  # c only has chunks in flight, chunk 2 is not: no endgame
            ("next", 2, ""),
            ("add_peer", "d", "111"),
            ("next", 3, "d:2 c:0"),  # now every missing chunk is in flight: endgame
        ],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "endgame-duplicates-then-cancel",
        2,
        {"a": "11", "b": "11"},
        [
            ("next", 0, "a:0 b:1 b:0 a:1"),
            ("next", 1, ""),
            ("piece", "b", 0, 2, "a:0"),
            ("have", 0),
            ("have", 1),  # have() before on_piece(): the duplicate is still cancelled
            ("piece", "a", 1, 2, "b:1"),
            ("complete", True),
        ],
        {"max_in_flight_per_peer": 2},
    ),
    Case(
        "endgame-duplicate-cap",
        1,
        {"a": "1", "b": "1", "c": "1"},
        [("next", 0, "a:0 b:0 c:0"), ("piece", "c", 0, 1, "a:0 b:0")],
        {"endgame_duplicates": 3},
    ),
    Case(
        "endgame-off-with-one-request-per-chunk",
        1,
        {"a": "1", "b": "1"},
        [("next", 0, "a:0")],
        {"endgame_duplicates": 1},
    ),
    Case(
        "endgame-window-then-oldest-request-first",
        3,
        {"a": "111"},
        [
            ("next", 0, "a:0"),
            ("add_peer", "b", "111"),
            ("next", 1, "b:1"),
            ("window", 2, 3),
            ("add_peer", "c", "111"),
            ("next", 2, "c:2"),
            ("add_peer", "d", "111"),
            ("next", 3, "d:2"),  # the window chunk first
            ("add_peer", "e", "111"),
            ("next", 4, "e:0"),  # then the longest outstanding
            ("add_peer", "f", "111"),
            ("next", 5, "f:1"),
        ],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "expiry-releases-and-penalizes",
        2,
        {"a": "11", "b": "11", "c": "01"},
        [
            ("next", 0, "a:0 b:1"),
            ("expire", 9.9, ""),
            ("expire", 10, "a:0 b:1"),
            ("next", 10, "c:1"),  # a and b sit out their penalty
            ("next", 14.9, ""),
            ("next", 15, "a:0"),
        ],
        {"max_in_flight_per_peer": 1, "endgame_duplicates": 1},
    ),
    Case(
        "remove-peer-releases-its-requests",
        3,
        {"a": "111", "b": "001"},
        [
            ("next", 0, "a:0 a:1 b:2"),
            ("remove", "a", [0, 1]),
            ("unavailable", [0, 1]),
            ("next", 1, ""),
            ("remove", "nobody", []),
        ],
        {"max_in_flight_per_peer": 2},
    ),
    Case(
        "failed-chunk-is-not-asked-of-that-peer-again-soon",
        2,
        {"a": "11", "b": "11"},
        [
            ("next", 0, "a:0 b:1"),
            ("failed", "a", 0, 1),
            ("next", 1, ""),  # b is full; a is free but just failed chunk 0
            ("failed", "b", 1, 1),
            ("next", 1, "b:0 a:1"),
            ("failed", "b", 0, 2),
            ("failed", "a", 1, 2),
            ("next", 2, ""),
            ("next", 5.9, ""),
            ("next", 6, "a:0 b:1"),  # stall_penalty after their first failures
        ],
        {"max_in_flight_per_peer": 1},
    ),
    Case(
        "missing-unavailable-ignores-in-flight-and-held",
        5,
        {"a": "11000"},
        [
            ("unavailable", [2, 3, 4]),
            ("have", 2),
            ("unavailable", [3, 4]),
            ("remove", "a", []),
            ("unavailable", [0, 1, 3, 4]),
        ],
    ),
    Case("empty-blob-is-complete", 0, {}, [("complete", True), ("next", 0, "")]),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_policy(case: Case) -> None:
    sched = Scheduler(chunk_count=case.chunks, **case.options)  # type: ignore[arg-type]
    for peer, pattern in case.peers.items():
        sched.add_peer(peer, bits(pattern))
    for op, *args in case.steps:
        if op == "next":
            assert sched.next_requests(now=args[0]) == reqs(args[1]), args  # type: ignore[arg-type]
        elif op == "window":
            sched.set_window(*args)  # type: ignore[arg-type]
        elif op == "have":
            sched.have(args[0])  # type: ignore[arg-type]
        elif op == "peer_has":
            sched.peer_has(args[0], args[1])  # type: ignore[arg-type]
        elif op == "add_peer":
            sched.add_peer(args[0], bits(args[1]))  # type: ignore[arg-type]
        elif op == "piece":
            cancels = sched.on_piece(args[0], args[1], now=args[2])  # type: ignore[arg-type]
            assert cancels == reqs(args[3]), args  # type: ignore[arg-type]
        elif op == "failed":
            sched.on_failed(args[0], args[1], now=args[2])  # type: ignore[arg-type]
        elif op == "expire":
            assert sched.expire(now=args[0]) == reqs(args[1]), args  # type: ignore[arg-type]
        elif op == "remove":
            assert sched.remove_peer(args[0]) == args[1], args  # type: ignore[arg-type]
        elif op == "unavailable":
            assert sched.missing_unavailable() == args[0]
        elif op == "complete":
            assert sched.complete is args[0]
        else:
            raise AssertionError(op)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Scheduler(chunk_count=4, max_in_flight_per_peer=0)
    with pytest.raises(ValueError):
        Scheduler(chunk_count=4, request_timeout=0)
    sched = Scheduler(chunk_count=4)
    with pytest.raises(ValueError):
        sched.add_peer("a", Bitfield(5))
    with pytest.raises(IndexError):
        sched.have(4)


def test_add_peer_copies_and_replaces_the_bitfield() -> None:
    sched = Scheduler(chunk_count=2, max_in_flight_per_peer=1)
    field = bits("10")
    sched.add_peer("a", field)
    field.set(1)  # the caller's object is not the scheduler's
    sched.add_peer("a", bits("01"))  # replaced, not merged
    assert sched.next_requests(now=0) == [Assignment("a", 1)]
    assert sched.missing_unavailable() == [0]
    assert sched.in_flight() == [Assignment("a", 1)]


# --- invariants under arbitrary sequences -----------------------------------------------------

PEERS = ["p0", "p1", "p2", "p3"]
CHUNKS = 12


class SchedulerMachine(RuleBasedStateMachine):
    """Random calls; the scheduler's answers are checked against a model of what it was told."""

    def __init__(self) -> None:
        super().__init__()
        self.sched = Scheduler(
            chunk_count=CHUNKS, max_in_flight_per_peer=2, request_timeout=5, stall_penalty=3
        )
        self.now = 0.0
        self.peers: dict[str, set[int]] = {}
        self.held: set[int] = set()
        self.pushes: set[Assignment] = set()  # in flight because the peer pushed them

    @rule(peer=st.sampled_from(PEERS), chunks=st.sets(st.integers(0, CHUNKS - 1)))
    def add_peer(self, peer: str, chunks: set[int]) -> None:
        field = Bitfield(CHUNKS)
        for index in chunks:
            field.set(index)
        self.sched.add_peer(peer, field)
        self.peers[peer] = set(chunks)

    @rule(peer=st.sampled_from(PEERS), index=st.integers(0, CHUNKS - 1))
    def peer_has(self, peer: str, index: int) -> None:
        self.sched.peer_has(peer, index)
        self.peers.setdefault(peer, set()).add(index)

    @rule(peer=st.sampled_from(PEERS))
    def remove_peer(self, peer: str) -> None:
        before = {a.index for a in self.sched.in_flight() if a.peer == peer}
        assert set(self.sched.remove_peer(peer)) == before
        self.peers.pop(peer, None)
        assert all(a.peer != peer for a in self.sched.in_flight())

    @rule(peer=st.sampled_from(PEERS), index=st.integers(0, CHUNKS - 1))
    def pushed(self, peer: str, index: int) -> None:
        before = self.sched.in_flight()
        crossed = self.sched.pushed(peer, index, now=self.now)
        after = self.sched.in_flight()
        push = Assignment(peer, index)
        cap = PUSHES_PER_PEER * self.sched.max_in_flight_per_peer
        if push in before:  # asked of it already: nothing changes, nothing to cancel
            assert crossed == [] and after == before
            return
        if (
            peer not in self.peers
            or index in self.held
            or sum(a.peer == peer for a in before) >= cap
        ):
            assert crossed is None and after == before
            return
        assert crossed is not None
        assert set(crossed) == {a for a in before if a.index == index}
        assert after == sorted(set(before) - set(crossed) | {push})
        assert self.sched.expecting(peer, index)
        self.pushes.add(push)

    @rule(start=st.integers(-2, CHUNKS), length=st.integers(0, 5))
    def set_window(self, start: int, length: int) -> None:
        self.sched.set_window(start, start + length)

    @rule(dt=st.sampled_from([0.0, 0.5, 2.0, 6.0]))
    def next_requests(self, dt: float) -> None:
        self.now += dt
        before = self.sched.in_flight()
        new = self.sched.next_requests(now=self.now)
        after = self.sched.in_flight()
        assert sorted(before + new) == after  # registered as in flight, nothing else changed
        for request in new:
            assert request.index not in self.held
            assert request.index in self.peers[request.peer]
        in_flight_chunks = [a.index for a in after]
        was_in_flight = {a.index for a in before}
        duplicated = [a for a in new if a.index in was_in_flight] + [
            a for i, a in enumerate(new) if a.index in {b.index for b in new[:i]}
        ]
        if duplicated:  # endgame only: every missing chunk is in flight
            assert set(range(CHUNKS)) - self.held <= set(in_flight_chunks)
        for index in set(in_flight_chunks):
            assert in_flight_chunks.count(index) <= self.sched.endgame_duplicates

    @rule()
    def wakes_only_in_the_future(self) -> None:
        # What ChunkExchange.request does; the driver then sleeps until next_deadline: one
        # in the past would be a busy loop.
        self.sched.expire(now=self.now)
        self.sched.next_requests(now=self.now)
        deadline = self.sched.next_deadline()
        assert deadline is None or deadline > self.now

    @precondition(lambda self: bool(self.sched.in_flight()))
    @rule(data=st.data(), have_first=st.booleans())
    def deliver(self, data: st.DataObject, have_first: bool) -> None:
        request = data.draw(st.sampled_from(self.sched.in_flight()))
        others = {a for a in self.sched.in_flight() if a.index == request.index} - {request}
        if have_first:
            self.sched.have(request.index)
        cancels = self.sched.on_piece(request.peer, request.index, now=self.now)
        if not have_first:
            self.sched.have(request.index)
        assert set(cancels) == others
        self.held.add(request.index)
        assert all(a.index != request.index for a in self.sched.in_flight())

    @precondition(lambda self: bool(self.sched.in_flight()))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from(self.sched.in_flight()))
        self.sched.on_failed(request.peer, request.index, now=self.now)
        assert request not in self.sched.in_flight()

    @rule(dt=st.sampled_from([0.0, 3.0, 6.0]))
    def expire(self, dt: float) -> None:
        self.now += dt
        expired = self.sched.expire(now=self.now)
        assert not set(expired) & set(self.sched.in_flight())

    @invariant()
    def per_peer_limit_and_consistency(self) -> None:
        in_flight = self.sched.in_flight()
        self.pushes &= set(in_flight)  # delivered, failed, expired or released: gone
        limit = self.sched.max_in_flight_per_peer
        for peer in PEERS:
            mine = [a for a in in_flight if a.peer == peer]
            assert len(mine) <= PUSHES_PER_PEER * limit
            assert sum(a not in self.pushes for a in mine) <= limit  # only pushes go past it
        assert all(a.peer in self.peers and a.index not in self.held for a in in_flight)
        assert self.sched.complete == (len(self.held) == CHUNKS)
        for index in self.sched.missing_unavailable():
            assert index not in self.held
            assert all(index not in chunks for chunks in self.peers.values())


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# --- simulation: peers that answer every request eventually ------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.integers(1, 40),
    holdings=st.lists(st.sets(st.integers(0, 39)), min_size=1, max_size=5),
    latencies=st.lists(st.sampled_from([0.1, 0.5, 1.0, 3.0, 9.0]), min_size=5, max_size=5),
    window=st.integers(0, 39),
)
def test_simulated_swarm_completes(
    chunks: int, holdings: list[set[int]], latencies: list[float], window: int
) -> None:
    sched = Scheduler(chunk_count=chunks, request_timeout=10.0, stall_penalty=2.0)
    peers = {f"peer{i}": {c for c in held if c < chunks} for i, held in enumerate(holdings)}
    peers["seedlike"] = set(range(chunks))  # together the peers hold every chunk
    latency = {peer: latencies[i % 5] for i, peer in enumerate(sorted(peers))}
    peers["staller"] = set(range(chunks))  # never answers: only expiry gets its chunks back
    latency["staller"] = math.inf
    for peer, held in peers.items():
        field = Bitfield(chunks)
        for index in held:
            field.set(index)
        sched.add_peer(peer, field)
    sched.set_window(window, window + 3)
    now = 0.0
    pending: dict[Assignment, float] = {}  # request -> when its piece arrives
    for _ in range(5000):
        if sched.complete:
            break
        for request in sched.next_requests(now=now):
            assert request.index in peers[request.peer]
            pending[request] = now + latency[request.peer]
        now += 0.25
        for request, due in sorted(pending.items(), key=lambda item: (item[1], item[0])):
            if due <= now and request in pending:
                del pending[request]
                for cancel in sched.on_piece(request.peer, request.index, now=now):
                    pending.pop(cancel, None)
                sched.have(request.index)
        for expired in sched.expire(now=now):
            pending.pop(expired, None)
    assert sched.complete, (now, sched.missing_unavailable(), sched.in_flight())
    assert sched.in_flight() == []


def test_nodes_spread_their_first_requests_over_equally_loaded_holders() -> None:
    """With a per-node salt, nodes that see the same holders do not all pick the same one (the
    lowest id would carry the chunk to everybody); without a salt, the lowest id is picked."""
    firsts = set()
    for node in range(16):
        scheduler = Scheduler(chunk_count=1, salt=f"node-{node}".encode())
        for peer in "abcd":
            scheduler.add_peer(peer, bits("1"))
        first = scheduler.next_requests(now=0.0)[0]
        firsts.add(first.peer)
    assert len(firsts) >= 3
    plain = Scheduler(chunk_count=1)
    for peer in "dcba":
        plain.add_peer(peer, bits("1"))
    assert plain.next_requests(now=0.0)[0] == Assignment("a", 0)


def test_a_push_counts_as_a_request_and_cancels_the_requests_it_crossed() -> None:
    scheduler = Scheduler(chunk_count=3, max_in_flight_per_peer=1)
    scheduler.add_peer("seed", bits("111"))
    scheduler.add_peer("relay", bits("000"))
    assert scheduler.next_requests(now=0.0) == reqs("seed:0")
    # the relay pushes chunk 0 (asked of the seed) and chunk 2: the request for 0 is returned
    # to cancel; both are now expected from the relay, beyond its one-request limit
    assert scheduler.pushed("relay", 0, now=1.0) == reqs("seed:0")
    assert scheduler.pushed("relay", 2, now=1.0) == []
    assert scheduler.expecting("relay", 0) and scheduler.expecting("relay", 2)
    assert not scheduler.expecting("seed", 0)
    assert scheduler.in_flight() == reqs("relay:0 relay:2")
    assert scheduler.next_requests(now=1.0) == reqs("seed:1")  # 0 and 2 are not asked again
    assert scheduler.on_piece("relay", 0, now=2.0) == []
    scheduler.have(0)
    # a push of a chunk held or from an unknown peer: declined; one already expected from that
    # peer (asked, or pushed before): nothing to cancel, nothing changes
    assert scheduler.pushed("relay", 0, now=2.0) is None
    assert scheduler.pushed("stranger", 1, now=2.0) is None
    assert scheduler.pushed("relay", 2, now=2.0) == []
    assert scheduler.pushed("seed", 1, now=2.0) == []
    assert scheduler.in_flight() == reqs("relay:2 seed:1")
    # an expired push is released and penalized like a request
    assert scheduler.expire(now=1.0 + scheduler.request_timeout) == reqs("seed:1 relay:2")


def test_a_peer_cannot_push_more_than_its_share_of_chunks_at_once() -> None:
    """A hostile member could push every chunk and send none: each would wait for the
    request timeout. Pushes beyond PUSHES_PER_PEER x max_in_flight_per_peer are declined."""
    count = 2 * PUSHES_PER_PEER * 4
    scheduler = Scheduler(chunk_count=count, max_in_flight_per_peer=4)
    scheduler.add_peer("liar", Bitfield(count))
    answers = [scheduler.pushed("liar", i, now=0.0) for i in range(count)]
    cap = PUSHES_PER_PEER * 4
    assert answers[:cap] == [[]] * cap
    assert answers[cap:] == [None] * (count - cap)


def test_a_busy_peer_is_asked_again_after_retry_after_not_the_stall_penalty() -> None:
    scheduler = Scheduler(chunk_count=1, stall_penalty=5.0, endgame_duplicates=1)
    scheduler.add_peer("a", bits("1"))
    assert scheduler.next_requests(now=0.0) == reqs("a:0")
    scheduler.on_failed("a", 0, now=1.0, retry_after=0.5)
    assert scheduler.next_requests(now=1.4) == []
    assert scheduler.next_requests(now=1.5) == reqs("a:0")
    scheduler.on_failed("a", 0, now=2.0)  # a plain Reject: the stall penalty
    assert scheduler.next_requests(now=6.9) == []
    assert scheduler.next_requests(now=7.0) == reqs("a:0")


def test_a_peer_removed_while_avoided_leaves_no_wake_up_in_the_past() -> None:
    # The seed answered busy, then died: its avoidance went with it, and so must its wake-up
    # (the driver sleeps until next_deadline; one in the past spun the agent at full CPU).
    scheduler = Scheduler(chunk_count=2, stall_penalty=5.0)
    scheduler.add_peer("seed", bits("11"))
    scheduler.add_peer("b", bits("00"))
    assert scheduler.next_requests(now=0.0) == reqs("seed:0 seed:1")
    scheduler.on_failed("seed", 0, now=1.0, retry_after=0.5)
    scheduler.remove_peer("seed")
    for now in (2.0, 3.0):
        assert scheduler.next_requests(now=now) == []
        deadline = scheduler.next_deadline()
        assert deadline is None or deadline > now


def test_piece_seconds_follows_how_long_requests_take() -> None:
    scheduler = Scheduler(chunk_count=3, max_in_flight_per_peer=1)
    scheduler.add_peer("a", bits("111"))
    assert scheduler.piece_seconds is None
    assert scheduler.next_requests(now=0.0) == reqs("a:0")
    scheduler.on_piece("a", 0, now=2.0)
    scheduler.have(0)
    assert scheduler.piece_seconds == 2.0
    assert scheduler.next_requests(now=2.0) == reqs("a:1")
    scheduler.on_piece("a", 1, now=3.0)  # took 1 s: the estimate moves a fifth of the way
    assert scheduler.piece_seconds == pytest.approx(1.8)
    scheduler.on_piece("stranger", 2, now=9.0)  # nothing was asked of it: no measure
    assert scheduler.piece_seconds == pytest.approx(1.8)


def test_endgame_duplicates_a_request_only_once_it_is_late() -> None:
    """Once pieces have been timed, a request in the endgame is duplicated only when it is
    ENDGAME_LATE typical pieces old: a duplicate of an on-time request costs a holder's
    uplink a whole chunk for nothing. The scheduler wakes up when it turns late."""
    scheduler = Scheduler(chunk_count=3, max_in_flight_per_peer=1)
    scheduler.add_peer("a", bits("111"))
    scheduler.add_peer("b", bits("111"))
    assert scheduler.next_requests(now=0.0) == reqs("a:0 b:1")
    assert scheduler.on_piece("a", 0, now=1.0) == []
    scheduler.have(0)
    assert scheduler.piece_seconds == 1.0
    assert scheduler.next_requests(now=1.0) == reqs("a:2")  # every missing chunk is in flight
    scheduler.add_peer("c", bits("111"))
    assert scheduler.next_requests(now=1.5) == []  # b:1 (asked at 0) is late only at 2.0
    assert scheduler.next_deadline() == 2.0
    assert scheduler.next_requests(now=2.0) == reqs("c:1")
    assert scheduler.in_flight() == reqs("a:2 b:1 c:1")


def test_holders_in_the_nodes_rack_are_asked_first() -> None:
    scheduler = Scheduler(
        chunk_count=3,
        max_in_flight_per_peer=2,
        endgame_duplicates=1,
        near=lambda peer: peer.startswith("near"),
    )
    for peer in ("far-a", "far-b", "near-z"):
        scheduler.add_peer(peer, bits("111"))
    # the near holder while it has room, then the far ones
    assert scheduler.next_requests(now=0.0) == reqs("near-z:0 near-z:1 far-a:2")
    plain = Scheduler(chunk_count=1, endgame_duplicates=1)
    for peer in ("far-a", "near-z"):
        plain.add_peer(peer, bits("1"))
    assert plain.next_requests(now=0.0) == reqs("far-a:0")  # racks unknown: by peer id


def racked(node_id: str, *, chunks: int, far_wait: float = 4.0) -> Scheduler:
    """A scheduler of node ``node_id`` whose rack is the peers named ``near-*``."""
    return Scheduler(
        chunk_count=chunks,
        max_in_flight_per_peer=1,
        endgame_duplicates=1,
        near=lambda peer: peer.startswith("near"),
        far_wait=far_wait,
        node_id=node_id,
        blob_key=b"sha256:blob",
    )


def test_each_chunk_only_other_racks_hold_is_fetched_across_at_once_by_one_node_of_the_rack() -> (
    None
):
    """Two nodes of a rack that know each other: for each chunk, exactly one (its rack leader)
    asks a far holder at once; the other waits ``far_wait`` typical pieces for it to come near."""
    chunks, far = 12, ("far-1", "far-2", "far-3", "far-4", "far-5", "far-6")
    nodes = {name: racked(name, chunks=chunks) for name in ("near-a", "near-b")}
    asked: dict[str, set[int]] = {}
    for name, scheduler in nodes.items():
        scheduler.piece_seconds = 0.5
        scheduler.add_peer("near-b" if name == "near-a" else "near-a", bits("0" * chunks))
        for k, peer in enumerate(far):  # each lacks one chunk: none holds the whole blob
            scheduler.add_peer(peer, bits("1" * k + "0" + "1" * (chunks - k - 1)))
        asked[name] = {request.index for request in scheduler.next_requests(now=0.0)}
    assert asked["near-a"].isdisjoint(asked["near-b"])
    assert asked["near-a"] and asked["near-b"]  # each leads a share
    follower = nodes["near-a"]
    waiting = sorted(set(range(chunks)) - asked["near-a"])[0]
    assert follower.next_deadline() == pytest.approx(2.0)  # 4 x 0.5 s
    follower.peer_has("near-b", waiting)  # its leader has it now: asked near
    assert Assignment("near-b", waiting) in follower.next_requests(now=0.1)


def test_a_lone_node_of_its_rack_leads_every_chunk() -> None:
    scheduler = racked("near-a", chunks=6)
    scheduler.piece_seconds = 0.5
    for peer in ("far-1", "far-2", "far-3"):
        scheduler.add_peer(peer, bits("111110"))
    assert len(scheduler.next_requests(now=0.0)) == 3  # one per far holder's free slot


def test_a_chunk_a_near_peer_holds_is_asked_there_however_busy_it_is() -> None:
    """A near holder that is busy (here: its one slot taken) is waited for, past ``far_wait``;
    within the last FAR_TAIL chunks any holder will do."""
    scheduler = racked("near-a", chunks=FAR_TAIL + 2, far_wait=1.0)
    scheduler.piece_seconds = 0.5
    scheduler.add_peer("near-b", bits("1" * (FAR_TAIL + 2)))
    scheduler.add_peer("far-1", bits("1" * (FAR_TAIL + 1) + "0"))  # not the whole blob
    first = scheduler.next_requests(now=0.0)
    assert [request.peer for request in first] == ["near-b"]
    assert scheduler.next_requests(now=10.0) == []  # far-1 free, but near-b holds them all
    scheduler.on_piece("near-b", first[0].index, now=10.0)
    scheduler.have(first[0].index)
    second = scheduler.next_requests(now=10.0)
    assert [request.peer for request in second] == ["near-b"]
    scheduler.on_piece("near-b", second[0].index, now=10.5)
    scheduler.have(second[0].index)  # FAR_TAIL chunks missing: far-1 too
    assert sorted(r.peer for r in scheduler.next_requests(now=10.5)) == ["far-1", "near-b"]


def test_a_far_peer_holding_the_whole_blob_is_asked_at_once() -> None:
    """Done, its uplink has room for other racks (the blob's seed aside: it hands a chunk out
    once, and it is no near holder to wait for)."""
    scheduler = racked("near-a", chunks=8, far_wait=100.0)
    scheduler.piece_seconds = 0.5
    scheduler.add_peer("near-b", bits("0" * 8))
    scheduler.add_peer("far-seed", bits("1" * 8))
    scheduler.last_resort = "far-seed"
    scheduler.add_peer("far-1", bits("11110000"))
    leads = {r.index for r in scheduler.next_requests(now=0.0)}
    assert all(scheduler._leading(i) for i in leads)  # only what it leads, partial holders
    done = racked("near-a", chunks=8, far_wait=100.0)
    done.piece_seconds = 0.5
    done.add_peer("near-b", bits("0" * 8))
    done.add_peer("far-done", bits("1" * 8))
    assert done.next_requests(now=0.0) == reqs("far-done:0")  # 1 in flight per peer


def test_a_far_peer_that_completes_the_blob_lifts_the_wait_until_it_leaves() -> None:
    scheduler = racked("near-a", chunks=8, far_wait=100.0)
    scheduler.add_peer("near-b", bits("0" * 8))
    scheduler.add_peer("far-1", bits("11111110"))
    scheduler.add_peer("far-2", bits("11111110"))
    free = {"far-1": 1, "far-2": 1}
    assert scheduler._near_offer(free) == set()  # chunks come near: nothing near yet
    scheduler.peer_has("far-2", 7)  # the whole blob now
    assert scheduler._near_offer(free) is None  # any chunk may be asked of it
    assert scheduler._near_offer({"far-1": 1}) == set()  # but only while it is free
    scheduler.remove_peer("far-2")
    assert scheduler._near_offer({"far-1": 1}) == set()


def test_the_seed_in_the_rack_is_no_near_holder_to_wait_for() -> None:
    scheduler = racked("near-a", chunks=8, far_wait=100.0)
    scheduler.piece_seconds = 0.5
    scheduler.add_peer("near-seed", bits("1" * 8))
    scheduler.last_resort = "near-seed"
    scheduler.on_failed("near-seed", 0, now=0.0)  # it granted chunk 0 to someone else
    scheduler.add_peer("far-1", bits("10000000"))
    assert Assignment("far-1", 0) in scheduler.next_requests(now=0.0)  # the only one: leads


def test_with_racks_the_rarest_chunk_in_the_rack_is_asked_for_first() -> None:
    scheduler = Scheduler(chunk_count=2, max_in_flight_per_peer=1, near=lambda p: p < "m")
    scheduler.add_peer("a-near", bits("11"))
    for peer in ("x-far", "y-far", "z-far"):
        scheduler.add_peer(peer, bits("10"))  # chunk 0: 4 holders, 1 near; chunk 1: 1, near
    scheduler.add_peer("b-near", bits("10"))  # chunk 0: 2 near holders now
    assert scheduler.next_requests(now=0.0)[0] == Assignment("a-near", 1)
    plain = Scheduler(chunk_count=2, max_in_flight_per_peer=1)
    plain.add_peer("a", bits("11"))
    plain.add_peer("b", bits("01"))
    plain.add_peer("c", bits("01"))
    assert plain.next_requests(now=0.0)[0] == Assignment("a", 0)  # racks unknown: rarest


def test_with_queued_requests_stop_at_what_the_downlink_delivers_in_the_quickest_answer() -> None:
    """``queued``: chunks in flight at most ceil(DOWNLINK_GAIN x the downlink's rate over the
    last pieces x the quickest answer seen) + queued. Pieces at 10 a second, the quickest
    answer 0.25 s: 2.5 chunks delivered meanwhile; the holders' free slots allow 16."""
    scheduler = Scheduler(chunk_count=40, max_in_flight_per_peer=4, queued=1)
    for peer in "abcd":
        scheduler.add_peer(peer, bits("1" * 40))
    first = scheduler.next_requests(now=0.0)
    assert len(first) == 16  # nothing timed yet: no cap
    assert scheduler.downlink_cap() == math.inf
    for k, request in enumerate(first[:9]):
        scheduler.on_piece(request.peer, request.index, now=0.25 + 0.1 * k)
        scheduler.have(request.index)
    assert scheduler.quickest == 0.25
    cap = math.ceil(DOWNLINK_GAIN * 2.5) + 1  # 7 pieces over 0.7 s: 10/s, x 0.25 s
    assert scheduler.downlink_cap() == cap < 7
    assert scheduler.next_requests(now=1.05) == []  # 7 still in flight
    done = first[9 : 9 + 7 - cap + 2]  # two below the cap once these come
    for k, request in enumerate(done, start=1):
        scheduler.on_piece(request.peer, request.index, now=1.05 + 0.1 * k)
        scheduler.have(request.index)
    assert scheduler.downlink_cap() == cap  # still 10 a second
    assert len(scheduler.next_requests(now=2.0)) == 2
    assert len(scheduler.in_flight()) == cap
    plain = Scheduler(chunk_count=40, max_in_flight_per_peer=4)
    for peer in "abcd":
        plain.add_peer(peer, bits("1" * 40))
    for request in plain.next_requests(now=0.0)[:9]:
        plain.on_piece(request.peer, request.index, now=0.25)
    assert plain.downlink_cap() == math.inf  # queued 0: no such cap


def test_a_pushed_piece_is_not_taken_for_the_quickest_answer() -> None:
    """A push counts from when its Push came, not from a request: its piece follows at once
    and would make the downlink look much quicker than any answer."""
    scheduler = Scheduler(chunk_count=4, max_in_flight_per_peer=2, queued=1)
    scheduler.add_peer("a", bits("1111"))
    assert scheduler.pushed("a", 3, now=1.0) == []
    scheduler.on_piece("a", 3, now=1.001)
    scheduler.have(3)
    assert scheduler.quickest is None
    assert scheduler.next_requests(now=1.001) == reqs("a:0 a:1")
    scheduler.on_piece("a", 0, now=1.5)
    assert scheduler.quickest == pytest.approx(0.499)
