"""Latecomers: nodes that ask this node for a blob after its swarm for it is over.

A node that holds a blob whole answers a late Interested with its BlobInfo and nothing more: no
swarm runs here any longer to hand out members. Nodes that start a while after a storm would
then all pull from this one node (measured: four nodes starting 25 s after a 128 MiB storm,
16-18 s, the seed's uplink carrying the blob four times, the latecomers uploading nothing). So
this node remembers who asked late, and who was in its swarm when the swarm ended, for
``window`` seconds, and names the recent ones to the next asker; the latecomers then pull from
them and from each other, as they would in a running swarm.

Pure bookkeeping: the node asks ``refer`` for each late Interested and ``add``s a swarm's
members as it ends; ``alive`` tells whether a peer is still connected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Latecomers:
    def __init__(self, *, window: float, keep: int = 64) -> None:
        if window <= 0 or keep <= 0:
            raise ValueError(f"window and keep must be > 0, got {window} and {keep}")
        self.window = window
        self.keep = keep  # askers remembered per blob, the most recent
        self._asked: dict[str, dict[str, float]] = {}  # digest -> peer -> when it was named

    def refer(
        self, digest: str, peer: str, *, now: float, alive: Callable[[str], bool]
    ) -> list[str]:
        """The other live peers named for ``digest`` within the window (late askers, members
        of the swarm that ended), most recent first; records ``peer`` as asking now."""
        self._expire(now)
        named = self._asked.get(digest, {})
        others = sorted(
            ((at, other) for other, at in named.items() if other != peer and alive(other)),
            reverse=True,
        )
        self._record(digest, [peer], now)
        return [other for _, other in others]

    def add(self, digest: str, peers: Iterable[str], *, now: float) -> None:
        """``peers`` hold (or are fetching) ``digest`` now: name them to latecomers as well (the
        members of this node's swarm for it, as the swarm ends)."""
        self._expire(now)
        self._record(digest, list(peers), now)

    def _record(self, digest: str, peers: list[str], now: float) -> None:
        if not peers:
            return
        named = self._asked.setdefault(digest, {})
        for peer in peers:
            named.pop(peer, None)
            named[peer] = now  # dicts keep insertion order: the oldest is first
        while len(named) > self.keep:
            del named[next(iter(named))]

    def forget(self, digest: str) -> None:
        self._asked.pop(digest, None)

    def _expire(self, now: float) -> None:
        for digest in list(self._asked):
            asked = self._asked[digest]
            for peer in [p for p, at in asked.items() if now - at >= self.window]:
                del asked[peer]
            if not asked:
                del self._asked[digest]
