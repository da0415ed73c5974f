"""Playing a peer in tests: ``RawSession`` drives one connection by hand; ``CorruptPeer`` is a
fake swarm member that claims every chunk and answers requests with garbage (a hostile peer) or
with Reject (a peer that lied or lost its data)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from p2pull.membership import Member
from p2pull.peer.messages import BlobInfo, Have, Interested, Message, Piece, Reject, Request
from p2pull.peer.wire import NEED_DATA, Authenticated, Closed, PeerConnection
from p2pull.store.types import chunk_count


class RawSession:
    """One authenticated peer connection over a trio stream, driven by the test: the real
    handshake and framing (``PeerConnection``), none of the agent's link machinery."""

    def __init__(
        self, stream: trio.SocketStream, *, node_id: str, port: int, secret: bytes
    ) -> None:
        self.stream = stream
        self.conn = PeerConnection(
            node_id=node_id, listen_port=port, secret=secret, nonce=secrets.token_bytes(16)
        )

    async def start(self) -> None:
        """Send our Hello (the handshake then proceeds inside ``next_event``)."""
        await self.stream.send_all(self.conn.start())

    async def send(self, *messages: Message) -> None:
        """All in one write: the other side reads them in one go."""
        await self.stream.send_all(b"".join(self.conn.send(m) for m in messages))

    async def next_event(self) -> Message | Authenticated | Closed:
        while True:
            event = self.conn.next_event()
            if out := self.conn.data_to_send():
                await self.stream.send_all(out)
            if event is NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(1 << 20))
                continue
            return event


@dataclass
class CorruptPeer:
    """Joins the swarm of one blob, claims to hold all of it, answers requests with wrong bytes."""

    member: Member
    secret: bytes
    digest: str
    size: int
    chunk_size: int
    name: str
    ns: str
    garbage: bool = True  # False: answer every request with Reject
    requests: list[tuple[str, int]] = field(default_factory=list)  # (peer id, chunk index)
    haves: list[tuple[str, int]] = field(default_factory=list)  # (peer id, chunk index)
    _nursery: trio.Nursery = field(init=False)

    def _info(self) -> BlobInfo:
        count = chunk_count(self.size, self.chunk_size)
        bits = bytearray((count + 7) // 8)
        for index in range(count):
            bits[index >> 3] |= 0x80 >> (index & 7)
        return BlobInfo(self.digest, self.size, self.chunk_size, bytes(bits), (b"",) * count)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.member.port, host=self.member.host)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started()

    async def join(self, others: list[Member]) -> None:
        """Dial every real node and say we want the blob (so seeds hand us out as a peer);
        returns once every node has been told, the connections stay up."""
        for other in others:
            await self._nursery.start(self._dial, other)

    async def _dial(
        self, other: Member, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        stream = await trio.open_tcp_stream(other.host, other.port)
        await self._serve(stream, announced=task_status)

    async def _serve(
        self, stream: trio.SocketStream, *, announced: trio.TaskStatus[None] | None = None
    ) -> None:
        session = RawSession(
            stream, node_id=self.member.node_id, port=self.member.port, secret=self.secret
        )
        async with stream:
            await session.start()
            try:
                while True:
                    event = await session.next_event()
                    peer = session.conn.peer_id or "?"
                    if isinstance(event, Closed):
                        return
                    if isinstance(event, Authenticated):
                        if announced is not None:
                            await session.send(Interested(self.digest, self.name, self.ns))
                            announced.started()
                    elif isinstance(event, Interested) and event.digest == self.digest:
                        await session.send(self._info())
                    elif isinstance(event, Have) and event.digest == self.digest:
                        self.haves.append((peer, event.index))
                    elif isinstance(event, Request) and event.digest == self.digest:
                        self.requests.append((peer, event.index))
                        await session.send(self._answer(event.index))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def _answer(self, index: int) -> Piece | Reject:
        if not self.garbage:
            return Reject(self.digest, index, "not held")
        length = min(self.chunk_size, self.size - index * self.chunk_size)
        return Piece(self.digest, index, secrets.token_bytes(length))
