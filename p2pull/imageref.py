"""Image references as people type them: ``[registry/]name[:tag][@digest]``."""

from __future__ import annotations

from dataclasses import dataclass

from p2pull.errors import InvalidReference
from p2pull.reference import Digest, validate_name, validate_tag

DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class ImageRef:
    registry: str  # the ns a mirror request carries
    name: str
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag."""
        return str(self.digest) if self.digest is not None else str(self.tag)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image(text: str) -> ImageRef:
    """``ubuntu`` -> docker.io/library/ubuntu:latest; ``ghcr.io/o/r:1@sha256:…`` as given."""
    rest, _, digest_text = text.strip().partition("@")
    digest = Digest.parse(digest_text) if digest_text else None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    name, tag = path, None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        name, tag = path[:colon], validate_tag(path[colon + 1 :])
    if not name:
        raise InvalidReference(f"image reference {text!r} has no repository name")
    if registry == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    validate_name(name)
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, name, tag, digest)
