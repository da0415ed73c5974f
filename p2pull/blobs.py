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
import math
import random
from collections.abc import Callable
from typing import Protocol

import trio

from p2pull.errors import (
    BlobUnavailable,
    ChunkLost,
    DigestMismatch,
    NotFound,
    P2pullError,
    StoreError,
    StoreFull,
)
from p2pull.metrics import Metrics
from p2pull.origin_fetch import DEFAULT_RESUME, OriginFetcher, ResumePolicy
from p2pull.passthrough import PassThroughReader
from p2pull.ratelimit import UNLIMITED, RateLimiter
from p2pull.reference import Digest
from p2pull.sizes import SizeHints
from p2pull.store.types import BlobStore, StoredBlob
from p2pull.transfer import MAX_REFETCHES, BlobReader, PendingReader, Refetch, Transfer
from p2pull.upstream.types import Upstreams

__all__ = ["BlobReader", "BlobService", "ResumePolicy", "SwarmStrategy", "Transfer"]

log = logging.getLogger(__name__)

EARLY_HEADERS = 5.0  # seconds a request waits for the size before a manifest's size answers

SEAL_ROUNDS = 3  # fetch-and-seal rounds of one transfer: chunks lost to rot are fetched again


class SwarmStrategy(Protocol):
    """Fills a transfer from peers (and, as the blob's seed, from the origin)."""

    async def download(self, transfer: Transfer, *, origin: OriginFetcher) -> None: ...

    def rejected(self, digest: Digest) -> None:
        """The blob it filled failed its digest: whoever vouched for its chunks lied."""
        ...


class BlobService:
    """Owns the running transfers. Start with ``await nursery.start(service.run)``."""

    def __init__(
        self,
        *,
        store: BlobStore,
        upstreams: Upstreams,
        metrics: Metrics,
        resume: ResumePolicy = DEFAULT_RESUME,
        jitter: Callable[[], float] = random.random,
        download_limit: RateLimiter = UNLIMITED,
        sizes: SizeHints | None = None,
        early_headers: float = EARLY_HEADERS,
    ) -> None:
        self._store = store
        self._sizes = sizes if sizes is not None else SizeHints()
        self._early_headers = early_headers
        self._upstreams = upstreams
        self._metrics = metrics
        self.origin = OriginFetcher(
            store=store,
            upstreams=upstreams,
            metrics=metrics,
            resume=resume,
            jitter=jitter,
            download_limit=download_limit,
        )
        self.swarm: SwarmStrategy | None = None
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
        hint = self._sizes.get(digest)
        if hint is not None:
            return hint
        return await self._upstreams.for_namespace(ns).head_blob(name, digest)

    async def open(
        self, ns: str | None, name: str, digest: Digest
    ) -> BlobReader | PassThroughReader | PendingReader:
        """A reader for ``digest``; waits only until the size is known (response headers), or
        ``early_headers`` seconds when a manifest named the size (``p2pull.sizes``): a slow or
        failing origin then does not keep the client from its headers. When the store is full
        (quota or low disk) the blob is passed through uncached.

        Transfers are single flight by digest, whichever client's ``ns`` started one; a client
        whose ``ns`` differs from a transfer that fails starts (or joins) one from its own,
        instead of sharing an error that another client's registry caused."""
        refetch = self._refetch(ns, name, digest)
        transfer = self.ensure(ns, name, digest)
        hint = self._sizes.get(digest)
        for _ in range(MAX_REFETCHES + 1):
            if transfer is None:  # complete locally
                blob = self._store.lookup(digest)
                assert blob is not None
                return BlobReader(blob=blob, transfer=None, store=self._store, refetch=refetch)
            try:
                with trio.move_on_after(math.inf if hint is None else self._early_headers):
                    await transfer.wait_blob()
                if transfer.blob is None:
                    assert hint is not None
                    return PendingReader(
                        transfer=transfer,
                        size=hint,
                        store=self._store,
                        pass_through=lambda: self._pass_through(ns, name, digest),
                        refetch=refetch,
                    )
                blob = transfer.blob
            except StoreFull as exc:
                log.warning("not caching %s: %s; passing it through from the origin", digest, exc)
                return await self._pass_through(ns, name, digest)
            except P2pullError:
                again = refetch(transfer)
                if again is None:
                    raise
                transfer = again
                continue
            return BlobReader(
                blob=blob,
                transfer=transfer,
                store=self._store,
                refetch=refetch,
                pass_through=lambda: self._pass_through(ns, name, digest),
            )
        assert transfer is not None and transfer.error is not None
        raise transfer.error

    async def _pass_through(self, ns: str | None, name: str, digest: Digest) -> PassThroughReader:
        self._metrics.passthrough_blobs.inc()
        upstream = self._upstreams.for_namespace(ns)
        size = await upstream.head_blob(name, digest)
        return PassThroughReader(upstream=upstream, name=name, digest=digest, size=size)

    def ensure(self, ns: str | None, name: str, digest: Digest) -> Transfer | None:
        """Start (or join) the transfer of ``digest`` unless it is complete locally. A transfer
        that failed is never joined (its task may still be finishing)."""
        blob = self._store.lookup(digest)
        if blob is not None and blob.complete:
            return None
        running = self._transfers.get(digest)
        if running is not None and running.error is None:
            return running
        return self._start(ns, name, digest, blob)

    def _refetch(self, ns: str | None, name: str, digest: Digest) -> Refetch:
        """What a reader with ``ns`` follows next (p2pull.transfer.Refetch): a failed transfer is
        retried only from another ns (the reader's own), never after a store error."""

        def refetch(failed: Transfer | None) -> Transfer | None:
            if failed is not None and (failed.ns == ns or isinstance(failed.error, StoreError)):
                return None
            if failed is not None:
                log.info(
                    "transfer of %s from ns %s failed; trying the reader's ns %s",
                    digest,
                    failed.ns,
                    ns,
                )
            return self.ensure(ns, name, digest)

        return refetch

    def _start(
        self, ns: str | None, name: str, digest: Digest, blob: StoredBlob | None
    ) -> Transfer:
        if self._nursery is None:
            raise RuntimeError("BlobService.run is not running")
        transfer = Transfer(digest, blob, ns=ns, name=name)
        self._transfers[digest] = transfer
        self._nursery.start_soon(self._run_transfer, transfer)
        return transfer

    async def _fill_and_seal(self, transfer: Transfer) -> StoredBlob:
        """Fetch every missing chunk, then seal; a chunk that fails its re-check at the seal
        (rot on disk since an earlier run) is dropped by the store and fetched again, and so is
        one a reader or an upload found rotted while the download ran (the swarm session
        counted it as held from the start, and ended without it)."""
        for round_ in range(SEAL_ROUNDS):
            if self.swarm is not None:
                await self.swarm.download(transfer, origin=self.origin)
            else:
                with self._metrics.origin_fetchers.track_inprogress():
                    await self.origin.fetch(transfer)
            blob = transfer.blob
            assert blob is not None
            if not blob.bitfield.complete and round_ + 1 < SEAL_ROUNDS:
                missing = blob.bitfield.length - blob.bitfield.count
                log.warning(
                    "%s lost %d chunks meanwhile: fetching them again", blob.digest, missing
                )
                continue
            try:
                await blob.seal()
                return blob
            except ChunkLost as exc:
                if round_ + 1 == SEAL_ROUNDS:
                    raise
                log.warning("%s lost chunk %d: fetching it again", blob.digest, exc.index)
        raise AssertionError("SEAL_ROUNDS must be at least 1")

    async def _run_transfer(self, transfer: Transfer) -> None:
        try:
            blob = await self._fill_and_seal(transfer)
            self._metrics.blobs_completed.inc()
            log.info("blob %s complete (%d bytes)", transfer.digest, blob.size)
        except DigestMismatch as exc:
            self._metrics.digest_mismatches.inc()
            log.error("refusing %s: %s", transfer.digest, exc)
            if self.swarm is not None:
                self.swarm.rejected(transfer.digest)
            transfer.fail(exc)
        except NotFound as exc:
            transfer.fail(exc)
        except P2pullError as exc:
            log.warning("transfer of %s failed: %s", transfer.digest, exc)
            if not isinstance(exc, StoreError | BlobUnavailable):
                exc = _caused_by(BlobUnavailable(f"{transfer.digest}: {exc}"), exc)
            transfer.fail(exc)
        except Exception as exc:
            # A bug in one transfer must not take the agent (and every other pull) down.
            log.exception("transfer of %s crashed", transfer.digest)
            message = f"{transfer.digest}: internal error: {exc!r}"[:500]
            transfer.fail(_caused_by(BlobUnavailable(message), exc))
        finally:
            # Failed or cancelled (the agent is stopping): record every chunk that landed, so a
            # restart resumes after them instead of refetching up to persist_every chunks.
            if transfer.blob is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(StoreError):
                    await transfer.blob.checkpoint()
            if self._transfers.get(transfer.digest) is transfer:  # not a retry started meanwhile
                del self._transfers[transfer.digest]
            transfer.notify()


def _caused_by(error: P2pullError, cause: BaseException) -> P2pullError:
    """``error`` with ``cause`` as its ``__cause__`` (what decides what a client is told:
    P2pullError.client_message)."""
    error.__cause__ = cause
    return error
