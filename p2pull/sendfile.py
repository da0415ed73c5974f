"""Sending to a trio socket without needless trips through the scheduler: byte ranges of open
files with ``os.sendfile`` (no copy through Python; cached blobs on the mirror, chunks uploaded
to peers), and small frames written at once when the kernel takes them.
"""

from __future__ import annotations

import errno
import math
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


async def sendfile_all(
    stream: trio.abc.Stream, region: FileRegion, *, stall: float = math.inf
) -> None:
    """All of ``region`` to ``stream``; BrokenResourceError if the peer went away, took no byte
    for ``stall`` seconds, or the file is shorter than the region says. A stream that is not a
    socket (the in-memory peer network of the tests) gets the bytes read with ``pread``."""
    if not isinstance(stream, trio.SocketStream):
        data = os.pread(region.fd, region.count, region.offset)
        if len(data) != region.count:
            raise trio.BrokenResourceError("file shorter than the region to send")
        await stream.send_all(data)
        return
    sock = stream.socket
    offset, remaining = region.offset, region.count
    while remaining > 0:
        try:
            sent = os.sendfile(sock.fileno(), region.fd, offset, min(remaining, SENDFILE_MAX))
        except BlockingIOError:
            with trio.move_on_after(stall) as waited:
                await trio.lowlevel.wait_writable(sock)
            if waited.cancelled_caught:
                raise trio.BrokenResourceError(f"the peer took nothing for {stall} s") from None
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


async def send_all_eager(stream: trio.abc.Stream, data: bytes) -> None:
    """``stream.send_all(data)``, except that data the kernel takes at once does not pass through
    the scheduler (trio's ``send_all`` always does: once per peer frame, that was a large part of
    an agent's CPU). Only for a stream that one task writes."""
    if not isinstance(stream, trio.SocketStream):
        await stream.send_all(data)
        return
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        sent = os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            raise trio.BrokenResourceError("peer closed while sending") from exc
        raise
    if sent < len(data):
        await stream.send_all(memoryview(data)[sent:])
