"""One HTTP exchange with an upstream, as p2pull sees it: httpx errors translated, redirects
followed by hand (``Authorization`` only to the registry's own origin), statuses mapped to p2pull
errors, and transient failures retried with jittered exponential backoff.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import trio

from p2pull.errors import (
    BlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    P2pullError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)
from p2pull.metrics import Metrics
from p2pull.upstream.endpoints import (
    DEFAULT_PORTS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    RetryPolicy,
    Timeouts,
    origin_of,
    parse_length,
)

__all__ = ["Exchange", "UpstreamUnavailable", "oci_error_code"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Origin = tuple[str, str, int | None]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND: dict[str, type[NotFound]] = {
    "BLOB_UNKNOWN": BlobUnknown,
    "MANIFEST_UNKNOWN": ManifestUnknown,
    "NAME_UNKNOWN": NameUnknown,
}
_NOT_FOUND_BY_KIND: dict[str, type[NotFound]] = {"manifest": ManifestUnknown, "blob": BlobUnknown}


def oci_error_code(body: bytes) -> str | None:
    """The first ``code`` of an OCI error body ``{"errors": [{"code": ...}]}``, if any."""
    try:
        code = json.loads(body)["errors"][0]["code"]
    except (ValueError, TypeError, LookupError):
        return None
    return code if isinstance(code, str) else None


class Exchange:
    """Sends requests for one RegistryClient. ``kind`` labels metrics (manifest, blob, token)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        metrics: Metrics,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        sleep: Sleep = trio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics
        self._http = http
        self._retry = retry
        self._timeout = timeouts.as_httpx()
        self._sleep = sleep
        self._rand = rand

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it does not raise UpstreamUnavailable or the attempts run out."""
        for n in range(self._retry.attempts):
            try:
                return await attempt()
            except UpstreamUnavailable as exc:
                if n + 1 >= self._retry.attempts:
                    raise
                delay = self._retry.delay(n, self._rand())
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self._retry.max_delay))
                self.metrics.upstream_retries.inc()
                await self._sleep(delay)
        raise AssertionError("RetryPolicy.attempts must be at least 1")

    async def send(
        self,
        method: str,
        url: httpx.URL,
        kind: str,
        *,
        headers: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; returns the open (streaming) response whatever its status."""
        what = f"{method} {url.copy_with(query=None)}"
        try:
            request = self._http.build_request(
                method, url, headers=headers, data=form, timeout=self._timeout
            )
            response = await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException as exc:
            self._count_error(kind, "timeout")
            raise UpstreamUnavailable(f"{what}: timed out ({type(exc).__name__})") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self._count_error(kind, "connect")
            raise UpstreamUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            self._count_error(kind, "connect")
            raise UpstreamError(f"{what}: {type(exc).__name__}: {exc}") from exc
        self.metrics.upstream_requests.labels(kind, f"{response.status_code // 100}xx").inc()
        return response

    async def follow(
        self,
        method: str,
        url: httpx.URL,
        kind: str,
        *,
        headers: dict[str, str],
        authorization: str | None,
        auth_origin: Origin,
    ) -> httpx.Response:
        """Send, following up to MAX_REDIRECTS redirects. ``authorization`` only goes to
        ``auth_origin`` (the registry): a CDN on another host or port never sees it."""
        for _hop in range(MAX_REDIRECTS + 1):
            hop_headers = dict(headers)
            if authorization is not None and origin_of(url) == auth_origin:
                hop_headers["Authorization"] = authorization
            response = await self.send(method, url, kind, headers=hop_headers)
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise UpstreamError(f"{method} {url}: redirect without Location")
            try:
                url = response.url.join(location)
            except httpx.InvalidURL as exc:
                raise UpstreamError(f"{method} {url}: bad redirect Location") from exc
            if url.scheme not in DEFAULT_PORTS:
                raise UpstreamError(f"{method}: redirect to unsupported URL scheme {url.scheme!r}")
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
        raise UpstreamError(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    async def read(self, response: httpx.Response, limit: int, *, what: str) -> bytes:
        """The whole (decoded) body, at most ``limit`` bytes; a broken body is transient."""
        declared = parse_length(response.headers.get("content-length"))
        if declared is not None and declared > limit:
            raise UpstreamError(f"{what}: {declared} bytes is over the {limit} byte limit")
        body = bytearray()
        try:
            async for data in response.aiter_bytes():
                body += data
                if len(body) > limit:
                    raise UpstreamError(f"{what}: body over the {limit} byte limit")
        except (httpx.HTTPError, httpx.StreamError) as exc:
            self.metrics.upstream_errors.labels("truncated").inc()
            raise UpstreamUnavailable(f"{what}: body broke after {len(body)} bytes: {exc}") from exc
        return bytes(body)

    async def status_error(
        self, response: httpx.Response, *, method: str, kind: str
    ) -> P2pullError:
        """The p2pull error for a non-2xx answer (UpstreamUnavailable when worth a retry)."""
        status = response.status_code
        what = f"{method} {response.url.copy_with(query=None)}: HTTP {status}"
        if status == 429 or status >= 500:
            self.metrics.upstream_errors.labels("status_5xx").inc()
            retry_after = parse_length(response.headers.get("retry-after"))
            return UpstreamUnavailable(what, retry_after=retry_after)
        if status in (401, 403):
            self.metrics.upstream_errors.labels("auth").inc()
            return UpstreamAuthError(what)
        if status == 404:
            code = None
            if method != "HEAD":
                try:
                    code = oci_error_code(await self.read(response, 64 * 1024, what=what))
                except UpstreamError:
                    code = None
            error = _NOT_FOUND.get(code or "", _NOT_FOUND_BY_KIND.get(kind, NameUnknown))
            return error(what + (f" ({code})" if code else ""))
        return UpstreamError(what)

    def _count_error(self, kind: str, error: str) -> None:
        self.metrics.upstream_requests.labels(kind, "error").inc()
        self.metrics.upstream_errors.labels(error).inc()
