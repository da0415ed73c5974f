"""Serving a blob straight from the origin without caching it: the low-disk guard's path.

When the store cannot take a blob (quota or free-disk floor reached and nothing evictable), the
agent keeps serving: it streams the origin's bytes to the client, hashing them as they pass, and
holds back the last piece until the whole digest is verified, so a client never receives a
complete body that does not match. Ranges cannot be verified this way and are refused (the
client then goes to the origin itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import aclosing

from p2pull.errors import DigestMismatch, StoreFull
from p2pull.reference import Digest
from p2pull.store.types import ByteSink
from p2pull.upstream.types import Upstream


class PassThroughReader:
    """Has the shape of a BlobReader: ``digest``, ``size``, ``local``, ``send``."""

    local = False

    def __init__(self, *, upstream: Upstream, name: str, digest: Digest, size: int) -> None:
        self.upstream = upstream
        self.name = name
        self.digest = digest
        self.size = size

    async def send(
        self,
        sink: ByteSink,
        *,
        offset: int,
        length: int,
        on_sent: Callable[[str, int], None] = lambda source, count: None,
    ) -> None:
        if offset != 0 or length != self.size:
            raise StoreFull(f"{self.digest}: the store is full; ranges are not passed through")
        hasher = hashlib.sha256()
        held: bytes | None = None
        async with (
            self.upstream.open_blob(self.name, self.digest) as body,
            aclosing(body.chunks()) as pieces,
        ):
            async for piece in pieces:
                hasher.update(piece)
                if held is not None:
                    await sink.write(held)
                    on_sent("origin", len(held))
                held = piece
        if hasher.hexdigest() != self.digest.hex:
            raise DigestMismatch(f"{self.digest}: the origin's bytes do not match (not served)")
        if held is not None:
            await sink.write(held)
            on_sent("origin", len(held))
