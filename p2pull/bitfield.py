"""A fixed-length bitfield of which chunks a blob holds (pure; also sent on the peer wire)."""

from __future__ import annotations

from collections.abc import Iterator


class Bitfield:
    __slots__ = ("_bits", "_count", "length")

    def __init__(self, length: int, data: bytes | None = None) -> None:
        if length < 0:
            raise ValueError("bitfield length must be >= 0")
        self.length = length
        nbytes = (length + 7) // 8
        if data is None:
            self._bits = bytearray(nbytes)
        else:
            if len(data) != nbytes:
                raise ValueError(f"bitfield of {length} bits needs {nbytes} bytes, got {len(data)}")
            spare = nbytes * 8 - length
            if spare and data[-1] & ((1 << spare) - 1):
                raise ValueError("bitfield has bits set past its length")
            self._bits = bytearray(data)
        self._count = sum(bin(b).count("1") for b in self._bits)

    @classmethod
    def full(cls, length: int) -> Bitfield:
        field = cls(length)
        for index in range(length):
            field.set(index)
        return field

    def __contains__(self, index: int) -> bool:
        return self.has(index)

    def has(self, index: int) -> bool:
        if not 0 <= index < self.length:
            raise IndexError(f"chunk {index} out of range 0..{self.length - 1}")
        return bool(self._bits[index >> 3] & (0x80 >> (index & 7)))

    def set(self, index: int) -> None:
        if not self.has(index):
            self._bits[index >> 3] |= 0x80 >> (index & 7)
            self._count += 1

    def clear(self, index: int) -> None:
        if self.has(index):
            self._bits[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.length

    def missing(self) -> Iterator[int]:
        return (i for i in range(self.length) if not self.has(i))

    def present(self) -> Iterator[int]:
        return (i for i in range(self.length) if self.has(i))

    def first_missing(self) -> int | None:
        for byte_index, byte in enumerate(self._bits):
            if byte != 0xFF:
                for bit in range(8):
                    index = byte_index * 8 + bit
                    if index >= self.length:
                        return None
                    if not byte & (0x80 >> bit):
                        return index
        return None

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        return Bitfield(self.length, bytes(self._bits))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bitfield) and (self.length, self._bits) == (
            other.length,
            other._bits,
        )

    def __hash__(self) -> int:
        raise TypeError("Bitfield is mutable")

    def __repr__(self) -> str:
        return f"Bitfield({self._count}/{self.length})"
