"""What a session's driver may touch (``p2pull.swarm.driver``): the node's pure state, its
links, its store, the push of an admitted upload, metrics, the clock and the download budget;
not the node itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from p2pull.membership import Member
from p2pull.metrics import Metrics
from p2pull.peer.events import BlobOpened, NodeContext
from p2pull.peer.messages import Message, Push
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.store.window import WindowBlob


class Links(Protocol):
    """The node's peer links, as a session's driver uses them."""

    def send(self, peer: str, message: Message) -> bool: ...

    async def connect(self, member: Member) -> object: ...


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What a driver may touch: the node's pure state, its links, store and budgets."""

    node: NodeContext
    links: Links
    store: BlobStore
    push: Callable[[str, Push], None]  # send a Push and start that upload (admitted already)
    metrics: Metrics
    clock: Callable[[], float] = trio.current_time
    download_limit: RateLimiter = UNLIMITED


def opened(blob: StoredBlob) -> BlobOpened:
    """The ``BlobOpened`` event that describes ``blob`` as the store holds it."""
    have = blob.bitfield.copy()
    hashes = tuple(blob.chunk_hash(i) if have.has(i) else None for i in range(have.length))
    passing = isinstance(blob, WindowBlob)
    return BlobOpened(blob.size, blob.chunk_size, have, hashes, passing=passing)


__all__ = ["DriverContext", "Links", "opened"]
