"""Many agents' swarm code in one process, over the in-memory peer network. Not a test module.

Each node is the real ``SwarmNode`` (links, handshake, session drivers, uploads) with a
``MemoryStore``, its own ``BlobService`` and a static membership of every node, on a
``p2pull.testing.peernet`` host; the origin is a ``MemoryUpstream``. Run under trio's
``MockClock`` (autojump) and with chunks below the store's thread threshold, a swarm runs in
simulated time with no threads and no sockets, so the same seed replays the same messages
(``trace``). Clients read through ``BlobService.open`` as the mirror does.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import trio

from p2pull.blobs import BlobService
from p2pull.membership import Member, Membership
from p2pull.metrics import Metrics
from p2pull.origin_fetch import DEFAULT_RESUME, ResumePolicy
from p2pull.peer.messages import Message
from p2pull.reference import Digest
from p2pull.store.memory import MemoryStore
from p2pull.swarm.links import PeerLink
from p2pull.swarm.node import SwarmConfig, SwarmNode
from p2pull.testing.fakes import FixedUpstreams, MemoryUpstream
from p2pull.testing.peernet import PeerNet

SECRET = b"memory-swarm-secret-0123456789abcdef"
PORT = 5051
NAME = "team/mem"

TraceEntry = tuple[float, str, str, str, int]  # (time, to, from, message type, chunk index)


@dataclass
class MemNode:
    index: int
    member: Member
    store: MemoryStore
    blobs: BlobService
    node: SwarmNode
    metrics: Metrics
    membership: Membership
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    clients: list[trio.CancelScope] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


class _Bytes:
    """A ByteSink that keeps what it is sent."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data
        await trio.lowlevel.checkpoint()

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None:
        raise AssertionError("a MemoryStore never sends file regions")


@dataclass
class MemSwarm:
    net: PeerNet
    origin: MemoryUpstream
    nodes: list[MemNode]
    trace: list[TraceEntry]
    started: float
    opened_by: list[int]  # node indexes, one per blob opened at the origin

    @property
    def fetchers(self) -> set[int]:
        """The nodes that went to the origin."""
        return set(self.opened_by)

    async def pull(self, node: MemNode, digest: Digest) -> bytes | None:
        """The blob as a local client of ``node`` reads it (verified against its digest);
        None if the node was killed first."""
        with trio.CancelScope() as scope:
            node.clients.append(scope)
            reader = await node.blobs.open("origin.test", NAME, digest)
            sink = _Bytes()
            await reader.send(sink, offset=0, length=reader.size)
            data = bytes(sink.data)
            assert hashlib.sha256(data).hexdigest() == digest.hex
            return data
        return None

    def kill(self, node: MemNode) -> None:
        """The node dies: its tasks and its clients end, its links close, nobody can dial it
        again."""
        self.net.down.add(node.member.host)
        node.scope.cancel()
        for client in node.clients:
            client.cancel()

    def seed_of(self, digest: Digest) -> MemNode:
        ranked = self.nodes[0].membership.successors(str(digest), now=trio.current_time())
        return next(n for n in self.nodes if n.member == ranked[0])


def member(index: int) -> Member:
    return Member.of(f"198.18.{index // 250}.{index % 250 + 1}", PORT)


@asynccontextmanager
async def mem_swarm(
    count: int,
    *,
    origin: MemoryUpstream,
    chunk_size: int = 64 * 1024,
    up: float = math.inf,
    down: float = math.inf,
    latency: float = 0.0,
    config: Callable[[SwarmConfig], SwarmConfig] = lambda c: c,
    rates: dict[int, tuple[float, float]] | None = None,
    seed: int = 0,
    resume: ResumePolicy = DEFAULT_RESUME,
    origins: dict[int, MemoryUpstream] | None = None,
) -> AsyncIterator[MemSwarm]:
    """``count`` nodes on links of ``up``/``down`` bytes per second (``rates`` overrides some
    nodes: index -> (up, down)); ``config`` adjusts each node's SwarmConfig; ``origins`` gives
    some nodes another origin (one that serves a blob wrong, say)."""
    net = PeerNet(latency=latency)
    members = [member(i) for i in range(count)]
    trace: list[TraceEntry] = []
    nodes: list[MemNode] = []
    opened_by: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        started = trio.current_time()
        for index, me in enumerate(members):
            node_up, node_down = (rates or {}).get(index, (up, down))
            nodes.append(
                _node(
                    index,
                    me,
                    members,
                    net=net,
                    origin=(origins or {}).get(index, origin),
                    chunk_size=chunk_size,
                    up=node_up,
                    down=node_down,
                    config=config,
                    trace=trace,
                    started=started,
                    rng=random.Random(f"{seed} {index}"),
                    resume=resume,
                    opened_by=opened_by,
                )
            )
        for mem in nodes:
            await nursery.start(_run_node, mem)
        yield MemSwarm(net, origin, nodes, trace, started, opened_by)
        nursery.cancel_scope.cancel()


def _node(
    index: int,
    me: Member,
    members: list[Member],
    *,
    net: PeerNet,
    origin: MemoryUpstream,
    chunk_size: int,
    up: float,
    down: float,
    config: Callable[[SwarmConfig], SwarmConfig],
    trace: list[TraceEntry],
    started: float,
    rng: random.Random,
    resume: ResumePolicy,
    opened_by: list[int],
) -> MemNode:
    metrics = Metrics()
    store = MemoryStore(chunk_size=chunk_size)
    blobs = BlobService(
        store=store,
        upstreams=FixedUpstreams(_Tagged(origin, index, opened_by)),  # type: ignore[arg-type]
        metrics=metrics,
        jitter=rng.random,
        resume=resume,
    )
    membership = Membership(self_member=me)
    membership.update_source("static", members, now=trio.current_time())
    swarm_config = config(SwarmConfig(member=me, secret=SECRET, bind_host=me.host))
    node = SwarmNode(
        config=replace(swarm_config, max_chunk_size=max(chunk_size, swarm_config.max_chunk_size)),
        membership=membership,
        store=store,
        blobs=blobs,
        metrics=metrics,
        transport=net.host(me.host, port=me.port, up=up, down=down),
    )
    node.pool._on_message = _recording(node.pool._on_message, me.node_id, trace, started)
    return MemNode(index, me, store, blobs, node, metrics, membership)


class _Tagged:
    """The origin as one node sees it: records that this node opened a blob."""

    def __init__(self, origin: MemoryUpstream, index: int, opened_by: list[int]) -> None:
        self._origin, self._index, self._opened_by = origin, index, opened_by

    def __getattr__(self, name: str) -> object:
        return getattr(self._origin, name)

    def open_blob(self, name: str, digest: Digest, *, start: int = 0) -> object:
        self._opened_by.append(self._index)
        return self._origin.open_blob(name, digest, start=start)


def _recording(
    handler: Callable[[PeerLink, Message], Awaitable[None]],
    receiver: str,
    trace: list[TraceEntry],
    started: float,
) -> Callable[[PeerLink, Message], Awaitable[None]]:
    async def on_message(link: PeerLink, message: Message) -> None:
        index = getattr(message, "index", -1)
        trace.append(
            (
                round(trio.current_time() - started, 9),
                receiver,
                link.peer_id,
                type(message).__name__,
                index,
            )
        )
        await handler(link, message)

    return on_message


async def _run_node(mem: MemNode, *, task_status: trio.TaskStatus[None]) -> None:
    with mem.scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(mem.blobs.run)
            await nursery.start(mem.node.run)
            mem.blobs.swarm = mem.node
            task_status.started()


def deterministic(seed: int) -> None:
    """Seed trio's scheduler (it shuffles the tasks that are ready at once), so that a swarm
    under a MockClock replays exactly."""
    trio._core._run._r.seed(seed)  # type: ignore[attr-defined]
