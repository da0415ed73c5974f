"""RegistryClient / RegistrySet against a real TestOrigin on 127.0.0.1 (and a few MockTransports).

Every network test runs under ``trio.fail_after``; backoff sleeps are injected and tiny.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from p2pull.errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    NameUnknown,
    TruncatedBody,
    UpstreamAuthError,
    UpstreamError,
)
from p2pull.metrics import Metrics
from p2pull.reference import Digest, ManifestRef
from p2pull.testing import TestOrigin
from p2pull.upstream.client import RegistryClient, RegistrySet
from p2pull.upstream.credentials import Credential, Credentials, CredentialsError
from p2pull.upstream.endpoints import (
    DOCKER_HUB_URL,
    Endpoint,
    RetryPolicy,
    Timeouts,
    make_http_client,
    resolve_endpoint,
)
from p2pull.upstream.exchange import UpstreamUnavailable
from p2pull.upstream.types import BlobBody

DEADLINE = 10
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.004)
NAME = "team/app"


def blob_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
async def origin(nursery: trio.Nursery) -> TestOrigin:
    server = TestOrigin(piece_size=64 * 1024)
    await nursery.start(server.run)
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(timeouts=Timeouts(connect=5, read=5, write=5, pool=5)) as client:
        yield client


class Sleeps:
    """An injected sleep that records delays and only yields to the scheduler."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await trio.lowlevel.checkpoint()


def registry(
    origin: TestOrigin,
    http: httpx.AsyncClient,
    *,
    credentials: Credentials | None = None,
    metrics: Metrics | None = None,
    sleep: Sleeps | None = None,
) -> RegistryClient:
    upstreams = RegistrySet(
        http,
        metrics=metrics or Metrics(),
        upstreams={origin.netloc: origin.url},
        credentials=credentials,
        retry=FAST_RETRY,
        sleep=sleep or Sleeps(),
        rand=lambda: 0.5,
    )
    return upstreams.for_namespace(origin.netloc)


async def read_all(body: BlobBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- manifests ------------------------------------------------------------------------------


async def test_manifest_head_and_get_by_tag_and_digest(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        manifest_digest, _ = origin.add_image(NAME, "v1", [b"layer-a", b"layer-b"])
        client = registry(origin, http)
        by_tag = await client.head_manifest(NAME, ManifestRef.parse("v1"))
        assert by_tag.digest == manifest_digest
        assert by_tag.media_type == "application/vnd.oci.image.manifest.v1+json"
        by_digest = await client.head_manifest(NAME, ManifestRef(digest=manifest_digest))
        assert by_digest == by_tag
        got = await client.get_manifest(NAME, ManifestRef.parse("v1"))
        assert got.descriptor == by_tag
        assert Digest.of(got.body) == manifest_digest and len(got.body) == by_tag.size
        assert (await client.get_manifest(NAME, ManifestRef(digest=manifest_digest))) == got
        assert origin.count(method="HEAD") == 2 and origin.count(method="GET") == 2


async def test_head_without_digest_falls_back_to_get(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        manifest_digest, _ = origin.add_image(NAME, "v1", [b"x"])
        origin.head_digest = False
        descriptor = await registry(origin, http).head_manifest(NAME, ManifestRef.parse("v1"))
        assert descriptor.digest == manifest_digest
        assert origin.count(method="GET", contains="/manifests/") == 1


async def test_corrupt_manifest_is_a_digest_mismatch(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        manifest_digest, _ = origin.add_image(NAME, "v1", [b"x"])
        origin.fault(manifest_digest).corrupt = True
        client = registry(origin, http)
        with pytest.raises(DigestMismatch):
            await client.get_manifest(NAME, ManifestRef(digest=manifest_digest))
        with pytest.raises(DigestMismatch):  # by tag: the body disagrees with the header
            await client.get_manifest(NAME, ManifestRef.parse("v1"))


async def test_manifest_over_the_size_cap_is_refused(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        origin.add_image(NAME, "v1", [b"x"] * 10)
        client = RegistryClient(
            http, endpoint=Endpoint.from_url(origin.url), metrics=Metrics(), max_manifest_bytes=100
        )
        with pytest.raises(UpstreamError, match="limit"):
            await client.get_manifest(NAME, ManifestRef.parse("v1"))


# -- blobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 1, 300_000, 1_500_000 - 1], ids=str)
async def test_blob_streams_from_offset(
    origin: TestOrigin, http: httpx.AsyncClient, start: int
) -> None:
    with trio.fail_after(DEADLINE):
        data = blob_bytes(1_500_000)
        digest = origin.add_blob(NAME, data)
        metrics = Metrics()
        client = registry(origin, http, metrics=metrics)
        assert await client.head_blob(NAME, digest) == len(data)
        async with client.open_blob(NAME, digest, start=start) as body:
            assert (body.size, body.start) == (len(data), start)
            assert await read_all(body) == data[start:]
        assert sample(metrics, "p2pull_upstream_bytes_total") == len(data) - start
        assert origin.requests[-1].range == (f"bytes={start}-" if start else None)


async def test_a_body_trickling_in_is_read_in_big_parts(http: httpx.AsyncClient) -> None:
    origin = TestOrigin(piece_size=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        data = blob_bytes(2 << 20)
        digest = origin.add_blob(NAME, data)
        origin.fault(digest).rate = 16e6  # 4 KiB every 0.25 ms: a packet at a time
        with trio.fail_after(DEADLINE):
            async with registry(origin, http).open_blob(NAME, digest) as body:
                parts = [chunk async for chunk in body.chunks()]
        nursery.cancel_scope.cancel()
    assert b"".join(parts) == data
    # 512 writes; big reads until the last 128 KiB (which may sit in buffers), then small ones
    assert len(parts) <= 80, f"{len(parts)} reads"


async def test_offset_at_or_past_the_end_is_refused(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        digest = origin.add_blob(NAME, b"0123456789")
        client = registry(origin, http)
        with pytest.raises(UpstreamError, match="416"):
            async with client.open_blob(NAME, digest, start=10):
                pass
        assert origin.count(contains="/blobs/") == 1  # a 416 is not retried


async def test_range_ignored_by_server_is_skipped_locally() -> None:
    data = blob_bytes(10_000)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data)  # ignores the Range header

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RegistryClient(
            http, endpoint=Endpoint.from_url("http://r.test"), metrics=Metrics()
        )
        async with client.open_blob(NAME, Digest.of(data), start=4321) as body:
            assert (body.size, body.start) == (len(data), 4321)
            assert await read_all(body) == data[4321:]


async def test_206_from_the_wrong_offset_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-range": "bytes 0-9/10"}
        return httpx.Response(206, content=b"0123456789", headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RegistryClient(
            http, endpoint=Endpoint.from_url("http://r.test"), metrics=Metrics()
        )
        with pytest.raises(UpstreamError, match="asked from 5"):
            async with client.open_blob(NAME, Digest.of(b"0123456789"), start=5):
                pass


async def test_truncated_stream_raises_from_iterator_and_resumes(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        data = blob_bytes(1_000_000)
        digest = origin.add_blob(NAME, data)
        origin.fault(digest).truncate_at = 300_000
        origin.fault(digest).truncate_times = 1
        client = registry(origin, http)
        received = bytearray()
        async with client.open_blob(NAME, digest) as body:  # opening succeeds...
            with pytest.raises(TruncatedBody):  # ...the break surfaces from the iterator
                async for chunk in body.chunks():
                    received += chunk
        assert 0 < len(received) <= 300_000 and data.startswith(received)
        async with client.open_blob(NAME, digest, start=len(received)) as body:
            received += await read_all(body)
        assert bytes(received) == data


async def test_short_body_is_truncated_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-range": "bytes 0-4/10"}  # a 206 that stops halfway
        return httpx.Response(206, content=b"01234", headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RegistryClient(
            http, endpoint=Endpoint.from_url("http://r.test"), metrics=Metrics()
        )
        async with client.open_blob(NAME, Digest.of(b"x")) as body:
            with pytest.raises(TruncatedBody, match="5 of 10"):
                await read_all(body)


# -- retries --------------------------------------------------------------------------------


async def test_5xx_then_success_is_retried(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        data = blob_bytes(100_000)
        digest = origin.add_blob(NAME, data)
        origin.fault(digest).fail_times = 2
        metrics, sleeps = Metrics(), Sleeps()
        client = registry(origin, http, metrics=metrics, sleep=sleeps)
        async with client.open_blob(NAME, digest) as body:
            assert await read_all(body) == data
        assert origin.count(method="GET", contains=str(digest)) == 3
        assert sample(metrics, "p2pull_upstream_retries_total") == 2
        assert sleeps.delays == [0.001 * 0.75, 0.002 * 0.75]  # exponential, jitter 0.5


async def test_retries_run_out(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        manifest_digest, _ = origin.add_image(NAME, "v1", [b"x"])
        origin.fault(manifest_digest).fail_times = 100
        with pytest.raises(UpstreamUnavailable, match="503"):
            await registry(origin, http).get_manifest(NAME, ManifestRef.parse("v1"))
        assert origin.count(contains="/manifests/") == FAST_RETRY.attempts


async def test_connection_refused_is_retried_and_translated(http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there now
        sleeps = Sleeps()
        client = RegistrySet(
            http,
            metrics=Metrics(),
            default=f"http://127.0.0.1:{port}",
            retry=FAST_RETRY,
            sleep=sleeps,
        ).for_namespace(None)
        with pytest.raises(UpstreamUnavailable) as info:
            await client.head_blob(NAME, Digest.of(b""))
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert len(sleeps.delays) == FAST_RETRY.attempts - 1


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("bad"), httpx.ReadError("reset")],
    ids=lambda e: type(e).__name__,
)
async def test_httpx_errors_never_escape(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RegistryClient(
            http,
            endpoint=Endpoint.from_url("http://r.test"),
            metrics=Metrics(),
            retry=FAST_RETRY,
            sleep=Sleeps(),
        )
        with pytest.raises(UpstreamUnavailable) as info:
            await client.get_manifest(NAME, ManifestRef.parse("v1"))
        assert info.value.__cause__ is exc


# -- not found ------------------------------------------------------------------------------


async def test_404s_map_to_oci_codes_and_are_not_retried(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        origin.add_image(NAME, "v1", [b"x"])
        client = registry(origin, http)
        missing = Digest.of(b"missing")
        with pytest.raises(BlobUnknown):
            async with client.open_blob(NAME, missing):
                pass
        with pytest.raises(BlobUnknown):
            await client.head_blob(NAME, missing)
        with pytest.raises(ManifestUnknown):
            await client.get_manifest(NAME, ManifestRef.parse("nope"))
        with pytest.raises(ManifestUnknown):
            await client.head_manifest(NAME, ManifestRef.parse("nope"))
        with pytest.raises(NameUnknown):
            await client.get_manifest("other/repo", ManifestRef.parse("v1"))
        assert len(origin.requests) == 5


# -- auth -----------------------------------------------------------------------------------


async def test_bearer_token_fetched_once_and_reused(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        manifest_digest, layers = origin.add_image(NAME, "v1", [b"a" * 1000, b"b" * 2000])
        metrics = Metrics()
        client = registry(origin, http, metrics=metrics)
        await client.head_manifest(NAME, ManifestRef.parse("v1"))
        await client.get_manifest(NAME, ManifestRef(digest=manifest_digest))
        async with trio.open_nursery() as nursery:  # concurrent users share the token
            for digest in layers * 3:
                nursery.start_soon(client.head_blob, NAME, digest)
        async with client.open_blob(NAME, layers[1]) as body:
            assert await read_all(body) == b"b" * 2000
        assert origin.tokens_issued == 1
        assert sample(metrics, "p2pull_upstream_token_fetches_total") == 1
        unauthorized = [
            r for r in origin.requests if r.path.startswith("/v2/") and not r.authorization
        ]
        assert len(unauthorized) == 1  # only the very first request was challenged


async def test_concurrent_first_requests_fetch_one_token(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        digest = origin.add_blob(NAME, b"data")
        client = registry(origin, http)
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(client.head_blob, NAME, digest)
        assert origin.tokens_issued == 1


async def test_revoked_token_is_refetched_once(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        digest = origin.add_blob(NAME, b"data")
        client = registry(origin, http)
        await client.head_blob(NAME, digest)
        origin.revoke_tokens()
        assert await client.head_blob(NAME, digest) == 4
        assert origin.tokens_issued == 2


async def test_bearer_with_credentials(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        origin.credentials = ("alice", "s3cret")
        digest = origin.add_blob(NAME, b"data")
        good = Credentials({origin.netloc: Credential("alice", "s3cret")})
        assert await registry(origin, http, credentials=good).head_blob(NAME, digest) == 4
        bad = Credentials({origin.netloc: Credential("alice", "wrong")})
        with pytest.raises(UpstreamAuthError, match="token request refused"):
            await registry(origin, http, credentials=bad).head_blob(NAME, digest)
        with pytest.raises(UpstreamAuthError):
            await registry(origin, http).head_blob(NAME, digest)


async def test_second_401_is_an_auth_error(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        origin.token_expires_in = 0  # the origin refuses every token it issues
        digest = origin.add_blob(NAME, b"data")
        with pytest.raises(UpstreamAuthError, match="401"):
            await registry(origin, http).head_blob(NAME, digest)
        assert origin.tokens_issued == 1
        assert origin.count(contains="/blobs/") == 2


async def test_basic_challenge(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_basic = True
        origin.credentials = ("bob", "pw")
        digest = origin.add_blob(NAME, b"data")
        client = registry(
            origin, http, credentials=Credentials({origin.url: Credential("bob", "pw")})
        )
        for _ in range(3):
            assert await client.head_blob(NAME, digest) == 4
        assert sum(not r.authorization for r in origin.requests) == 1
        with pytest.raises(UpstreamAuthError):
            await registry(origin, http).head_blob(NAME, digest)


async def test_redirect_to_cdn_drops_authorization(
    origin: TestOrigin, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(DEADLINE):
        origin.require_bearer = True
        origin.redirect_blobs = True
        data = blob_bytes(200_000)
        digest = origin.add_blob(NAME, data)
        client = registry(origin, http)
        async with client.open_blob(NAME, digest, start=1000) as body:
            assert await read_all(body) == data[1000:]
        cdn = [r for r in origin.requests if r.listener == "cdn"]
        assert len(cdn) == 1 and not cdn[0].authorization and cdn[0].range == "bytes=1000-"
        # the origin counts a piece after its write returns: let it run before reading the count
        await trio.testing.wait_all_tasks_blocked()
        assert origin.bytes_sent_by_digest[digest] == len(data) - 1000


async def test_redirect_loop_is_bounded() -> None:
    hops = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal hops
        hops += 1
        return httpx.Response(307, headers={"location": f"/hop/{hops}"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = RegistryClient(
            http, endpoint=Endpoint.from_url("http://r.test"), metrics=Metrics()
        )
        with pytest.raises(UpstreamError, match="more than 5 redirects"):
            await client.head_blob(NAME, Digest.of(b""))
        assert hops == 6


# -- the test origin itself -------------------------------------------------------------------


async def test_origin_ranges_head_and_errors(origin: TestOrigin, http: httpx.AsyncClient) -> None:
    with trio.fail_after(DEADLINE):
        data = blob_bytes(5000)
        digest = origin.add_blob(NAME, data)
        url = f"{origin.url}/v2/{NAME}/blobs/{digest}"
        ranged = await http.get(url, headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        assert ranged.headers["content-range"] == "bytes 10-19/5000"
        head = await http.head(url)
        assert head.headers["content-length"] == "5000"
        assert head.headers["docker-content-digest"] == str(digest)
        assert (await http.get(url, headers={"range": "bytes=9999-"})).status_code == 416
        missing = await http.get(f"{origin.url}/v2/{NAME}/blobs/{Digest.of(b'')}")
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert (await http.get(f"{origin.url}/v2/")).status_code == 200
        assert origin.bytes_sent == 10


# -- namespaces (pure) ----------------------------------------------------------------------

CONFIGURED = {"127.0.0.1:5000": "http://127.0.0.1:5000", "mirror.local": "http://10.0.0.1:8080/"}


@pytest.mark.parametrize(
    ("ns", "default", "name", "base_url", "repository"),
    [
        pytest.param(
            "docker.io", None, "alpine", DOCKER_HUB_URL, "library/alpine", id="hub-official"
        ),
        pytest.param(
            "docker.io", None, "bitnami/redis", DOCKER_HUB_URL, "bitnami/redis", id="hub-user"
        ),
        pytest.param(
            "index.docker.io", None, "ubuntu", DOCKER_HUB_URL, "library/ubuntu", id="hub-alias"
        ),
        pytest.param(
            "127.0.0.1:5000", None, "alpine", "http://127.0.0.1:5000", "alpine", id="configured"
        ),
        pytest.param(
            "mirror.local", None, "a/b", "http://10.0.0.1:8080", "a/b", id="configured-url"
        ),
        pytest.param("ghcr.io", None, "org/img", "https://ghcr.io", "org/img", id="unconfigured"),
        pytest.param(
            None, "docker.io", "alpine", DOCKER_HUB_URL, "library/alpine", id="default-ns"
        ),
        pytest.param(
            None, "http://127.0.0.1:5000", "x", "http://127.0.0.1:5000", "x", id="default-url"
        ),
        pytest.param(
            None, "https://registry-1.docker.io", "x", DOCKER_HUB_URL, "library/x", id="hub-url"
        ),
    ],
)
def test_resolve_endpoint(
    ns: str | None, default: str | None, name: str, base_url: str, repository: str
) -> None:
    endpoint = resolve_endpoint(ns, upstreams=CONFIGURED, default=default)
    assert endpoint.base_url == base_url
    assert endpoint.repository(name) == repository


@pytest.mark.parametrize(
    ("ns", "default"),
    [
        pytest.param(None, None, id="no-ns-no-default"),
        pytest.param("evil.example/path", None, id="path-in-ns"),
        pytest.param("user@host", None, id="userinfo"),
        pytest.param("", None, id="empty"),
        pytest.param("[:::::]", None, id="bracketed-garbage"),
        pytest.param("[127.0.0.1]", None, id="bracketed-ipv4"),
        pytest.param("host:0", None, id="port-0"),
        pytest.param("host:99999", None, id="port-99999"),
    ],
)
def test_resolve_endpoint_refuses(ns: str | None, default: str | None) -> None:
    with pytest.raises(NameUnknown) as info:
        resolve_endpoint(ns, upstreams=CONFIGURED, default=default)
    assert info.value.http_status == 404


@pytest.mark.parametrize(
    ("ns", "default", "base_url"),
    [
        pytest.param("127.0.0.1:5000", None, "http://127.0.0.1:5000", id="listed"),
        pytest.param("MIRROR.local", None, "http://10.0.0.1:8080", id="listed-any-case"),
        pytest.param(None, "https://reg.example", "https://reg.example", id="no-ns-default"),
        pytest.param("reg.example", "https://reg.example", "https://reg.example", id="ns-default"),
        pytest.param("ghcr.io", None, None, id="unlisted"),
        pytest.param("docker.io", None, None, id="hub-unlisted"),
        pytest.param("127.0.0.1:5001", None, None, id="other-port"),
        pytest.param("ghcr.io", "https://reg.example", None, id="unlisted-with-default"),
    ],
)
def test_resolve_endpoint_only_listed(
    ns: str | None, default: str | None, base_url: str | None
) -> None:
    if base_url is None:
        with pytest.raises(NameUnknown, match="not a listed upstream"):
            resolve_endpoint(ns, upstreams=CONFIGURED, default=default, only_listed=True)
    else:
        endpoint = resolve_endpoint(ns, upstreams=CONFIGURED, default=default, only_listed=True)
        assert endpoint.base_url == base_url


def test_resolve_endpoint_takes_a_url_only_as_the_default() -> None:
    with pytest.raises(NameUnknown, match="not a registry host"):
        resolve_endpoint("http://10.0.0.9:80", upstreams=CONFIGURED, default=None)


def test_registry_set_reuses_clients_and_finds_credentials() -> None:
    creds = Credentials({"https://index.docker.io/v1/": Credential("u", "p")})
    upstreams = RegistrySet(httpx.AsyncClient(), metrics=Metrics(), credentials=creds)
    hub = upstreams.for_namespace("docker.io")
    assert hub is upstreams.for_namespace("index.docker.io")
    assert hub.endpoint.registry == "docker.io" and hub._credential == Credential("u", "p")
    assert upstreams.for_namespace("ghcr.io")._credential is None


# -- credentials (pure) ---------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("auths", "lookup", "expected"),
    [
        pytest.param({"r.io": {"auth": b64("u:p:x")}}, "r.io", Credential("u", "p:x"), id="auth"),
        pytest.param(
            {"r.io:5000": {"username": "u", "password": "p"}},
            "r.io:5000",
            Credential("u", "p"),
            id="user-pass",
        ),
        pytest.param(
            {"ghcr.io": {"identitytoken": "rt"}},
            "ghcr.io",
            Credential(identity_token="rt"),
            id="identity-token",
        ),
        pytest.param(
            {"https://index.docker.io/v1/": {"auth": b64("h:s")}},
            "docker.io",
            Credential("h", "s"),
            id="hub-url-key",
        ),
        pytest.param(
            {"docker.io": {"auth": b64("h:s")}},
            "registry-1.docker.io",
            Credential("h", "s"),
            id="hub-alias-lookup",
        ),
        pytest.param(
            {"R.IO": {"auth": b64("u:p")}}, "http://r.io/", Credential("u", "p"), id="case-url"
        ),
        pytest.param({"r.io": {}}, "r.io", None, id="empty-entry-skipped"),
        pytest.param({"r.io": {"auth": b64("u:p")}}, "other.io", None, id="no-match"),
    ],
)
def test_credentials_lookup(
    auths: dict[str, object], lookup: str, expected: Credential | None
) -> None:
    creds = Credentials.parse(json.dumps({"auths": auths, "credsStore": "desktop"}))
    assert creds.lookup(lookup) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("{", "not valid JSON", id="not-json"),
        pytest.param("[]", "top level", id="not-object"),
        pytest.param('{"auths": []}', "'auths' must be", id="auths-list"),
        pytest.param('{"auths": {"r": "x"}}', "must be an object", id="entry-string"),
        pytest.param('{"auths": {"r": {"auth": "***"}}}', "not base64", id="bad-base64"),
        pytest.param(
            json.dumps({"auths": {"r": {"auth": b64("nocolon")}}}), "no ':'", id="no-colon"
        ),
        pytest.param('{"auths": {"r": {"username": "u"}}}', "both", id="user-only"),
        pytest.param(
            '{"auths": {"r": {"username": "u", "password": 5}}}', "string", id="non-string"
        ),
    ],
)
def test_credentials_malformed(text: str, match: str) -> None:
    with pytest.raises(CredentialsError, match=match):
        Credentials.parse(text)


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"r.io": {"auth": b64("u:hunter2")}}}))
    creds = Credentials.load(path)
    credential = creds.lookup("r.io")
    assert credential is not None and credential.basic == "Basic " + b64("u:hunter2")
    assert "hunter2" not in repr(credential) and "hunter2" not in repr(creds)
    with pytest.raises(CredentialsError, match="cannot read"):
        Credentials.load(tmp_path / "missing.json")
    assert issubclass(CredentialsError, ValueError)
