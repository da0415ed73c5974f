"""Validation of the distribution grammar: repository names, tags, digests, registry hosts
(``ns``) and byte ranges.

Nothing that fails these checks ever reaches the filesystem or the upstream URL.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from p2pull.errors import DigestInvalid, NameInvalid, RangeNotSatisfiable, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
SHA256_RE = re.compile(r"sha256:([a-f0-9]{64})")
MAX_NAME_LENGTH = 255
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# The shape of a registry host: DNS labels or a bracketed IPv6 literal, then an optional port.
# RegistryHost.parse checks what a regex cannot (port range, IPv6 and IPv4 literals, lengths).
REGISTRY_HOST_RE = re.compile(
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?"
)
MAX_HOST_LENGTH = 253


def _shown(text: str) -> str:
    """``text`` quoted for an error message, at most 80 characters of it."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A sha256 content digest, e.g. ``sha256:e3b0…``. The only algorithm containerd uses."""

    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = SHA256_RE.fullmatch(text)
        if match is None:
            expected = "expected sha256:<64 lowercase hex>"
            raise DigestInvalid(f"invalid digest {_shown(text)}: {expected}")
        return cls(match.group(1))

    @classmethod
    def of(cls, data: bytes) -> Digest:
        import hashlib

        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or NAME_RE.fullmatch(name) is None:
        raise NameInvalid(f"invalid repository name {_shown(name)}")
    return name


def validate_tag(tag: str) -> str:
    if TAG_RE.fullmatch(tag) is None:
        raise TagInvalid(f"invalid tag {_shown(tag)}")
    return tag


@dataclass(frozen=True, slots=True)
class RegistryHost:
    """A registry as a pull names it (the ``ns`` of a mirror request): ``host[:port]``.

    ``host`` is a DNS name (lowercased), a dotted-quad IPv4 address, or an IPv6 address (kept
    without its brackets; :meth:`__str__` puts them back). The one grammar for registry hosts:
    the mirror's ``ns``, the upstream mapping and containerd's ``certs.d`` directories use it.
    """

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> RegistryHost:
        """Parse ``host[:port]``; NameInvalid (400) for anything else: a path, userinfo, a port
        outside 1-65535, brackets around something that is not an IPv6 address, a zone id, a
        name whose last label is numeric but which is not a dotted-quad IPv4 address (``127.1``,
        ``2130706433``: forms a resolver would still turn into an address)."""

        def invalid(why: str) -> NameInvalid:
            return NameInvalid(f"invalid registry host {_shown(text)}: {why}")

        match = REGISTRY_HOST_RE.fullmatch(text)
        if match is None:
            raise invalid("expected host[:port]")
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise invalid(f"port {port} out of range")
        literal = match.group("ipv6")
        host = match.group("host").lower() if literal is None else literal
        try:
            if literal is not None:
                host = str(ipaddress.IPv6Address(literal))
            elif host.rsplit(".", 1)[-1].isdigit():
                host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise invalid("not an IPv6 address in brackets, nor a dotted-quad IPv4") from None
        if len(host) > MAX_HOST_LENGTH:
            raise invalid("name too long")
        return cls(host, int(port) if port is not None else None)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return host if self.port is None else f"{host}:{self.port}"


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
