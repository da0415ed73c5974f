"""Blob transfers: single-flight downloads into the store, streamed to every reader as they land.

``BlobService.open`` returns a :class:`BlobReader` at once for a complete local blob, or joins (or
starts) the one :class:`Transfer` of that digest. A transfer runs in the service's nursery, not in
the request's, so a client that goes away does not stop a download others may be waiting on.
Readers follow the transfer chunk by chunk; the last chunk is released only after the whole digest
is verified, so no client ever receives a complete body that does not match its digest.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

from p2pull.chunking import ChunkAssembler
from p2pull.errors import (
    BlobUnavailable,
    DigestMismatch,
    NotFound,
    P2pullError,
    StoreError,
    UpstreamAuthError,
    UpstreamError,
)
from p2pull.metrics import Metrics
from p2pull.reference import Digest
from p2pull.store.types import BlobStore, ByteSink, StoredBlob
from p2pull.upstream.types import Upstreams

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How often a broken upstream stream is resumed (Range) before the transfer fails."""

    attempts: int = 5
    backoff_base: float = 0.2
    backoff_max: float = 5.0


class Transfer:
    """One blob being filled in the store. Owned by its fetch task; readers only wait on it."""

    def __init__(self, digest: Digest, blob: StoredBlob | None) -> None:
        self.digest = digest
        self.blob = blob
        self.error: P2pullError | None = None
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def fail(self, error: P2pullError) -> None:
        self.error = error
        self.notify()

    async def wait_blob(self) -> StoredBlob:
        """Wait until the size is known (the store entry exists)."""
        while self.blob is None:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return self.blob

    async def wait_chunk(self, index: int) -> StoredBlob:
        """Wait until chunk ``index`` may be served (the last one: until the blob is verified)."""
        blob = await self.wait_blob()
        last = blob.bitfield.length - 1
        while not (blob.complete or (index != last and blob.bitfield.has(index))):
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        return blob


class BlobReader:
    """Streams a blob (or a range of it) to a sink as chunks become servable."""

    def __init__(self, *, blob: StoredBlob, transfer: Transfer | None, store: BlobStore) -> None:
        self.blob = blob
        self.size = blob.size
        self.transfer = transfer
        self._store = store

    @property
    def local(self) -> bool:
        return self.transfer is None

    async def send(self, sink: ByteSink, *, offset: int, length: int) -> None:
        blob = self.blob
        end = offset + length
        with self._store.pin(blob.digest):
            self._store.touch(blob.digest)
            while offset < end:
                index = offset // blob.chunk_size
                if self.transfer is not None:
                    await self.transfer.wait_chunk(index)
                chunk_offset, chunk_length = blob.chunk_span(index)
                count = min(end, chunk_offset + chunk_length) - offset
                await blob.send(sink, offset=offset, length=count)
                offset += count


class BlobService:
    """Owns the running transfers. Start with ``await nursery.start(service.run)``."""

    def __init__(
        self,
        *,
        store: BlobStore,
        upstreams: Upstreams,
        metrics: Metrics,
        resume: ResumePolicy = ResumePolicy(),
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._upstreams = upstreams
        self._metrics = metrics
        self._resume = resume
        self._jitter = jitter
        self._transfers: dict[Digest, Transfer] = {}
        self._nursery: trio.Nursery | None = None
        self.pipeline_depth = 2  # chunks cut but not yet stored, per transfer

    @property
    def transfers(self) -> dict[Digest, Transfer]:
        return dict(self._transfers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def stat(self, ns: str | None, name: str, digest: Digest) -> int:
        """The blob's size, from the store, a running transfer, or an upstream HEAD."""
        blob = self._store.lookup(digest)
        if blob is not None:
            return blob.size
        transfer = self._transfers.get(digest)
        if transfer is not None and transfer.blob is not None:
            return transfer.blob.size
        return await self._upstreams.for_namespace(ns).head_blob(name, digest)

    async def open(self, ns: str | None, name: str, digest: Digest) -> BlobReader:
        """A reader for ``digest``; waits only until the size is known (response headers)."""
        blob = self._store.lookup(digest)
        if blob is not None and blob.complete:
            return BlobReader(blob=blob, transfer=None, store=self._store)
        transfer = self._transfers.get(digest)
        if transfer is None:
            transfer = self._start(ns, name, digest, blob)
        blob = await transfer.wait_blob()
        return BlobReader(blob=blob, transfer=transfer, store=self._store)

    def _start(
        self, ns: str | None, name: str, digest: Digest, blob: StoredBlob | None
    ) -> Transfer:
        if self._nursery is None:
            raise RuntimeError("BlobService.run is not running")
        transfer = Transfer(digest, blob)
        self._transfers[digest] = transfer
        self._nursery.start_soon(self._run_transfer, transfer, ns, name)
        return transfer

    async def _run_transfer(self, transfer: Transfer, ns: str | None, name: str) -> None:
        try:
            with self._metrics.origin_fetchers.track_inprogress():
                await self._fetch_from_origin(transfer, ns, name)
            blob = transfer.blob
            assert blob is not None
            await blob.seal()
            self._metrics.blobs_completed.inc()
            log.info("blob %s complete (%d bytes)", transfer.digest, blob.size)
        except DigestMismatch as exc:
            self._metrics.digest_mismatches.inc()
            log.error("refusing %s: %s", transfer.digest, exc)
            transfer.fail(exc)
        except NotFound as exc:
            transfer.fail(exc)
        except P2pullError as exc:
            log.warning("transfer of %s failed: %s", transfer.digest, exc)
            if not isinstance(exc, StoreError | BlobUnavailable):
                exc = BlobUnavailable(f"{transfer.digest}: {exc}")
            transfer.fail(exc)
        finally:
            # Failed or cancelled (the agent is stopping): record every chunk that landed, so a
            # restart resumes after them instead of refetching up to persist_every chunks.
            if transfer.blob is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await transfer.blob.checkpoint()
            self._transfers.pop(transfer.digest, None)
            transfer.notify()

    async def _fetch_from_origin(self, transfer: Transfer, ns: str | None, name: str) -> None:
        upstream = self._upstreams.for_namespace(ns)
        assembler: ChunkAssembler | None = None
        failures = 0
        while True:
            blob = transfer.blob
            if blob is not None:
                first = blob.bitfield.first_missing()
                if first is None:
                    return
                if assembler is None or assembler.next_index != first:
                    assembler = ChunkAssembler(
                        size=blob.size, chunk_size=blob.chunk_size, start=first * blob.chunk_size
                    )
            start = assembler.position if assembler is not None else 0
            try:
                async with upstream.open_blob(name, transfer.digest, start=start) as body:
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
                    if await self._copy(transfer, blob, body.chunks(), assembler):
                        failures = 0
            except UpstreamAuthError:
                raise
            except UpstreamError as exc:
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
    ) -> bool:
        """Cut the upstream stream into chunks and store them; True if any chunk landed.

        Reading the socket and storing chunks (hash + write, in a worker thread) run as two tasks
        joined by a small channel, so the next chunk downloads while the last one is hashed. If
        the stream breaks, the chunks already cut are still stored before the error is raised,
        so the assembler's position is exactly where a resume must start.
        """
        send, receive = trio.open_memory_channel[tuple[int, bytes]](self.pipeline_depth)
        landed = 0
        store_error: P2pullError | None = None
        stream_error: UpstreamError | None = None

        async def store_chunks() -> None:
            nonlocal landed, store_error
            async with receive:
                async for index, chunk in receive:
                    try:
                        await blob.write_chunk(index, chunk)
                    except P2pullError as exc:
                        store_error = exc
                        reader.cancel()
                        return
                    self._metrics.fetched_bytes.labels("origin").inc(len(chunk))
                    landed += 1
                    transfer.notify()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store_chunks)
            with trio.CancelScope() as reader, send:
                try:
                    async for piece in pieces:
                        try:
                            chunks = assembler.feed(piece)
                        except ValueError as exc:
                            raise UpstreamError(f"{transfer.digest}: {exc}") from exc
                        for chunk in chunks:
                            await send.send(chunk)
                except UpstreamError as exc:
                    stream_error = exc
        if store_error is not None:
            raise store_error
        if stream_error is not None:
            raise stream_error
        if assembler.position < blob.size:
            raise UpstreamError(
                f"{transfer.digest}: upstream body ended at {assembler.position} of {blob.size}"
            )
        return landed > 0
