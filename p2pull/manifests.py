"""Manifests: tags are resolved upstream every time; anything by digest is immutable and cached.

If the upstream fails (not a 404) while resolving a tag, the last digest seen for that tag is
served when its manifest is in the store (stale-if-error): a registry outage does not stop nodes
from starting images they already know.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from p2pull.errors import ChunkLost, DigestMismatch, UpstreamError
from p2pull.reference import Digest, ManifestRef
from p2pull.sizes import SizeHints
from p2pull.store.types import BlobStore
from p2pull.upstream.types import (
    MANIFEST_MEDIA_TYPES,
    Manifest,
    ManifestDescriptor,
    Upstreams,
)

log = logging.getLogger(__name__)


class ManifestService:
    def __init__(
        self, *, store: BlobStore, upstreams: Upstreams, sizes: SizeHints | None = None
    ) -> None:
        self._store = store
        self._sizes = sizes if sizes is not None else SizeHints()
        self._upstreams = upstreams
        self._tags: dict[tuple[str | None, str, str], ManifestDescriptor] = {}
        self._inflight: dict[Digest, trio.Event] = {}

    async def head(
        self, ns: str | None, name: str, ref: ManifestRef, *, accept: Sequence[str] = ()
    ) -> ManifestDescriptor:
        if ref.digest is not None:
            local = await self._local(ref.digest)
            if local is not None:
                return local.descriptor
            return (await self.get(ns, name, ref, accept=accept)).descriptor
        assert ref.tag is not None
        key = (ns, name, ref.tag)
        try:
            descriptor = await self._upstreams.for_namespace(ns).head_manifest(
                name, ref, accept=_accept(accept)
            )
        except UpstreamError:
            stale = await self._stale(key)
            if stale is None:
                raise
            return stale.descriptor
        self._tags[key] = descriptor
        return descriptor

    async def get(
        self, ns: str | None, name: str, ref: ManifestRef, *, accept: Sequence[str] = ()
    ) -> Manifest:
        manifest = await self._get(ns, name, ref, accept=accept)
        self._sizes.learn(manifest.body)  # a client will ask for these blobs next
        return manifest

    async def _get(
        self, ns: str | None, name: str, ref: ManifestRef, *, accept: Sequence[str] = ()
    ) -> Manifest:
        if ref.digest is not None:
            local = await self._local(ref.digest)
            if local is not None:
                return local
            return await self._fetch_by_digest(ns, name, ref.digest, accept)
        assert ref.tag is not None
        key = (ns, name, ref.tag)
        try:
            manifest = await self._upstreams.for_namespace(ns).get_manifest(
                name, ref, accept=_accept(accept)
            )
        except UpstreamError:
            stale = await self._stale(key)
            if stale is None:
                raise
            log.warning(
                "upstream failed resolving %s:%s; serving last known %s",
                name,
                ref.tag,
                stale.descriptor.digest,
            )
            return stale
        await self._remember(manifest)
        self._tags[key] = manifest.descriptor
        return manifest

    async def _fetch_by_digest(
        self, ns: str | None, name: str, digest: Digest, accept: Sequence[str]
    ) -> Manifest:
        while (event := self._inflight.get(digest)) is not None:
            await event.wait()
            local = await self._local(digest)
            if local is not None:
                return local
        event = self._inflight[digest] = trio.Event()
        try:
            manifest = await self._upstreams.for_namespace(ns).get_manifest(
                name, ManifestRef(digest=digest), accept=_accept(accept)
            )
            if manifest.descriptor.digest != digest:
                raise DigestMismatch(f"upstream answered {manifest.descriptor.digest} for {digest}")
            await self._remember(manifest)
            return manifest
        finally:
            del self._inflight[digest]
            event.set()

    async def _remember(self, manifest: Manifest) -> None:
        await self._store.put(
            manifest.descriptor.digest, manifest.body, media_type=manifest.descriptor.media_type
        )

    async def _stale(self, key: tuple[str | None, str, str]) -> Manifest | None:
        descriptor = self._tags.get(key)
        return None if descriptor is None else await self._local(descriptor.digest)

    async def _local(self, digest: Digest) -> Manifest | None:
        blob = self._store.lookup(digest)
        if blob is None or not blob.complete or blob.media_type is None:
            return None
        try:
            body = await blob.read(0, blob.size)
        except ChunkLost:  # rotted on disk: dropped by the store, fetched again by the caller
            return None
        return Manifest(ManifestDescriptor(digest, blob.media_type, blob.size), body)


def _accept(accept: Sequence[str]) -> Sequence[str]:
    return accept or MANIFEST_MEDIA_TYPES
