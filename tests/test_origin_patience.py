"""The origin fetch rides out trouble against a real TestOrigin on 127.0.0.1: a Bearer token
that expires in the middle of a long blob is renewed for the resume."""

from __future__ import annotations

import random

import httpx
import trio

from p2pull.metrics import Metrics
from p2pull.origin_fetch import OriginFetcher, ResumePolicy
from p2pull.store.memory import MemoryStore
from p2pull.testing import TestOrigin
from p2pull.transfer import Transfer
from p2pull.upstream.client import RegistrySet
from p2pull.upstream.endpoints import Timeouts, make_http_client

NAME = "team/app"
CHUNK = 64 * 1024


async def test_a_token_that_expires_mid_blob_is_renewed_for_the_resume() -> None:
    data = random.Random(2).randbytes(16 * CHUNK)
    origin = TestOrigin(piece_size=16 * 1024, token_expires_in=1)
    origin.require_bearer = True
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        digest = origin.add_blob(NAME, data)
        faults = origin.fault(digest)
        faults.rate = 200 * 1024  # 5 s for the blob, the token lives 1 s
        faults.truncate_at = 8 * CHUNK  # the stream breaks halfway, after the token expired
        faults.truncate_times = 1
        store = MemoryStore(chunk_size=CHUNK)
        http: httpx.AsyncClient
        async with make_http_client(timeouts=Timeouts(connect=5, read=5, write=5, pool=5)) as http:
            upstreams = RegistrySet(http, metrics=Metrics(), upstreams={origin.netloc: origin.url})
            fetcher = OriginFetcher(
                store=store,
                upstreams=upstreams,
                metrics=Metrics(),
                resume=ResumePolicy(patience=20.0, backoff_base=0.05, backoff_max=0.1),
            )
            transfer = Transfer(digest, None, ns=origin.netloc, name=NAME)
            with trio.fail_after(30):
                await fetcher.fetch(transfer)
            assert transfer.blob is not None
            await transfer.blob.seal()  # the whole digest matches
        nursery.cancel_scope.cancel()
    assert origin.tokens_issued >= 2  # the first expired before the resume
    ranges = [r.range for r in origin.requests if r.method == "GET" and "/blobs/" in r.path]
    assert ranges[-1] is not None and ranges[-1] != "bytes=0-"  # resumed, not restarted
