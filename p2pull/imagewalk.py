"""Walking an image through a mirror: manifest (index -> platform manifest) -> config + layers.

Used by ``p2pull prefetch`` (pull every blob through the local agent, keeping nothing) and
``p2pull purge IMAGE`` (find every digest of an image).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from p2pull.errors import DigestMismatch, P2pullError
from p2pull.imageref import ImageRef
from p2pull.reference import Digest

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
ACCEPT = ", ".join(
    (
        *INDEX_TYPES,
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


# Sent by `p2pull prefetch` on every request: the agent counts those blob bytes apart from what
# clients pull (p2pull_prefetched_bytes_total), so prefetching does not read as peer hits.
PREFETCH_HEADER = "p2pull-prefetch"


class ImageError(P2pullError):
    """The image could not be resolved through the mirror (the message says where it failed)."""


@dataclass(frozen=True, slots=True)
class BlobDescriptor:
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    manifests: tuple[Digest, ...]  # the index (if any) and the platform manifest
    blobs: tuple[BlobDescriptor, ...]  # config first, then layers

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)


def refusal(response: httpx.Response) -> str:
    """``HTTP <status>`` and the reason the agent gave: the message of an OCI error body
    (``{"errors": [{"code": …, "message": …}]}``, which carries the upstream's reason), or an
    admin answer's ``error``."""
    text = f"HTTP {response.status_code}"
    try:
        body = json.loads(response.content)
    except ValueError:
        return text
    reasons: list[str] = []
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        for error in body["errors"]:
            if isinstance(error, dict):
                reasons.append(f"{error.get('code', '?')}: {error.get('message', '')}".strip())
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        reasons.append(body["error"])
    return f"{text} ({'; '.join(reasons)[:500]})" if reasons else text


def _url(mirror: str, ref: ImageRef, kind: str, reference: str) -> str:
    return f"{mirror}/v2/{ref.name}/{kind}/{reference}?ns={quote(ref.registry, safe='')}"


async def _manifest(
    client: httpx.AsyncClient, mirror: str, ref: ImageRef, reference: str
) -> tuple[Digest, dict[str, Any]]:
    response = await client.get(
        _url(mirror, ref, "manifests", reference), headers={"Accept": ACCEPT}
    )
    if response.status_code != 200:
        raise ImageError(f"{ref}: manifest {reference}: {refusal(response)}")
    digest = Digest.of(response.content)
    if reference.startswith("sha256:") and str(digest) != reference:
        raise DigestMismatch(f"{ref}: manifest bytes do not match {reference}")
    body = json.loads(response.content)
    if not isinstance(body, dict):
        raise ImageError(f"{ref}: manifest {reference} is not a JSON object")
    return digest, body


async def resolve(
    client: httpx.AsyncClient, mirror: str, ref: ImageRef, *, platform: str = "linux/amd64"
) -> ResolvedImage:
    """The image's manifests and blobs, resolved through the mirror."""
    digest, body = await _manifest(client, mirror, ref, ref.reference)
    manifests = [digest]
    if body.get("mediaType") in INDEX_TYPES or "manifests" in body:
        os_name, _, arch = platform.partition("/")
        chosen = None
        for entry in body.get("manifests", []):
            plat = entry.get("platform", {})
            if plat.get("os") == os_name and plat.get("architecture") == arch:
                chosen = entry["digest"]
                break
        if chosen is None:
            raise ImageError(f"{ref}: no manifest for platform {platform}")
        digest, body = await _manifest(client, mirror, ref, chosen)
        manifests.append(digest)
    try:
        entries = [body["config"], *body["layers"]]
        blobs = tuple(
            BlobDescriptor(Digest.parse(str(e["digest"])), int(e["size"])) for e in entries
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"{ref}: manifest {digest} has no usable config/layers: {exc}") from exc
    return ResolvedImage(tuple(manifests), blobs)


async def fetch_blob(
    client: httpx.AsyncClient,
    mirror: str,
    ref: ImageRef,
    blob: BlobDescriptor,
    *,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    """GET one blob through the mirror, verifying and discarding the bytes."""
    hasher = hashlib.sha256()
    async with client.stream("GET", _url(mirror, ref, "blobs", str(blob.digest))) as response:
        if response.status_code != 200:
            await response.aread()
            raise ImageError(f"{ref}: blob {blob.digest}: {refusal(response)}")
        async for piece in response.aiter_raw():
            hasher.update(piece)
            on_bytes(len(piece))
    if hasher.hexdigest() != blob.digest.hex:
        raise DigestMismatch(f"{ref}: blob {blob.digest} arrived with other bytes")
