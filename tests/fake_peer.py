"""A fake swarm member for tests: speaks the protocol, claims every chunk, and answers requests
with garbage (a hostile peer) or with Reject (a peer that lied or lost its data)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from p2pull.membership import Member
from p2pull.peer.messages import BlobInfo, Have, Interested, Piece, Reject, Request
from p2pull.peer.wire import NEED_DATA, Authenticated, Closed, PeerConnection
from p2pull.store.types import chunk_count


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
        conn = PeerConnection(
            node_id=self.member.node_id,
            listen_port=self.member.port,
            secret=self.secret,
            nonce=secrets.token_bytes(16),
        )
        async with stream:
            await stream.send_all(conn.start())
            try:
                while True:
                    event = conn.next_event()
                    if out := conn.data_to_send():
                        await stream.send_all(out)
                    if event is NEED_DATA:
                        conn.receive_data(await stream.receive_some(1 << 20))
                    elif isinstance(event, Closed):
                        return
                    elif isinstance(event, Authenticated):
                        if announced is not None:
                            message = Interested(self.digest, self.name, self.ns)
                            await stream.send_all(conn.send(message))
                            announced.started()
                    elif isinstance(event, Interested) and event.digest == self.digest:
                        await stream.send_all(conn.send(self._info()))
                    elif isinstance(event, Have) and event.digest == self.digest:
                        self.haves.append((conn.peer_id or "?", event.index))
                    elif isinstance(event, Request) and event.digest == self.digest:
                        self.requests.append((conn.peer_id or "?", event.index))
                        if not self.garbage:
                            reject = Reject(self.digest, event.index, "not held")
                            await stream.send_all(conn.send(reject))
                            continue
                        offset = event.index * self.chunk_size
                        length = min(self.chunk_size, self.size - offset)
                        garbage = secrets.token_bytes(length)
                        await stream.send_all(conn.send(Piece(self.digest, event.index, garbage)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
