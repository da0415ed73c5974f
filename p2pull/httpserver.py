"""A small HTTP/1.1 server: h11 for the protocol, trio streams for I/O, sendfile for file bytes.

Handlers are ``async def handler(request) -> Response``. A response body is either ``bytes`` or a
:class:`StreamBody` that writes into a :class:`BodySink`, which can ``sendfile`` regions of a file
straight from the page cache to the socket (h11's data passthrough keeps the framing right).
If a streamed body fails midway, the connection is reset: a client never sees a short body end
cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from p2pull.sendfile import FileRegion, sendfile_all

log = logging.getLogger(__name__)

MAX_REQUEST_HEADERS = 64 * 1024
RECEIVE_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    peer: str = ""
    received: float = 0.0  # time.perf_counter() when the request head was parsed

    def header(self, name: str) -> str | None:
        """The first value of a header (names compare case-insensitively)."""
        lowered = name.lower()
        for key, value in self.headers:
            if key == lowered:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]


class BodySink(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None: ...


class StreamBody(Protocol):
    """A body of known length produced while the response is being sent."""

    length: int

    async def send(self, sink: BodySink) -> None: ...


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | StreamBody = b""


Handler = Callable[[Request], Awaitable[Response]]


class BodyAborted(Exception):
    """Raised by a stream body to say the response must end by resetting the connection."""


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request target into its path (left percent-encoded: routes match the raw path,
    so ``%2f`` never acts as a separator) and its decoded query parameters."""
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return parts.path, query


class _Sink:
    def __init__(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        self._conn = conn
        self._stream = stream
        self.sent = 0

    async def write(self, data: bytes) -> None:
        if not data:
            return
        for piece in self._conn.send_with_data_passthrough(h11.Data(data=data)) or ():
            await self._stream.send_all(piece)
        self.sent += len(data)

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None:
        if count <= 0:
            return
        region = FileRegion(fd, offset, count)
        # h11 passes objects with __len__ through its framing untouched (data passthrough).
        event = h11.Data(data=region)  # type: ignore[arg-type]
        for piece in self._conn.send_with_data_passthrough(event) or ():
            if isinstance(piece, FileRegion):
                await sendfile_all(self._stream, piece)
            else:
                await self._stream.send_all(piece)
        self.sent += count


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST (SO_LINGER 0) so the client sees an error, never a clean short body."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class HttpServer:
    """Serves ``handler`` on one TCP address. ``run`` reports the bound port via task_status."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        server_header: str = "p2pull",
        idle_timeout: float = 120.0,
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server_header = server_header.encode()
        self._idle_timeout = idle_timeout

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self._port, host=self._host, backlog=1024)
        port = int(listeners[0].socket.getsockname()[1])
        task_status.started(port)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            peername = stream.socket.getpeername()
            peer = f"{peername[0]}:{peername[1]}"
        except OSError:
            peer = "?"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEADERS)
        try:
            async with stream:
                while await self._serve_one(conn, stream, peer):
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(self._idle_timeout) as scope:
                data = await stream.receive_some(RECEIVE_SIZE)
            if scope.cancelled_caught:
                return h11.ConnectionClosed()
            conn.receive_data(data)

    async def _serve_one(self, conn: h11.Connection, stream: trio.SocketStream, peer: str) -> bool:
        try:
            event = await self._next_event(conn, stream)
            if isinstance(event, h11.ConnectionClosed):
                return False
            assert isinstance(event, h11.Request)
            # Request bodies are not used by a pull-only mirror; drain and ignore them.
            while not isinstance(await self._next_event(conn, stream), h11.EndOfMessage):
                pass
        except h11.RemoteProtocolError as exc:
            await self._send_simple(conn, stream, exc.error_status_hint, b"bad request\n")
            return False
        target = event.target.decode("ascii", "replace")
        path, query = parse_target(target)
        request = Request(
            method=event.method.decode("ascii", "replace"),
            target=target,
            path=path,
            query=query,
            headers=tuple(
                (k.decode("ascii", "replace").lower(), v.decode("latin-1"))
                for k, v in event.headers
            ),
            peer=peer,
            received=time.perf_counter(),
        )
        try:
            response = await self._handler(request)
        except Exception:
            log.exception("handler failed on %s %s", request.method, request.path[:200])
            response = Response(500, [("content-type", "text/plain")], b"internal error\n")
        return await self._send_response(conn, stream, request, response)

    async def _send_simple(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            headers = [("content-length", str(len(body))), ("connection", "close")]
            await stream.send_all(
                conn.send(h11.Response(status_code=status, headers=headers)) or b""
            )
            await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            pass

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: Request,
        response: Response,
    ) -> bool:
        body = response.body
        headers: list[tuple[str, str]] = [(k.lower(), v) for k, v in response.headers]
        if not any(k == "content-length" for k, _ in headers):
            length = len(body) if isinstance(body, bytes) else body.length
            headers.append(("content-length", str(length)))
        h11_headers: list[tuple[bytes, bytes]] = [
            (b"server", self._server_header),
            *[(k.encode(), v.encode("latin-1")) for k, v in headers],
        ]
        await stream.send_all(
            conn.send(h11.Response(status_code=response.status, headers=h11_headers)) or b""
        )
        if request.method != "HEAD":
            if isinstance(body, bytes):
                if body:
                    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            else:
                sink = _Sink(conn, stream)
                try:
                    await body.send(sink)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise
                except Exception as exc:
                    # Never end a short body cleanly: reset so the client knows it broke.
                    log.warning("aborting response to %s %s: %s", request.method, request.path, exc)
                    _reset(stream)
                    return False
                if sink.sent != body.length:
                    log.error("stream body sent %d of %d bytes; aborting", sink.sent, body.length)
                    _reset(stream)
                    return False
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE
