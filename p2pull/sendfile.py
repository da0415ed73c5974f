"""Byte ranges of open files sent to a trio socket with ``os.sendfile`` (no copy through Python).

Used for cached blobs on the mirror and for chunks uploaded to peers.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import trio

SENDFILE_MAX = 8 * 1024 * 1024  # per call: a cancellation is noticed at least this often


@dataclass(frozen=True, slots=True)
class FileRegion:
    """A byte range of an open file, passed through h11 untouched and sent with sendfile."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


async def sendfile_all(stream: trio.SocketStream, region: FileRegion) -> None:
    """All of ``region`` to ``stream``; BrokenResourceError if the peer went away or the file
    is shorter than the region says."""
    sock = stream.socket
    offset, remaining = region.offset, region.count
    while remaining > 0:
        try:
            sent = os.sendfile(sock.fileno(), region.fd, offset, min(remaining, SENDFILE_MAX))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise trio.BrokenResourceError("peer closed while sendfile") from exc
            raise
        if sent == 0:
            raise trio.BrokenResourceError("sendfile wrote nothing: file shorter than expected")
        offset += sent
        remaining -= sent
        await trio.lowlevel.checkpoint_if_cancelled()
