"""How peer connections are made: TCP here, in memory in ``p2pull.testing.peernet``.

A transport dials ``host:port`` and serves one handler per accepted connection; everything above
it (the handshake, links, the pool) works on any ``trio.abc.Stream``. Both implementations pass
tests/test_peer_transport.py.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

Handler = Callable[[trio.abc.Stream], Awaitable[None]]

# A peer whose packets stop being acknowledged (its link went down, it froze) breaks the link
# after this long with data outstanding, instead of after the kernel's ~15 min of retransmits:
# its requests, pushes and super-seeding grants then go to others (measured with one node's
# link down 10 s mid-storm: docs/reliability.md, link_drop).
USER_TIMEOUT_MS = 10_000


def tune(stream: trio.SocketStream) -> trio.SocketStream:
    """Set ``TCP_USER_TIMEOUT`` on a peer connection (where the platform has it)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        stream.setsockopt(socket.IPPROTO_TCP, option, USER_TIMEOUT_MS)
    return stream


class PeerTransport(Protocol):
    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """A connected stream; OSError if nothing listens there."""
        ...

    async def serve(
        self, handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections, each handled in its own task (the stream is closed after);
        reports the bound port once listening."""
        ...


class TcpTransport:
    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return tune(await trio.open_tcp_stream(host, port))

    async def serve(
        self, handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        task_status.started(int(listeners[0].socket.getsockname()[1]))

        async def tuned(stream: trio.SocketStream) -> None:
            await handler(tune(stream))

        await trio.serve_listeners(tuned, listeners)


__all__ = ["USER_TIMEOUT_MS", "Handler", "PeerTransport", "TcpTransport", "tune"]
