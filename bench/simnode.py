"""The simulator's nodes: the agent's own protocol code, with the sockets and the clock replaced.

Each simulated node runs what an agent runs: a ``Membership``, a ``Serving`` (upload admission,
super-seeding, referrals), and one ``BlobSession`` per blob, fed the same events and carrying
out the same actions as the agent's trio shell (``p2pull/swarm/driver.py`` and
``p2pull/swarm/node.py``), over ``bench/simnet.py`` instead of TCP and in its time instead of
trio's. What stays a model: the store (a piece is as good as its sender: honest unless the
sender is marked corrupt), the origin (a stream at its link's rate), the handshake (three
one-way latencies), and the upload slots (the agent's semaphores, as counters).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.simnet import Clock, Network
from p2pull.bitfield import Bitfield
from p2pull.membership import Member, Membership
from p2pull.peer import events as ev
from p2pull.peer.latecomers import Latecomers
from p2pull.peer.messages import (
    BlobInfo,
    Cancel,
    Interested,
    Message,
    Piece,
    Push,
    Reject,
    Request,
)
from p2pull.peer.serving import Serving
from p2pull.peer.session import BlobSession
from p2pull.peer.superseed import SuperSeeder
from p2pull.store.types import chunk_count
from p2pull.swarm.links import PIECE_SLOTS_PER_LINK
from p2pull.swarm.node import SwarmConfig

log = logging.getLogger(__name__)

HANDSHAKE_TRIPS = 3  # one-way latencies before a dialed link is up (Hello, Hello + Auth, Auth)
_AGENT = {f.name: f.default for f in dataclasses.fields(SwarmConfig)}  # the agent's defaults
CONNECT_TIMEOUT: float = _AGENT["connect_timeout"]  # a dial to a dead node fails after this
UPLOAD_SLOTS: int = _AGENT["upload_slots"]
LINK_SLOTS = PIECE_SLOTS_PER_LINK
FRAME = 8  # bytes of framing per message
SIZES = {  # encoded sizes of the small messages, by type (measured with p2pull.peer.messages)
    "Have": 111,
    "Seeded": 111,
    "Push": 111,
    "Request": 78,
    "Cancel": 78,
    "Reject": 90,
    "Interested": 100,
    "Waiting": 110,
    "Unavailable": 110,
}


class FakeData:
    """A piece's bytes: only their number (the simulator moves counts, not bytes)."""

    __slots__ = ("corrupt", "length")

    def __init__(self, length: int, *, corrupt: bool = False) -> None:
        self.length = length
        self.corrupt = corrupt

    def __len__(self) -> int:
        return self.length


def chunk_sha(digest: str, index: int) -> bytes:
    return hashlib.sha256(f"{digest}/{index}".encode()).digest()


def size_of(message: Message) -> int:
    kind = type(message).__name__
    if isinstance(message, Piece):
        return len(message.data) + 90 + FRAME
    if isinstance(message, BlobInfo):
        return 90 + len(message.bitfield) + 34 * len(message.hashes) + FRAME
    if kind == "Peers":
        return 80 + 40 * len(message.peers) + FRAME  # type: ignore[attr-defined]
    return SIZES.get(kind, 100) + FRAME


@dataclass
class Blob:
    digest: str
    name: str
    size: int
    chunk_size: int

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def span(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)


@dataclass
class Stats:
    sent_messages: int = 0
    sent_bytes: int = 0
    control_sent: int = 0
    control_bytes: int = 0
    from_peers: int = 0
    from_origin: int = 0
    uploaded: int = 0
    max_links: int = 0
    peers_linked: set[int] = field(default_factory=set)


class SimSession:
    """One BlobSession of one node, with its pump schedule."""

    __slots__ = ("blob", "client", "origin", "pump_at", "reader", "session", "token")

    def __init__(self, session: BlobSession, blob: Blob) -> None:
        self.session = session
        self.blob = blob
        self.pump_at = float("inf")
        self.token = 0
        self.client = False  # this node's own client waits for the blob
        self.reader = 0  # the first chunk the client has not read yet
        self.origin: OriginStream | None = None


class SimNode:
    def __init__(
        self, world: World, index: int, member: Member, membership: Membership, *, corrupt: bool
    ) -> None:
        self.world = world
        self.index = index
        self.member = member
        self.node_id = member.node_id
        self.alive = True
        self.corrupt = corrupt  # it sends every piece wrong
        self.links: set[int] = set()
        self.membership = membership
        self.serving = Serving(
            slots=UPLOAD_SLOTS,
            superseed=SuperSeeder(copies=1, window=15.0),
            latecomers=Latecomers(window=60.0),
            linked=self._linked,
        )
        self.context = ev.NodeContext(
            self.node_id, membership, self.serving, world.session_config, rack=world.rack
        )
        self.sessions: dict[str, SimSession] = {}
        self.complete: set[str] = set()
        self.failed: dict[str, str] = {}
        self.stats = Stats()
        self.finished_at: float | None = None
        self.client_blobs: list[Blob] = []
        self._uploads: deque[tuple[int, str, int]] = deque()
        self._active = 0
        self._active_per_link: dict[int, int] = {}

    def _linked(self, peer: str) -> bool:
        index = self.world.index_of.get(peer)
        return index is not None and index in self.links

    # -- the client ------------------------------------------------------------------------------

    def start_client(self, blobs: list[Blob]) -> None:
        self.client_blobs = blobs
        for blob in blobs:
            if blob.digest in self.complete:
                continue
            sim = self.sessions.get(blob.digest) or self._open_session(blob)
            sim.client = True
        self._check_client()

    def _check_client(self) -> None:
        if self.finished_at is None and all(
            b.digest in self.complete or b.digest in self.failed for b in self.client_blobs
        ):
            self.finished_at = self.world.clock.now
            self.world.waiting -= 1

    def _open_session(self, blob: Blob) -> SimSession:
        session = BlobSession(digest=blob.digest, name=blob.name, ns=None, node=self.context)
        sim = self.sessions[blob.digest] = SimSession(session, blob)
        self._execute(sim, session.start(now=self.world.clock.now))
        self._pump_soon(sim)
        return sim

    # -- feeding sessions -------------------------------------------------------------------------

    def feed(self, sim: SimSession, event: ev.Event) -> None:
        if sim.session.ended:
            return
        self._execute(sim, sim.session.handle(event, now=self.world.clock.now))
        self._pump_soon(sim)

    def _pump_soon(self, sim: SimSession) -> None:
        self._schedule_pump(sim, self.world.clock.now)

    def _schedule_pump(self, sim: SimSession, when: float) -> None:
        if when >= sim.pump_at or sim.session.ended:
            return
        sim.pump_at = when
        sim.token += 1
        self.world.clock.at(when, self._pump, sim, sim.token)

    def _pump(self, sim: SimSession, token: int) -> None:
        if token != sim.token or sim.session.ended or not self.alive:
            return
        sim.pump_at = float("inf")
        self._execute(sim, sim.session.pump(now=self.world.clock.now))
        deadline = sim.session.next_deadline()
        if deadline is not None:
            self._schedule_pump(sim, max(deadline, self.world.clock.now))

    def _execute(self, sim: SimSession, actions: list[ev.Action]) -> None:
        for action in actions:
            follow = self._carry_out(sim, action)
            if follow is not None and not sim.session.ended:
                self._execute(sim, sim.session.handle(follow, now=self.world.clock.now))

    def _carry_out(self, sim: SimSession, action: ev.Action) -> ev.Event | None:
        world = self.world
        match action:
            case ev.Send(peer, message):
                world.send(self, peer, message)
            case ev.PushPiece(peer, push):
                world.send(self, peer, push)
                self._enqueue_upload(world.index_of[peer], push.digest, push.index)
            case ev.WritePiece(peer, index, data, _expected):
                if getattr(data, "corrupt", False):
                    return ev.PieceCorrupt(peer, index)
                self.stats.from_peers += len(data)
                self._read_on(sim, index)  # once the session has it
                return ev.PieceStored(peer, index)
            case ev.Dial(member):
                world.dial(self, sim, member.node_id)
            case ev.OpenBlob(size, chunk_size):
                count = chunk_count(size, chunk_size)
                return ev.BlobOpened(size, chunk_size, Bitfield(count), (None,) * count)
            case ev.StartOrigin():
                sim.origin = OriginStream(self, sim)
                sim.origin.start()
            case ev.Finish(error):
                self._session_ended(sim, error)
        return None

    def _read_on(self, sim: SimSession, index: int) -> None:
        """Chunk ``index`` landed: if the client waited for it, it reads on (once the session
        has taken the chunk in) and waits for the next missing one."""
        if sim.client and index == sim.reader:
            self.world.clock.at(self.world.clock.now, self._advance_reader, sim)

    def _advance_reader(self, sim: SimSession) -> None:
        chunks = sim.session.chunks
        if chunks is None or sim.session.ended:
            return
        have, reader = chunks.have, sim.reader
        while reader < have.length and have.has(reader):
            reader += 1
        if reader != sim.reader:
            sim.reader = reader
            if reader < have.length:
                self.feed(sim, ev.ReaderWants(reader))

    def _session_ended(self, sim: SimSession, error: str | None) -> None:
        session, now = sim.session, self.world.clock.now
        self.serving.session_ended(
            session.digest,
            session.members - session.bad,
            now=now,
            failed_seeding=error if session.seeding else None,
        )
        del self.sessions[session.digest]
        if error is None:
            self.complete.add(session.digest)
        else:
            self.failed[session.digest] = error
        self._check_client()

    # -- messages from peers ----------------------------------------------------------------------

    def on_message(self, peer: int, message: Message) -> None:
        if not self.alive or peer not in self.links:
            return
        world = self.world
        sender = world.nodes[peer].node_id
        self.membership.alive(sender)
        if isinstance(message, Request):
            reason = self.serving.request(
                sender, message.digest, message.index, now=world.clock.now
            )
            if reason is not None:
                world.send(self, sender, Reject(message.digest, message.index, reason))
            else:
                self._enqueue_upload(peer, message.digest, message.index)
            return
        if isinstance(message, Cancel):  # as SwarmNode: a granted chunk's grant goes with it
            self.serving.cancelled(sender, message.digest, message.index)
            return
        digest = message.digest  # type: ignore[union-attr]
        sim = self.sessions.get(digest)
        if sim is not None:
            self.feed(sim, ev.PeerMessage(sender, message))
        elif isinstance(message, Interested):
            held = world.describe(digest) if digest in self.complete else None
            answer = self.serving.answer_interest(
                digest, sender, held, now=world.clock.now, limit=world.session_config.peers_handout
            )
            if answer is not None:
                for reply in answer:
                    world.send(self, sender, reply)
                return
            sim = self._open_session(world.blobs[digest])
            self.feed(sim, ev.PeerMessage(sender, message))
        elif isinstance(message, Push):
            world.send(self, sender, Cancel(message.digest, message.index))

    def link_lost(self, peer: int) -> None:
        if peer not in self.links:
            return
        self.links.discard(peer)
        node_id = self.world.nodes[peer].node_id
        self.membership.suspect(node_id, now=self.world.clock.now)
        for sim in list(self.sessions.values()):
            self.feed(sim, ev.PeerGone(node_id))

    # -- uploads (the agent's semaphores, as counters) ------------------------------------------

    def _enqueue_upload(self, peer: int, digest: str, index: int) -> None:
        self._uploads.append((peer, digest, index))
        self._start_uploads()

    def _start_uploads(self) -> None:
        if self._active >= UPLOAD_SLOTS:
            return
        waiting, kept = self._uploads, deque[tuple[int, str, int]]()
        while waiting and self._active < UPLOAD_SLOTS:
            peer, digest, index = waiting.popleft()
            if self._active_per_link.get(peer, 0) >= LINK_SLOTS:
                kept.append((peer, digest, index))
                continue
            sender = self.world.nodes[peer].node_id
            if not self.serving.begin(sender, digest, index):
                continue  # cancelled while it waited
            self._upload(peer, digest, index)
        kept.extend(waiting)
        self._uploads = kept

    def _holds(self, digest: str, index: int) -> bool:
        if digest in self.complete:
            return True
        sim = self.sessions.get(digest)
        chunks = sim.session.chunks if sim is not None else None
        return chunks is not None and chunks.have.has(index)

    def _upload(self, peer: int, digest: str, index: int) -> None:
        world = self.world
        if peer not in self.links or not self._holds(digest, index):
            self.serving.end()
            world.send(self, world.nodes[peer].node_id, Reject(digest, index, "not held"))
            return
        self._active += 1
        self._active_per_link[peer] = self._active_per_link.get(peer, 0) + 1
        length = world.blobs[digest].span(index)
        piece = Piece(digest, index, FakeData(length, corrupt=self.corrupt))  # type: ignore[arg-type]
        self.stats.uploaded += length
        arrival = world.send(self, world.nodes[peer].node_id, piece)
        world.clock.at(arrival, self._upload_done, peer)

    def _upload_done(self, peer: int) -> None:
        self._active -= 1
        self._active_per_link[peer] -= 1
        self.serving.end()
        self._start_uploads()


class OriginStream:
    """The seed's origin fetch (``p2pull.origin_fetch``): the blob streamed in order from the
    first wanted chunk; when the next chunk is present or not wanted the stream ends after the
    current one, and a new request (one round trip) starts at the first wanted chunk left."""

    def __init__(self, node: SimNode, sim: SimSession) -> None:
        self.node, self.sim, self.blob = node, sim, sim.blob
        self._last: int | None = None  # the final chunk of the running stream

    def _live(self) -> bool:
        return self.node.alive and not self.sim.session.ended

    def start(self) -> None:
        self._request(None)

    def _request(self, index: int | None) -> None:
        world = self.node.world
        world.clock.at(world.clock.now + 2 * world.net.latency, self._respond, index)

    def _respond(self, index: int | None) -> None:
        if not self._live():
            return
        if not self.sim.session.sized:  # the first response: the size is known
            count = self.blob.chunks
            self.node.feed(
                self.sim,
                ev.BlobOpened(
                    self.blob.size, self.blob.chunk_size, Bitfield(count), (None,) * count
                ),
            )
        first = index if index is not None and self._wanted(index) else self._first_wanted()
        if first is None:
            self.node.feed(self.sim, ev.OriginDone())
        else:
            self._send(first)

    def _wanted(self, index: int) -> bool:
        chunks = self.sim.session.chunks
        return (
            chunks is not None
            and not chunks.have.has(index)
            and self.sim.session.origin_wants(index)
        )

    def _first_wanted(self) -> int | None:
        return next((i for i in range(self.blob.chunks) if self._wanted(i)), None)

    def _send(self, index: int) -> None:
        node, world = self.node, self.node.world
        length = self.blob.span(index)
        world.origin_bytes += length
        node.stats.from_origin += length
        sent, arrival = world.net.send(None, node.index, length)
        self._last = index
        world.clock.at(sent, self._sent, index)
        world.clock.at(arrival, self._landed, index)

    def _sent(self, index: int) -> None:
        if self._live() and index + 1 < self.blob.chunks and self._wanted(index + 1):
            self._send(index + 1)  # the same stream goes on

    def _landed(self, index: int) -> None:
        if not self._live():
            return
        digest = self.blob.digest
        self.node.feed(self.sim, ev.ChunkLanded(index, chunk_sha(digest, index), "origin"))
        self.node._read_on(self.sim, index)
        if index == self._last and self._live():  # the stream ended here
            first = self._first_wanted()
            if first is None:
                self.node.feed(self.sim, ev.OriginDone())
            else:
                self._request(first)


class World:
    """Every node, the network, the origin, and what is counted."""

    def __init__(self, *, clock: Clock, net: Network, session_config: ev.SessionConfig) -> None:
        self.clock = clock
        self.net = net
        self.session_config = session_config
        self.nodes: list[SimNode] = []
        self.index_of: dict[str, int] = {}
        self.blobs: dict[str, Blob] = {}
        self.origin_bytes = 0
        self.waiting = 0  # nodes whose client has not finished (nor died)
        self.rack: Callable[[str], str] = lambda node_id: ""
        self._described: dict[str, BlobInfo] = {}

    def everyone_done(self) -> bool:
        return self.waiting <= 0

    def describe(self, digest: str) -> BlobInfo:
        """The BlobInfo of a blob held whole (the same for every holder)."""
        info = self._described.get(digest)
        if info is None:
            blob = self.blobs[digest]
            bits = Bitfield(blob.chunks)
            for index in range(blob.chunks):
                bits.set(index)
            hashes = tuple(chunk_sha(digest, i) for i in range(blob.chunks))
            info = self._described[digest] = BlobInfo(
                digest, blob.size, blob.chunk_size, bits.to_bytes(), hashes
            )
        return info

    def send(self, node: SimNode, peer: str, message: Message) -> float:
        """``message`` from ``node`` to ``peer`` over their link; when it arrives (if it can)."""
        dst = self.index_of.get(peer)
        if dst is None or dst not in node.links or not node.alive:
            return self.clock.now
        size = size_of(message)
        node.stats.sent_messages += 1
        node.stats.sent_bytes += size
        urgent = not isinstance(message, Piece)
        if urgent:
            node.stats.control_sent += 1
            node.stats.control_bytes += size
        _, arrival = self.net.send(node.index, dst, size, urgent=urgent)
        self.clock.at(arrival, self._deliver, node.index, dst, message)
        return arrival

    def _deliver(self, src: int, dst: int, message: Message) -> None:
        target = self.nodes[dst]
        if target.alive and self.nodes[src].alive:
            target.on_message(src, message)

    def dial(self, node: SimNode, sim: SimSession, peer: str) -> None:
        """``sim``'s Dial: LinkUp after the handshake, or DialFailed after the connect
        timeout if the peer is dead; a link already up answers at once."""
        dst = self.index_of[peer]
        if dst in node.links:
            when, ok = self.clock.now, True
        elif not self.nodes[dst].alive:
            when, ok = self.clock.now + CONNECT_TIMEOUT, False
        else:
            when, ok = self.clock.now + HANDSHAKE_TRIPS * self.net.latency, True
        self.clock.at(when, self._dialed, node, sim, dst, ok)

    def _dialed(self, node: SimNode, sim: SimSession, dst: int, ok: bool) -> None:
        target = self.nodes[dst]
        if not node.alive:
            return
        ok = ok and target.alive
        if ok and dst not in node.links:
            for a, b in ((node, dst), (target, node.index)):
                a.links.add(b)
                a.stats.peers_linked.add(b)
                a.stats.max_links = max(a.stats.max_links, len(a.links))
            node.stats.control_sent += 2
            node.stats.control_bytes += 2 * 120  # Hello and Auth (and as many back)
        event: ev.Event = (
            ev.LinkUp(target.node_id)
            if ok
            else ev.DialFailed(target.node_id, "down", timed_out=True)
        )
        node.feed(sim, event)

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if node.alive and node.finished_at is None:
            self.waiting -= 1
        node.alive = False
        for peer in list(node.links):
            self.clock.at(self.clock.now + self.net.latency, self.nodes[peer].link_lost, index)
        node.links.clear()


__all__ = ["Blob", "FakeData", "SimNode", "World", "chunk_sha", "size_of"]
