"""Where upstream registries live and how we talk to them: ns mapping and client settings.

Pure apart from building an ``httpx.AsyncClient``: ``resolve_endpoint`` turns a request's ``ns``
into a base URL, the key used for credentials and tokens, and Docker Hub's ``library/`` rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from p2pull.errors import NameInvalid, NameUnknown
from p2pull.reference import RegistryHost, validate_name
from p2pull.upstream.credentials import DOCKER_HUB, registry_key

DOCKER_HUB_URL = "https://registry-1.docker.io"
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry waits ``base * 2**n`` (capped), half jittered."""

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, retry: int, rand: float) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**retry)
        return float(ceiling / 2 + ceiling / 2 * rand)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-operation limits; ``read`` is per read, so a long blob stream has no total limit."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 60.0
    pool: float = 60.0

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


DEFAULT_RETRY = RetryPolicy()
DEFAULT_TIMEOUTS = Timeouts()


def make_http_client(
    *, timeouts: Timeouts = DEFAULT_TIMEOUTS, max_connections: int = 256
) -> httpx.AsyncClient:
    """An httpx client suited to RegistryClient: no automatic redirects, no env proxies."""
    return httpx.AsyncClient(
        timeout=timeouts.as_httpx(),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a registry lives: base URL, key for credentials/tokens, Docker Hub name rules."""

    base_url: str
    registry: str
    library_prefix: bool = False

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        base = url.rstrip("/")
        parsed = httpx.URL(base)
        if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
            raise ValueError(f"upstream URL must be http(s)://host[:port]: {url!r}")
        registry = registry_key(base)
        return cls(base, registry, library_prefix=registry == DOCKER_HUB)

    def repository(self, name: str) -> str:
        """The repository path upstream: Docker Hub's official images live under ``library/``."""
        validate_name(name)
        return f"library/{name}" if self.library_prefix and "/" not in name else name


def resolve_endpoint(
    ns: str | None,
    *,
    upstreams: Mapping[str, str],
    default: str | None,
    only_listed: bool = False,
) -> Endpoint:
    """Map a request's ``ns`` to an endpoint (see RegistrySet). Raises NameUnknown (404): for a
    malformed ns, no ns and no default, or, with ``only_listed``, an ns that is neither in
    ``upstreams`` nor the default's registry (a mirror's 404 sends containerd to the next host,
    the registry itself)."""
    target = ns if ns is not None else default
    if target is None:
        raise NameUnknown("request has no ns parameter and no default upstream is configured")
    if ns is None and "://" in target:  # a default given as a URL; an ns is a host[:port]
        return Endpoint.from_url(target)
    try:
        target = str(RegistryHost.parse(target))
    except NameInvalid as exc:
        raise NameUnknown(f"ns {target[:100]!r} is not a registry host[:port]") from exc
    key = registry_key(target)
    configured = {registry_key(k): v for k, v in upstreams.items()}
    listed = key in configured or (default is not None and registry_key(default) == key)
    if only_listed and ns is not None and not listed:
        raise NameUnknown(f"ns {target[:100]!r} is not a listed upstream (policy: listed)")
    if key in configured:
        endpoint = Endpoint.from_url(configured[key])
        return Endpoint(
            endpoint.base_url, endpoint.registry, endpoint.library_prefix or key == DOCKER_HUB
        )
    if key == DOCKER_HUB:
        return Endpoint(DOCKER_HUB_URL, DOCKER_HUB, library_prefix=True)
    return Endpoint.from_url(f"https://{target}")


def listed_origins(upstreams: Mapping[str, str], default: str | None) -> list[tuple[str, int]]:
    """(host, port) of every configured upstream URL and of the default upstream: where the
    operator said the agent may fetch from, whatever address that is."""
    endpoints = [Endpoint.from_url(url) for url in upstreams.values()]
    if default is not None:
        endpoints.append(resolve_endpoint(None, upstreams=upstreams, default=default))
    origins: list[tuple[str, int]] = []
    for endpoint in endpoints:
        _, host, port = origin_of(httpx.URL(endpoint.base_url))
        assert port is not None  # http(s) only: the default port is known
        origins.append((host, port))
    return origins


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in: what decides "same host"."""
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def parse_length(text: str | None) -> int | None:
    """A non-negative decimal header value (Content-Length, Retry-After), else None."""
    return int(text) if text is not None and text.isdigit() and len(text) < 20 else None
