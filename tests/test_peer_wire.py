"""Peer wire protocol: message encoding, framing and the authenticated handshake (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pull.bitfield import Bitfield
from p2pull.peer.messages import (
    NONCE_MAX,
    NONCE_MIN,
    PROTOCOL_VERSION,
    Auth,
    BlobInfo,
    Bye,
    Cancel,
    Have,
    Hello,
    Interested,
    Message,
    Passing,
    Peers,
    Piece,
    Purge,
    Push,
    Reject,
    Request,
    Seeded,
    Unavailable,
    Waiting,
    decode,
    encode,
)
from p2pull.peer.wire import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    NEED_DATA,
    Authenticated,
    AuthenticationFailed,
    Closed,
    Event,
    LocalProtocolError,
    PeerConnection,
    RemoteProtocolError,
    State,
    auth_mac,
)

D = "sha256:" + "ab" * 32
H = bytes(range(32))
SECRET = b"cluster secret"
CODES = {
    Hello: 0,
    Auth: 1,
    Interested: 2,
    BlobInfo: 3,
    Have: 4,
    Peers: 5,
    Request: 6,
    Piece: 7,
    Cancel: 8,
    Reject: 9,
    Unavailable: 10,
    Bye: 11,
    Purge: 12,
    Push: 13,
    Waiting: 14,
    Passing: 15,
    Seeded: 16,
}

SAMPLES: list[tuple[str, Message]] = [
    ("hello", Hello(PROTOCOL_VERSION, "node-a", b"n" * 16, 7001)),
    ("hello-long-nonce-unicode-id", Hello(7, "nœud-ü" * 40, b"\x00" * NONCE_MAX, 0)),
    ("auth", Auth(H)),
    ("interested", Interested(D, "library/alpine", "docker.io")),
    ("interested-no-ns", Interested(D, "team/app", None)),
    ("blobinfo", BlobInfo(D, 10, 4, b"\xa0", (H, b"", H))),
    ("blobinfo-empty-blob", BlobInfo(D, 0, 4, b"", ())),
    ("blobinfo-exact-chunks", BlobInfo(D, 16, 8, b"\xc0", (H, H))),
    ("have", Have(D, 12, H)),
    ("peers", Peers(D, (("node-b", "198.18.0.2", 7001), ("node-c", "node-c.local", 65535)))),
    ("peers-none", Peers(D, ())),
    ("request", Request(D, 0)),
    ("piece", Piece(D, 3, b"chunk bytes")),
    ("piece-empty", Piece(D, 0, b"")),
    ("piece-4mib", Piece(D, 2**40, b"\x5a" * (4 << 20))),
    ("cancel", Cancel(D, 2**63 - 1)),
    ("reject", Reject(D, 5, "not held")),
    ("unavailable", Unavailable(D, "origin answered 404")),
    ("bye", Bye("shutting down")),
    ("bye-empty-reason", Bye("")),
    ("purge", Purge(D)),
    ("push", Push(D, 7, H)),
    ("waiting", Waiting(D, "origin unavailable: retrying in 4 s")),
    ("passing", Passing(D, "no room in the store")),
    ("seeded", Seeded(D, 9, H)),
]


def _fields(message: Message) -> list[object]:
    return [getattr(message, f.name) for f in dataclasses.fields(message)]


@pytest.mark.parametrize("message", [pytest.param(m, id=i) for i, m in SAMPLES])
def test_round_trip(message: Message) -> None:
    body = encode(message)
    assert decode(body) == message
    assert decode(bytearray(body)) == message
    assert decode(memoryview(body)) == message
    # The hand-built encoding is plain canonical msgpack: [type_code, field, ...].
    assert body == msgpack.packb([CODES[type(message)], *_fields(message)])


def test_every_message_type_is_sampled() -> None:
    assert {type(m) for _, m in SAMPLES} == set(CODES)


def test_piece_repr_does_not_dump_the_data() -> None:
    assert repr(Piece(D, 1, b"x" * 100_000)) == f"Piece(digest={D!r}, index=1, data=<100000 bytes>)"


# --- hypothesis round trip ---------------------------------------------------------------------

digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
uints = st.integers(0, 2**63 - 1)
sha256s = st.binary(min_size=32, max_size=32)
node_ids = st.text(min_size=1, max_size=255)


@st.composite
def blob_infos(draw: st.DrawFn) -> BlobInfo:
    chunk_size = draw(st.integers(1, 1 << 24))
    count = draw(st.integers(0, 40))
    size = draw(st.integers((count - 1) * chunk_size + 1, count * chunk_size)) if count else 0
    field = Bitfield(count)
    for index in draw(st.sets(st.integers(0, count - 1))) if count else ():
        field.set(index)
    hashes = draw(st.lists(st.just(b"") | sha256s, min_size=count, max_size=count))
    return BlobInfo(draw(digests), size, chunk_size, field.to_bytes(), tuple(hashes))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        st.integers(0, 2**32 - 1),
        node_ids,
        st.binary(min_size=NONCE_MIN, max_size=NONCE_MAX),
        st.integers(0, 65535),
    ),
    st.builds(Auth, sha256s),
    st.builds(
        Interested, digests, st.text(min_size=1, max_size=255), st.none() | st.text(min_size=1)
    ),
    blob_infos(),
    st.builds(Have, digests, uints, sha256s),
    st.builds(Push, digests, uints, sha256s),
    st.builds(Seeded, digests, uints, sha256s),
    st.builds(
        Peers,
        digests,
        st.lists(st.tuples(node_ids, node_ids, st.integers(1, 65535)), max_size=20).map(tuple),
    ),
    st.builds(Request, digests, uints),
    st.builds(Piece, digests, uints, st.binary(max_size=70_000)),
    st.builds(Cancel, digests, uints),
    st.builds(Reject, digests, uints, st.text(max_size=1024)),
    st.builds(Unavailable, digests, st.text(max_size=1024)),
    st.builds(Waiting, digests, st.text(max_size=1024)),
    st.builds(Passing, digests, st.text(max_size=1024)),
    st.builds(Bye, st.text(max_size=1024)),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip_hypothesis(message: Message) -> None:
    assert decode(encode(message)) == message


# --- malformed bodies --------------------------------------------------------------------------


def _pack(*items: object) -> bytes:
    return bytes(msgpack.packb(list(items)))


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("reserved-byte", b"\xc1"),
    ("truncated", encode(Request(D, 5))[:-1]),
    ("trailing-bytes", encode(Bye("x")) + b"\x00"),
    ("not-an-array", msgpack.packb(7)),
    ("a-map", msgpack.packb({"type": 6})),
    ("empty-array", _pack()),
    ("unknown-type", _pack(99, D, 1)),
    ("negative-type", _pack(-1, D, 1)),
    ("bool-type", _pack(True, H)),
    ("str-type", _pack("request", D, 1)),
    ("too-few-fields", _pack(6, D)),
    ("too-many-fields", _pack(6, D, 1, 2)),
    ("negative-index", _pack(6, D, -1)),
    ("bool-index", _pack(6, D, True)),
    ("float-index", _pack(6, D, 1.0)),
    ("index-over-int63", _pack(6, D, 2**64 - 1)),
    ("nil-index", _pack(6, D, None)),
    ("digest-uppercase", _pack(6, D.upper(), 1)),
    ("digest-short", _pack(6, D[:-1], 1)),
    ("digest-trailing-newline", _pack(6, D + "\n", 1)),
    ("digest-sha512", _pack(6, "sha512:" + "ab" * 64, 1)),
    ("digest-as-bytes", _pack(6, D.encode(), 1)),
    ("have-hash-31-bytes", _pack(4, D, 1, H[:31])),
    ("have-hash-as-str", _pack(4, D, 1, "00" * 32)),
    ("auth-mac-short", _pack(1, b"\x00" * 31)),
    ("blobinfo-hash-wrong-length", _pack(3, D, 8, 4, b"\x00", [H, b"x"])),
    ("blobinfo-hash-count", _pack(3, D, 8, 4, b"\x00", [H])),
    ("blobinfo-hashes-not-array", _pack(3, D, 8, 4, b"\x00", H)),
    ("blobinfo-bitfield-long", _pack(3, D, 8, 4, b"\x00\x00", [H, H])),
    ("blobinfo-bitfield-short", _pack(3, D, 8, 4, b"", [H, H])),
    ("blobinfo-spare-bits-set", _pack(3, D, 8, 4, b"\xe0", [H, H])),
    ("blobinfo-chunk-size-zero", _pack(3, D, 8, 0, b"\x00", [H])),
    ("blobinfo-size-negative", _pack(3, D, -8, 4, b"", [])),
    ("blobinfo-huge-count", _pack(3, D, 2**62, 1, b"", [])),
    ("hello-nonce-short", _pack(0, 1, "a", b"n" * 15, 1)),
    ("hello-nonce-long", _pack(0, 1, "a", b"n" * 65, 1)),
    ("hello-nonce-as-str", _pack(0, 1, "a", "n" * 16, 1)),
    ("hello-node-id-empty", _pack(0, 1, "", b"n" * 16, 1)),
    ("hello-node-id-256", _pack(0, 1, "a" * 256, b"n" * 16, 1)),
    ("hello-port-65536", _pack(0, 1, "a", b"n" * 16, 65536)),
    ("hello-version-negative", _pack(0, -1, "a", b"n" * 16, 1)),
    ("interested-name-empty", _pack(2, D, "", None)),
    ("interested-name-256", _pack(2, D, "a" * 256, None)),
    ("interested-ns-int", _pack(2, D, "a", 5)),
    ("peers-1025", _pack(5, D, [["n", "h", 1]] * 1025)),
    ("peers-pair", _pack(5, D, [["n", "h"]])),
    ("peers-port-zero", _pack(5, D, [["n", "h", 0]])),
    ("peers-host-empty", _pack(5, D, [["n", "", 1]])),
    ("peers-not-arrays", _pack(5, D, ["n"])),
    ("reason-1025", _pack(11, "r" * 1025)),
    ("reason-nil", _pack(11, None)),
    ("reason-as-bytes", _pack(11, b"bye")),
    ("piece-data-as-str", _pack(7, D, 1, "data")),
    ("piece-data-as-array", _pack(7, D, 1, [1, 2])),
    ("map-field", _pack(11, {"a": 1})),
    ("ext-type", _pack(7, D, 1, msgpack.ExtType(5, b"data"))),
    ("empty-ext-type", b"\x94\x07" + msgpack.packb(D) + b"\x01\xc7\x00\x05"),
    ("timestamp-ext", _pack(7, D, 1, msgpack.Timestamp(1, 0))),
    ("invalid-utf8", b"\x92\x0b\xa1\xff"),
    ("deep-nesting", b"\x91" * 100_000),
    ("array-claims-4g-items", b"\xdd\xff\xff\xff\xff"),
    ("bin-claims-4g-bytes", b"\x94\x07" + msgpack.packb(D) + b"\x01\xc6\xff\xff\xff\xff"),
    ("str-claims-4g-bytes", b"\x92\x0b\xdb\xff\xff\xff\xff"),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in MALFORMED])
def test_malformed_body_is_a_remote_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(body)


INVALID_TO_SEND: list[tuple[str, object]] = [
    ("bad-digest", Request("sha256:nope", 1)),
    ("negative-index", Request(D, -1)),
    ("short-nonce", Hello(1, "a", b"n", 1)),
    ("blobinfo-count-mismatch", BlobInfo(D, 10, 4, b"\x00", (H,))),
    ("data-not-bytes", Piece(D, 1, "data")),  # type: ignore[arg-type]
    ("list-of-bytes-not-hashes", BlobInfo(D, 4, 4, b"\x00", (b"short",))),
    ("not-a-message", object()),
]


@pytest.mark.parametrize("message", [pytest.param(m, id=i) for i, m in INVALID_TO_SEND])
def test_encoding_an_invalid_message_is_a_local_error(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(message)


# --- handshake ---------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def nonce_of(node_id: str) -> bytes:
    return node_id.encode().ljust(NONCE_MIN, b".")


def make(node_id: str, *, secret: bytes = SECRET, nonce: bytes | None = None) -> PeerConnection:
    nonce = nonce if nonce is not None else nonce_of(node_id)
    return PeerConnection(node_id=node_id, listen_port=7000, secret=secret, nonce=nonce)


def drain(conn: PeerConnection) -> list[Event]:
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, Closed):
            break
    return events


def feed(conn: PeerConnection, data: bytes, *, step: int) -> tuple[list[Event], bytes]:
    """Give ``data`` to ``conn`` ``step`` bytes at a time; its events and what it wants sent."""
    events: list[Event] = []
    out = b""
    for i in range(0, len(data), step):
        conn.receive_data(data[i : i + step])
        events += drain(conn)
        out += conn.data_to_send()
    return events, out


def handshake(a: PeerConnection, b: PeerConnection, *, step: int = 1 << 30) -> list[Event]:
    """Shuttle bytes between ``a`` and ``b`` until both are quiet; returns a's + b's events."""
    to_a, to_b = b.start(), a.start()
    events: list[Event] = []
    while to_a or to_b:
        events_a, from_a = feed(a, to_a, step=step)
        events_b, from_b = feed(b, to_b, step=step)
        events += events_a + events_b
        to_a, to_b = from_b, from_a
    return events


@pytest.mark.parametrize("step", [pytest.param(s, id=f"step{s}") for s in (1, 3, 7, 1 << 30)])
def test_handshake_authenticates_both_sides(step: int) -> None:
    a, b = make("node-a"), make("node-b")
    assert (a.state, a.peer_id) == (State.HANDSHAKE, None)
    events = handshake(a, b, step=step)
    assert events == [Authenticated("node-b", 7000), Authenticated("node-a", 7000)]
    assert (a.state, a.peer_id, a.peer_listen_port) == (State.OPEN, "node-b", 7000)
    assert (b.state, b.peer_id) == (State.OPEN, "node-a")
    message = Piece(D, 1, b"hello")
    assert feed(b, a.send(message), step=step) == ([message], b"")
    assert feed(a, b.send(Bye("done")), step=step) == ([Bye("done")], b"")


def test_frames_that_arrive_with_the_auth_are_delivered_after_authenticated() -> None:
    a, b = make("node-a"), make("node-b")
    a_hello, b_hello = a.start(), b.start()
    a.receive_data(b_hello)
    assert drain(a) == []
    b.receive_data(a_hello + a.data_to_send())
    assert drain(b) == [Authenticated("node-a", 7000)]
    a.receive_data(b.data_to_send() + b.send(Request(D, 1)) + b.send(Request(D, 2)))
    assert drain(a) == [Authenticated("node-b", 7000), Request(D, 1), Request(D, 2)]


def test_wrong_secret_fails_on_both_sides_and_delivers_nothing() -> None:
    a, b = make("node-a"), make("node-b", secret=b"another secret")
    a_hello, b_hello = a.start(), b.start()
    a.receive_data(b_hello)
    b.receive_data(a_hello)
    assert drain(a) == drain(b) == []
    a_auth, b_auth = a.data_to_send(), b.data_to_send()
    a.receive_data(b_auth + frame(encode(Request(D, 1))))
    b.receive_data(a_auth + frame(encode(Request(D, 1))))
    for conn in (a, b):
        with pytest.raises(AuthenticationFailed):
            conn.next_event()
        assert conn.state is State.CLOSED
        assert conn.peer_id is None
        with pytest.raises(LocalProtocolError):
            conn.next_event()


def test_mac_binds_the_hellos_a_tampered_port_fails() -> None:
    a, b = make("node-a"), make("node-b")
    a_hello = a.start()
    b.start()
    genuine = Hello(PROTOCOL_VERSION, "node-a", nonce_of("node-a"), 7000)
    assert a_hello == frame(encode(genuine))
    b.receive_data(frame(encode(dataclasses.replace(genuine, listen_port=6666))))
    drain(b)
    a.receive_data(frame(encode(Hello(PROTOCOL_VERSION, "node-b", nonce_of("node-b"), 7000))))
    drain(a)
    b.receive_data(a.data_to_send())
    with pytest.raises(AuthenticationFailed):
        b.next_event()


def test_replayed_auth_from_another_session_fails() -> None:
    a1, b1 = make("node-a"), make("node-b")
    b_hello = b1.start()
    a1.start()
    a1.receive_data(b_hello)
    drain(a1)
    recorded_auth = a1.data_to_send()
    # The attacker replays a's Hello and Auth to b's next session, which uses a fresh nonce.
    b2 = make("node-b", nonce=b"fresh nonce #2.." * 2)
    b2.start()
    b2.receive_data(frame(encode(Hello(PROTOCOL_VERSION, "node-a", nonce_of("node-a"), 7000))))
    b2.receive_data(recorded_auth)
    with pytest.raises(AuthenticationFailed):
        drain(b2)


def test_auth_mac_orders_the_roles() -> None:
    x, y = encode(Hello(1, "x", b"x" * 16, 1)), encode(Hello(1, "y", b"y" * 16, 1))
    assert auth_mac(SECRET, sender_hello=x, receiver_hello=y) != auth_mac(
        SECRET, sender_hello=y, receiver_hello=x
    )
    assert len(auth_mac(SECRET, sender_hello=x, receiver_hello=y)) == 32


def _after_hello(frames: bytes) -> PeerConnection:
    conn = make("node-a")
    conn.start()
    conn.receive_data(frames)
    return conn


HELLO_B = frame(encode(Hello(PROTOCOL_VERSION, "node-b", b"b" * 16, 7000)))
BAD_HANDSHAKES: list[tuple[str, bytes, str]] = [
    ("message-first", frame(encode(Request(D, 1))), "expected Hello"),
    ("auth-first", frame(encode(Auth(H))), "expected Hello"),
    ("message-before-auth", HELLO_B + frame(encode(Request(D, 1))), "expected Auth"),
    ("second-hello", HELLO_B + HELLO_B, "expected Auth"),
    ("garbage-first", frame(b"\xc1"), "undecodable"),
    (
        "version-before",
        frame(encode(Hello(PROTOCOL_VERSION - 1, "node-b", b"b" * 16, 1))),
        f"version {PROTOCOL_VERSION - 1}, we speak {PROTOCOL_VERSION}",
    ),
    (
        "version-after",
        frame(encode(Hello(PROTOCOL_VERSION + 1, "node-b", b"b" * 16, 1))),
        f"version {PROTOCOL_VERSION + 1}, we speak {PROTOCOL_VERSION}",
    ),
    (
        "future-hello-with-more-fields",
        frame(_pack(0, 9, "node-b", b"b" * 16, 1, "new field")),
        f"version 9, we speak {PROTOCOL_VERSION}",
    ),
    (
        "reflected-hello",
        frame(encode(Hello(PROTOCOL_VERSION, "node-a", nonce_of("node-a"), 1))),
        "nonce",
    ),
    ("own-nonce", frame(encode(Hello(PROTOCOL_VERSION, "node-z", nonce_of("node-a"), 1))), "nonce"),
    ("own-node-id", frame(encode(Hello(PROTOCOL_VERSION, "node-a", b"z" * 16, 1))), "own node id"),
    ("zero-length-frame", frame(b""), "undecodable"),
]


@pytest.mark.parametrize(
    ("data", "match"), [pytest.param(d, m, id=i) for i, d, m in BAD_HANDSHAKES]
)
def test_bad_handshake_is_a_remote_error(data: bytes, match: str) -> None:
    conn = _after_hello(data)
    with pytest.raises(RemoteProtocolError, match=match):
        drain(conn)
    assert conn.state is State.CLOSED
    for call in (conn.next_event, conn.start, lambda: conn.receive_data(b"x")):
        with pytest.raises(LocalProtocolError, match="already failed"):
            call()


def test_hello_or_auth_after_the_handshake_is_refused() -> None:
    a, b = make("node-a"), make("node-b")
    handshake(a, b)
    a.receive_data(frame(encode(Auth(H))))
    with pytest.raises(RemoteProtocolError, match="Auth after the handshake"):
        a.next_event()


@pytest.mark.parametrize(
    "opened", [pytest.param(False, id="handshake"), pytest.param(True, id="open")]
)
def test_oversized_frame_is_refused_from_its_header_alone(opened: bool) -> None:
    a = PeerConnection(node_id="a", listen_port=1, secret=SECRET, nonce=b"a" * 16, max_frame=1000)
    b = PeerConnection(node_id="b", listen_port=1, secret=SECRET, nonce=b"b" * 16, max_frame=1000)
    if opened:
        handshake(a, b)
        limit = 1000
    else:
        a.start()
        limit = min(1000, HANDSHAKE_MAX_FRAME)
    a.receive_data((limit).to_bytes(4, "big"))  # exactly at the limit: waits for the body
    assert a.next_event() is NEED_DATA
    fresh = make("node-c")
    fresh.start()
    fresh.receive_data((HANDSHAKE_MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="over the 4096-byte limit"):
        fresh.next_event()
    if opened:
        b.receive_data((1001).to_bytes(4, "big"))
        with pytest.raises(RemoteProtocolError, match="over the 1000-byte limit"):
            b.next_event()


def test_send_is_refused_before_open_for_handshake_messages_and_when_oversized() -> None:
    a = PeerConnection(node_id="a", listen_port=1, secret=SECRET, nonce=b"a" * 16, max_frame=100)
    b = make("b")
    with pytest.raises(LocalProtocolError, match="while handshake"):
        a.send(Request(D, 1))
    with pytest.raises(LocalProtocolError, match="start"):
        a.next_event()
    handshake(a, b)
    with pytest.raises(LocalProtocolError, match="by itself"):
        a.send(Hello(1, "a", b"a" * 16, 1))
    with pytest.raises(LocalProtocolError, match="by itself"):
        a.send(Auth(H))
    with pytest.raises(LocalProtocolError, match="over the 100-byte limit"):
        a.send(Piece(D, 1, b"x" * 100))
    with pytest.raises(LocalProtocolError, match="invalid"):
        a.send(Request("sha256:nope", 1))
    assert a.state is State.OPEN  # nothing was sent, so nothing broke
    assert decode(a.send(Request(D, 1))[4:]) == Request(D, 1)
    with pytest.raises(LocalProtocolError, match="already called"):
        a.start()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"secret": b""}, "secret", id="empty-secret"),
        pytest.param({"nonce": b"short"}, "nonce", id="short-nonce"),
        pytest.param({"node_id": ""}, "node_id", id="empty-node-id"),
        pytest.param({"listen_port": 70000}, "listen_port", id="bad-port"),
        pytest.param({"max_frame": 0}, "max_frame", id="zero-max-frame"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {
        "node_id": "a",
        "listen_port": 1,
        "secret": SECRET,
        "nonce": b"n" * 16,
    }
    with pytest.raises(LocalProtocolError, match=match):
        PeerConnection(**{**arguments, **kwargs})  # type: ignore[arg-type]


def test_clean_eof_gives_closed_after_buffered_frames() -> None:
    a, b = make("node-a"), make("node-b")
    handshake(a, b)
    a.receive_data(b.send(Cancel(D, 1)))
    a.receive_data(b"")
    assert drain(a) == [Cancel(D, 1), Closed()]
    assert a.state is State.CLOSED
    assert a.next_event() == Closed()
    a.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError, match="after EOF"):
        a.receive_data(b"more")
    with pytest.raises(LocalProtocolError, match="while closed"):
        a.send(Cancel(D, 1))


def test_eof_during_handshake_is_closed() -> None:
    conn = make("node-a")
    conn.start()
    conn.receive_data(b"")
    assert drain(conn) == [Closed()]


def test_eof_inside_a_frame_is_a_remote_error() -> None:
    a, b = make("node-a"), make("node-b")
    handshake(a, b)
    a.receive_data(b.send(Cancel(D, 1))[:-1])
    a.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        a.next_event()


def test_many_small_frames_and_a_big_piece_stream_through() -> None:
    a, b = make("node-a"), make("node-b")
    handshake(a, b)
    small = b"".join(b.send(Have(D, i, H)) for i in range(20_000))
    big = Piece(D, 7, bytes(range(256)) * (4 << 12))  # 4 MiB
    stream = small + b.send(big) + small
    started = time.perf_counter()
    events: list[Event] = []
    for i in range(0, len(stream), 65536):  # socket-sized reads
        a.receive_data(stream[i : i + 65536])
        events += drain(a)
    assert time.perf_counter() - started < 5  # linear, not quadratic
    assert len(events) == 40_001
    assert events[20_000] == big
    assert events[:3] == [Have(D, 0, H), Have(D, 1, H), Have(D, 2, H)]
    assert events[-1] == Have(D, 19_999, H)


def test_frame_remaining_counts_what_the_begun_frame_still_needs() -> None:
    a, b = make("node-a"), make("node-b")
    handshake(a, b)
    piece = b.send(Piece(D, 3, b"x" * 100_000))
    assert a.frame_remaining() == 0  # nothing begun
    a.receive_data(piece[:3])
    assert (drain(a), a.frame_remaining()) == ([], 0)  # the length prefix is not complete
    a.receive_data(piece[3:40_000])
    assert (drain(a), a.frame_remaining()) == ([], len(piece) - 40_000)
    a.receive_data(piece[40_000:] + b.send(Have(D, 1, H))[:2])
    assert drain(a) == [Piece(D, 3, b"x" * 100_000)]
    assert a.frame_remaining() == 0  # the next frame's prefix is partial again


# --- hostile bytes -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.binary(max_size=64)
        | st.builds(lambda b: frame(b), st.binary(max_size=64))
        | st.sampled_from([HELLO_B, frame(encode(Auth(H))), frame(encode(Request(D, 1)))]),
        max_size=8,
    ),
    eof=st.booleans(),
)
def test_arbitrary_bytes_only_ever_raise_remote_errors_and_never_yield_a_message(
    chunks: list[bytes], eof: bool
) -> None:
    conn = make("node-a")
    conn.start()
    try:
        for chunk in [*(c for c in chunks if c), *([b""] if eof else [])]:
            conn.receive_data(chunk)
            for event in drain(conn):
                assert isinstance(event, Closed), event
            assert conn.state is not State.OPEN
    except RemoteProtocolError:
        assert conn.state is State.CLOSED


@given(st.integers(0, 2**32 - 1), st.binary(max_size=70_000))
@settings(max_examples=50)
def test_a_piece_header_then_raw_data_is_exactly_the_framed_piece(index: int, data: bytes) -> None:
    """Uploads send the header and then the chunk from a file: the peer must see one Piece."""
    a, b = make("a:1"), make("b:1")
    handshake(a, b)
    framed = a.send_piece_header(D, index, len(data)) + data
    assert framed == a.send(Piece(D, index, data))
    b.receive_data(framed)
    assert drain(b) == [Piece(D, index, data)]


def test_a_piece_header_obeys_the_same_rules_as_send() -> None:
    a, b = make("a:1"), make("b:1")
    with pytest.raises(LocalProtocolError, match="handshake"):
        a.send_piece_header(D, 0, 10)
    handshake(a, b)
    with pytest.raises(LocalProtocolError, match="limit"):
        a.send_piece_header(D, 0, DEFAULT_MAX_FRAME)
    with pytest.raises(LocalProtocolError, match="invalid"):
        a.send_piece_header("sha256:nothex", 0, 10)
