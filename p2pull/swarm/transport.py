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

# Unsent bytes a peer socket queues at most (TCP_NOTSENT_LOWAT): what is "uploaded" then is on
# the wire, not megabytes in a send buffer that die with the node (a killed seed's successor
# must fetch again every chunk nobody received whole).
NOTSENT_LOWAT = 128 * 1024


def _bound_unsent(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.SocketStream) and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


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
        stream = await trio.open_tcp_stream(host, port)
        _bound_unsent(stream)
        return stream

    async def serve(
        self, handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        task_status.started(int(listeners[0].socket.getsockname()[1]))

        async def bounded(stream: trio.abc.Stream) -> None:
            _bound_unsent(stream)
            await handler(stream)

        await trio.serve_listeners(bounded, listeners)


__all__ = ["Handler", "PeerTransport", "TcpTransport"]
