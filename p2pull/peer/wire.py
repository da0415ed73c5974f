"""Framing and the authenticated handshake of one peer connection, as an h11-style machine.

No sockets here: the shell feeds received bytes to ``receive_data`` (``b""`` at EOF), pulls events
from ``next_event`` until ``NEED_DATA``, writes whatever ``data_to_send`` returns after each one,
and frames its own messages with ``send``::

    conn = PeerConnection(node_id=..., listen_port=..., secret=..., nonce=secrets.token_bytes(16))
    await stream.send_all(conn.start())
    ...  # then: receive_data / next_event / data_to_send / send

Frames are a 4-byte big-endian length and a msgpack body (``p2pull.peer.messages``). A declared
length over the limit fails the connection from the header alone, before any body is buffered;
until the handshake is done the limit is ``HANDSHAKE_MAX_FRAME`` so a stranger cannot make us
hold megabytes. After it, ``max_frame`` is one chunk plus ``PIECE_OVERHEAD`` (a Piece's header);
a ``BlobInfo`` describing chunks larger than ``max_frame - PIECE_OVERHEAD`` could never be
followed (its Pieces would be refused), so it is delivered as ``Unavailable`` for that blob: the
swarm treats it like a seed that cannot provide the blob, and fetches it elsewhere.

The handshake, symmetric, both sides at once::

    -> Hello(version, node_id, nonce, listen_port)     <- Hello(...)
    -> Auth(mac over both Hellos, ours first)          <- Auth(mac, theirs first)

``mac = HMAC-SHA256(secret, b"p2pull-auth-v1\\0" + u32 len(A) + A + u32 len(B) + B)`` where A is
the exact body of the sender's Hello and B that of the receiver's: it binds both node ids, both
nonces, both ports and the version, unambiguously, and the order separates the two roles, so
neither side's Auth can be replayed as the other's. Our Auth is queued as soon as the peer's Hello
arrives; the connection is OPEN (and ``Authenticated`` emitted, once) when the peer's Auth
verifies. A Hello carrying our own nonce or node id is refused (reflection / self-connection).
Any protocol error closes the machine for good: later calls raise ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from p2pull.peer.messages import (
    PROTOCOL_VERSION,
    Auth,
    BlobInfo,
    Hello,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Unavailable,
    decode,
    encode,
    encode_parts,
    hello_version,
    piece_prefix,
)

__all__ = [
    "HANDSHAKE_MAX_FRAME",
    "NEED_DATA",
    "PIECE_OVERHEAD",
    "Authenticated",
    "AuthenticationFailed",
    "Closed",
    "Event",
    "LocalProtocolError",
    "NeedData",
    "PeerConnection",
    "RemoteProtocolError",
    "State",
    "auth_mac",
]

PIECE_OVERHEAD = 65536  # a frame may be this much larger than the chunk it carries
DEFAULT_MAX_FRAME = 8 * 1024 * 1024 + PIECE_OVERHEAD
HANDSHAKE_MAX_FRAME = 4096  # a Hello is < 1.2 KiB even with a 255-character non-ASCII node id
_HEADER = struct.Struct(">I")
_AUTH_LABEL = b"p2pull-auth-v1\0"


class AuthenticationFailed(RemoteProtocolError):
    """The peer's Auth does not verify: no cluster secret, or the handshake was altered."""


class NeedData(enum.Enum):
    """Type of the ``NEED_DATA`` sentinel (an enum so ``event is NEED_DATA`` narrows in mypy)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake is complete: the peer proved it holds the secret. Emitted once."""

    node_id: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed its side cleanly (EOF between frames)."""


Event: TypeAlias = Authenticated | Message | Closed | NeedData


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


def auth_mac(secret: bytes, *, sender_hello: bytes, receiver_hello: bytes) -> bytes:
    """The MAC the sender of ``sender_hello`` puts in its Auth (both arguments are Hello bodies)."""
    transcript = b"".join(
        (
            _AUTH_LABEL,
            _HEADER.pack(len(sender_hello)),
            sender_hello,
            _HEADER.pack(len(receiver_hello)),
            receiver_hello,
        )
    )
    return hmac.new(secret, transcript, hashlib.sha256).digest()


def _frame(parts: list[bytes]) -> bytes:
    return b"".join([_HEADER.pack(sum(map(len, parts))), *parts])


class PeerConnection:
    """One side of one peer connection: bytes in, events out, bytes back. Never does I/O."""

    def __init__(
        self,
        *,
        node_id: str,
        listen_port: int,
        secret: bytes,
        nonce: bytes,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if not secret:
            raise LocalProtocolError("an empty cluster secret would authenticate anyone")
        if max_frame < 1:
            raise LocalProtocolError(f"max_frame must be positive, got {max_frame}")
        self._hello = Hello(PROTOCOL_VERSION, node_id, nonce, listen_port)
        self._hello_body = encode(self._hello)  # LocalProtocolError on a bad id, nonce or port
        self._secret = secret
        self._max_frame = max_frame
        self.max_chunk_size = max(1, max_frame - PIECE_OVERHEAD)  # what a Piece frame can carry
        self.state = State.HANDSHAKE
        self.peer_id: str | None = None  # set once authenticated
        self.peer_listen_port: int | None = None
        self._peer_hello: Hello | None = None
        self._started = False
        self._expected_mac: bytes | None = None  # set once the peer's Hello arrived
        self._buffer = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buffer
        self._eof = False
        self._outgoing: list[bytes] = []
        self._failure: str | None = None

    # --- the shell's side ---------------------------------------------------------------------

    def start(self) -> bytes:
        """Our Hello, framed. Call once, right after connecting (both sides do)."""
        self._check_usable()
        if self._started:
            raise LocalProtocolError("start() was already called")
        self._started = True
        return _frame([self._hello_body])

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means it closed its side (EOF)."""
        self._check_usable()
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after EOF")
            return
        if not data:
            self._eof = True
            return
        if self._pos:
            del self._buffer[: self._pos]  # O(1) in CPython: moves the start of the bytearray
            self._pos = 0
        self._buffer += data

    def next_event(self) -> Event:
        """The next event, or ``NEED_DATA``. Handshake frames are consumed here, not returned."""
        self._check_usable()
        if not self._started:
            raise LocalProtocolError("call start() before next_event()")
        if self.state is State.CLOSED:
            return Closed()
        try:
            while True:
                span = self._next_frame()
                if span is None:
                    return self._out_of_frames()
                event = self._handle(*span)
                if event is not None:
                    return event
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def frame_remaining(self) -> int:
        """Bytes still to come of the frame begun in the buffer (0: none begun, or its length
        prefix is not complete yet). Lets the shell wait for a large frame in big gulps."""
        available = len(self._buffer) - self._pos
        if available < _HEADER.size:
            return 0
        length: int = _HEADER.unpack_from(self._buffer, self._pos)[0]
        return max(0, _HEADER.size + length - available)

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet (at most one frame and the data after it)."""
        return len(self._buffer) - self._pos

    def data_to_send(self) -> bytes:
        """Bytes the machine queued by itself (our Auth); send them after each ``next_event``."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, message: Message) -> bytes:
        """``message`` framed for the wire. Only once OPEN, never Hello/Auth, never oversized."""
        self._check_usable()
        if isinstance(message, Hello | Auth):
            raise LocalProtocolError(f"the handshake sends {type(message).__name__} by itself")
        self._check_sendable(type(message).__name__)
        parts = encode_parts(message)
        length = sum(map(len, parts))
        self._check_length(type(message).__name__, length)
        return b"".join([_HEADER.pack(length), *parts])

    def send_piece_header(self, digest: str, index: int, length: int) -> bytes:
        """The frame header and body of a Piece up to its data: send these bytes, then exactly
        ``length`` bytes of chunk (from a file, say). Same rules as ``send``."""
        self._check_sendable("Piece")
        prefix = piece_prefix(digest, index, length)
        self._check_length("Piece", len(prefix) + length)
        return _HEADER.pack(len(prefix) + length) + prefix

    # --- internals ----------------------------------------------------------------------------

    def _check_sendable(self, kind: str) -> None:
        self._check_usable()
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send {kind} while {self.state.value}")

    def _check_length(self, kind: str, length: int) -> None:
        if length > self._max_frame:
            raise LocalProtocolError(
                f"{kind} is {length} bytes, over the {self._max_frame}-byte limit"
            )

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LocalProtocolError(f"connection already failed: {self._failure}")

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._failure = f"{type(exc).__name__}: {exc}"
        self.state = State.CLOSED
        self._buffer = bytearray()  # a fresh one: the old may still be exported by a traceback
        self._pos = 0
        self._outgoing.clear()

    def _next_frame(self) -> tuple[int, int] | None:
        """(start, end) of the next complete body in the buffer, consuming it; None if partial."""
        available = len(self._buffer) - self._pos
        if available < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer, self._pos)
        if self.state is State.OPEN:
            limit = self._max_frame
        else:
            limit = min(self._max_frame, HANDSHAKE_MAX_FRAME)
        if length > limit:
            raise RemoteProtocolError(
                f"peer announced a {length}-byte frame, over the {limit}-byte limit"
            )
        if available < _HEADER.size + length:
            return None
        start = self._pos + _HEADER.size
        self._pos = start + length
        return start, self._pos

    def _out_of_frames(self) -> NeedData | Closed:
        if not self._eof:
            return NEED_DATA
        if self._pos < len(self._buffer):
            left = len(self._buffer) - self._pos
            raise RemoteProtocolError(f"peer closed the connection inside a frame ({left} bytes)")
        self.state = State.CLOSED
        self._buffer = bytearray()
        self._pos = 0
        return Closed()

    def _decode(self, start: int, end: int) -> Message:
        # Decode straight from the buffer: a Piece's data is copied once, into its bytes object.
        # Every view is released before returning, so the buffer can be resized again.
        view = memoryview(self._buffer)
        try:
            body = view[start:end]
            try:
                return decode(body)
            finally:
                body.release()
        finally:
            view.release()

    def _handle(self, start: int, end: int) -> Event | None:
        if self.state is State.OPEN:
            message = self._decode(start, end)
            if isinstance(message, Hello | Auth):
                raise RemoteProtocolError(f"{type(message).__name__} after the handshake")
            if isinstance(message, BlobInfo) and message.chunk_size > self.max_chunk_size:
                return Unavailable(
                    message.digest,
                    f"the peer's chunks of {message.chunk_size} bytes are over this node's "
                    f"limit of {self.max_chunk_size}",
                )
            return message
        if self._expected_mac is None:
            self._on_hello(bytes(self._buffer[start:end]))
            return None
        message = self._decode(start, end)
        if not isinstance(message, Auth):
            raise RemoteProtocolError(f"expected Auth second, got {type(message).__name__}")
        if not hmac.compare_digest(message.mac, self._expected_mac):
            raise AuthenticationFailed(
                "the peer's Auth does not verify: it does not hold the cluster secret"
            )
        assert self._peer_hello is not None  # set together with _expected_mac
        self.state = State.OPEN
        self.peer_id, self.peer_listen_port = self._peer_hello.node_id, self._peer_hello.listen_port
        return Authenticated(node_id=self.peer_id, listen_port=self.peer_listen_port)

    def _on_hello(self, body: bytes) -> None:
        version = hello_version(body)
        if version is not None and version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}"
            )
        hello = decode(body)
        if not isinstance(hello, Hello):
            raise RemoteProtocolError(f"expected Hello first, got {type(hello).__name__}")
        if hello.nonce == self._hello.nonce:
            raise RemoteProtocolError("peer's Hello carries our own nonce (a reflection)")
        if hello.node_id == self._hello.node_id:
            raise RemoteProtocolError(
                f"peer claims our own node id {hello.node_id!r} (a reflection or self-connection)"
            )
        self._peer_hello = hello
        self._expected_mac = auth_mac(
            self._secret, sender_hello=body, receiver_hello=self._hello_body
        )
        ours = auth_mac(self._secret, sender_hello=self._hello_body, receiver_hello=body)
        self._outgoing.append(_frame([encode(Auth(ours))]))
