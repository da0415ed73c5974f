"""Blob transfers: single-flight downloads into the store, streamed to every reader as they land.

``BlobService.open`` returns a :class:`BlobReader` at once for a complete local blob, or joins (or
starts) the one :class:`Transfer` of that digest. A transfer runs in the service's nursery, not in
the request's, so a client that goes away does not stop a download others may be waiting on.
Readers follow the transfer chunk by chunk; the last chunk is released only after the whole digest
is verified, so no client ever receives a complete body that does not match its digest.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import trio

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
            if transfer.blob is not None:
                try:
                    await transfer.blob.checkpoint()
                except StoreError:
                    pass
            if not isinstance(exc, StoreError | BlobUnavailable):
                exc = BlobUnavailable(f"{transfer.digest}: {exc}")
            transfer.fail(exc)
        finally:
            self._transfers.pop(transfer.digest, None)
            transfer.notify()

    async def _fetch_from_origin(self, transfer: Transfer, ns: str | None, name: str) -> None:
        upstream = self._upstreams.for_namespace(ns)
        pending = bytearray()  # bytes of the chunk being assembled
        failures = 0
        while True:
            blob = transfer.blob
            if blob is not None:
                first = blob.bitfield.first_missing()
                if first is None:
                    return
                start = first * blob.chunk_size + len(pending)
            else:
                first, start = 0, 0
            try:
                async with upstream.open_blob(name, transfer.digest, start=start) as body:
                    if blob is None:
                        blob = await self._store.open(transfer.digest, size=body.size)
                        transfer.blob = blob
                        transfer.notify()
                        if blob.bitfield.count:
                            continue  # a partial from an earlier run: resume where it ends
                    elif body.size != blob.size:
                        raise UpstreamError(
                            f"{transfer.digest}: upstream size {body.size}, expected {blob.size}"
                        )
                    progressed = await self._copy(transfer, blob, body.chunks(), first, pending)
                    if progressed:
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
        index: int,
        pending: bytearray,
    ) -> bool:
        """Cut the upstream byte stream into chunks and store them. True if any chunk landed."""
        landed = False
        async for piece in pieces:
            pending += piece
            while index < blob.bitfield.length:
                _, length = blob.chunk_span(index)
                if len(pending) < length:
                    break
                await blob.write_chunk(index, bytes(pending[:length]))
                del pending[:length]
                self._metrics.fetched_bytes.labels("origin").inc(length)
                transfer.notify()
                landed = True
                index += 1
            if index >= blob.bitfield.length and pending:
                raise UpstreamError(f"{transfer.digest}: upstream sent more bytes than its size")
        if index < blob.bitfield.length and not blob.bitfield.has(index):
            raise UpstreamError(f"{transfer.digest}: upstream body ended early at chunk {index}")
        return landed
