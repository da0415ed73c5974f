"""Super-seeding: the node that fetches a blob from the origin hands each chunk out once.

Every leech wants the newest chunk the moment the seed announces it. If the seed served them
all, its uplink would carry the blob once per node and the swarm would be no faster than direct
pulls (measured: 2.8 copies on the seed's uplink, the whole run bound by it). So, while a node
seeds a blob and for ``window`` seconds after, it grants each chunk to at most ``copies``
peers per ``window``; the other requesters are rejected and get the chunk from those peers, who
announce it with a Have the moment it lands. A requester that comes after the swarm ended (a
small blob is done in milliseconds) hears from no one: the seed names the ``recipients`` when
it answers that requester's Interested (and the latecomers: ``p2pull.peer.latecomers``). A
recipient whose link is gone no longer counts (the chunk may have died with it), and after
``window`` seconds the seed grants another copy, so a requester that cannot reach any
recipient is delayed, never stranded.

Pure bookkeeping: the node asks ``grant`` for each request and says when seeding starts and
ends; ``alive`` tells whether a peer is still connected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class SuperSeeder:
    def __init__(self, *, copies: int, window: float) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.copies = copies  # 0: no cap
        self.window = window
        self._seeding: dict[str, float | None] = {}  # digest -> when seeding ended (None: now)
        self._granted: dict[str, dict[int, list[tuple[float, str]]]] = {}
        self._passers: dict[str, set[str]] = {}  # peers passing the blob through

    def start(self, digest: str) -> None:
        """This node fetches ``digest`` from the origin from now on."""
        self._seeding[digest] = None

    def stop(self, digest: str, *, now: float) -> None:
        """The node's swarm for ``digest`` ended: keep capping for ``window`` seconds more."""
        if digest in self._seeding:
            self._seeding[digest] = now

    def forget(self, digest: str) -> None:
        self._seeding.pop(digest, None)
        self._granted.pop(digest, None)
        self._passers.pop(digest, None)

    def passing(self, digest: str, peer: str) -> list[int]:
        """``peer`` passes ``digest`` through (no room in its store): what it takes is for its
        own reader, never passed on, so its grants do not count, those it holds included (kept,
        each would refuse every other requester that chunk for the rest of the window). Returns
        the chunks it held a grant for: those refused meanwhile wait for another copy."""
        if digest not in self._seeding:
            return []
        self._passers.setdefault(digest, set()).add(peer)
        dropped = []
        for index, grants in sorted(self._granted.get(digest, {}).items()):
            kept = [(at, holder) for at, holder in grants if holder != peer]
            if len(kept) < len(grants):
                dropped.append(index)
                grants[:] = kept
        return dropped

    def grant(
        self, digest: str, index: int, peer: str, *, now: float, alive: Callable[[str], bool]
    ) -> bool:
        """May ``peer`` have chunk ``index`` of ``digest`` from us now? Records the grant."""
        if self.copies <= 0 or digest not in self._seeding:
            return True
        if self._lapsed(digest, now):
            self.forget(digest)
            return True
        if peer in self._passers.get(digest, ()):
            return True  # a copy for its reader alone: not one of the ``copies``
        chunks = self._granted.setdefault(digest, {})
        recent = self._recent(chunks.get(index, ()), now, alive)
        if any(holder == peer for _, holder in recent):
            chunks[index] = recent
            return True  # asked again (it cancelled, or lost the piece): not another copy
        if len(recent) >= self.copies:
            chunks[index] = recent
            return False
        recent.append((now, peer))
        chunks[index] = recent
        return True

    def refuses(self, digest: str, index: int, *, now: float, alive: Callable[[str], bool]) -> bool:
        """Would a peer that holds no grant of chunk ``index`` be refused it now (its copies are
        granted)? A passer is granted it regardless. Records nothing."""
        if self.copies <= 0 or digest not in self._seeding or self._lapsed(digest, now):
            return False
        grants = self._granted.get(digest, {}).get(index, ())
        return len(self._recent(grants, now, alive)) >= self.copies

    def _recent(
        self, grants: Iterable[tuple[float, str]], now: float, alive: Callable[[str], bool]
    ) -> list[tuple[float, str]]:
        """The grants still in force: within the window, to a peer still linked."""
        return [(at, holder) for at, holder in grants if now - at < self.window and alive(holder)]

    def revoke(self, digest: str, index: int, peer: str) -> None:
        """``peer`` cancelled chunk ``index`` (a push it did not take, a request it no longer
        needs): it will not hold the chunk by this grant, so the grant no longer counts (kept,
        it would refuse every other requester that chunk for the rest of the window)."""
        grants = self._granted.get(digest, {}).get(index)
        if grants:
            grants[:] = [(at, holder) for at, holder in grants if holder != peer]

    def recipients(self, digest: str, *, now: float, alive: Callable[[str], bool]) -> list[str]:
        """The live peers granted a chunk of ``digest`` within the window, sorted: where a
        requester this node refuses can get those chunks instead. Empty once capping is over
        (the window after the swarm's end has passed: this node serves every chunk itself)."""
        if digest not in self._seeding or self._lapsed(digest, now):
            return []
        return sorted(
            {
                holder
                for grants in self._granted.get(digest, {}).values()
                for at, holder in grants
                if now - at < self.window and alive(holder)
            }
        )

    def _lapsed(self, digest: str, now: float) -> bool:
        """The window after this node's swarm for ``digest`` ended has passed (it is seeded)."""
        ended = self._seeding[digest]
        return ended is not None and now - ended >= self.window

    def seeding(self, digest: str) -> bool:
        return digest in self._seeding
