"""What a node gives its peers: which requests and pushes get an upload slot, super-seeding
grants, and whom a late asker is referred to. Pure bookkeeping shared by all of a node's blob
sessions; the I/O shell runs the uploads and reports when each takes its slot and ends.

A node uploads at most ``slots`` chunks at once. A request that comes while ``slots + queue``
uploads are under way or waiting is refused "busy" (the requester asks another holder at once
instead of queueing behind a busy uplink while others idle). A chunk is pushed to a peer only
while fewer than ``push_backlog`` of that peer's uploads wait for a slot; otherwise the caller
sends a Have and the peer asks when it can. Chunks this node fetched from the origin are
granted to one peer each (``p2pull.peer.superseed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from p2pull.peer.latecomers import Latecomers
from p2pull.peer.messages import REJECT_BUSY, BlobInfo, Message, Unavailable, peers_message
from p2pull.peer.superseed import SuperSeeder

PUSH_BACKLOG = 2  # relayed chunks (or requests) of one peer waiting for an upload slot, at most
REJECT_SEEDED = "seeded: ask the peers"
FAILED_FOR = 120.0  # seconds a seed that gave up on a blob says so to those who ask
DISTRUST_FOR = 3600.0  # seconds a seed whose blob failed its digest is passed over for it

UploadKey = tuple[str, str, int]  # (peer, digest, chunk index)


class Serving:
    def __init__(
        self,
        *,
        slots: int,
        queue: int = 0,
        superseed: SuperSeeder,
        latecomers: Latecomers,
        linked: Callable[[str], bool],
        push_backlog: int = PUSH_BACKLOG,
    ) -> None:
        if slots < 1 or queue < 0 or push_backlog < 1:
            raise ValueError("slots and push_backlog must be >= 1, queue >= 0")
        self.slots = slots
        self.queue = queue
        self.push_backlog = push_backlog
        self.superseed = superseed
        self.latecomers = latecomers
        self.linked = linked  # a live link to that peer is up
        self._waiting: set[UploadKey] = set()  # admitted, not yet holding a slot
        self._waiting_by_peer: dict[str, int] = {}
        self.active = 0  # uploads holding a slot
        self._failed: dict[str, tuple[float, str]] = {}  # digest -> (when, why) it failed here
        self._lied: dict[str, dict[str, float]] = {}  # digest -> seeds whose blob was bad, when

    @property
    def backlog(self) -> int:
        """Uploads under way plus those waiting for a slot."""
        return self.active + len(self._waiting)

    def request(self, peer: str, digest: str, index: int, *, now: float) -> str | None:
        """A peer asks for a chunk: None if it is admitted (the caller starts the upload, which
        waits for a slot), else the reason to reject it with."""
        if self.backlog >= self.slots + self.queue:
            return REJECT_BUSY
        if not self.superseed.grant(digest, index, peer, now=now, alive=self.linked):
            return REJECT_SEEDED
        self._wait((peer, digest, index))
        return None

    def push(self, peer: str, digest: str, index: int, *, seeding: bool, now: float) -> bool:
        """May chunk ``index`` be pushed to ``peer`` now? If so it is admitted like a request
        (the caller sends the Push and starts the upload). With ``seeding``, super-seeding must
        grant it too (a grant is spent only on a push that goes out)."""
        if not self.linked(peer) or self._waiting_by_peer.get(peer, 0) >= self.push_backlog:
            return False
        if seeding and not self.superseed.grant(digest, index, peer, now=now, alive=self.linked):
            return False
        self._wait((peer, digest, index))
        return True

    def cancel(self, peer: str, digest: str, index: int) -> None:
        """The peer no longer wants it (Cancel), or its upload will not run: drop it if it has
        not taken a slot yet (an upload under way finishes)."""
        key = (peer, digest, index)
        if key in self._waiting:
            self._waiting.discard(key)
            left = self._waiting_by_peer[peer] - 1
            if left:
                self._waiting_by_peer[peer] = left
            else:
                del self._waiting_by_peer[peer]

    def cancelled(self, peer: str, digest: str, index: int) -> None:
        """The peer sent Cancel for a chunk (a push it does not take, a request it no longer
        needs): drop the upload if it has not begun, and the super-seeding grant with it."""
        self.cancel(peer, digest, index)
        self.superseed.revoke(digest, index, peer)

    def begin(self, peer: str, digest: str, index: int) -> bool:
        """The upload took its slot; False if it was cancelled while it waited (then it must
        not run, and ``end`` is not called)."""
        key = (peer, digest, index)
        if key not in self._waiting:
            return False
        self.cancel(peer, digest, index)
        self.active += 1
        return True

    def end(self) -> None:
        """An upload that began has ended (sent, failed or dropped with its link)."""
        self.active -= 1

    def waiting(self, peer: str) -> int:
        return self._waiting_by_peer.get(peer, 0)

    def _wait(self, key: UploadKey) -> None:
        if key not in self._waiting:
            self._waiting.add(key)
            self._waiting_by_peer[key[0]] = self._waiting_by_peer.get(key[0], 0) + 1

    # -- blobs held whole ------------------------------------------------------------------------

    def seeding_started(self, digest: str) -> None:
        self.superseed.start(digest)

    def swarm_ended(self, digest: str, members: Iterable[str], *, now: float) -> None:
        """This node's session for ``digest`` ended with these members."""
        self.superseed.stop(digest, now=now)
        self.latecomers.add(digest, members, now=now)

    def referrals(self, digest: str, asker: str, *, now: float, limit: int) -> list[str]:
        """Whom a node asking for ``digest`` after this node's swarm for it ended should ask:
        the live peers this node gave chunks to while it still hands each chunk out once (it
        will refuse the asker those), then the others that asked late and the members of the
        swarm that ended (``p2pull.peer.latecomers``). Records the asker."""
        holders = self.superseed.recipients(digest, now=now, alive=self.linked)
        referrals = [peer for peer in holders if peer != asker]
        late = self.latecomers.refer(digest, asker, now=now, alive=self.linked)
        referrals += [peer for peer in late if peer not in referrals]
        return referrals[:limit]

    def seeding_failed(self, digest: str, reason: str, *, now: float) -> None:
        """This node seeded ``digest`` and could not fetch it: for ``FAILED_FOR`` seconds, a
        node asking for it is told so (it hands over to the next seed) instead of this node
        starting over with the origin for it."""
        self._failed = {
            d: (at, why) for d, (at, why) in self._failed.items() if now - at < FAILED_FOR
        }
        self._failed[digest] = (now, reason)

    def failure(self, digest: str, *, now: float) -> str | None:
        """Why this node could not seed ``digest`` lately, if it could not."""
        entry = self._failed.get(digest)
        if entry is None or now - entry[0] >= FAILED_FOR:
            return None
        return entry[1]

    def answer_interest(
        self, digest: str, asker: str, held: BlobInfo | None, *, now: float, limit: int
    ) -> list[Message] | None:
        """What to answer an Interested in ``digest`` that no session here owns: ``held``, this
        node's BlobInfo when it holds the blob whole, with whom else to ask (``referrals``);
        Unavailable when this node gave up seeding it lately; None: fetch it (a session will
        answer)."""
        if held is not None:
            referrals = self.referrals(digest, asker, now=now, limit=limit)
            return [held, peers_message(digest, referrals)] if referrals else [held]
        failure = self.failure(digest, now=now)
        if failure is not None:
            return [Unavailable(digest, failure[:1000])]
        return None

    def session_ended(
        self, digest: str, members: Iterable[str], *, now: float, failed_seeding: str | None
    ) -> None:
        """This node's session for ``digest`` ended with these members (and, if it seeded the
        blob and gave up, why)."""
        self.swarm_ended(digest, members, now=now)
        if failed_seeding is not None:
            self.seeding_failed(digest, failed_seeding, now=now)

    def distrust(self, digest: str, seed: str, *, now: float) -> None:
        """The blob ``seed`` described (its chunk hashes) failed its digest here: for
        ``DISTRUST_FOR`` seconds this node does not take ``digest`` from it again (the next
        HRW member seeds it for this node, or this node fetches it from the origin)."""
        self._lied.setdefault(digest, {})[seed] = now

    def distrusted(self, digest: str, *, now: float) -> set[str]:
        """The seeds this node does not take ``digest`` from now."""
        seeds = self._lied.get(digest, {})
        return {seed for seed, at in seeds.items() if now - at < DISTRUST_FOR}

    def forget(self, digest: str) -> None:
        self.superseed.forget(digest)
        self.latecomers.forget(digest)
        self._failed.pop(digest, None)


__all__ = ["PUSH_BACKLOG", "REJECT_SEEDED", "Serving"]
