"""Peer links over real loopback sockets: uploads go out as one Piece, from a file by sendfile."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from p2pull.membership import Member
from p2pull.peer.messages import Have, Message, Piece
from p2pull.store.types import ByteSink
from p2pull.swarm import links
from p2pull.swarm.links import PeerLink, PeerPool
from p2pull.swarm.transport import TcpTransport
from tests.recording import record_sends

D = "sha256:" + "ab" * 32
SECRET = b"s" * 32
CHUNK = 256 * 1024


class FileChunks:
    """The part of a StoredBlob that uploads use: chunk spans, and ``send`` by sendfile."""

    def __init__(self, path: Path, *, size: int, chunk_size: int) -> None:
        self.path, self.size, self.chunk_size = path, size, chunk_size

    def chunk_span(self, index: int) -> tuple[int, int]:
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    async def send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            await sink.sendfile(fd, offset=offset, count=length)
        finally:
            os.close(fd)


class Inbox:
    """What the listening side received; ``arrived`` is set at ``expect`` messages."""

    def __init__(self, expect: int = 0) -> None:
        self.messages: list[Message] = []
        self.expect = expect
        self.arrived = trio.Event()

    async def on_message(self, link: PeerLink, message: Message) -> None:
        self.messages.append(message)
        if len(self.messages) >= self.expect:
            self.arrived.set()


async def _pair(nursery: trio.Nursery, inbox: Inbox) -> tuple[PeerPool, PeerPool, PeerLink]:
    on_message = inbox.on_message

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    server = PeerPool(
        node_id=f"127.0.0.1:{port}", listen_port=port, secret=SECRET,
        on_message=on_message, on_closed=lambda link: None, max_frame=8 << 20,
        transport=TcpTransport(host="127.0.0.1", port=0),
    )  # fmt: skip
    client = PeerPool(
        node_id="127.0.0.1:1", listen_port=1, secret=SECRET,
        on_message=on_message, on_closed=lambda link: None, max_frame=8 << 20,
        transport=TcpTransport(host="127.0.0.1", port=0),
    )  # fmt: skip
    await nursery.start(server.run)
    await nursery.start(client.run)
    nursery.start_soon(trio.serve_listeners, server.accept, listeners)
    link = await client.connect(Member.of("127.0.0.1", port))
    return server, client, link


async def test_an_uploaded_chunk_arrives_as_one_piece_between_other_frames(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * CHUNK - 1000)
    (tmp_path / "blob").write_bytes(data)
    blob = FileChunks(tmp_path / "blob", size=len(data), chunk_size=CHUNK)
    inbox = Inbox(expect=4)
    async with trio.open_nursery() as nursery:
        _, _, link = await _pair(nursery, inbox)
        have = Have(D, 0, hashlib.sha256(b"x").digest())
        link.send(have)
        sent = [await link.upload(D, index, blob) for index in (2, 0)]  # type: ignore[arg-type]
        link.send(have)
        with trio.fail_after(10):
            await inbox.arrived.wait()
        nursery.cancel_scope.cancel()
    assert sent == [True, True]
    assert (
        inbox.messages
        == [
            have,
            Piece(D, 2, data[2 * CHUNK :]),  # the short last chunk
            Piece(D, 0, data[:CHUNK]),
            have,
        ]
    )


async def test_an_upload_on_a_closed_link_reports_false_and_does_not_wait(
    tmp_path: Path,
) -> None:
    (tmp_path / "blob").write_bytes(b"z" * CHUNK)
    blob = FileChunks(tmp_path / "blob", size=CHUNK, chunk_size=CHUNK)
    async with trio.open_nursery() as nursery:
        _, _, link = await _pair(nursery, Inbox())
        link.close()
        with trio.fail_after(5):
            assert await link.upload(D, 0, blob) is False  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def test_a_piece_trickling_in_is_read_in_big_parts_and_a_small_frame_after_it_promptly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    receive_some = trio.SocketStream.receive_some

    async def counted(self: trio.SocketStream, max_bytes: int | None = None) -> bytes:
        data = await receive_some(self, max_bytes)
        reads.append(len(data))
        return data

    monkeypatch.setattr(trio.SocketStream, "receive_some", counted)
    data = os.urandom(1 << 20)
    have = Have(D, 0, hashlib.sha256(b"x").digest())
    inbox = Inbox(expect=2)
    async with trio.open_nursery() as nursery:
        _, _, link = await _pair(nursery, inbox)
        framed = link.conn.send(Piece(D, 1, data))
        reads.clear()
        for offset in range(0, len(framed), 4096):  # a slow link: a packet or so at a time
            await link.stream.send_all(framed[offset : offset + 4096])
            await trio.sleep(0.0005)
        await link.stream.send_all(link.conn.send(have))
        with trio.fail_after(10):
            await inbox.arrived.wait()
        nursery.cancel_scope.cancel()
    assert inbox.messages == [Piece(D, 1, data), have]
    assert len(reads) <= 24, f"{len(reads)} reads for 257 trickled writes"


async def test_small_frames_queued_together_go_out_in_few_sends_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends = record_sends(monkeypatch, links, "send_all_eager")  # the writer's one send per batch
    data = os.urandom(CHUNK)
    (tmp_path / "blob").write_bytes(data)
    blob = FileChunks(tmp_path / "blob", size=CHUNK, chunk_size=CHUNK)
    haves = [Have(D, i, hashlib.sha256(b"%d" % i).digest()) for i in range(300)]
    inbox = Inbox(expect=301)
    async with trio.open_nursery() as nursery:
        _, _, link = await _pair(nursery, inbox)
        sends.clear()
        for have in haves[:150]:  # no checkpoint between them: all queued at once
            link.send(have)
        sent = await link.upload(D, 0, blob)  # type: ignore[arg-type]
        for have in haves[150:]:
            link.send(have)
        with trio.fail_after(10):
            await inbox.arrived.wait()
        nursery.cancel_scope.cancel()
    assert sent
    assert inbox.messages == [*haves[:150], Piece(D, 0, data), *haves[150:]]
    assert len(sends) <= 6, sends  # 300 frames of ~90 bytes; the piece goes by sendfile


async def test_strangers_hold_at_most_max_handshakes_inbound_connections() -> None:
    """Unauthenticated connections cost a slot each for the handshake timeout; past the cap a
    new one is closed before the node sends anything (its Hello), and a slot frees when a
    stranger's handshake times out."""
    inbox = Inbox()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])
    pool = PeerPool(
        node_id=f"127.0.0.1:{port}", listen_port=port, secret=SECRET,
        on_message=inbox.on_message, on_closed=lambda link: None, max_frame=8 << 20,
        handshake_timeout=1.0, max_handshakes=2, transport=TcpTransport(host="127.0.0.1", port=0),
    )  # fmt: skip
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            nursery.start_soon(trio.serve_listeners, pool.accept, listeners)
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            hellos = [await stream.receive_some(4096) for stream in silent]  # both in handshake
            third = await trio.open_tcp_stream("127.0.0.1", port)
            over_cap = await third.receive_some(4096)
            for stream in silent:  # the node gives up on them after the handshake timeout
                while await stream.receive_some(4096):
                    pass
            fourth = await trio.open_tcp_stream("127.0.0.1", port)
            after = await fourth.receive_some(4096)
            for stream in (*silent, third, fourth):
                await stream.aclose()
            nursery.cancel_scope.cancel()
    assert all(hellos) and over_cap == b"" and after  # the fourth got a Hello again
