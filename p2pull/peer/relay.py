"""Relaying fresh chunks: who a chunk is pushed to, and pieces that came before their hash.

Asked for, the newest chunk would be requested by every leech at once from its one holder, and
most requests answered "busy". Pushed, it travels a fixed path: the seed hands each chunk it
fetches from the origin to one member in turn (a relay), and the relay pushes it to every
member that lacks it. Each chunk crosses the seed's uplink once and every link carries a steady
share. Requests remain for everything else (late joiners, pushes refused or lost, the reader's
window).

A relayed piece can overtake the seed's Have that carries its hash (queued behind a piece on the
seed's link). Such a piece is held in memory, up to a byte budget, and verified once the hash
comes; it is never stored or served before. Pure bookkeeping: the blob session
(``p2pull.peer.session``) does the sending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from p2pull.peer.messages import Piece

HELD_BYTES = 16 << 20  # pieces kept until the seed's hash for them comes (one at least)


class Relay:
    """Which members a fresh chunk is pushed to."""

    def __init__(self) -> None:
        self._from_seed: set[int] = set()  # chunks the seed gave us: pushed on to everyone
        self._turn = 0  # the seed hands each origin chunk to the next member in turn

    def from_seed(self, index: int) -> None:
        """We got chunk ``index`` from the seed: we relay it once it lands."""
        self._from_seed.add(index)

    def push_out(
        self,
        index: int,
        lacking: list[str],
        *,
        seeding: bool,
        from_origin: bool,
        push: Callable[[str], bool],
        first: Callable[[str], bool] = lambda peer: False,
    ) -> set[str]:
        """Push fresh chunk ``index`` with ``push(peer)`` (False: that peer cannot take it now);
        returns the members it goes to. A leech relays what the seed gave it to every member in
        ``lacking``; the seed gives a chunk from the origin to the first member, in turn, that
        takes it: of those for which ``first`` holds (the seed's rack), then of the others."""
        if not seeding:
            if index not in self._from_seed:
                return set()
            self._from_seed.discard(index)
            return {peer for peer in lacking if push(peer)}
        if not from_origin:
            return set()
        preferred = sorted(peer for peer in lacking if first(peer))
        for ordered in (preferred, sorted(set(lacking) - set(preferred))):
            for turn in range(len(ordered)):
                peer = ordered[(self._turn + turn) % len(ordered)]
                if push(peer):
                    self._turn += turn + 1
                    return {peer}
        return set()


class HeldPieces:
    """Pieces whose hash has not come yet, by chunk index, within ``limit`` bytes."""

    def __init__(self, limit: int = HELD_BYTES) -> None:
        self.limit = limit
        self._pieces: dict[int, tuple[str, Piece]] = {}

    def __iter__(self) -> Iterator[int]:
        return iter(self._pieces)

    def __contains__(self, index: object) -> bool:
        return index in self._pieces

    def __bool__(self) -> bool:
        return bool(self._pieces)

    def hold(self, peer: str, piece: Piece) -> bool:
        """Keep ``piece`` from ``peer``; False (not kept) when it would pass the limit."""
        size = sum(len(held.data) for _, held in self._pieces.values())
        if self._pieces and size + len(piece.data) > self.limit:
            return False
        self._pieces[piece.index] = (peer, piece)
        return True

    def take(self, known: Callable[[int], bool]) -> list[tuple[str, Piece]]:
        """Remove and return the pieces whose hash is ``known`` now."""
        ready = [index for index in self._pieces if known(index)]
        return [self._pieces.pop(index) for index in ready]

    def forget(self, peer: str) -> None:
        """Drop what ``peer`` sent (it left, or lied)."""
        for index in [i for i, (holder, _) in self._pieces.items() if holder == peer]:
            del self._pieces[index]


__all__ = ["HELD_BYTES", "HeldPieces", "Relay"]
