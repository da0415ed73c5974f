"""ChunkExchange's own rules, outside a session."""

from __future__ import annotations

from p2pull.bitfield import Bitfield
from p2pull.peer.events import SessionConfig
from p2pull.peer.exchange import BUSY_RETRY_MIN, ChunkExchange


def exchange(config: SessionConfig) -> ChunkExchange:
    return ChunkExchange(
        digest="sha256:" + "ab" * 32,
        size=4 << 20,
        chunk_size=1 << 20,
        have=Bitfield(4),
        hashes=(None,) * 4,
        salt=b"node",
        config=config,
        out=[],
    )


def test_a_busy_holder_is_asked_again_after_about_one_piece_time() -> None:
    """ "busy" means an upload slot frees about as fast as a piece comes: a fast swarm asks
    again within milliseconds (a fixed half second left the last chunks idle), a slow one
    no sooner than ``busy_retry``."""
    config = SessionConfig(busy_retry=0.5)
    chunks = exchange(config)
    assert chunks.busy_retry() == 0.5  # nothing timed yet
    chunks.scheduler.piece_seconds = 0.02
    assert chunks.busy_retry() == 0.02
    chunks.scheduler.piece_seconds = 0.0001
    assert chunks.busy_retry() == BUSY_RETRY_MIN
    chunks.scheduler.piece_seconds = 3.0
    assert chunks.busy_retry() == 0.5
