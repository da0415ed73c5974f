"""What the rest of p2pull needs from an upstream registry (a small Protocol, fakeable)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from p2pull.reference import Digest, ManifestRef

# Every manifest media type a pull may meet; used when the client sent no Accept header.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "*/*",
)


@dataclass(frozen=True, slots=True)
class ManifestDescriptor:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    descriptor: ManifestDescriptor
    body: bytes


class BlobBody(Protocol):
    """An open upstream blob response, positioned at ``start``.

    ``size`` is the full blob size (from Content-Length, or Content-Range on a 206). Iterating
    yields the bytes from ``start`` to the end; if the upstream stream breaks or ends short, the
    iterator raises :class:`p2pull.errors.UpstreamError` (``TruncatedBody`` for a short body)
    and the caller resumes with a new ``open_blob(start=...)``.
    """

    size: int
    start: int

    def chunks(self) -> AsyncGenerator[bytes, None]: ...


class Upstream(Protocol):
    """One upstream registry (``ns``). Errors: NotFound subclasses, UpstreamError subclasses."""

    async def head_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> ManifestDescriptor: ...

    async def get_manifest(
        self, name: str, ref: ManifestRef, *, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest: ...

    async def head_blob(self, name: str, digest: Digest) -> int: ...

    def open_blob(
        self, name: str, digest: Digest, *, start: int = 0
    ) -> AbstractAsyncContextManager[BlobBody]: ...


class Upstreams(Protocol):
    """Maps a request's ``ns`` (None when the client sent none) to an upstream registry."""

    def for_namespace(self, ns: str | None) -> Upstream: ...
