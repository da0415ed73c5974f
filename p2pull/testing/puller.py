"""A client that pulls an image the way containerd does through a mirror, verifying every byte.

HEAD the manifest by tag, GET it by digest, then GET the config and layers in parallel, each
with ``?ns=<registry>``. Used by ``p2pull demo``, benchmarks and tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import trio

from p2pull.errors import DigestMismatch
from p2pull.reference import Digest

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


@dataclass
class PullResult:
    manifest: Digest
    blobs: dict[Digest, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(self.blobs.values())


async def pull_image(
    client: httpx.AsyncClient,
    mirror_url: str,
    *,
    ns: str,
    name: str,
    tag: str,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> PullResult:
    """Pull ``name:tag`` through ``mirror_url``; raises DigestMismatch or httpx errors."""
    query = f"?ns={quote(ns, safe='')}"
    started = trio.current_time()
    head = await client.head(
        f"{mirror_url}/v2/{name}/manifests/{tag}{query}", headers={"Accept": ACCEPT}
    )
    head.raise_for_status()
    digest = Digest.parse(head.headers["docker-content-digest"])
    response = await client.get(
        f"{mirror_url}/v2/{name}/manifests/{digest}{query}", headers={"Accept": ACCEPT}
    )
    response.raise_for_status()
    if Digest.of(response.content) != digest:
        raise DigestMismatch(f"manifest {digest} does not match its bytes")
    manifest = json.loads(response.content)
    descriptors = [manifest["config"], *manifest["layers"]]
    result = PullResult(manifest=digest)

    async def fetch(descriptor: dict[str, object]) -> None:
        blob = Digest.parse(str(descriptor["digest"]))
        hasher = hashlib.sha256()
        size = 0
        async with client.stream("GET", f"{mirror_url}/v2/{name}/blobs/{blob}{query}") as body:
            body.raise_for_status()
            async for piece in body.aiter_raw():
                hasher.update(piece)
                size += len(piece)
                on_bytes(len(piece))
        if hasher.hexdigest() != blob.hex or size != descriptor["size"]:
            raise DigestMismatch(f"blob {blob}: received bytes do not match")
        result.blobs[blob] = size

    async with trio.open_nursery() as nursery:
        for descriptor in descriptors:
            nursery.start_soon(fetch, descriptor)
    result.seconds = trio.current_time() - started
    return result
