"""p2pull's own error types.

Library errors are translated at the boundary (``raise BlobUnavailable(...) from exc``) so callers
only ever catch these. Each carries the OCI distribution error code the mirror answers with.
"""

from __future__ import annotations


class P2pullError(Exception):
    """Base class of every error p2pull raises on purpose."""

    oci_code = "UNKNOWN"
    http_status = 500
    # What a client is told of a 5xx caused by a library or OS error (a connection that failed,
    # a disk): a fixed text. How a connection failed (refused, a TLS error from a plain
    # listener, a timeout) would tell a client what listens where; it goes to the log.
    public_message = "internal error in the p2pull agent"

    def client_message(self) -> str:
        """The text a client gets: the error's own for its own mistakes (4xx) and for failures
        p2pull or an upstream's answer explain (``401 and no usable credentials``); the fixed
        ``public_message`` when a library or OS error caused it (in the ``__cause__`` chain)."""
        if self.http_status < 500:
            return str(self)
        cause = self.__cause__
        while cause is not None:
            if not isinstance(cause, P2pullError):
                return self.public_message
            cause = cause.__cause__
        return str(self)


class InvalidReference(P2pullError):
    """A repository name, tag or digest that does not match the distribution grammar."""

    http_status = 400


class NameInvalid(InvalidReference):
    oci_code = "NAME_INVALID"


class TagInvalid(InvalidReference):
    oci_code = "MANIFEST_INVALID"


class DigestInvalid(InvalidReference):
    oci_code = "DIGEST_INVALID"


class RangeNotSatisfiable(P2pullError):
    """A Range header that cannot be served for a blob of the given size."""

    oci_code = "RANGE_INVALID"
    http_status = 416

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class UpstreamError(P2pullError):
    """The upstream registry failed (connection error, 5xx, protocol error) after retries."""

    oci_code = "UNAVAILABLE"
    http_status = 502
    public_message = "the upstream registry failed or could not be reached"


class UpstreamUnavailable(UpstreamError):
    """A transient failure (connection, timeout, 5xx, 429, a broken or stalled body): worth a
    retry, after ``retry_after`` seconds if the upstream said so."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    """The upstream refused our credentials or the token flow failed."""

    oci_code = "UNAUTHORIZED"
    public_message = "the upstream registry refused the agent's credentials"


class NotFound(P2pullError):
    """The upstream says the manifest or blob does not exist (404)."""

    http_status = 404


class BlobUnknown(NotFound):
    oci_code = "BLOB_UNKNOWN"


class ManifestUnknown(NotFound):
    oci_code = "MANIFEST_UNKNOWN"


class NameUnknown(NotFound):
    oci_code = "NAME_UNKNOWN"


class UpstreamRefused(NameUnknown):
    """The registry a request names (or a redirect leads to) is at an address the agent does
    not contact for its clients (loopback, link-local, metadata, ...: p2pull.upstream.addresses).
    A 404, so containerd goes to the registry itself."""


class BlobUnavailable(P2pullError):
    """A blob could not be produced (every source failed); partial bytes stay for a resume."""

    oci_code = "BLOB_UNKNOWN"
    http_status = 502
    public_message = "the blob could not be fetched from its peers or the upstream registry"


class DigestMismatch(P2pullError):
    """Bytes did not hash to the digest (or chunk hash) they were fetched for. Never stored."""

    oci_code = "DIGEST_INVALID"
    http_status = 502
    public_message = "the bytes fetched do not match the digest"


class TruncatedBody(UpstreamError):
    """The upstream body ended before its Content-Length."""


class StoreError(P2pullError):
    """The local content store failed (disk full, I/O error, corrupt metadata)."""

    oci_code = "UNAVAILABLE"
    http_status = 503
    public_message = "the agent's content store failed or is full"


class StoreFull(StoreError):
    """No room left under the quota (or on disk) after evicting every evictable blob."""


class ChunkLost(StoreError):
    """A stored chunk did not match its recorded sha256 when read back (the disk rotted, or a
    write was torn) and was dropped from the store: fetch it again. None of it was served."""

    def __init__(self, message: str, *, index: int) -> None:
        super().__init__(message)
        self.index = index


class ChunkMismatch(DigestMismatch):
    """One chunk did not hash to the sha256 it was expected to have."""
