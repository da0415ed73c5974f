"""An open upstream blob response: the byte window it covers and its checked chunk iterator."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator

import httpx

from p2pull.errors import TruncatedBody, UpstreamError
from p2pull.lowat import RecvLowat
from p2pull.metrics import Metrics
from p2pull.upstream.endpoints import parse_length

BUFFERED_MAX = 128 * 1024  # what httpcore (one 64 KiB read) and TLS may hold
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class StreamedBlob:
    """An open blob response (a :class:`p2pull.upstream.types.BlobBody`)."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        size: int,
        start: int,
        skip: int,
        end: int,
        metrics: Metrics,
        what: str,
    ) -> None:
        self.response = response
        self.size = size
        self.start = start
        self._skip = skip
        self._end = end
        self._metrics = metrics
        self._what = what
        self._iterated = False

    @classmethod
    def open(
        cls, response: httpx.Response, *, start: int, metrics: Metrics, what: str
    ) -> StreamedBlob:
        """Check a 200/206 answer against the requested ``start``; work out the byte window."""
        if response.status_code == 200:
            size = parse_length(response.headers.get("content-length"))
            if size is None:
                raise UpstreamError(f"GET {what}: 200 without a usable Content-Length")
            if start > size:
                raise UpstreamError(f"GET {what}: offset {start} beyond blob size {size}")
            return cls(
                response, size=size, start=start, skip=start, end=size, metrics=metrics, what=what
            )
        if response.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
            if match is None:
                raise UpstreamError(f"GET {what}: 206 without a usable Content-Range")
            first, last, size = (int(g) for g in match.groups())
            if first != start or last < first or last >= size:
                raise UpstreamError(f"GET {what}: asked from {start}, got {match.group(0)!r}")
            return cls(
                response, size=size, start=start, skip=0, end=last + 1, metrics=metrics, what=what
            )
        raise UpstreamError(f"GET {what}: unexpected HTTP {response.status_code} for a blob")

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Raw bytes from ``start``; raises TruncatedBody if the stream breaks or ends short."""
        if self._iterated:
            raise RuntimeError("a blob body can be iterated only once")
        self._iterated = True
        position, skip = self.start, self._skip
        preloaded = _preloaded(self.response)
        stream = self.response.aiter_raw() if preloaded is None else _once(preloaded)
        lowat = _lowat(self.response)
        try:
            while True:
                if lowat is not None:
                    # Bytes certainly still on the wire: the rest of the body, less what
                    # httpcore or TLS may hold already read (one 64 KiB read and a record).
                    lowat.expect(self._end - position + skip - BUFFERED_MAX)
                try:
                    data = await anext(stream)
                except StopAsyncIteration:
                    break
                except (httpx.HTTPError, httpx.StreamError) as exc:
                    self._metrics.upstream_errors.labels("truncated").inc()
                    raise TruncatedBody(
                        f"GET {self._what}: stream broke at byte {position} of {self.size}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                self._metrics.upstream_bytes.inc(len(data))
                if skip:
                    dropped = min(skip, len(data))
                    data, skip = data[dropped:], skip - dropped
                if not data:
                    continue
                position += len(data)
                if position > self._end:
                    raise UpstreamError(f"GET {self._what}: more bytes than announced")
                yield data
        finally:
            if lowat is not None:
                lowat.reset()  # the connection may carry another response next
        if position < self._end or skip:
            self._metrics.upstream_errors.labels("truncated").inc()
            raise TruncatedBody(f"GET {self._what}: body ended at byte {position} of {self.size}")
        if self._end < self.size:
            # A 206 that stopped before the end: the caller resumes from here like a short body.
            raise TruncatedBody(f"GET {self._what}: range ended at byte {position} of {self.size}")


def _lowat(response: httpx.Response) -> RecvLowat | None:
    """The response's socket, when httpx exposes it (not for an in-memory transport)."""
    network_stream = response.extensions.get("network_stream")
    sock = None if network_stream is None else network_stream.get_extra_info("socket")
    return None if sock is None else RecvLowat(sock)


def _preloaded(response: httpx.Response) -> bytes | None:
    """A response built from bytes (e.g. by httpx.MockTransport) is read already: its body."""
    try:
        return response.content
    except httpx.ResponseNotRead:
        return None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
