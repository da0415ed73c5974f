"""Bitfield: which chunks a blob holds. Bit 0 is the top bit of byte 0 (the wire format)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pull.bitfield import Bitfield


def _model_bytes(length: int, members: set[int]) -> bytes:
    out = bytearray((length + 7) // 8)
    for index in members:
        out[index // 8] |= 0x80 >> (index % 8)
    return bytes(out)


@pytest.mark.parametrize("length", [pytest.param(n, id=f"len{n}") for n in (1, 7, 8, 9, 64, 65)])
def test_new_bitfield_is_empty(length: int) -> None:
    field = Bitfield(length)
    assert field.length == length
    assert field.count == 0
    assert not field.complete
    assert field.first_missing() == 0
    assert list(field.missing()) == list(range(length))
    assert list(field.present()) == []
    assert field.to_bytes() == bytes((length + 7) // 8)
    assert not any(field.has(i) for i in range(length))


def test_zero_length_bitfield_is_complete() -> None:
    field = Bitfield(0)
    assert field.complete
    assert field.count == 0
    assert field.first_missing() is None
    assert field.to_bytes() == b""
    assert list(field.missing()) == list(field.present()) == []
    assert Bitfield(0, b"") == field


def test_negative_length_refused() -> None:
    with pytest.raises(ValueError, match="length"):
        Bitfield(-1)


def test_set_has_clear_count() -> None:
    field = Bitfield(10)
    field.set(3)
    field.set(3)  # idempotent
    field.set(9)
    assert field.has(3) and 3 in field
    assert field.has(9)
    assert not field.has(4)
    assert field.count == 2
    assert list(field.present()) == [3, 9]
    field.clear(3)
    field.clear(3)  # idempotent
    field.clear(5)  # clearing an absent bit is a no-op
    assert not field.has(3)
    assert field.count == 1
    assert list(field.present()) == [9]
    assert field.first_missing() == 0


@pytest.mark.parametrize(
    ("length", "members", "wire"),
    [
        pytest.param(1, {0}, b"\x80", id="bit0-is-msb"),
        pytest.param(8, {7}, b"\x01", id="bit7-is-lsb"),
        pytest.param(16, {9}, b"\x00\x40", id="second-byte"),
        pytest.param(10, set(range(10)), b"\xff\xc0", id="full-with-padding"),
        pytest.param(12, {0, 11}, b"\x80\x10", id="first-and-last"),
    ],
)
def test_wire_bit_order(length: int, members: set[int], wire: bytes) -> None:
    field = Bitfield(length)
    for index in members:
        field.set(index)
    assert field.to_bytes() == wire
    assert Bitfield(length, wire) == field


@pytest.mark.parametrize("length", [pytest.param(n, id=f"len{n}") for n in (1, 8, 10, 17)])
def test_full(length: int) -> None:
    field = Bitfield.full(length)
    assert field.complete
    assert field.count == length
    assert field.first_missing() is None
    assert list(field.missing()) == []
    assert list(field.present()) == list(range(length))
    assert field.to_bytes() == _model_bytes(length, set(range(length)))


@pytest.mark.parametrize(
    ("length", "members", "expected"),
    [
        pytest.param(20, set(range(20)) - {13}, 13, id="gap-in-second-byte"),
        pytest.param(20, set(range(20)) - {19}, 19, id="last-bit"),
        pytest.param(9, set(range(8)), 8, id="first-bit-of-padded-byte"),
        pytest.param(16, set(range(16)) - {0}, 0, id="first-bit"),
        pytest.param(16, set(range(8)), 8, id="whole-byte-missing"),
        pytest.param(10, set(range(10)), None, id="full-with-padding"),
    ],
)
def test_first_missing(length: int, members: set[int], expected: int | None) -> None:
    field = Bitfield(length, _model_bytes(length, members))
    assert field.first_missing() == expected


@pytest.mark.parametrize(
    ("length", "index"),
    [
        pytest.param(10, 10, id="index-equals-length"),
        pytest.param(10, 15, id="index-in-padding"),
        pytest.param(10, 100, id="far-beyond"),
        pytest.param(10, -1, id="negative"),
        pytest.param(0, 0, id="empty-field"),
    ],
)
def test_out_of_range_index(length: int, index: int) -> None:
    field = Bitfield(length)
    with pytest.raises(IndexError):
        field.has(index)
    with pytest.raises(IndexError):
        field.set(index)
    with pytest.raises(IndexError):
        field.clear(index)
    with pytest.raises(IndexError):
        _ = index in field
    assert field.count == 0
    assert field.to_bytes() == bytes((length + 7) // 8)


@pytest.mark.parametrize(
    ("length", "data"),
    [
        pytest.param(10, b"\xff\xe0", id="bit10-set"),
        pytest.param(10, b"\x00\x01", id="last-padding-bit"),
        pytest.param(7, b"\x01", id="len7-lsb"),
        pytest.param(1, b"\x40", id="len1-bit1"),
    ],
)
def test_bits_past_length_refused(length: int, data: bytes) -> None:
    with pytest.raises(ValueError, match="past its length"):
        Bitfield(length, data)


@pytest.mark.parametrize(
    ("length", "data"),
    [
        pytest.param(10, b"\xff", id="too-short"),
        pytest.param(10, b"\xff\xc0\x00", id="too-long"),
        pytest.param(8, b"", id="empty-for-8"),
        pytest.param(0, b"\x00", id="byte-for-0"),
        pytest.param(9, b"\x00", id="one-byte-for-9"),
    ],
)
def test_wrong_byte_length_refused(length: int, data: bytes) -> None:
    with pytest.raises(ValueError, match="needs"):
        Bitfield(length, data)


def test_copy_is_independent() -> None:
    field = Bitfield(12)
    field.set(1)
    twin = field.copy()
    assert twin == field
    twin.set(2)
    field.clear(1)
    assert (field.count, twin.count) == (0, 2)
    assert twin != field


def test_data_is_copied_in() -> None:
    data = bytearray(b"\x80")
    field = Bitfield(8, bytes(data))
    field.set(1)
    assert data == bytearray(b"\x80")
    assert field.to_bytes() == b"\xc0"


def test_equality_and_hash() -> None:
    assert Bitfield(7) != Bitfield(8)  # same bytes, different length
    assert Bitfield(8) != b"\x00"
    with pytest.raises(TypeError):
        hash(Bitfield(8))
    assert repr(Bitfield.full(3)) == "Bitfield(3/3)"


# -- properties against a model -----------------------------------------------------------------


@st.composite
def _length_and_ops(draw: st.DrawFn) -> tuple[int, list[tuple[str, int]]]:
    length = draw(st.integers(0, 70))
    if length == 0:
        return 0, []
    op = st.tuples(st.sampled_from(["set", "clear"]), st.integers(0, length - 1))
    return length, draw(st.lists(op, max_size=150))


def _check_against_model(field: Bitfield, length: int, model: set[int]) -> None:
    assert field.count == len(model)
    assert field.complete == (len(model) == length)
    assert [i for i in range(length) if field.has(i)] == sorted(model)
    assert list(field.present()) == sorted(model)
    assert list(field.missing()) == sorted(set(range(length)) - model)
    assert field.first_missing() == min(set(range(length)) - model, default=None)
    assert field.to_bytes() == _model_bytes(length, model)
    assert Bitfield(length, field.to_bytes()) == field


@given(_length_and_ops())
def test_matches_a_set_model(case: tuple[int, list[tuple[str, int]]]) -> None:
    length, ops = case
    field, model = Bitfield(length), set[int]()
    for op, index in ops:
        if op == "set":
            field.set(index)
            model.add(index)
        else:
            field.clear(index)
            model.discard(index)
        assert field.count == len(model)
    _check_against_model(field, length, model)


@given(st.lists(st.booleans(), max_size=70))
def test_from_bytes_round_trip(bits: list[bool]) -> None:
    length, members = len(bits), {i for i, bit in enumerate(bits) if bit}
    field = Bitfield(length, _model_bytes(length, members))
    _check_against_model(field, length, members)


@given(st.integers(1, 70), st.binary(min_size=1, max_size=9))
def test_arbitrary_bytes_accepted_or_refused_cleanly(length: int, data: bytes) -> None:
    try:
        field = Bitfield(length, data)
    except ValueError:
        return
    assert field.to_bytes() == data
    assert field.count == sum(bin(b).count("1") for b in data)
