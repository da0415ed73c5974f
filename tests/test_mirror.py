"""The mirror endpoint over real sockets: headers, ranges, bad input, streaming, single flight."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import h11
import httpx
import pytest
import trio

from p2pull.errors import BlobUnavailable, UpstreamAuthError, UpstreamError
from p2pull.metrics import Metrics
from p2pull.reference import Digest, ManifestRef
from p2pull.testing.fakes import FakeBody, MemoryUpstream
from p2pull.testing.origin import TestOrigin
from p2pull.upstream.client import RegistrySet
from p2pull.upstream.endpoints import RetryPolicy, Timeouts
from p2pull.upstream.types import Manifest
from tests.listeners import Listener
from tests.mirror_harness import CHUNK, running_mirror

NAME = "team/app"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def blob_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def upstream() -> MemoryUpstream:
    return MemoryUpstream(piece=16 * 1024)


@pytest.fixture(autouse=True)
async def deadline() -> AsyncIterator[None]:
    with trio.fail_after(20):
        yield


async def test_base_endpoint(tmp_path: Path, upstream: MemoryUpstream) -> None:
    async with running_mirror(tmp_path, upstream) as m:
        response = await m.client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


async def test_manifest_by_tag_and_digest(tmp_path: Path, upstream: MemoryUpstream) -> None:
    body = b'{"schemaVersion":2,"layers":[]}'
    digest = upstream.add_manifest(NAME, "v1", body, MANIFEST_TYPE)
    async with running_mirror(tmp_path, upstream) as m:
        head = await m.client.head(f"/v2/{NAME}/manifests/v1?ns=reg.example:5000")
        get = await m.client.get(f"/v2/{NAME}/manifests/v1")
        upstream.manifests.clear()  # by digest: served from the store from now on
        by_digest = await m.client.get(f"/v2/{NAME}/manifests/{digest}")
        head_digest = await m.client.head(f"/v2/{NAME}/manifests/{digest}")
    for response in (head, get, by_digest, head_digest):
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == str(digest)
        assert response.headers["content-type"] == MANIFEST_TYPE
        assert response.headers["content-length"] == str(len(body))
    assert get.content == body and by_digest.content == body and head.content == b""


class FlakyUpstream(MemoryUpstream):
    down: bool = False

    async def head_manifest(self, name, ref, *, accept=()):  # type: ignore[no-untyped-def]
        if self.down:
            raise UpstreamError("registry unreachable")
        return await super().head_manifest(name, ref)

    async def get_manifest(self, name, ref, *, accept=()) -> Manifest:  # type: ignore[no-untyped-def]
        if self.down:
            raise UpstreamError("registry unreachable")
        return await super().get_manifest(name, ref)


async def test_tag_resolution_is_stale_if_error(tmp_path: Path) -> None:
    upstream = FlakyUpstream()
    body = b'{"schemaVersion":2}'
    digest = upstream.add_manifest(NAME, "latest", body, MANIFEST_TYPE)
    async with running_mirror(tmp_path, upstream) as m:
        assert (await m.client.get(f"/v2/{NAME}/manifests/latest")).status_code == 200
        upstream.down = True
        stale = await m.client.get(f"/v2/{NAME}/manifests/latest")
        stale_head = await m.client.head(f"/v2/{NAME}/manifests/latest")
        never_seen = await m.client.get(f"/v2/{NAME}/manifests/other")
    assert stale.status_code == 200 and stale.content == body
    assert stale_head.headers["docker-content-digest"] == str(digest)
    assert never_seen.status_code == 502
    assert json.loads(never_seen.content)["errors"][0]["code"] == "UNAVAILABLE"


async def test_blob_get_head_and_ranges(tmp_path: Path, upstream: MemoryUpstream) -> None:
    data = blob_bytes(5 * CHUNK + 123)
    digest = upstream.add_blob(data)
    url = f"/v2/{NAME}/blobs/{digest}"
    async with running_mirror(tmp_path, upstream) as m:
        head = await m.client.head(url)
        full = await m.client.get(url)
        tail = await m.client.get(url, headers={"Range": "bytes=100000-"})
        middle = await m.client.get(url, headers={"Range": "bytes=10-19"})
        suffix = await m.client.get(url, headers={"Range": "bytes=-5"})
        beyond = await m.client.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert m.store.lookup(digest) is not None
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.headers["accept-ranges"] == "bytes"
    assert full.content == data and full.headers["docker-content-digest"] == str(digest)
    assert tail.status_code == 206 and tail.content == data[100000:]
    assert tail.headers["content-range"] == f"bytes 100000-{len(data) - 1}/{len(data)}"
    assert middle.status_code == 206 and middle.content == data[10:20]
    assert suffix.content == data[-5:]
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert upstream.bytes_sent == len(data)


GOOD_DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/v2/UPPER/blobs/" + GOOD_DIGEST, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/a/../b/blobs/" + GOOD_DIGEST, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/a/%2e%2e/b/blobs/" + GOOD_DIGEST, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/-lead/blobs/" + GOOD_DIGEST, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/" + "a" * 300 + "/blobs/" + GOOD_DIGEST, {}, 400, "NAME_INVALID"),
        ("GET", "/v2/ok/blobs/sha256:abc", {}, 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/sha512:" + "a" * 128, {}, 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/sha256:" + "A" * 64, {}, 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/..%2f..%2fetc", {}, 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/manifests/-badtag", {}, 400, "MANIFEST_INVALID"),
        ("GET", "/v2/ok/manifests/" + "t" * 129, {}, 400, "MANIFEST_INVALID"),
        ("GET", "/v2/ok/manifests/sha256:zz", {}, 400, "DIGEST_INVALID"),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=bad/host", {}, 400, "NAME_INVALID"),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=..", {}, 400, "NAME_INVALID"),
        (
            "GET",
            "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=%5B%3A%3A%3A%3A%3A%5D",
            {},
            400,
            "NAME_INVALID",
        ),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=%5B127.0.0.1%5D", {}, 400, "NAME_INVALID"),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=host%3A0", {}, 400, "NAME_INVALID"),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST + "?ns=host%3A99999", {}, 400, "NAME_INVALID"),
        ("GET", "/v2/ok/manifests/v1?ns=2130706433", {}, 400, "NAME_INVALID"),
        ("PUT", "/v2/ok/blobs/" + GOOD_DIGEST, {}, 405, "UNSUPPORTED"),
        ("DELETE", "/v2/ok/manifests/v1", {}, 405, "UNSUPPORTED"),
        ("POST", "/v2/ok/blobs/uploads/", {}, 405, "UNSUPPORTED"),
        ("POST", "/v2/", {}, 405, "UNSUPPORTED"),
        ("GET", "/v2/ok/blobs/" + GOOD_DIGEST, {}, 404, "BLOB_UNKNOWN"),
        ("HEAD", "/v2/ok/blobs/" + GOOD_DIGEST, {}, 404, None),
        ("GET", "/v2/ok/manifests/missing", {}, 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/_catalog", {}, 404, "NOT_FOUND"),
        ("GET", "/etc/passwd", {}, 404, "NOT_FOUND"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
async def test_bad_input(
    tmp_path: Path,
    upstream: MemoryUpstream,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    async with running_mirror(tmp_path, upstream) as m:
        got_status, body = await raw_request(m.url, method, path, headers)
        assert m.store.digests() == []
    assert got_status == status
    if code is not None:
        assert json.loads(body)["errors"][0]["code"] == code
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == ["blobs"]


async def raw_request(
    url: str, method: str, path: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    """Send the request target byte for byte (httpx would normalize `..` away)."""
    port = int(url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        request = h11.Request(
            method=method,
            target=path,
            headers=[("host", "mirror"), ("connection", "close"), *headers.items()],
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


@pytest.mark.parametrize(
    "range_header",
    ["bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=", "bytes=-0", "bytes=x-"],
)
async def test_bad_ranges(tmp_path: Path, upstream: MemoryUpstream, range_header: str) -> None:
    digest = upstream.add_blob(blob_bytes(1000))
    async with running_mirror(tmp_path, upstream) as m:
        response = await m.client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": range_header})
    assert response.status_code == 416


async def test_no_ns_without_default_upstream_is_404(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    digest = upstream.add_blob(b"x")
    async with running_mirror(tmp_path, upstream, require_ns=True) as m:
        response = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        with_ns = await m.client.get(f"/v2/{NAME}/blobs/{digest}?ns=registry.local%3A5000")
    assert response.status_code == 404
    assert with_ns.status_code == 200


async def test_concurrent_pulls_share_one_upstream_download(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    data = blob_bytes(40 * CHUNK + 7)
    digest = upstream.add_blob(data)
    results: list[bytes] = []

    async with running_mirror(tmp_path, upstream) as m:

        async def pull() -> None:
            response = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
            assert response.status_code == 200
            results.append(response.content)

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(pull)
        second = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert results == [data] * 6 and second.content == data
    assert upstream.bytes_sent == len(data)
    assert len(upstream.opens) == 1


class GatedUpstream(MemoryUpstream):
    """Hands out the first ``open_after`` bytes, then waits for ``gate`` before the rest."""

    def __init__(self, open_after: int) -> None:
        super().__init__(piece=CHUNK)
        self.gate = trio.Event()
        self.open_after = open_after

    @asynccontextmanager
    async def open_blob(self, name, digest, *, start=0):  # type: ignore[no-untyped-def,override]
        async with super().open_blob(name, digest, start=start) as body:
            yield _GatedBody(body, self)


class _GatedBody:
    def __init__(self, body: FakeBody, owner: GatedUpstream) -> None:
        self.size, self.start, self._body, self._owner = body.size, body.start, body, owner

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        sent = self.start
        async with aclosing(self._body.chunks()) as pieces:
            async for piece in pieces:
                if sent >= self._owner.open_after:
                    await self._owner.gate.wait()
                sent += len(piece)
                yield piece


async def test_first_bytes_leave_before_the_blob_completes(tmp_path: Path) -> None:
    upstream = GatedUpstream(open_after=3 * CHUNK)
    data = blob_bytes(10 * CHUNK)
    digest = upstream.add_blob(data)
    async with (
        running_mirror(tmp_path, upstream) as m,
        m.client.stream("GET", f"/v2/{NAME}/blobs/{digest}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        received = bytearray()
        pieces = response.aiter_raw()
        async for piece in pieces:
            received += piece
            if len(received) >= 2 * CHUNK:
                break
        blob = m.store.lookup(digest)
        assert blob is not None and not blob.complete
        assert bytes(received) == data[: len(received)]
        upstream.gate.set()
        async for piece in pieces:
            received += piece
    assert bytes(received) == data


async def test_truncated_upstream_aborts_the_client_and_caches_nothing(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    data = blob_bytes(8 * CHUNK)
    digest = upstream.add_blob(data)
    upstream.truncate_at[digest] = 5 * CHUNK + 100
    async with running_mirror(tmp_path, upstream) as m:
        with pytest.raises(httpx.HTTPError):
            await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        blob = m.store.lookup(digest)
        assert blob is None or not blob.complete
        assert len(upstream.opens) > 1  # resumed before giving up
        # resumed from the exact byte where the body broke (the partial chunk is kept in memory)
        assert all(start == 5 * CHUNK + 100 for _, start in upstream.opens[1:])


async def test_wrong_bytes_are_refused_and_not_cached(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    data = blob_bytes(3 * CHUNK + 5)
    digest = Digest.of(b"something else")
    upstream.blobs[digest] = data
    async with running_mirror(tmp_path, upstream) as m:
        with pytest.raises(httpx.HTTPError):
            await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        assert m.store.lookup(digest) is None
        with pytest.raises(httpx.HTTPError):  # tried again, refused again
            await m.client.get(f"/v2/{NAME}/blobs/{digest}?ns=x")
        assert m.store.lookup(digest) is None
        assert m.metrics.digest_mismatches._value.get() == 2
    assert not (tmp_path / "blobs" / "sha256" / digest.hex).exists()


def flip_byte(data_dir: Path, digest: Digest, offset: int) -> None:
    """One byte of a stored blob rots while the agent is stopped."""
    path = data_dir / "blobs" / "sha256" / digest.hex / "data"
    rotten = bytearray(path.read_bytes())
    rotten[offset] ^= 0x01
    path.write_bytes(rotten)


async def leave_partial(tmp_path: Path, upstream: MemoryUpstream) -> tuple[Digest, bytes]:
    """A 13-chunk blob whose download broke in chunk 7: chunks 0-6 stay in the store."""
    data = blob_bytes(12 * CHUNK + 99)
    digest = upstream.add_blob(data)
    upstream.truncate_at[digest] = 7 * CHUNK + 10
    async with running_mirror(tmp_path, upstream) as m:
        with pytest.raises(httpx.HTTPError):
            await m.client.get(f"/v2/{NAME}/blobs/{digest}")
    return digest, data


async def test_a_complete_blob_that_rotted_on_disk_is_repaired_not_served(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    """One byte flipped in blobs/sha256/<hex>/data while the agent was stopped: it was served
    with the wrong sha256, twice, nothing logged. Now the chunk fails its check as it is about
    to be served, is dropped, fetched again (one Range request), and the client gets the blob."""
    data = blob_bytes(6 * CHUNK + 5)
    digest = upstream.add_blob(data)
    async with running_mirror(tmp_path, upstream) as m:
        assert (await m.client.get(f"/v2/{NAME}/blobs/{digest}")).content == data
    flip_byte(tmp_path, digest, 3 * CHUNK + 7)
    upstream.opens.clear()
    async with running_mirror(tmp_path, upstream) as m:
        first = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        second = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        ranged = await m.client.get(
            f"/v2/{NAME}/blobs/{digest}", headers={"Range": f"bytes={3 * CHUNK}-"}
        )
        assert m.store.chunks_lost == 1
        blob = m.store.lookup(digest)
        assert blob is not None and blob.complete
    assert first.content == data and second.content == data
    assert ranged.content == data[3 * CHUNK :]
    assert upstream.opens == [(digest, 3 * CHUNK)]


async def test_a_stored_manifest_that_rotted_is_fetched_again(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    body = b'{"schemaVersion":2,"layers":[]}'
    digest = upstream.add_manifest(NAME, "v1", body, MANIFEST_TYPE)
    async with running_mirror(tmp_path, upstream) as m:
        assert (await m.client.get(f"/v2/{NAME}/manifests/{digest}")).content == body
    flip_byte(tmp_path, digest, 3)
    async with running_mirror(tmp_path, upstream) as m:
        again = await m.client.get(f"/v2/{NAME}/manifests/{digest}")
        assert m.store.chunks_lost == 1
    assert again.status_code == 200 and again.content == body


async def test_a_rotted_chunk_of_a_partial_blob_is_fetched_again_in_the_same_pull(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    """The rotted chunk was detected, but the pull failed once before the next one refetched."""
    digest, data = await leave_partial(tmp_path, upstream)
    flip_byte(tmp_path, digest, 2 * CHUNK + 1)
    upstream.truncate_at.clear()
    upstream.opens.clear()
    async with running_mirror(tmp_path, upstream) as m:
        response = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
        assert m.store.chunks_lost == 1
    assert response.status_code == 200 and response.content == data
    # the rotted chunk and the missing tail, nothing else: one stream from chunk 2 (reading
    # the held chunks 3-6 through, origin_fetch.READ_THROUGH) when the rot is found first,
    # or the tail's stream and then chunk 2's
    starts = sorted(start for _, start in upstream.opens)
    assert starts in ([2 * CHUNK], [2 * CHUNK, 7 * CHUNK])


async def test_partial_blob_resumes_after_restart(tmp_path: Path, upstream: MemoryUpstream) -> None:
    digest, data = await leave_partial(tmp_path, upstream)
    # A new agent on the same data dir: only the missing range is asked of the upstream.
    upstream.truncate_at.clear()
    upstream.opens.clear()
    upstream.bytes_sent = 0
    async with running_mirror(tmp_path, upstream) as m:
        blob = m.store.lookup(digest)
        assert blob is not None and blob.bitfield.count == 7
        response = await m.client.get(f"/v2/{NAME}/blobs/{digest}")
    assert response.content == data
    assert upstream.opens == [(digest, 7 * CHUNK)]
    assert upstream.bytes_sent == len(data) - 7 * CHUNK


async def test_manifest_ref_parse_is_used_for_digests() -> None:
    assert ManifestRef.parse(GOOD_DIGEST).digest == Digest("a" * 64)


@pytest.mark.parametrize(
    ("quota", "min_free"),
    [pytest.param(CHUNK, 0, id="quota-too-small"), pytest.param(0, 1 << 60, id="low-disk")],
)
async def test_full_store_passes_blobs_through_uncached(
    tmp_path: Path, upstream: MemoryUpstream, quota: int, min_free: int
) -> None:
    data = blob_bytes(5 * CHUNK + 1)
    digest = upstream.add_blob(data)
    url = f"/v2/{NAME}/blobs/{digest}"
    async with running_mirror(tmp_path, upstream) as m:
        m.store.quota_bytes, m.store.min_free_bytes = quota, min_free
        response = await m.client.get(url)
        ranged = await m.client.get(url, headers={"Range": "bytes=10-"})
        assert m.store.digests() == []
        passed = m.metrics.registry.get_sample_value("p2pull_passthrough_blobs_total")
    assert response.status_code == 200 and response.content == data
    assert ranged.status_code == 503  # a range cannot be verified without caching the blob
    assert passed == 2


async def test_passthrough_never_completes_a_body_with_wrong_bytes(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    digest = Digest.of(b"the real thing")
    upstream.blobs[digest] = blob_bytes(3 * CHUNK)
    async with running_mirror(tmp_path, upstream) as m:
        m.store.min_free_bytes = 1 << 60
        with pytest.raises(httpx.HTTPError):
            await m.client.get(f"/v2/{NAME}/blobs/{digest}")


async def test_a_failed_connection_reaches_the_client_as_a_fixed_text(
    tmp_path: Path, upstream: MemoryUpstream
) -> None:
    """How a connection failed (refused, a TLS error from a plain listener, a timeout) told a
    client which ports were open where; that detail goes to the log only. What an upstream
    answered (a 401, a 5xx) is still said."""
    failures = {
        "connect": UpstreamError("GET https://10.1.2.3:22/v2/: ConnectError: [SSL] wrong version"),
        "answer": UpstreamAuthError("GET /v2/team/app/blobs/x: 401 and no usable credentials"),
    }
    failures["connect"].__cause__ = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER]")
    answers = {}
    for kind, failure in failures.items():

        @asynccontextmanager
        async def refuse(
            *args: object, failure: Exception = failure, **kwargs: object
        ) -> AsyncIterator[FakeBody]:
            await trio.lowlevel.checkpoint()
            raise failure
            yield  # type: ignore[unreachable]

        upstream.open_blob = refuse  # type: ignore[method-assign]
        async with running_mirror(tmp_path / kind, upstream) as m:
            answers[kind] = await m.client.get(f"/v2/{NAME}/blobs/sha256:{'c' * 64}?ns=r.example")
    assert answers["connect"].status_code == 502
    assert answers["connect"].json()["errors"][0]["message"] == BlobUnavailable.public_message
    assert "10.1.2.3" not in answers["connect"].text and "SSL" not in answers["connect"].text
    assert "401 and no usable credentials" in answers["answer"].json()["errors"][0]["message"]


async def test_a_transfer_failing_for_one_ns_is_retried_from_another_clients_ns(
    tmp_path: Path,
) -> None:
    """Single flight is by digest: a request naming a good ns joined the transfer another
    request started from a hanging host, and got its 502. Now it retries from its own ns."""
    origin, hanging = TestOrigin(), Listener(answer=None)  # accepts, never answers
    data = blob_bytes(5 * CHUNK + 17)
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        await nursery.start(hanging.run)
        digest = origin.add_blob(NAME, data)
        async with httpx.AsyncClient() as http:
            upstreams = RegistrySet(
                http,
                metrics=Metrics(),
                upstreams={
                    "hang.test": f"http://127.0.0.1:{hanging.port}",
                    "good.test": origin.url,
                },
                retry=RetryPolicy(attempts=1),
                timeouts=Timeouts(connect=2, read=1.0, write=2, pool=2),
            )
            async with running_mirror(tmp_path, upstreams) as m:
                url = f"/v2/{NAME}/blobs/{digest}"
                first: list[httpx.Response] = []

                async def hang_first() -> None:
                    first.append(await m.client.get(url, params={"ns": "hang.test"}))

                nursery.start_soon(hang_first)
                await hanging.connected.wait()
                assert list(m.blobs.transfers) == [digest]  # the good request joins it
                started = trio.current_time()
                good = await m.client.get(url, params={"ns": "good.test"})
                waited = trio.current_time() - started
                while not first:  # noqa: ASYNC110 - the other client's request, in the nursery
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert good.status_code == 200 and good.content == data
    assert first[0].status_code == 502
    assert waited < 5
    assert origin.count(method="GET", contains="/blobs/") == 1
