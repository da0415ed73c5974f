"""The events a blob session is fed and the actions it returns (``p2pull.peer.session``).

Events are what happened (a peer's message, a link, the store, the origin, the local reader);
actions are what the shell must do. All frozen dataclasses; the shell matches on their types.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pull.bitfield import Bitfield
from p2pull.membership import Member, Membership
from p2pull.peer.messages import Message, Push
from p2pull.peer.serving import Serving


class Phase(enum.Enum):
    LOCATING = "locating"  # dialing the seed
    ASKING = "asking"  # Interested sent to the seed; the size is not known yet
    OPENING = "opening"  # the seed described the blob; the local store entry is being made
    LEECHING = "leeching"  # fetching chunks from peers (another node seeds)
    SEEDING = "seeding"  # this node fetches what nobody has from the origin
    DONE = "done"  # every chunk held and announced
    FAILED = "failed"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.LOCATING: frozenset(
        {Phase.LOCATING, Phase.ASKING, Phase.LEECHING, Phase.SEEDING, Phase.DONE}
    ),
    Phase.ASKING: frozenset({Phase.LOCATING, Phase.OPENING, Phase.SEEDING}),
    Phase.OPENING: frozenset({Phase.LEECHING}),
    Phase.LEECHING: frozenset({Phase.LOCATING, Phase.SEEDING, Phase.DONE}),
    Phase.SEEDING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
    Phase.FAILED: frozenset(),
}
ENDED = frozenset({Phase.DONE, Phase.FAILED})


# -- events (what the shell feeds) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """A message from ``peer`` about this blob (decoded and checked by the wire)."""

    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class PeerGone:
    """The link to ``peer`` closed (and no other link to it is up)."""

    peer: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """A ``Dial`` succeeded: an authenticated link to ``peer`` is up."""

    peer: str


@dataclass(frozen=True, slots=True)
class DialFailed:
    """A ``Dial`` failed (refused, timed out, or the handshake failed)."""

    peer: str
    reason: str
    # It timed out (connect or handshake): the peer may be alive behind a saturated link
    # whose queue drops the handshake's packets; refused or reset: it is not there.
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class BlobOpened:
    """The local store entry exists: after ``OpenBlob``, or made by the origin fetch (the seed),
    or found at the start (a partial blob from an earlier run). ``hashes[i]`` is the sha256 of
    chunk i where it is held."""

    size: int
    chunk_size: int
    have: Bitfield
    hashes: tuple[bytes | None, ...]
    # The store had no room: the blob passes through to the local reader in a window of memory
    # (``p2pull.store.window``), never kept, never served.
    passing: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The blob cannot be had here: the store refused it, or the origin failed."""

    reason: str


@dataclass(frozen=True, slots=True)
class ChunkLanded:
    """Chunk ``index`` is in the store (verified) with this sha256; ``source`` is "origin" or
    "peer". Fed for every chunk that lands; a second report of one chunk changes nothing."""

    index: int
    sha256: bytes
    source: str


@dataclass(frozen=True, slots=True)
class PieceStored:
    """The result of ``WritePiece``: it matched and is stored."""

    peer: str
    index: int


@dataclass(frozen=True, slots=True)
class PieceCorrupt:
    """The result of ``WritePiece``: the bytes do not match the expected sha256."""

    peer: str
    index: int


@dataclass(frozen=True, slots=True)
class OriginDone:
    """The origin fetch started by ``StartOrigin`` returned: everything it was asked for is in."""


@dataclass(frozen=True, slots=True)
class OriginRetrying:
    """The origin fetch failed for now and retries in ``delay`` seconds (the origin is slow or
    down: the session tells its members it is still at it)."""

    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class ReaderWants:
    """A local reader waits for chunk ``index`` (None: nobody waits)."""

    index: int | None


Event = (
    PeerMessage
    | PeerGone
    | LinkUp
    | DialFailed
    | BlobOpened
    | Failed
    | ChunkLanded
    | PieceStored
    | PieceCorrupt
    | OriginDone
    | OriginRetrying
    | ReaderWants
)


# -- actions (what the shell carries out) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` on the link to ``peer`` (dropped if no link is up)."""

    peer: str
    message: Message


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to ``member``; answer with ``LinkUp`` or ``DialFailed``."""

    member: Member


@dataclass(frozen=True, slots=True)
class OpenBlob:
    """Make the local store entry; answer with ``BlobOpened`` or ``Failed`` before any other
    event."""

    size: int
    chunk_size: int


@dataclass(frozen=True, slots=True)
class WritePiece:
    """Verify ``data`` against ``expected`` and store it; answer with ``PieceStored`` (and
    ``ChunkLanded``) or ``PieceCorrupt``; a chunk that landed meanwhile is ``PieceStored``."""

    peer: str
    index: int
    data: bytes
    expected: bytes


@dataclass(frozen=True, slots=True)
class StartOrigin:
    """Fetch from the origin the missing chunks ``origin_wants`` says yes to; answer with
    ``ChunkLanded`` per chunk, then ``OriginDone`` or ``Failed``."""


@dataclass(frozen=True, slots=True)
class PushPiece:
    """Send ``push`` to ``peer``, then upload that chunk (``Serving.push`` admitted it)."""

    peer: str
    push: Push


@dataclass(frozen=True, slots=True)
class Finish:
    """The session is over: complete (``error`` None) or failed."""

    error: str | None


Action = Send | Dial | OpenBlob | WritePiece | StartOrigin | PushPiece | Finish


@dataclass(frozen=True, slots=True)
class SessionConfig:
    max_in_flight_per_peer: int = 4
    max_in_flight: int = 0  # chunks on their way from all peers together before asking more
    # Chunks asked beyond what the downlink delivers in the quickest answer (0: no such cap;
    # p2pull.peer.scheduler). Without it a node asks every holder for 4 chunks: they wait in
    # its downlink's queue, each holding its sender's upload slot (bench/sim.py, 64 nodes x
    # 32 MiB: p99 1.25x the bound with 4, 1.32x with 0; slower at 300-1,000 nodes with one
    # layer: 1.92x instead of 1.57x; docs/scale.md).
    downlink_queue: int = 4
    request_timeout: float = 30.0  # a 4 MiB piece behind a few others on a slow uplink
    window: int = 4  # chunks from the one a local reader waits on, asked for first
    # What a node whose store has no room for a blob holds of it in memory at once: the chunks
    # from the one its reader sends next (the only ones it asks for); see pass_window.
    pass_window_bytes: int = 8 << 20
    peers_handout: int = 32
    info_timeout: float = 15.0  # the seed's BlobInfo, or any progress, within this
    busy_retry: float = 0.5  # before asking a peer that answered "busy" for that chunk again
    # A seed with nothing new to tell says Waiting this often, so that its members wait for it
    # (an origin outage) instead of timing out and choosing another seed.
    waiting_every: float = 5.0
    # Seeds that may give up (Unavailable) before the session gives up too: the blob's seed,
    # then this many successors, one at a time, never every member at once.
    handovers: int = 1
    # Dials to the seed that may time out before it is suspected and its successor asked.
    # A seed's saturated uplink drops handshakes (a full drop-tail queue): measured at
    # 48 nodes x 12 Mbit/s, one timeout sent 39 leeches to other nodes, and with two a
    # successor still fetched a layer again. A dead host mostly answers at once (refused, no
    # route); a timeout costs the connect timeout (5 s) per dial.
    seed_dials: int = 4
    # 0: every member asks the seed. n: members form a tree (p2pull.peer.fanout: n children
    # each, with racks known one subtree per rack) and each asks its parent (which asks it
    # back, to hear what it holds): nobody has more than 2n askers.
    fanout: int = 0
    # A leech relays what the seed gave it to its members while it has at most this many; a
    # larger swarm spreads chunks by requests (a relay pushing to dozens is a star: the last
    # of them waits for all the others).
    relay_up_to: int = 8
    # With racks known, chunks come near: a chunk no peer of this node's rack holds is fetched
    # across at once by its rack leader (of the rack's members this node knows, the one first
    # in the chunk's HRW order: each leads a share) and by the others once it has waited this
    # many typical piece times for it; a chunk a rack peer holds is asked there, however busy
    # it is, until the node's last few chunks (``p2pull.peer.scheduler``). The seed pushes
    # fresh chunks into its own rack first. 0: no rack gate, holders near or far alike (rack
    # peers asked first). bench/sim.py, 100 nodes x 64 MiB in racks of 32 at 4:1:
    # cross-rack bytes 1.4x the racks' share and p99 1.08x the bound, against 6.1x and 1.12x
    # with 0 (docs/scale.md).
    far_wait: float = 32.0

    def pass_window(self, chunk_size: int) -> int:
        """Chunks of ``chunk_size`` a blob passed through holds at most (two at least)."""
        return max(2, self.pass_window_bytes // chunk_size)


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What a session shares with its node: pure objects, read and updated synchronously."""

    node_id: str
    membership: Membership
    serving: Serving
    config: SessionConfig = SessionConfig()
    rack: Callable[[str], str] = field(default=lambda node_id: "")  # "": racks not known


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What admin pages and metrics read of a session."""

    digest: str
    phase: Phase
    seeding: bool
    seed: str | None
    peers: int
    members: int
    chunks: int
    held: int


TABLES_START = "<!-- session tables: scripts/session-tables --write -->"
TABLES_END = "<!-- end of session tables -->"


def markdown_tables() -> str:
    """The phases with their moves, the events and the actions, as docs/architecture.md shows
    them (between TABLES_START and TABLES_END; tests/test_docs.py checks it)."""

    def summary(cls: type) -> str:
        doc = (cls.__doc__ or "").strip()
        if doc.startswith(f"{cls.__name__}("):  # the dataclass default: no docstring
            return ""
        return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")

    lines = [TABLES_START, "", "| phase | may move to |", "|---|---|"]
    for phase, targets in TRANSITIONS.items():
        moves = ", ".join(t.name for t in sorted(targets, key=list(Phase).index)) or "(end)"
        if phase not in ENDED:
            moves += ", FAILED"
        lines.append(f"| {phase.name} | {moves} |")
    kinds = (("event (fed by the shell)", Event), ("action (carried out by it)", Action))
    for title, union in kinds:
        lines += ["", f"| {title} | meaning |", "|---|---|"]
        for cls in union.__args__:
            fields = ", ".join(f.name for f in dataclasses.fields(cls))
            lines.append(f"| `{cls.__name__}({fields})` | {summary(cls)} |")
    lines += ["", TABLES_END]
    return "\n".join(lines)
