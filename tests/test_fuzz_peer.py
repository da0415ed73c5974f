"""Hostile input to the peer protocol: the frame decoder and the handshake under hypothesis (pure,
deterministic), and a real agent's frame limit over a socket on 127.0.0.1.

What must hold for any bytes: only RemoteProtocolError (or events) comes out, never another
exception; nothing but the two handshake frames is accepted before both MACs verify; what a
connection buffers never exceeds one frame under its limit plus what the last read brought."""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, HostPort
from agent.service import Agent
from p2pull.peer.messages import (
    Auth,
    BlobInfo,
    Hello,
    Interested,
    Request,
    Unavailable,
    encode,
)
from p2pull.peer.wire import (
    HANDSHAKE_MAX_FRAME,
    NEED_DATA,
    PIECE_OVERHEAD,
    Authenticated,
    Closed,
    PeerConnection,
    RemoteProtocolError,
    State,
)
from tests.fake_peer import RawSession
from tests.fuzzing import fuzz
from tests.ports import free_port
from tests.test_peer_wire import SAMPLES, handshake, make

D = "sha256:" + "cd" * 32
SECRET = b"a cluster secret for the fuzzing"
FUZZ = fuzz(200)
RECEIVE = 64 * 1024  # what one read may bring (the agent reads up to 1 MiB; smaller is stricter)


def opened_pair(max_frame: int = 4096 + PIECE_OVERHEAD) -> tuple[PeerConnection, PeerConnection]:
    a = PeerConnection(
        node_id="a", listen_port=1, secret=SECRET, nonce=b"a" * 16, max_frame=max_frame
    )
    b = PeerConnection(
        node_id="b", listen_port=1, secret=SECRET, nonce=b"b" * 16, max_frame=max_frame
    )
    handshake(a, b)
    return a, b


def feed_all(conn: PeerConnection, pieces: list[bytes], *, limit: int) -> list[object]:
    """Feed ``pieces`` as reads; events until the connection fails or the bytes run out. After
    each read the buffer holds at most one frame under ``limit`` plus that read."""
    events: list[object] = []
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                assert conn.state is State.CLOSED and conn.buffered == 0
                return events
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, Closed):
                return events
        assert conn.buffered <= 4 + limit + len(piece)
    return events


def frames(bodies: list[bytes]) -> bytes:
    return b"".join(len(body).to_bytes(4, "big") + body for body in bodies)


mutations = st.lists(
    st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8
)


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    return bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points)] or [b""]


valid_bodies = st.sampled_from(
    [encode(m) for _, m in SAMPLES if not isinstance(m, Hello | Auth) and len(encode(m)) < 4096]
)


@FUZZ
@given(
    bodies=st.lists(valid_bodies | st.binary(max_size=300), min_size=1, max_size=6),
    flips=mutations,
    cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
    lengths=st.lists(st.integers(0, 2**32 - 1), max_size=2),
)
def test_an_open_connection_survives_any_frames(
    bodies: list[bytes], flips: list[tuple[int, int]], cuts: list[int], lengths: list[int]
) -> None:
    """Valid, mutated and random bodies, cut anywhere, with stray length prefixes: only
    messages or a RemoteProtocolError, and the buffer stays bounded."""
    a, _ = opened_pair()
    data = mutate(frames(bodies), flips) + b"".join(n.to_bytes(4, "big") for n in lengths)
    events = feed_all(a, split(data, cuts), limit=4096 + PIECE_OVERHEAD)
    assert all(not isinstance(e, Hello | Authenticated) for e in events)


@FUZZ
@given(flips=mutations, cuts=st.lists(st.integers(0, 1 << 12), max_size=4))
def test_a_tampered_handshake_never_authenticates(
    flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Any change to the peer's Hello or Auth bytes fails the handshake (or leaves it waiting);
    nothing sent after them is ever delivered."""
    a, b = make("node-a"), make("node-b")
    a_hello, b_hello = a.start(), b.start()
    b.receive_data(a_hello)
    assert b.next_event() is NEED_DATA
    handshake_bytes = b_hello + b.data_to_send()  # b's Hello and its Auth, as a receives them
    original = handshake_bytes + frames([encode(Request(D, 1))])
    tampered = mutate(original, flips)
    events = feed_all(a, split(tampered, cuts), limit=HANDSHAKE_MAX_FRAME)
    if tampered[: len(handshake_bytes)] != handshake_bytes:
        assert not any(isinstance(e, Authenticated | Request) for e in events)
        assert a.state is not State.OPEN
    else:
        assert events[:1] == [Authenticated(node_id="node-b", listen_port=7000)]


@FUZZ
@given(data=st.binary(max_size=HANDSHAKE_MAX_FRAME * 3), cuts=st.lists(st.integers(), max_size=5))
def test_a_stranger_gets_nothing_and_is_held_to_the_handshake_limit(
    data: bytes, cuts: list[int]
) -> None:
    """Without the secret a peer cannot make a connection deliver anything, whatever it sends,
    and the connection never holds more than the 4 KiB handshake limit per frame."""
    conn = make("node-a")
    conn.start()
    events = feed_all(conn, split(data, cuts), limit=HANDSHAKE_MAX_FRAME)
    assert all(isinstance(e, Closed) for e in events)
    assert conn.state is not State.OPEN


@FUZZ
@given(chunk_size=st.integers(1, 2**40))
def test_a_blob_described_with_chunks_over_the_limit_is_unavailable_from_that_peer(
    chunk_size: int,
) -> None:
    a, b = opened_pair(max_frame=1 << 20)
    count = min(3, -(-10_000_000 // chunk_size))
    size = min(10_000_000, count * chunk_size)
    info = BlobInfo(D, size, chunk_size, b"\x00", (b"",) * count)
    a.receive_data(b.send(info))
    event = a.next_event()
    if chunk_size <= (1 << 20) - PIECE_OVERHEAD:
        assert event == info
    else:
        assert isinstance(event, Unavailable) and event.digest == D
        assert "over this node's limit" in event.reason
    a.receive_data(b.send(Interested(D, "x", None)))  # the link itself is fine
    assert isinstance(a.next_event(), Interested)


# -- a real agent's frame limit -----------------------------------------------------------------


async def test_an_agent_refuses_frames_over_its_chunk_size_plus_64_kib(tmp_path: Path) -> None:
    """After authentication a frame of 64 MiB + 64 KiB was accepted whatever the chunk size
    (the agent set its limit to max(chunk size, 64 MiB)); six links holding 63 MiB partial
    frames took 461 MB. The limit is the configured chunk size + 64 KiB."""
    secret = secrets.token_bytes(32)
    port = free_port()
    config = AgentConfig(
        mirror_addr=HostPort("127.0.0.1", 0),
        metrics_addr=HostPort("127.0.0.1", 0),
        peer_addr=HostPort("127.0.0.1", port),
        data_dir=tmp_path / "node",
        peers=(HostPort("127.0.0.1", port),),
        discovery="static",
        cluster_secret=secret,
        chunk_size=256 * 1024,
        log_level="WARNING",
    )
    limit = 256 * 1024 + PIECE_OVERHEAD
    outcomes = {}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(Agent(config).run)
            for declared in (limit, limit + 1, 64 * 1024 * 1024 + PIECE_OVERHEAD):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                session = RawSession(stream, node_id="prober", port=1, secret=secret)
                async with stream:
                    await session.start()
                    assert isinstance(await session.next_event(), Authenticated)
                    await stream.send_all(declared.to_bytes(4, "big") + b"\x00" * 1000)
                    outcomes[declared] = "open"
                    with trio.move_on_after(1.5):
                        try:
                            while await stream.receive_some(65536):
                                pass
                        except trio.BrokenResourceError:
                            pass
                        outcomes[declared] = "closed"
            nursery.cancel_scope.cancel()
    assert outcomes == {
        limit: "open",  # at the limit: waits for the rest of the body
        limit + 1: "closed",
        64 * 1024 * 1024 + PIECE_OVERHEAD: "closed",
    }
