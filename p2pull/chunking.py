"""Cutting an ordered byte stream into fixed-size chunks (pure: no I/O)."""

from __future__ import annotations


class ChunkAssembler:
    """Collects stream pieces and hands out whole chunks, copying each byte once.

    ``position`` is the absolute blob offset of the next byte expected: what a resumed
    ``Range`` request must start at to continue this stream without a gap.
    """

    def __init__(self, *, size: int, chunk_size: int, start: int) -> None:
        if start % chunk_size and start != size:
            # A mid-chunk start is only valid for a resumed assembler that kept its partial bytes.
            raise ValueError("a new assembler must start on a chunk boundary")
        self.size = size
        self.chunk_size = chunk_size
        self._index = start // chunk_size
        self._pieces: list[bytes] = []
        self._buffered = 0

    @property
    def position(self) -> int:
        return min(self.size, self._index * self.chunk_size + self._buffered)

    @property
    def next_index(self) -> int:
        return self._index

    def skip_to(self, index: int) -> None:
        """Drop buffered bytes and continue at chunk ``index`` (after a gap of present chunks)."""
        self._index, self._pieces, self._buffered = index, [], 0

    def feed(self, piece: bytes) -> list[tuple[int, bytes]]:
        """Add stream bytes; return the chunks they completed as (index, bytes)."""
        if self.position + len(piece) > self.size:
            raise ValueError(
                f"stream runs past the blob size {self.size} (at {self.position + len(piece)})"
            )
        self._pieces.append(piece)
        self._buffered += len(piece)
        done: list[tuple[int, bytes]] = []
        while self._buffered:
            length = min(self.chunk_size, self.size - self._index * self.chunk_size)
            if self._buffered < length:
                break
            # Only the piece that straddles the chunk's end is split; the join is the one copy.
            excess = self._buffered - length
            last = self._pieces[-1]
            if excess:
                head, rest = last[: len(last) - excess], last[len(last) - excess :]
                parts = [*self._pieces[:-1], head]
            else:
                parts, rest = self._pieces, b""
            chunk = parts[0] if len(parts) == 1 else b"".join(parts)
            done.append((self._index, chunk))
            self._index += 1
            self._pieces = [rest] if rest else []
            self._buffered = len(rest)
        return done
