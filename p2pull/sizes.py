"""Blob sizes known from the manifests this node served, before any origin answers.

containerd fetches an image's manifest through the mirror before its blobs, and every image
manifest lists its config and layers with their digests and sizes. Kept here (bounded, most
recent first), those sizes let the mirror answer a blob request's headers while the origin is
still slow or down: the client keeps its connection and gets the bytes when the seed has them,
instead of timing out waiting for headers and falling back to the origin itself.

The manifest's own digest was verified before it was served, so the sizes are as trustworthy
as the image reference; a transfer whose real size differs is cut off, never served.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from p2pull.errors import DigestInvalid
from p2pull.reference import Digest

MAX_HINTS = 16384


def descriptor_sizes(body: bytes) -> dict[Digest, int]:
    """The blob sizes an image manifest names (config and layers); nothing for an index, a
    schema 1 manifest or anything that does not parse."""
    try:
        manifest = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(manifest, dict):
        return {}
    descriptors = [manifest.get("config"), *(manifest.get("layers") or [])]
    sizes: dict[Digest, int] = {}
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            continue
        size, digest = descriptor.get("size"), descriptor.get("digest")
        if type(size) is not int or size < 0 or not isinstance(digest, str):
            continue
        try:
            sizes[Digest.parse(digest)] = size
        except DigestInvalid:
            continue
    return sizes


class SizeHints:
    def __init__(self, *, limit: int = MAX_HINTS) -> None:
        self.limit = limit
        self._sizes: OrderedDict[Digest, int] = OrderedDict()

    def learn(self, manifest_body: bytes) -> None:
        for digest, size in descriptor_sizes(manifest_body).items():
            self._sizes[digest] = size
            self._sizes.move_to_end(digest)
        while len(self._sizes) > self.limit:
            self._sizes.popitem(last=False)

    def get(self, digest: Digest) -> int | None:
        return self._sizes.get(digest)

    def __len__(self) -> int:
        return len(self._sizes)


__all__ = ["SizeHints", "descriptor_sizes"]
