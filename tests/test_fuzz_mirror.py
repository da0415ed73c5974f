"""Hostile input to the mirror under hypothesis: request targets (paths, names, references, ``ns``,
query), headers and ranges, first through ``Mirror.handle`` (no sockets), then as raw bytes
through the HTTP server on 127.0.0.1. Never a crash, never a 5xx, always a clean answer.

The upstream is an in-memory fake that answers every ``ns``: nothing here contacts a network."""

from __future__ import annotations

import json
import string

import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pull.blobs import BlobService
from p2pull.httpserver import HttpServer, Request, parse_target
from p2pull.manifests import ManifestService
from p2pull.metrics import Metrics
from p2pull.mirror import Mirror
from p2pull.reference import Digest
from p2pull.store.memory import MemoryStore
from p2pull.testing.fakes import MemoryUpstream
from p2pull.upstream.endpoints import resolve_endpoint
from tests.fuzzing import fuzz

NAME = "team/app"
BLOB = b"fuzzed blob bytes " * 300
BLOB_DIGEST = Digest.of(BLOB)
MANIFEST = b'{"schemaVersion": 2}'
FUZZ = fuzz(150)
ANSWERS = {200, 206, 400, 404, 405, 416}  # everything a hostile request may get; never a 5xx

hostile_text = st.text(
    alphabet=st.sampled_from(
        string.ascii_letters + string.digits + "-._~%/:@[]?#&=+ \\\u00e9\u0661"
    ),
    max_size=40,
)
names = st.sampled_from([NAME, "library/alpine", "a", "UPPER", "a/../b", "%2e%2e", "x" * 300])
names = names | hostile_text.filter(lambda t: "?" not in t and "#" not in t)
refs = st.sampled_from(
    [str(BLOB_DIGEST), "latest", "sha256:" + "0" * 64, "sha256:xyz", "..%2f..", "-tag", "t" * 200]
) | hostile_text.filter(lambda t: "/" not in t and "?" not in t and "#" not in t)
nss = (
    st.sampled_from(
        [
            "registry.example:5000",
            "docker.io",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[:::::]",
            "[127.0.0.1]",
            "host:0",
            "host:99999",
            "2130706433",
            "a..b",
            "",
        ]
    )
    | hostile_text
)
ranges = (
    st.sampled_from(
        [
            "bytes=0-",
            "bytes=5-",
            "bytes=-10",
            "bytes=0-0",
            "bytes=10-5",
            "bytes=0-1,3-4",
            "items=0-1",
        ]
    )
    | st.builds(
        "bytes={}-{}".format,
        st.integers(-5, 10**20).map(str) | st.just(""),
        st.integers(-5, 10**20).map(str) | st.just(""),
    )
    | hostile_text
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["blobs", "manifests", "blobs/uploads", "tags", ""]))
    path = draw(
        st.builds(lambda n, k, r: f"/v2/{n}/{k}/{r}", names, st.just(kind), refs)
        | st.sampled_from(["/v2/", "/v2", "/", "//[x", "/_p2pull/status", "/v2/_catalog"])
        | hostile_text.map(lambda t: "/" + t)
    )
    query = draw(st.dictionaries(st.sampled_from(["ns", "n", "last", "x"]), nss, max_size=3))
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    headers: list[tuple[str, str]] = [("host", "mirror")]
    if draw(st.booleans()):
        headers.append(("range", draw(ranges)))
    if draw(st.booleans()):
        headers.append(("accept", draw(header_values)))
    headers += draw(
        st.lists(st.tuples(st.sampled_from(["x-a", "range", "accept"]), header_values), max_size=3)
    )
    try:
        path, parsed = parse_target(target)
    except ValueError:
        path, parsed = "/", {}
    return Request(
        method=draw(
            st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "G\u00e9T"])
        ),
        target=target,
        path=path,
        query=parsed,
        headers=tuple(headers),
    )


def upstream() -> MemoryUpstream:
    fake = MemoryUpstream(piece=1024)
    fake.add_blob(BLOB)
    fake.add_manifest(NAME, "latest", MANIFEST, "application/vnd.oci.image.manifest.v1+json")
    return fake


class ResolvingUpstreams:
    """Maps ``ns`` the way the agent does (resolve_endpoint: grammar, Docker Hub, https://ns),
    then answers from memory instead of connecting anywhere."""

    def __init__(self) -> None:
        self.upstream = upstream()

    def for_namespace(self, ns: str | None) -> MemoryUpstream:
        resolve_endpoint(ns, upstreams={}, default="https://registry.example")
        return self.upstream


async def with_mirror(work) -> None:  # type: ignore[no-untyped-def]
    store = MemoryStore(chunk_size=1024)
    upstreams = ResolvingUpstreams()
    metrics = Metrics()
    blobs = BlobService(store=store, upstreams=upstreams, metrics=metrics)
    mirror = Mirror(
        blobs=blobs, manifests=ManifestService(store=store, upstreams=upstreams), metrics=metrics
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(blobs.run)
        with trio.fail_after(10):
            await work(mirror)
        nursery.cancel_scope.cancel()


@FUZZ
@given(requests())
def test_the_mirror_answers_any_request_with_a_clean_4xx_or_a_success(request: Request) -> None:
    async def check(mirror: Mirror) -> None:
        response = await mirror.handle(request)
        assert response.status in ANSWERS, (response.status, response.body)
        for key, value in response.headers:
            assert "\r" not in value and "\n" not in value, key
            value.encode("latin-1")  # sendable as a header
        if response.status >= 400 and isinstance(response.body, bytes) and response.body:
            error = json.loads(response.body)["errors"][0]
            assert len(error["message"]) < 400
        if response.status == 206:
            assert any(k == "content-range" for k, _ in response.headers)

    trio.run(with_mirror, check)


request_lines = st.builds(
    lambda m, t, v: m + b" " + t + b" " + v,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"", b"G\xc3\xa9T", b"GET GET"]),
    st.binary(max_size=60)
    | st.sampled_from([b"//[x", b"*", b"/v2/", b"http://[x/", b"/v2/a/blobs/x"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"", b"HTTP/1.1 extra"]),
)
raw_headers = st.lists(
    st.binary(max_size=80)
    | st.sampled_from(
        [
            b"range: bytes=0-",
            b"content-length: -1",
            b"transfer-encoding: chunked",
            b": x",
            b"host",
            b"host: m",
            b"connection: close",
        ]
    ),
    max_size=5,
)


@FUZZ
@given(line=request_lines, headers=raw_headers, tail=st.binary(max_size=40))
def test_raw_requests_get_an_answer_or_a_close_and_the_server_keeps_serving(
    line: bytes, headers: list[bytes], tail: bytes
) -> None:
    data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + tail

    async def check(mirror: Mirror) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(HttpServer(mirror.handle, host="127.0.0.1", port=0).run)
            for payload in (data, b"GET /v2/ HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n"):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                received = b""
                async with stream:
                    try:
                        await stream.send_all(payload)
                        with trio.move_on_after(0.5):
                            while piece := await stream.receive_some(65536):
                                received += piece
                    except trio.BrokenResourceError:
                        pass
                if received:
                    assert received.startswith(b"HTTP/1.1 "), received[:40]
                    # h11's own refusals of what it does not implement are 501 and 505
                    assert int(received[9:12]) < 500 or received[9:12] in (b"501", b"505")
            assert received.startswith(b"HTTP/1.1 200")  # the server still serves
            nursery.cancel_scope.cancel()

    trio.run(with_mirror, check)
