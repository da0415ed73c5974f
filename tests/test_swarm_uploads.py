"""A node's upload side as a peer sees it: a full upload queue answers "busy", a Cancel of a
request still waiting for a slot means the chunk is never sent, a Push of a blob the node is not
downloading is cancelled."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from p2pull.peer.messages import REJECT_BUSY, Cancel, Message, Piece, Push, Reject, Request
from p2pull.peer.wire import Authenticated, Closed
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.fake_peer import RawSession
from tests.swarm_harness import SECRET, Node, free_port, get_blob, swarm

NAME = "team/uploads"
CHUNK = 1 << 20
SLOTS = 4  # the agent's default --max-uploads


class Client(RawSession):
    """A bare protocol client connected to one node."""

    @classmethod
    async def connect(cls, node: Node) -> Client:
        stream = await trio.open_tcp_stream("127.0.0.1", node.agent.config.peer_addr.port)
        port = free_port()
        client = cls(stream, node_id=f"127.0.0.1:{port}", port=port, secret=SECRET)
        await client.start()
        while not isinstance(await client.next_event(), Authenticated):
            pass
        return client

    async def receive(self) -> Message:
        while True:
            event = await self.next_event()
            assert not isinstance(event, Closed), "the node closed the connection"
            if not isinstance(event, Authenticated):
                return event


async def _node_holding_a_blob(
    tmp_path: Path, nursery: trio.Nursery, chunks: int
) -> tuple[Node, Digest, bytes]:
    origin = TestOrigin()
    await nursery.start(origin.run)
    data = os.urandom(chunks * CHUNK)
    digest = origin.add_blob(NAME, data)
    nodes = await nursery.start(_one_node, tmp_path, origin)
    async with httpx.AsyncClient(timeout=60) as http:
        await get_blob(http, nodes[0], origin.netloc, NAME, digest)
    return nodes[0], digest, data


async def _one_node(
    tmp_path: Path, origin: TestOrigin, *, task_status: trio.TaskStatus[list[Node]]
) -> None:
    async with swarm(tmp_path, origin, 1) as nodes:
        task_status.started(nodes)
        await trio.sleep_forever()


async def test_requests_beyond_the_upload_slots_are_answered_busy(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node, digest, data = await _node_holding_a_blob(tmp_path, nursery, 2 * SLOTS)
            client = await Client.connect(node)
            await client.send(*(Request(str(digest), i) for i in range(2 * SLOTS)))
            answers = [await client.receive() for _ in range(2 * SLOTS)]
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    pieces = sorted((a for a in answers if isinstance(a, Piece)), key=lambda p: p.index)
    busy = sorted(a.index for a in answers if isinstance(a, Reject) and a.reason == REJECT_BUSY)
    assert [p.index for p in pieces] == list(range(SLOTS))
    assert all(p.data == data[p.index * CHUNK : (p.index + 1) * CHUNK] for p in pieces)
    assert busy == list(range(SLOTS, 2 * SLOTS))


async def test_a_cancelled_request_waiting_for_a_slot_is_never_sent(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node, digest, _ = await _node_holding_a_blob(tmp_path, nursery, SLOTS + 1)
            client = await Client.connect(node)
            d = str(digest)
            await client.send(*(Request(d, i) for i in range(SLOTS)), Cancel(d, 2))
            first = [await client.receive() for _ in range(SLOTS - 1)]
            # every upload that was going to happen is queued on the link by now; one more
            # request whose piece comes after them shows that chunk 2 was not among them
            await client.send(Request(d, SLOTS))
            last = await client.receive()
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    assert sorted(m.index for m in first if isinstance(m, Piece)) == [0, 1, 3]
    assert isinstance(last, Piece) and last.index == SLOTS


async def test_a_push_of_a_blob_the_node_is_not_downloading_is_cancelled(tmp_path: Path) -> None:
    """The pusher would otherwise send the piece for nothing (it waits for a slot, and a Cancel
    drops it before it goes out)."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            node, digest, _ = await _node_holding_a_blob(tmp_path, nursery, 1)
            client = await Client.connect(node)
            other = "sha256:" + "ef" * 32  # neither held nor being downloaded here
            await client.send(Push(other, 3, bytes(32)), Push(str(digest), 0, bytes(32)))
            answers = [await client.receive() for _ in range(2)]
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    # a push of a blob it holds whole is cancelled the same way (no swarm runs for it)
    assert answers == [Cancel(other, 3), Cancel(str(digest), 0)]
