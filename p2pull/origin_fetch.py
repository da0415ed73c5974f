"""Fetching a blob's chunks from the origin registry (the seed's job in a swarm).

The origin may be down for a while (a registry restart, a CDN hiccup): transient failures
(connection errors, timeouts, 5xx, 429, a body that breaks or trickles below ``min_rate``) are
retried with capped, jittered backoff, honouring ``Retry-After``, each resume a Range request
from the first missing byte, until ``patience`` seconds pass without a chunk landing. Only then
does the fetch fail. Not retried: 404s, authentication failures (the client already renewed its
token once), a size that disagrees with the blob's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from p2pull.chunking import ChunkAssembler
from p2pull.errors import (
    BlobUnavailable,
    P2pullError,
    TruncatedBody,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)
from p2pull.metrics import Metrics
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.transfer import Transfer
from p2pull.upstream.types import Upstreams

log = logging.getLogger(__name__)

Wanted = Callable[[int], bool]


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How long the origin may fail before the fetch gives up, and how retries are spaced.

    ``patience``: seconds without a chunk landing (2 min rides out a registry restart and stays
    under containerd's 5 min progress timeout). The n-th retry in a row waits
    ``min(backoff_max, backoff_base * 2**n)``, jittered by 0.5-1.5x, or what ``Retry-After``
    asks, within the patience left. A stream that brings fewer than ``min_rate`` bytes/s over
    ``rate_window`` seconds is dropped and resumed (another connection, maybe another CDN
    node); 0 turns that off."""

    patience: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    min_rate: float = 32 * 1024
    rate_window: float = 20.0


DEFAULT_RESUME = ResumePolicy()
OnRetry = Callable[[str, float], None]  # (reason, seconds until the retry)


# A stream reads on through at most this many bytes of chunks it need not fetch (peers have
# them, or are sending them) to the next one it must: a stream given up loses the bytes already
# on their way (the socket's receive window, megabytes on a fast link) and a round trip.
READ_THROUGH = 4 * 1024 * 1024


def _next_needed(blob: StoredBlob, start: int, wanted: Wanted | None) -> int | None:
    """The first chunk from ``start`` on that is missing and wanted."""
    for index in range(start, blob.bitfield.length):
        if not blob.bitfield.has(index) and (wanted is None or wanted(index)):
            return index
    return None


class _RateFloor:
    """Is a stream still worth keeping? Counts only the time spent waiting for its bytes (not
    the node's own download limit or a busy disk), in windows of ``rate_window`` seconds."""

    def __init__(self, policy: ResumePolicy) -> None:
        self.min_rate = policy.min_rate
        self.window = policy.rate_window
        self.stall = policy.rate_window if policy.min_rate > 0 else math.inf
        self._waited = 0.0
        self._bytes = 0

    def add(self, count: int, waited: float) -> bool:
        """``count`` bytes came after ``waited`` seconds; False when the window just closed
        below the floor."""
        if self.min_rate <= 0:
            return True
        self._waited += waited
        self._bytes += count
        if self._waited < self.window:
            return True
        fast_enough = self._bytes >= self.min_rate * self._waited
        self._waited, self._bytes = 0.0, 0
        return fast_enough


class OriginFetcher:
    def __init__(
        self,
        *,
        store: BlobStore,
        upstreams: Upstreams,
        metrics: Metrics,
        resume: ResumePolicy = DEFAULT_RESUME,
        jitter: Callable[[], float] = random.random,
        pipeline_depth: int = 2,
        download_limit: RateLimiter = UNLIMITED,
        clock: Callable[[], float] = trio.current_time,
        read_through: int = READ_THROUGH,
    ) -> None:
        self._clock = clock
        self._read_through = read_through
        self._store = store
        self._upstreams = upstreams
        self._metrics = metrics
        self._resume = resume
        self._jitter = jitter
        self._pipeline_depth = pipeline_depth  # chunks cut but not yet stored
        self._download_limit = download_limit

    async def fetch(
        self, transfer: Transfer, *, wanted: Wanted | None = None, on_retry: OnRetry | None = None
    ) -> None:
        """Fill the transfer's missing chunks from the origin; with ``wanted``, those it says
        yes to (asked again at every chunk boundary). A stream reads on through up to
        ``read_through`` bytes of chunks it need not fetch (storing those not held by then);
        a longer run, or chunks that arrive meanwhile from elsewhere, end it, and the next
        request starts at the next wanted gap.
        ``on_retry(reason, delay)`` is told of each retry before its wait."""
        upstream = self._upstreams.for_namespace(transfer.ns)
        name = transfer.name
        policy = self._resume
        assembler: ChunkAssembler | None = None
        retries = 0
        progress_at = self._clock()
        while True:
            blob = transfer.blob
            if blob is not None:
                first = _next_needed(blob, 0, wanted)
                if first is None:
                    return
                if assembler is None or assembler.next_index != first:
                    assembler = ChunkAssembler(
                        size=blob.size, chunk_size=blob.chunk_size, start=first * blob.chunk_size
                    )
            start = assembler.position if assembler is not None else 0
            held = blob.bitfield.count if blob is not None else 0
            opened = False
            try:
                async with upstream.open_blob(name, transfer.digest, start=start) as body:
                    opened = True
                    if blob is None:
                        blob = await self._store.open(transfer.digest, size=body.size)
                        transfer.blob = blob
                        transfer.notify()
                        if blob.bitfield.count:
                            continue  # a partial from an earlier run: resume where it ends
                        assembler = ChunkAssembler(
                            size=blob.size, chunk_size=blob.chunk_size, start=0
                        )
                    elif body.size != blob.size:
                        raise BlobUnavailable(
                            f"{transfer.digest}: upstream size {body.size}, expected {blob.size}"
                        )
                    assert assembler is not None
                    async with contextlib.aclosing(body.chunks()) as pieces:
                        await self._copy(transfer, blob, pieces, assembler, wanted)
                retries = 0
            except UpstreamAuthError:
                raise
            except UpstreamError as exc:
                if not (opened or isinstance(exc, UpstreamUnavailable | TruncatedBody)):
                    raise  # the origin's answer, not a failure to get one: 400, bad headers
                now = self._clock()
                if blob is not None and blob.bitfield.count > held:
                    retries, progress_at = 0, now  # chunks landed before it broke
                delay = min(policy.backoff_max, policy.backoff_base * 2 ** min(retries, 32))
                delay *= 0.5 + self._jitter()
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, float(retry_after))
                waited, give_up_at = now - progress_at, progress_at + policy.patience
                if now >= give_up_at:
                    raise UpstreamUnavailable(
                        f"{transfer.digest}: the origin failed for {waited:.0f} s: {exc}"
                    ) from exc
                retry_at = min(now + delay, give_up_at)  # a last try as patience ends
                retries += 1
                log.info(
                    "retrying %s in %.1f s after %s (attempt %d, %.0f s without progress)",
                    transfer.digest,
                    retry_at - now,
                    exc,
                    retries,
                    waited,
                )
                self._metrics.upstream_retries.inc()
                if on_retry is not None:
                    on_retry(str(exc), retry_at - now)
                await trio.sleep_until(retry_at)

    async def _copy(
        self,
        transfer: Transfer,
        blob: StoredBlob,
        pieces: AsyncIterator[bytes],
        assembler: ChunkAssembler,
        wanted: Wanted | None,
    ) -> None:
        """Cut the upstream stream into chunks and store them.

        Reading the socket and storing chunks (hash + write, in a worker thread) run as two tasks
        joined by a small channel, so the next chunk downloads while the last one is hashed. If
        the stream breaks, the chunks already cut are still stored before the error is raised,
        so the assembler's position is exactly where a resume must start.
        """
        send, receive = trio.open_memory_channel[tuple[int, bytes]](self._pipeline_depth)
        stopped = False
        store_error: P2pullError | None = None
        stream_error: UpstreamError | None = None

        async def store_chunks() -> None:
            nonlocal store_error
            async with receive:
                async for index, chunk in receive:
                    if blob.bitfield.has(index):
                        continue  # read through, or it came from a peer meanwhile
                    try:
                        transfer.sources[index] = "origin"  # before readers can see it
                        await blob.write_chunk(index, chunk)
                    except P2pullError as exc:
                        store_error = exc
                        reader.cancel()
                        return
                    self._metrics.fetched_bytes.labels("origin").inc(len(chunk))
                    transfer.chunk_landed(index)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store_chunks)
            with trio.CancelScope() as reader, send:
                try:
                    floor = _RateFloor(self._resume)
                    while True:
                        began = self._clock()
                        with trio.move_on_after(floor.stall) as waiting:
                            piece = await anext(pieces, None)
                        if waiting.cancelled_caught:
                            raise UpstreamUnavailable(
                                f"{transfer.digest}: no bytes from the origin for {floor.stall} s"
                            )
                        if piece is None:
                            break
                        if not floor.add(len(piece), self._clock() - began):
                            raise UpstreamUnavailable(
                                f"{transfer.digest}: the origin sends below "
                                f"{self._resume.min_rate:.0f} bytes/s"
                            )
                        await self._download_limit.acquire(len(piece))
                        try:
                            chunks = assembler.feed(piece)
                        except ValueError as exc:
                            raise UpstreamError(f"{transfer.digest}: {exc}") from exc
                        for chunk in chunks:
                            await send.send(chunk)
                        upcoming = assembler.next_index
                        if chunks and upcoming < blob.bitfield.length:
                            needed = _next_needed(blob, upcoming, wanted)
                            if (
                                needed is None
                                or (needed - upcoming) * blob.chunk_size > self._read_through
                            ):
                                stopped = True  # what comes next is present or not wanted
                                break
                except UpstreamError as exc:
                    stream_error = exc
        if store_error is not None:
            raise store_error
        if stream_error is not None:
            raise stream_error
        if not stopped and assembler.position < blob.size:
            raise UpstreamError(
                f"{transfer.digest}: upstream body ended at {assembler.position} of {blob.size}"
            )
