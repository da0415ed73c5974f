"""BlobSession's dials to its seed, on its own (no network)."""

from __future__ import annotations

from collections.abc import Callable

from p2pull.membership import Member, Membership
from p2pull.peer.events import Dial, DialFailed, NodeContext, SessionConfig
from p2pull.peer.latecomers import Latecomers
from p2pull.peer.serving import Serving
from p2pull.peer.session import BlobSession
from p2pull.peer.superseed import SuperSeeder

DIGEST = "sha256:" + "cd" * 32


def leech(config: SessionConfig) -> tuple[BlobSession, Membership, list[str]]:
    members = [Member.of(f"198.18.0.{i}", 5051) for i in range(1, 5)]
    probe = Membership(self_member=members[0])
    probe.update_source("static", members, now=0.0)
    order = [m.node_id for m in probe.ranking(DIGEST, now=0.0)[0]]
    me = Member.parse(order[-1])  # the last in HRW order: never the seed nor its successor
    session = session_of(me.node_id, members, config)
    return session, session.node.membership, order


def session_of(
    node_id: str,
    members: list[Member],
    config: SessionConfig,
    *,
    linked: bool = False,
    rack: Callable[[str], str] = lambda node_id: "",
) -> BlobSession:
    """The blob's session on ``node_id`` among ``members`` (``linked``: to every peer; each
    node in ``rack(node_id)``, "": racks not known)."""
    membership = Membership(self_member=Member.parse(node_id))
    membership.update_source("static", members, now=0.0)
    serving = Serving(
        slots=4,
        superseed=SuperSeeder(copies=1, window=15.0),
        latecomers=Latecomers(window=60.0),
        linked=lambda peer: linked,
    )
    node = NodeContext(node_id, membership, serving, config, rack)
    return BlobSession(digest=DIGEST, name="lib/image", ns=None, node=node)


def dials(actions: list[object]) -> list[str]:
    return [action.member.node_id for action in actions if isinstance(action, Dial)]


def test_a_seed_whose_dial_timed_out_is_dialed_again_before_its_successor() -> None:
    session, membership, order = leech(SessionConfig(seed_dials=2))
    seed, successor = order[0], order[1]
    assert dials(session.start(now=0.0)) == [seed]
    again = session.handle(DialFailed(seed, "timed out", timed_out=True), now=5.0)
    assert dials(again) == [seed]  # a saturated link may drop a handshake: not suspected
    assert seed in {m.node_id for m in membership.live(now=5.0)}
    then = session.handle(DialFailed(seed, "timed out", timed_out=True), now=10.0)
    assert dials(then) == [successor]
    assert seed not in {m.node_id for m in membership.live(now=10.0)}


def test_a_seed_that_refuses_is_passed_over_at_once() -> None:
    session, _, order = leech(SessionConfig(seed_dials=2))
    seed, successor = order[0], order[1]
    session.start(now=0.0)
    refused = session.handle(DialFailed(seed, "[Errno 111] Connection refused"), now=0.1)
    assert dials(refused) == [successor]
