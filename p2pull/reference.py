"""Validation of the distribution grammar: repository names, tags, digests and byte ranges.

Nothing that fails these checks ever reaches the filesystem or the upstream URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2pull.errors import DigestInvalid, NameInvalid, RangeNotSatisfiable, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
SHA256_RE = re.compile(r"sha256:([a-f0-9]{64})")
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A sha256 content digest, e.g. ``sha256:e3b0…``. The only algorithm containerd uses."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = SHA256_RE.fullmatch(text)
        if match is None:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DigestInvalid(f"invalid digest {shown!r}: expected sha256:<64 lowercase hex>")
        return cls(match.group(1))

    @classmethod
    def of(cls, data: bytes) -> Digest:
        import hashlib

        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or NAME_RE.fullmatch(name) is None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise NameInvalid(f"invalid repository name {shown!r}")
    return name


def validate_tag(tag: str) -> str:
    if TAG_RE.fullmatch(tag) is None:
        shown = tag if len(tag) <= 80 else tag[:77] + "..."
        raise TagInvalid(f"invalid tag {shown!r}")
    return tag


@dataclass(frozen=True, slots=True)
class ManifestRef:
    """The ``<reference>`` of a manifest URL: either a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ManifestRef:
        if ":" in text:
            return cls(digest=Digest.parse(text))
        return cls(tag=validate_tag(text))

    def __str__(self) -> str:
        return str(self.digest) if self.digest is not None else str(self.tag)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``[start, end]`` of a blob of known size."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_RANGE_RE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")  # not \d: no Unicode digits


def parse_range(header: str | None, *, size: int) -> ByteRange | None:
    """Parse a single ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-S`` header.

    Returns None when there is no header (serve the whole body). Raises RangeNotSatisfiable for
    a syntactically valid range that does not overlap the blob, and for multi-range or malformed
    headers (a mirror may refuse those; containerd only sends the single open form).
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or (match.group(1) == "" and match.group(2) == ""):
        raise RangeNotSatisfiable(f"unsupported Range header {header[:80]!r}", size=size)
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"empty suffix range {header!r}", size=size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        raise RangeNotSatisfiable(f"range end before start in {header!r}", size=size)
    if start >= size:
        raise RangeNotSatisfiable(f"range start {start} beyond size {size}", size=size)
    return ByteRange(start, end)
