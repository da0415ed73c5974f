"""A mirror on 127.0.0.1 over a disk store and an in-memory upstream, for mirror tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from p2pull.blobs import EARLY_HEADERS, BlobService, ResumePolicy
from p2pull.httpserver import HttpServer
from p2pull.manifests import ManifestService
from p2pull.metrics import Metrics
from p2pull.mirror import Mirror
from p2pull.sizes import SizeHints
from p2pull.store.disk import DiskStore
from p2pull.testing.fakes import FixedUpstreams
from p2pull.upstream.types import Upstream, Upstreams

CHUNK = 64 * 1024
QUICK_RESUME = ResumePolicy(patience=1.0, backoff_base=0.001, backoff_max=0.01)


@dataclass
class MirrorUnderTest:
    url: str
    client: httpx.AsyncClient
    store: DiskStore
    blobs: BlobService
    metrics: Metrics


@asynccontextmanager
async def running_mirror(
    data_dir: Path,
    upstream: Upstream | Upstreams,
    *,
    chunk_size: int = CHUNK,
    require_ns: bool = False,
    resume: ResumePolicy = QUICK_RESUME,
    early_headers: float = EARLY_HEADERS,
) -> AsyncIterator[MirrorUnderTest]:
    """``upstream`` answers every ns, or ``Upstreams`` (anything with for_namespace) maps them."""
    metrics = Metrics()
    store = await DiskStore.load(data_dir, chunk_size=chunk_size)
    upstreams = (
        upstream
        if hasattr(upstream, "for_namespace")
        else FixedUpstreams(upstream, require_ns=require_ns)  # type: ignore[arg-type]
    )
    sizes = SizeHints()
    blobs = BlobService(
        store=store,
        upstreams=upstreams,
        metrics=metrics,
        resume=resume,
        sizes=sizes,
        early_headers=early_headers,
    )
    manifests = ManifestService(store=store, upstreams=upstreams, sizes=sizes)
    mirror = Mirror(blobs=blobs, manifests=manifests, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(blobs.run)
        port = await nursery.start(HttpServer(mirror.handle, host="127.0.0.1", port=0).run)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield MirrorUnderTest(url, client, store, blobs, metrics)
        nursery.cancel_scope.cancel()
