"""The OCI distribution (pull side) endpoint that containerd uses as a registry mirror.

Routes: ``GET /v2/``, ``HEAD``/``GET /v2/<name>/manifests/<ref>`` and
``HEAD``/``GET /v2/<name>/blobs/<digest>``; ``?ns=<registry host>`` picks the upstream. Every
input is validated before it is used; every error is an OCI JSON error body, and any error status
makes containerd fall back to the next host (the origin itself).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from p2pull.blobs import BlobReader, BlobService
from p2pull.errors import P2pullError, RangeNotSatisfiable, StoreFull
from p2pull.httpserver import BodySink, Request, Response
from p2pull.imagewalk import PREFETCH_HEADER
from p2pull.manifests import ManifestService
from p2pull.metrics import Metrics
from p2pull.passthrough import PassThroughReader
from p2pull.reference import (
    Digest,
    ManifestRef,
    RegistryHost,
    parse_range,
    validate_name,
)
from p2pull.transfer import PendingReader

log = logging.getLogger(__name__)

API_VERSION = ("docker-distribution-api-version", "registry/2.0")
_ROUTE_RE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


def error_response(
    status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return Response(
        status,
        [("content-type", "application/json"), API_VERSION, *(headers or [])],
        body,
    )


@dataclass
class _BlobBody:
    """A StreamBody that streams a range of a blob and counts the bytes by source."""

    length: int
    reader: BlobReader | PassThroughReader | PendingReader
    offset: int
    metrics: Metrics
    received: float  # when the request arrived: time to first byte is measured from it
    prefetch: bool = False  # read by `p2pull prefetch`, not by a client: counted apart

    async def send(self, sink: BodySink) -> None:
        by_source: dict[str, int] = {}
        started = time.perf_counter()
        outcome = "error"

        counter = self.metrics.prefetched_bytes if self.prefetch else self.metrics.served_bytes

        def count(source: str, sent: int) -> None:
            if not by_source and not self.prefetch:
                self.metrics.first_byte.observe(time.perf_counter() - self.received)
            counter.labels(source).inc(sent)
            by_source[source] = by_source.get(source, 0) + sent

        try:
            await self.reader.send(sink, offset=self.offset, length=self.length, on_sent=count)
            outcome = "ok"
        finally:
            # One line per blob pull: what an SRE greps for when a node was slow.
            log.info(
                "blob served",
                extra={
                    "digest": str(self.reader.digest),
                    "outcome": outcome,
                    "bytes": sum(by_source.values()),
                    "offset": self.offset,
                    "bytes_local": by_source.get("local", 0),
                    "bytes_peer": by_source.get("peer", 0),
                    "bytes_origin": by_source.get("origin", 0),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )


class Mirror:
    def __init__(
        self,
        *,
        blobs: BlobService,
        manifests: ManifestService,
        metrics: Metrics,
        admin: Callable[[Request], Awaitable[Response]] | None = None,
    ) -> None:
        self._blobs = blobs
        self._manifests = manifests
        self._metrics = metrics
        self._admin = admin

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        endpoint = "other"
        try:
            endpoint, handler = self._route(request)
            response = await handler(request)
        except P2pullError as exc:
            response = self._error(exc)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(500, "UNKNOWN", "internal error in the p2pull agent")
        self._metrics.mirror_requests.labels(
            endpoint,
            request.method if request.method in ("GET", "HEAD") else "other",
            str(response.status),
        ).inc()
        self._metrics.mirror_latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def _error(self, exc: P2pullError) -> Response:
        headers: list[tuple[str, str]] = []
        if isinstance(exc, RangeNotSatisfiable):
            headers.append(("content-range", f"bytes */{exc.size}"))
        if exc.http_status >= 500:
            log.warning("answering %d %s: %s", exc.http_status, exc.oci_code, exc)
        return error_response(exc.http_status, exc.oci_code, exc.client_message(), headers=headers)

    def _route(self, request: Request) -> tuple[str, Callable[[Request], Awaitable[Response]]]:
        if request.path in ("/v2", "/v2/"):
            return "base", self._base
        if request.path.startswith("/_p2pull/") and self._admin is not None:
            return "admin", self._admin
        match = _ROUTE_RE.fullmatch(request.path)
        if match is None:
            return "other", self._not_found
        return match.group("kind"), (
            self._manifest if match.group("kind") == "manifests" else self._blob
        )

    async def _not_found(self, request: Request) -> Response:
        if request.path.startswith("/v2/") and "/blobs/uploads" in request.path:
            return error_response(
                405, "UNSUPPORTED", "p2pull is a pull-only mirror", headers=[("allow", "GET, HEAD")]
            )
        return error_response(404, "NOT_FOUND", "no such endpoint on this mirror")

    def _check_method(self, request: Request) -> Response | None:
        if request.method in ("GET", "HEAD"):
            return None
        return error_response(
            405,
            "UNSUPPORTED",
            f"method {request.method[:16]} not allowed",
            headers=[("allow", "GET, HEAD")],
        )

    async def _base(self, request: Request) -> Response:
        refused = self._check_method(request)
        if refused is not None:
            return refused
        return Response(200, [("content-type", "application/json"), API_VERSION], b"{}")

    def _parse(self, request: Request) -> tuple[str | None, str, str]:
        match = _ROUTE_RE.fullmatch(request.path)
        assert match is not None
        ns = request.query.get("ns")
        if ns is not None:
            ns = str(RegistryHost.parse(ns))  # NameInvalid (400) for anything but host[:port]
        return ns, validate_name(match.group("name")), match.group("ref")

    async def _manifest(self, request: Request) -> Response:
        refused = self._check_method(request)
        if refused is not None:
            return refused
        ns, name, raw_ref = self._parse(request)
        ref = ManifestRef.parse(raw_ref)
        accept = [
            part.split(";")[0].strip()
            for value in request.header_values("accept")
            for part in value.split(",")
            if part.strip()
        ]
        if request.method == "HEAD":
            descriptor = await self._manifests.head(ns, name, ref, accept=accept)
            body: bytes = b""
        else:
            manifest = await self._manifests.get(ns, name, ref, accept=accept)
            descriptor, body = manifest.descriptor, manifest.body
        headers = [
            ("content-type", descriptor.media_type),
            ("docker-content-digest", str(descriptor.digest)),
            ("content-length", str(descriptor.size)),
            API_VERSION,
        ]
        return Response(200, headers, body)

    async def _blob(self, request: Request) -> Response:
        refused = self._check_method(request)
        if refused is not None:
            return refused
        ns, name, raw_ref = self._parse(request)
        digest = Digest.parse(raw_ref)
        range_header = request.header("range")
        if request.method == "HEAD" and range_header is None:
            size = await self._blobs.stat(ns, name, digest)
            return Response(200, self._blob_headers(digest, size, size), b"")
        log.debug("%s of %s: opening", request.method, digest)
        reader = await self._blobs.open(ns, name, digest)
        log.debug("%s of %s: %d bytes, sending", request.method, digest, reader.size)
        byte_range = parse_range(range_header, size=reader.size)
        partial = byte_range is not None and byte_range.length != reader.size
        prefetch = request.header(PREFETCH_HEADER) is not None
        passing = isinstance(reader, PassThroughReader) or (
            isinstance(reader, BlobReader) and reader.passing
        )
        if passing and partial:
            raise StoreFull(f"{digest}: the store is full and a range cannot be verified")
        if byte_range is None:
            headers = self._blob_headers(digest, reader.size, reader.size)
            return Response(
                200,
                headers,
                _BlobBody(reader.size, reader, 0, self._metrics, request.received, prefetch),
            )
        headers = self._blob_headers(digest, byte_range.length, reader.size)
        headers.append(
            ("content-range", f"bytes {byte_range.start}-{byte_range.end}/{reader.size}")
        )
        return Response(
            206,
            headers,
            _BlobBody(
                byte_range.length,
                reader,
                byte_range.start,
                self._metrics,
                request.received,
                prefetch,
            ),
        )

    @staticmethod
    def _blob_headers(digest: Digest, length: int, size: int) -> list[tuple[str, str]]:
        return [
            ("content-type", "application/octet-stream"),
            ("docker-content-digest", str(digest)),
            ("accept-ranges", "bytes"),
            ("content-length", str(length)),
            ("etag", f'"{digest}"'),
            API_VERSION,
        ]
