"""Fetching a blob's chunks from the origin registry (the seed's job in a swarm)."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from p2pull.chunking import ChunkAssembler
from p2pull.errors import P2pullError, UpstreamAuthError, UpstreamError
from p2pull.metrics import Metrics
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.transfer import Transfer
from p2pull.upstream.types import Upstreams

log = logging.getLogger(__name__)

Wanted = Callable[[int], bool]


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How often a broken upstream stream is resumed (Range) before the transfer fails."""

    attempts: int = 5
    backoff_base: float = 0.2
    backoff_max: float = 5.0


DEFAULT_RESUME = ResumePolicy()


def _next_needed(blob: StoredBlob, start: int, wanted: Wanted | None) -> int | None:
    """The first chunk from ``start`` on that is missing and wanted."""
    for index in range(start, blob.bitfield.length):
        if not blob.bitfield.has(index) and (wanted is None or wanted(index)):
            return index
    return None


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
    ) -> None:
        self._store = store
        self._upstreams = upstreams
        self._metrics = metrics
        self._resume = resume
        self._jitter = jitter
        self._pipeline_depth = pipeline_depth  # chunks cut but not yet stored
        self._download_limit = download_limit

    async def fetch(self, transfer: Transfer, *, wanted: Wanted | None = None) -> None:
        """Fill the transfer's missing chunks from the origin; with ``wanted``, only those it
        says yes to (asked again at every chunk boundary, so chunks that arrive meanwhile from
        elsewhere end the stream and the next request starts at the next wanted gap)."""
        upstream = self._upstreams.for_namespace(transfer.ns)
        name = transfer.name
        assembler: ChunkAssembler | None = None
        failures = 0
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
                        raise UpstreamError(
                            f"{transfer.digest}: upstream size {body.size}, expected {blob.size}"
                        )
                    assert assembler is not None
                    async with contextlib.aclosing(body.chunks()) as pieces:
                        if await self._copy(transfer, blob, pieces, assembler, wanted):
                            failures = 0
            except UpstreamAuthError:
                raise
            except UpstreamError as exc:
                if not opened:
                    # The upstream client already retried opening it (connection errors, 5xx):
                    # retrying again here would multiply the delays past containerd's patience.
                    raise
                failures += 1
                if failures > self._resume.attempts:
                    raise
                delay = min(self._resume.backoff_max, self._resume.backoff_base * 2**failures)
                log.info("resuming %s after %s (attempt %d)", transfer.digest, exc, failures)
                self._metrics.upstream_retries.inc()
                await trio.sleep(delay * (0.5 + self._jitter()))

    async def _copy(
        self,
        transfer: Transfer,
        blob: StoredBlob,
        pieces: AsyncIterator[bytes],
        assembler: ChunkAssembler,
        wanted: Wanted | None,
    ) -> bool:
        """Cut the upstream stream into chunks and store them; True if any chunk landed.

        Reading the socket and storing chunks (hash + write, in a worker thread) run as two tasks
        joined by a small channel, so the next chunk downloads while the last one is hashed. If
        the stream breaks, the chunks already cut are still stored before the error is raised,
        so the assembler's position is exactly where a resume must start.
        """
        send, receive = trio.open_memory_channel[tuple[int, bytes]](self._pipeline_depth)
        landed = 0
        stopped = False
        store_error: P2pullError | None = None
        stream_error: UpstreamError | None = None

        async def store_chunks() -> None:
            nonlocal landed, store_error
            async with receive:
                async for index, chunk in receive:
                    try:
                        transfer.sources[index] = "origin"  # before readers can see it
                        await blob.write_chunk(index, chunk)
                    except P2pullError as exc:
                        store_error = exc
                        reader.cancel()
                        return
                    self._metrics.fetched_bytes.labels("origin").inc(len(chunk))
                    landed += 1
                    transfer.chunk_landed(index)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store_chunks)
            with trio.CancelScope() as reader, send:
                try:
                    async for piece in pieces:
                        await self._download_limit.acquire(len(piece))
                        try:
                            chunks = assembler.feed(piece)
                        except ValueError as exc:
                            raise UpstreamError(f"{transfer.digest}: {exc}") from exc
                        for chunk in chunks:
                            await send.send(chunk)
                        upcoming = assembler.next_index
                        if (
                            chunks
                            and upcoming < blob.bitfield.length
                            and _next_needed(blob, upcoming, wanted) != upcoming
                        ):
                            stopped = True  # the next chunk is present or not wanted: stop here
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
        return landed > 0
