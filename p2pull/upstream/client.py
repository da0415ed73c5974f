"""The upstream registry client: distribution API v2 (pull side) over an injected httpx client.

``RegistryClient`` is one registry; ``RegistrySet`` maps a request's ``ns`` to one. Kept here:
the API calls with their checks (digests of manifests, byte windows of blobs) and the auth flow
(Basic, or Bearer tokens per scope cached until expiry, one retry after a 401). How a request
travels (redirects without Authorization to a CDN, retries, error translation) is in
:mod:`p2pull.upstream.exchange`. Callers only ever see p2pull errors, never httpx types.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import trio

from p2pull.errors import DigestInvalid, DigestMismatch, UpstreamAuthError, UpstreamError
from p2pull.metrics import Metrics
from p2pull.reference import Digest, ManifestRef
from p2pull.upstream.auth import (
    Challenge,
    TokenCache,
    find_challenge,
    parse_token_response,
    parse_www_authenticate,
    pull_scope,
)
from p2pull.upstream.blobstream import StreamedBlob
from p2pull.upstream.credentials import Credential, Credentials
from p2pull.upstream.endpoints import (
    DEFAULT_PORTS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Endpoint,
    RetryPolicy,
    Timeouts,
    origin_of,
    parse_length,
    resolve_endpoint,
)
from p2pull.upstream.exchange import Exchange, Sleep, UpstreamUnavailable
from p2pull.upstream.types import MANIFEST_MEDIA_TYPES, Manifest, ManifestDescriptor

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_TOKEN_BYTES = 1024 * 1024


@dataclass(slots=True)
class _Call:
    """One attempt of an API call: its metric kind, token scope, and whether auth was retried."""

    kind: str
    scope: str
    retried_auth: bool = False


class RegistryClient:
    """One upstream registry, implementing :class:`p2pull.upstream.types.Upstream`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoint: Endpoint,
        metrics: Metrics,
        credential: Credential | None = None,
        tokens: TokenCache | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        sleep: Sleep = trio.sleep,
        rand: Callable[[], float] = random.random,
        max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self._x = Exchange(
            http, metrics=metrics, retry=retry, timeouts=timeouts, sleep=sleep, rand=rand
        )
        self._metrics = metrics
        self._credential = credential
        self._tokens = tokens if tokens is not None else TokenCache()
        self._max_manifest = max_manifest_bytes
        self._origin = origin_of(httpx.URL(endpoint.base_url))
        self._bearer: Challenge | None = None  # the registry's Bearer challenge, once seen
        self._use_basic = False
        self._token_locks: dict[str, trio.Lock] = {}

    # -- the Upstream API -------------------------------------------------------------------

    async def head_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> ManifestDescriptor:
        path = f"/v2/{self.endpoint.repository(name)}/manifests/{ref}"
        headers = await self._x.retrying(lambda: self._head(path, "manifest", name, accept))
        media_type = _media_type(headers)
        size = parse_length(headers.get("content-length"))
        try:
            digest: Digest | None = Digest.parse(headers.get("docker-content-digest", ""))
        except DigestInvalid:
            digest = None
        if digest is None or not media_type or size is None:
            # Some registries omit the digest on HEAD: fetch the body and hash it ourselves.
            return (await self.get_manifest(name, ref, accept=accept)).descriptor
        if ref.digest is not None and digest != ref.digest:
            self._metrics.upstream_errors.labels("digest").inc()
            raise DigestMismatch(f"HEAD {path}: registry says {digest}")
        return ManifestDescriptor(digest, media_type, size)

    async def get_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        path = f"/v2/{self.endpoint.repository(name)}/manifests/{ref}"
        headers = {"Accept": ", ".join(accept), "Accept-Encoding": "identity"}

        async def attempt() -> tuple[httpx.Headers, bytes]:
            call = _Call("manifest", self._scope(name))
            response = await self._open("GET", path, call, headers)
            try:
                body = await self._x.read(response, self._max_manifest, what=f"GET {path}")
            finally:
                await response.aclose()
            return response.headers, body

        response_headers, body = await self._x.retrying(attempt)
        self._metrics.upstream_bytes.inc(len(body))
        digest = Digest.of(body)
        claimed = response_headers.get("docker-content-digest", "")
        if (ref.digest is not None and digest != ref.digest) or (
            claimed.startswith("sha256:") and claimed != str(digest)
        ):
            self._metrics.upstream_errors.labels("digest").inc()
            raise DigestMismatch(f"GET {path}: body hashes to {digest} (header {claimed or '-'})")
        media_type = _media_type(response_headers)
        if not media_type:
            try:
                media_type = str(json.loads(body).get("mediaType") or "")
            except (ValueError, AttributeError):
                media_type = ""
        descriptor = ManifestDescriptor(digest, media_type or "application/json", len(body))
        return Manifest(descriptor, body)

    async def head_blob(self, name: str, digest: Digest) -> int:
        path = f"/v2/{self.endpoint.repository(name)}/blobs/{digest}"
        headers = await self._x.retrying(lambda: self._head(path, "blob", name, ()))
        size = parse_length(headers.get("content-length"))
        if size is None:
            raise UpstreamError(f"HEAD {path}: no usable Content-Length")
        return size

    @asynccontextmanager
    async def open_blob(
        self, name: str, digest: Digest, *, start: int = 0
    ) -> AsyncIterator[StreamedBlob]:
        """Open ``digest`` at ``start``; opening is retried, the stream itself is not."""
        if start < 0:
            raise ValueError(f"negative blob offset {start}")
        path = f"/v2/{self.endpoint.repository(name)}/blobs/{digest}"
        headers = {"Accept-Encoding": "identity"}
        if start > 0:
            headers["Range"] = f"bytes={start}-"

        async def attempt() -> StreamedBlob:
            response = await self._open("GET", path, _Call("blob", self._scope(name)), headers)
            try:
                return StreamedBlob.open(response, start=start, metrics=self._metrics, what=path)
            except BaseException:
                await response.aclose()
                raise

        blob = await self._x.retrying(attempt)
        try:
            yield blob
        finally:
            await blob.response.aclose()

    # -- one attempt: authorization, and the 401 dance ----------------------------------------

    def _scope(self, name: str) -> str:
        return pull_scope(self.endpoint.repository(name))

    async def _head(self, path: str, kind: str, name: str, accept: Sequence[str]) -> httpx.Headers:
        headers = {"Accept-Encoding": "identity"}
        if accept:
            headers["Accept"] = ", ".join(accept)
        response = await self._open("HEAD", path, _Call(kind, self._scope(name)), headers)
        await response.aclose()
        return response.headers

    async def _open(
        self, method: str, path: str, call: _Call, headers: dict[str, str]
    ) -> httpx.Response:
        """One attempt (redirects and one auth retry included): an open 2xx response, or raise."""
        url = httpx.URL(self.endpoint.base_url + path)
        while True:
            authorization, fresh = await self._authorization(call.scope)
            response = await self._x.follow(
                method,
                url,
                call.kind,
                headers=headers,
                authorization=authorization,
                auth_origin=self._origin,
            )
            if response.status_code != 401 or origin_of(response.url) != self._origin:
                break
            values = response.headers.get_list("www-authenticate")
            await response.aclose()
            await self._on_unauthorized(method, path, call, values, authorization, fresh=fresh)
        if response.status_code < 300:
            return response
        try:
            raise await self._x.status_error(response, method=method, kind=call.kind)
        finally:
            await response.aclose()

    async def _on_unauthorized(
        self,
        method: str,
        path: str,
        call: _Call,
        challenge_headers: list[str],
        authorization: str | None,
        *,
        fresh: bool,
    ) -> None:
        """Learn how to authenticate from a 401; raise if we already tried our best."""
        if call.retried_auth or fresh:
            self._metrics.upstream_errors.labels("auth").inc()
            raise UpstreamAuthError(f"{method} {path}: 401 even with credentials/token")
        call.retried_auth = True
        challenges = parse_www_authenticate(challenge_headers)
        bearer = find_challenge(challenges, "bearer")
        if bearer is not None and bearer.realm:
            self._bearer = bearer
            stale = None
            if authorization is not None and authorization.startswith("Bearer "):
                stale = authorization.removeprefix("Bearer ")
            await self._token(call.scope, stale=stale)
        elif find_challenge(challenges, "basic") is not None and self._basic() is not None:
            self._use_basic = True
        else:
            self._metrics.upstream_errors.labels("auth").inc()
            raise UpstreamAuthError(f"{method} {path}: 401 and no usable credentials/challenge")

    async def _authorization(self, scope: str) -> tuple[str | None, bool]:
        """The Authorization to send up front, and whether a token was fetched just now."""
        if self._bearer is not None:
            cached = self._tokens.get(self.endpoint.registry, scope, now=trio.current_time())
            if cached is not None:
                return f"Bearer {cached}", False
            return f"Bearer {await self._token(scope, stale=None)}", True
        return (self._basic() if self._use_basic else None), False

    def _basic(self) -> str | None:
        return self._credential.basic if self._credential is not None else None

    # -- tokens -------------------------------------------------------------------------------

    async def _token(self, scope: str, *, stale: str | None) -> str:
        """A token for ``scope``: the cached one unless it is ``stale``, else a new one."""
        lock = self._token_locks.setdefault(scope, trio.Lock())
        async with lock:  # concurrent requests for one scope share one token fetch
            registry = self.endpoint.registry
            cached = self._tokens.get(registry, scope, now=trio.current_time())
            if cached is not None and cached != stale:
                return cached
            self._tokens.invalidate(registry, scope)
            token, expires_in = await self._x.retrying(lambda: self._fetch_token(scope))
            self._metrics.token_fetches.inc()
            self._tokens.put(registry, scope, token, now=trio.current_time(), expires_in=expires_in)
            return token

    async def _fetch_token(self, scope: str) -> tuple[str, float]:
        challenge = self._bearer
        assert challenge is not None and challenge.realm is not None
        try:
            realm = httpx.URL(challenge.realm)
        except httpx.InvalidURL as exc:
            raise UpstreamAuthError(f"bad token realm {challenge.realm[:200]!r}") from exc
        if realm.scheme not in DEFAULT_PORTS:
            raise UpstreamAuthError(f"token realm must be http(s): {challenge.realm[:200]!r}")
        params = {"scope": scope}
        if challenge.service:
            params["service"] = challenge.service
        credential = self._credential
        if credential is not None and credential.identity_token is not None:
            # OAuth2 refresh-token grant, as `docker login` identity tokens expect.
            form = {"grant_type": "refresh_token", "client_id": "p2pull", **params}
            form["refresh_token"] = credential.identity_token
            response = await self._x.send("POST", realm, "token", headers={}, form=form)
        else:
            basic = self._basic()
            headers = {"Authorization": basic} if basic is not None else {}
            url = realm.copy_merge_params(params)
            response = await self._x.send("GET", url, "token", headers=headers)
        try:
            if response.status_code != 200:
                error = await self._x.status_error(response, method="GET", kind="token")
                if isinstance(error, UpstreamUnavailable):
                    raise error
                self._metrics.upstream_errors.labels("auth").inc()
                raise UpstreamAuthError(f"token request refused: {error}")
            body = await self._x.read(response, MAX_TOKEN_BYTES, what="token response")
        finally:
            await response.aclose()
        parsed = parse_token_response(body)
        return parsed.token, parsed.expires_in


def _media_type(headers: httpx.Headers) -> str:
    return (headers.get("content-type") or "").split(";")[0].strip()


class RegistrySet:
    """Maps ``ns`` to a RegistryClient (implements :class:`p2pull.upstream.types.Upstreams`).

    ``upstreams`` maps an ns (``"127.0.0.1:5000"``) to a base URL; ``docker.io`` (any spelling)
    goes to ``https://registry-1.docker.io`` with the ``library/`` rule; any other ns maps to
    ``https://<ns>``, unless ``only_listed`` (then only listed ones and the default's registry
    are served; others are NameUnknown); ``default`` (an ns or a URL) serves requests without
    ``ns``. Clients are kept per endpoint so each registry's tokens and auth scheme are learned
    once.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        metrics: Metrics,
        upstreams: Mapping[str, str] | None = None,
        default: str | None = None,
        only_listed: bool = False,
        credentials: Credentials | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        sleep: Sleep = trio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._upstreams = dict(upstreams or {})
        self._default = default
        self._only_listed = only_listed
        self._credentials = credentials if credentials is not None else Credentials()
        self._retry, self._timeouts, self._sleep, self._rand = retry, timeouts, sleep, rand
        self._tokens = TokenCache()
        self._clients: dict[Endpoint, RegistryClient] = {}
        for url in self._upstreams.values():
            Endpoint.from_url(url)  # fail at startup on a bad configured URL
        if default is not None:
            resolve_endpoint(None, upstreams=self._upstreams, default=default)

    def for_namespace(self, ns: str | None) -> RegistryClient:
        endpoint = resolve_endpoint(
            ns, upstreams=self._upstreams, default=self._default, only_listed=self._only_listed
        )
        client = self._clients.get(endpoint)
        if client is None:
            client = RegistryClient(
                self._http,
                endpoint=endpoint,
                metrics=self._metrics,
                credential=self._credentials.lookup(endpoint.registry),
                tokens=self._tokens,
                retry=self._retry,
                timeouts=self._timeouts,
                sleep=self._sleep,
                rand=self._rand,
            )
            self._clients[endpoint] = client
        return client
