"""The peer wire messages: one frozen dataclass each, and their msgpack encoding.

A message body is a msgpack array ``[type_code, field, ...]`` with the dataclass fields in
declaration order (``bytes`` as bin, ``str`` as str, tuples as arrays, ``None`` as nil). ``decode``
trusts nothing: every field is type- and range-checked, msgpack's own length limits keep hostile
input from allocating more than the body it came in, and anything wrong raises
``RemoteProtocolError``. ``encode`` applies the same checks to what we send, raising
``LocalProtocolError``: a message we could not decode ourselves is never put on the wire.

Framing (the 4-byte length prefix) and the handshake live in ``p2pull.peer.wire``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, TypeAlias

import msgpack

from p2pull.bitfield import Bitfield
from p2pull.errors import P2pullError
from p2pull.reference import SHA256_RE
from p2pull.store.types import chunk_count

PROTOCOL_VERSION = 2

NONCE_MIN, NONCE_MAX = 16, 64
MAX_NODE_ID = 255  # characters, also for hosts in Peers
MAX_NAME = 255  # repository name and ns (a registry host)
MAX_REASON = 1024
MAX_PEERS = 1024
_MAX_UINT = 2**63 - 1
_MAX_STR_BYTES = 4 * MAX_REASON  # the longest string any field allows, in UTF-8 bytes


class LocalProtocolError(P2pullError):
    """We tried something the protocol forbids (a bug on this side)."""


class RemoteProtocolError(P2pullError):
    """The peer broke the protocol: bad frame, bad field, bad MAC, wrong order, too big ..."""


# --- the messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends: who it is, a fresh nonce, and where it accepts peers."""

    version: int
    node_id: str
    nonce: bytes
    listen_port: int


@dataclass(frozen=True, slots=True)
class Auth:
    """Second frame each side sends: the HMAC proving it knows the cluster secret."""

    mac: bytes


@dataclass(frozen=True, slots=True)
class Interested:
    """I want this blob; ``name``/``ns`` let a seed fetch it from the origin."""

    digest: str
    name: str
    ns: str | None


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the sender holds of a blob. ``hashes[i] == b""`` where chunk i's hash is unknown."""

    digest: str
    size: int
    chunk_size: int
    bitfield: bytes
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Have:
    """The sender now holds (verified) chunk ``index``, whose sha256 is given."""

    digest: str
    index: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Seeded:
    """A Have from the blob's seed for a chunk it has just handed to another member (a
    ``Push``, its super-seeding grant): the receiver takes the hash, and asks the member that
    announces the chunk instead of the seed, which would refuse it (``REJECT_SEEDED``)."""

    digest: str
    index: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Push:
    """A Have whose chunk is coming unasked (the seed hands a fresh chunk to one peer, which
    relays it to every peer that lacks it). The receiver counts it as requested from the
    sender, or answers Cancel if it does not want it (it holds the chunk already)."""

    digest: str
    index: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Peers:
    """Swarm members handed out, as ``(node_id, host, port)``."""

    digest: str
    peers: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class Request:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Piece:
    digest: str
    index: int
    data: bytes

    def __repr__(self) -> str:  # never dump megabytes into a log line
        return f"Piece(digest={self.digest!r}, index={self.index}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Cancel:
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Reject:
    """A request refused (chunk not held, too busy)."""

    digest: str
    index: int
    reason: str


REJECT_BUSY = "busy"  # a Reject reason: ask again soon, or another holder now


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The sender cannot provide this blob at all (origin failed, unknown)."""

    digest: str
    reason: str


# An Unavailable reason: the seed's own copy failed the blob's digest (the origin gave it wrong
# bytes, or its store did): every chunk it described is suspect, so its members drop what they
# took from it and end, instead of handing over to the next seed with those chunks.
UNAVAILABLE_WRONG_COPY = "the seed's copy failed the blob's digest"


@dataclass(frozen=True, slots=True)
class Waiting:
    """The sender seeds this blob and is still at it (the origin is slow, or down and being
    retried): the receiver keeps waiting for it instead of choosing another seed."""

    digest: str
    reason: str


@dataclass(frozen=True, slots=True)
class Passing:
    """The sender passes this blob through to its reader without keeping it (its store has no
    room): it holds none of it and serves none. Send it Haves, not pushes; do not name it in
    Peers; do not take it for the blob's seed. ``reason``: why (for logs)."""

    digest: str
    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str


@dataclass(frozen=True, slots=True)
class Purge:
    """An operator asked to drop this blob from every node (``p2pull purge --all-nodes``)."""

    digest: str


_Blobs: TypeAlias = (
    Interested | BlobInfo | Have | Seeded | Push | Peers | Unavailable | Waiting | Passing | Purge
)
_Chunks: TypeAlias = Request | Piece | Cancel | Reject
Message: TypeAlias = Hello | Auth | _Blobs | _Chunks | Bye


# --- field checks (shared by encode and decode) -------------------------------------------------


class _Invalid(ValueError):
    """A value failed a check; encode/decode turn it into the error of whoever is at fault."""


Check: TypeAlias = Callable[[object, str], object]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _uint(value: object, what: str, *, low: int = 0, high: int = _MAX_UINT) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _Invalid(f"{what} must be an integer in {low}..{high}, got {_show(value)}")
    return value


def _text(value: object, what: str, *, low: int = 1, high: int) -> str:
    if type(value) is not str or not low <= len(value) <= high:
        raise _Invalid(f"{what} must be a string of {low}..{high} characters, got {_show(value)}")
    return value


def _blob(value: object, what: str, *, low: int = 0, high: int = 2**32 - 1) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        shown = f"{len(value)} bytes" if type(value) is bytes else _show(value)
        raise _Invalid(f"{what} must be {low}..{high} bytes, got {shown}")
    return value


def _digest(value: object, what: str) -> str:
    if type(value) is not str or SHA256_RE.fullmatch(value) is None:
        raise _Invalid(f"{what} must be sha256:<64 hex>, got {_show(value)}")
    return value


_index = _uint
_version = partial(_uint, high=2**32 - 1)
_listen_port = partial(_uint, high=65535)
_chunk_size = partial(_uint, low=1)
_node_id = partial(_text, high=MAX_NODE_ID)
_name = partial(_text, high=MAX_NAME)
_reason = partial(_text, low=0, high=MAX_REASON)
_nonce = partial(_blob, low=NONCE_MIN, high=NONCE_MAX)
_sha256 = partial(_blob, low=32, high=32)


def _ns(value: object, what: str) -> str | None:
    return None if value is None else _name(value, what)


def _array(value: object, what: str) -> tuple[object, ...]:
    if not isinstance(value, tuple | list):
        raise _Invalid(f"{what} must be an array, got {_show(value)}")
    return tuple(value)


def _hashes(value: object, what: str) -> tuple[bytes, ...]:
    items = _array(value, what)
    for i, item in enumerate(items):
        if type(item) is not bytes or len(item) not in (0, 32):
            raise _Invalid(f"{what}[{i}] must be 32 bytes or empty, got {_show(item)}")
    return items  # type: ignore[return-value]  # every item checked above


def _peers(value: object, what: str) -> tuple[tuple[str, str, int], ...]:
    items = _array(value, what)
    if len(items) > MAX_PEERS:
        raise _Invalid(f"{what} lists {len(items)} peers, at most {MAX_PEERS} allowed")
    out = []
    for i, item in enumerate(items):
        triple = _array(item, f"{what}[{i}]")
        if len(triple) != 3:
            raise _Invalid(f"{what}[{i}] must be (node_id, host, port), got {_show(item)}")
        out.append(
            (
                _node_id(triple[0], f"{what}[{i}].node_id"),
                _text(triple[1], f"{what}[{i}].host", high=MAX_NODE_ID),
                _uint(triple[2], f"{what}[{i}].port", low=1, high=65535),
            )
        )
    return tuple(out)


def _check_blob_info(message: BlobInfo) -> None:
    count = chunk_count(message.size, message.chunk_size)
    if len(message.hashes) != count:
        raise _Invalid(
            f"BlobInfo for {message.size} bytes in chunks of {message.chunk_size} needs "
            f"{count} hashes, got {len(message.hashes)}"
        )
    try:
        Bitfield(count, message.bitfield)
    except ValueError as exc:
        raise _Invalid(f"BlobInfo.bitfield: {exc}") from None


class _Kind(NamedTuple):
    code: int
    name: str
    build: Callable[..., Message]
    fields: tuple[tuple[str, Check], ...]
    whole: Callable[[Message], None] | None = None


def _kind(code: int, cls: type, *checks: Check, whole: Callable[..., None] | None = None) -> _Kind:
    names = tuple(f.name for f in dataclasses.fields(cls))
    assert len(names) == len(checks), cls
    return _Kind(code, cls.__name__, cls, tuple(zip(names, checks, strict=True)), whole)


# The single table of what each message looks like on the wire. Codes are never reused.
_KINDS: dict[type, _Kind] = {
    Hello: _kind(0, Hello, _version, _node_id, _nonce, _listen_port),
    Auth: _kind(1, Auth, _sha256),
    Interested: _kind(2, Interested, _digest, _name, _ns),
    BlobInfo: _kind(
        3, BlobInfo, _digest, _index, _chunk_size, _blob, _hashes, whole=_check_blob_info
    ),
    Have: _kind(4, Have, _digest, _index, _sha256),
    Peers: _kind(5, Peers, _digest, _peers),
    Request: _kind(6, Request, _digest, _index),
    Piece: _kind(7, Piece, _digest, _index, _blob),
    Cancel: _kind(8, Cancel, _digest, _index),
    Reject: _kind(9, Reject, _digest, _index, _reason),
    Unavailable: _kind(10, Unavailable, _digest, _reason),
    Bye: _kind(11, Bye, _reason),
    Purge: _kind(12, Purge, _digest),
    Push: _kind(13, Push, _digest, _index, _sha256),
    Waiting: _kind(14, Waiting, _digest, _reason),
    Passing: _kind(15, Passing, _digest, _reason),
    Seeded: _kind(16, Seeded, _digest, _index, _sha256),
}
_BY_CODE: dict[int, _Kind] = {kind.code: kind for kind in _KINDS.values()}
HELLO_CODE = _KINDS[Hello].code


# --- encode / decode ----------------------------------------------------------------------------


def _bin_header(length: int) -> bytes:
    if length < 0x100:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 0x10000:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def encode_parts(message: Message) -> list[bytes]:
    """The body as a list of byte strings whose concatenation is ``encode(message)``.

    Large ``bytes`` fields (a Piece's data) appear as themselves, so framing can join the length
    prefix and the body with a single copy of the payload.
    """
    kind = _KINDS.get(type(message))
    if kind is None:
        raise LocalProtocolError(f"not a peer message: {_show(message)}")
    parts = [bytes([0x90 | (1 + len(kind.fields))]), msgpack.packb(kind.code)]
    try:
        for name, check in kind.fields:
            value = check(getattr(message, name), f"{kind.name}.{name}")
            if type(value) is bytes:
                parts += (_bin_header(len(value)), value)
            else:
                parts.append(msgpack.packb(value, use_bin_type=True))
        if kind.whole is not None:
            kind.whole(message)
    except _Invalid as exc:
        raise LocalProtocolError(f"refusing to send an invalid message: {exc}") from None
    return parts


def piece_prefix(digest: str, index: int, length: int) -> bytes:
    """The body of ``Piece(digest, index, data)`` up to ``data``, for ``len(data) == length``:
    the chunk can then follow straight from a file (sendfile), never passing through Python."""
    if not 0 <= length <= 2**32 - 1:
        raise LocalProtocolError(f"a piece of {length} bytes cannot be encoded")
    parts = encode_parts(Piece(digest, index, b""))  # the same checks as any Piece we send
    return b"".join(parts[:-2]) + _bin_header(length)


def encode(message: Message) -> bytes:
    """The msgpack body of ``message`` (no length prefix). ``LocalProtocolError`` if invalid."""
    return b"".join(encode_parts(message))


def _refuse_ext(code: int, data: bytes) -> object:
    raise _Invalid(f"msgpack extension type {code} is not allowed")


def _unpack(body: bytes | bytearray | memoryview) -> object:
    size = len(body)
    try:
        return msgpack.unpackb(
            body,
            use_list=False,
            raw=False,
            strict_map_key=True,
            timestamp=0,
            ext_hook=_refuse_ext,
            max_str_len=min(size, _MAX_STR_BYTES),
            max_bin_len=size,
            max_array_len=size,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types; all mean "malformed"
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc


def decode(body: bytes | bytearray | memoryview) -> Message:
    """Parse and check one message body. Anything malformed raises ``RemoteProtocolError``."""
    obj = _unpack(body)
    try:
        if type(obj) is not tuple or not obj:
            raise _Invalid(f"a message must be a non-empty array, got {_show(obj)}")
        kind = _BY_CODE.get(obj[0]) if type(obj[0]) is int else None
        if kind is None:
            raise _Invalid(f"unknown message type {_show(obj[0])}")
        label = kind.name
        if len(obj) - 1 != len(kind.fields):
            raise _Invalid(f"{label} has {len(kind.fields)} fields, got {len(obj) - 1}")
        values = [
            check(value, f"{label}.{name}")
            for (name, check), value in zip(kind.fields, obj[1:], strict=True)
        ]
        message = kind.build(*values)
        if kind.whole is not None:
            kind.whole(message)
    except _Invalid as exc:
        raise RemoteProtocolError(str(exc)) from None
    return message


def hello_version(body: bytes | bytearray | memoryview) -> int | None:
    """The protocol version a Hello-shaped body claims, even if the rest would not decode.

    Lets the handshake report a version mismatch as such when a future Hello grew new fields.
    """
    try:
        obj = _unpack(body)
    except RemoteProtocolError:
        return None
    if (
        type(obj) is tuple
        and len(obj) >= 2
        and type(obj[0]) is int
        and obj[0] == HELLO_CODE
        and type(obj[1]) is int
    ):
        return obj[1]
    return None


def peers_message(digest: str, node_ids: list[str]) -> Peers:
    """The Peers message that hands out ``node_ids`` (``host:port``, ``[v6]:port``)."""
    entries = []
    for node_id in node_ids:
        host, _, port = node_id.rpartition(":")
        entries.append((node_id, host.strip("[]"), int(port)))
    return Peers(digest, tuple(entries))
