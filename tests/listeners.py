"""A raw TCP listener on 127.0.0.1 (port 0) for tests that need a host to point at: it counts
the connections it accepts and either answers each with a fixed response or hangs (reads and
never answers, as a registry that stopped responding)."""

from __future__ import annotations

import trio

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Listener:
    def __init__(self, *, answer: bytes | None = OK) -> None:
        self.answer = answer  # None: hang
        self.port = 0
        self.accepted = 0
        self.connected = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self.connected.set()
        async with stream:
            if self.answer is None:
                while await stream.receive_some(65536):
                    pass
                return
            await stream.receive_some(65536)
            await stream.send_all(self.answer)
