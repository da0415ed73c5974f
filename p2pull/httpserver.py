"""A small HTTP/1.1 server: h11 for the protocol, trio streams for I/O, sendfile for file bytes.

Handlers are ``async def handler(request) -> Response``. A response body is either ``bytes`` or a
:class:`StreamBody` that writes into a :class:`BodySink`, which can ``sendfile`` regions of a file
straight from the page cache to the socket (h11's data passthrough keeps the framing right).
If a streamed body fails midway, the connection is reset: a client never sees a short body end
cleanly.

Nothing a connection does leaves its task: a malformed request is answered 4xx, an unexpected
exception anywhere (handler, parsing, sending) is logged and answered 500 if no byte of the
response went out yet, else the connection is reset; the server keeps serving. What one client
can hold is bounded (:class:`ServerLimits`): connections (at the cap, a new one closes the
connection that has waited longest for a request, so clients holding connections open cannot
lock others out; if every connection is busy with a response, the new one gets 503 and is
closed), the time to send a whole request (not per receive: a client dripping a byte now and
then is cut off), the idle time between requests, the size of an unfinished request head, and
how long the client may stall while a response is sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

import h11
import trio

from p2pull.sendfile import FileRegion, sendfile_all

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 * 1024
MAX_LOGGED = 200  # characters of a request target or an exception in a log line


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one server lets its clients hold.

    ``head_timeout`` is the time a client has to send a whole request (head and any body),
    counted from the connection's accept for its first request and from the first byte of
    each later one; ``idle_timeout`` is how long a kept-alive connection may wait for its next
    request; ``send_stall_timeout`` how long a client may take no byte of a response.
    """

    max_connections: int = 1024
    head_timeout: float = 10.0
    idle_timeout: float = 120.0
    send_stall_timeout: float = 60.0
    max_head_bytes: int = 16 * 1024


DEFAULT_LIMITS = ServerLimits()


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
    """Split an origin-form request target (``/path?query``) into its path (left
    percent-encoded: routes match the raw path, so ``%2f`` never acts as a separator) and its
    decoded query parameters. ValueError for any other form (absolute URL, ``*``)."""
    if not target.startswith("/"):
        raise ValueError("the request target is not a path")
    path, _, query = target.partition("#")[0].partition("?")
    return path, dict(parse_qsl(query, keep_blank_values=True))


def _canned(status: int, reason: str, body: bytes, *extra: tuple[str, str]) -> bytes:
    """A complete ``connection: close`` response, built without h11 (for a connection whose
    h11 state is unknown or broken, or that is refused before it is read)."""
    headers = [
        ("content-type", "text/plain"),
        ("content-length", str(len(body))),
        *extra,
        ("connection", "close"),
    ]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("ascii") + b"\r\n" + body


OVER_CAPACITY = _canned(503, "Service Unavailable", b"too many connections\n", ("retry-after", "1"))
INTERNAL_ERROR = _canned(500, "Internal Server Error", b"internal error\n")


def _bounded(text: object) -> str:
    shown = str(text)
    return shown if len(shown) <= MAX_LOGGED else shown[: MAX_LOGGED - 3] + "..."


class _Sink:
    def __init__(self, conn: h11.Connection, stream: trio.SocketStream, *, stall: float) -> None:
        self._conn = conn
        self._stream = stream
        self._stall = stall
        self.sent = 0

    async def write(self, data: bytes) -> None:
        if not data:
            return
        for piece in self._conn.send_with_data_passthrough(h11.Data(data=data)) or ():
            await _send(self._stream, piece, stall=self._stall)
        self.sent += len(data)

    async def sendfile(self, fd: int, *, offset: int, count: int) -> None:
        if count <= 0:
            return
        region = FileRegion(fd, offset, count)
        # h11 passes objects with __len__ through its framing untouched (data passthrough).
        event = h11.Data(data=region)  # type: ignore[arg-type]
        for piece in self._conn.send_with_data_passthrough(event) or ():
            if isinstance(piece, FileRegion):
                await sendfile_all(self._stream, piece, stall=self._stall)
            else:
                await _send(self._stream, piece, stall=self._stall)
        self.sent += count


async def _send(stream: trio.SocketStream, data: bytes, *, stall: float) -> None:
    """``send_all``, failing (BrokenResourceError) if the client takes none of it for ``stall``
    seconds: whatever is sent this way is at most a chunk, so that is a rate of chunk/stall."""
    with trio.move_on_after(stall) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.BrokenResourceError(f"the client took nothing for {stall} s")


def _drain(stream: trio.SocketStream) -> None:
    """Read and drop what the client already sent (up to one head), without waiting."""
    with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) there
        os.read(stream.socket.fileno(), RECEIVE_SIZE)


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST (SO_LINGER 0) so the client sees an error, never a clean short body."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Timeout(Exception):
    """The client did not send its whole request in time."""


class HttpServer:
    """Serves ``handler`` on one TCP address. ``run`` reports the bound port via task_status.

    ``on_refused(reason)`` is told of each connection the server ends on its own: ``over_cap``
    (503: every connection busy), ``evicted`` (closed at the cap, waiting for a request),
    ``timeout`` (request not received in time), ``bad_request``, ``error`` (an unexpected
    exception; logged with its traceback).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        server_header: str = "p2pull",
        limits: ServerLimits = DEFAULT_LIMITS,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        if limits.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._handler = handler
        self._host = host
        self._port = port
        self._server_header = server_header.encode()
        self._limits = limits
        self._on_refused = on_refused
        self.connections = 0  # open now
        self._waiting: dict[_Slot, None] = {}  # connections waiting for a request, oldest first

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self._port, host=self._host, backlog=1024)
        port = int(listeners[0].socket.getsockname()[1])
        task_status.started(port)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        if self.connections >= self._limits.max_connections and not self._evict_waiting():
            self._on_refused("over_cap")
            with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(OVER_CAPACITY)
                _drain(stream)  # closing with unread bytes would reset: the 503 could be lost
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        slot = _Slot()
        try:
            with slot.scope:
                async with stream:
                    await self._serve_guarded(stream, slot)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.connections -= 1
            self._waiting.pop(slot, None)

    def _evict_waiting(self) -> bool:
        """At the cap: close the connection that has waited longest for a request (a kept-alive
        idle one, or one whose head is still coming: cheap for an honest client to open again,
        and what a client holding connections open has most of), so that a new client is served
        rather than refused. False if every connection is busy with a response."""
        if not self._waiting:
            return False
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        oldest.scope.cancel()
        self._on_refused("evicted")
        return True

    async def _serve_guarded(self, stream: trio.SocketStream, sent: _Slot) -> None:
        """Serve requests until the connection ends; nothing raised here leaves the task."""
        peer = _peer(stream)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_head_bytes)
        first = True
        try:
            while await self._serve_one(conn, stream, peer, sent, first=first):
                conn.start_next_cycle()
                sent.started, first = False, False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            _reset(stream)
        except Exception as exc:
            self._on_refused("error")
            why = _bounded(f"{type(exc).__name__}: {exc}")
            log.error("connection from %s failed: %s", peer, why, exc_info=True)
            if sent.started:
                _reset(stream)  # part of a response went out: the client must see it broke
            else:
                with trio.move_on_after(1.0), contextlib.suppress(Exception):
                    await stream.send_all(INTERNAL_ERROR)

    async def _next_request(
        self, conn: h11.Connection, stream: trio.SocketStream, *, first: bool
    ) -> h11.Request | None:
        """The next request, received whole (body drained: a pull-only mirror uses none)
        within head_timeout; None if the client closed or stayed idle past idle_timeout."""
        limits = self._limits
        deadline = trio.current_time() + limits.head_timeout if first else None
        request: h11.Request | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is None:  # kept alive, waiting for the next request to begin
                    with trio.move_on_after(limits.idle_timeout):
                        conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                        deadline = trio.current_time() + limits.head_timeout
                        continue
                    return None
                with trio.move_on_at(deadline) as timer:
                    conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                if timer.cancelled_caught:
                    raise _Timeout
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request

    async def _serve_one(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        peer: str,
        sent: _Slot,
        *,
        first: bool,
    ) -> bool:
        self._waiting[sent] = None  # evictable while no request is being served
        try:
            event = await self._next_request(conn, stream, first=first)
        except h11.RemoteProtocolError as exc:
            return await self._refuse(conn, stream, "bad_request", exc.error_status_hint)
        except _Timeout:
            return await self._refuse(conn, stream, "timeout", 408)
        finally:
            self._waiting.pop(sent, None)
        if event is None:
            return False
        target = event.target.decode("ascii", "replace")
        try:
            path, query = parse_target(target)
        except ValueError:
            return await self._refuse(
                conn, stream, "bad_request", 400, head=event.method == b"HEAD"
            )
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
            log.exception(
                "handler failed on %s %s", _bounded(request.method), _bounded(request.path)
            )
            response = Response(500, [("content-type", "text/plain")], b"internal error\n")
        return await self._send_response(conn, stream, request, response, sent)

    async def _refuse(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        reason: str,
        status: int,
        *,
        head: bool = False,
    ) -> bool:
        """Answer a request the server will not serve (no body for a HEAD), say why to
        ``on_refused``; False: the connection ends."""
        self._on_refused(reason)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        body = {408: b"request not received in time\n", 431: b"request head too large\n"}.get(
            status, b"bad request\n"
        )
        headers = [("content-length", str(len(body))), ("connection", "close")]
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if not head:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(1.0):  # a client that sends nothing may read nothing either
            await stream.send_all(data)
        return False

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: Request,
        response: Response,
        sent: _Slot,
    ) -> bool:
        stall = self._limits.send_stall_timeout
        body = response.body
        headers: list[tuple[str, str]] = [(k.lower(), v) for k, v in response.headers]
        if not any(k == "content-length" for k, _ in headers):
            length = len(body) if isinstance(body, bytes) else body.length
            headers.append(("content-length", str(length)))
        h11_headers: list[tuple[bytes, bytes]] = [
            (b"server", self._server_header),
            *[(k.encode(), v.encode("latin-1")) for k, v in headers],
        ]
        head = conn.send(h11.Response(status_code=response.status, headers=h11_headers)) or b""
        sent.started = True
        await _send(stream, head, stall=stall)
        if request.method != "HEAD":
            if isinstance(body, bytes):
                if body:
                    await _send(stream, conn.send(h11.Data(data=body)) or b"", stall=stall)
            else:
                sink = _Sink(conn, stream, stall=stall)
                try:
                    await body.send(sink)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise
                except Exception as exc:
                    # Never end a short body cleanly: reset so the client knows it broke.
                    log.warning(
                        "aborting response to %s %s: %s",
                        _bounded(request.method),
                        _bounded(request.path),
                        _bounded(exc),
                    )
                    _reset(stream)
                    return False
                if sink.sent != body.length:
                    log.error("stream body sent %d of %d bytes; aborting", sink.sent, body.length)
                    _reset(stream)
                    return False
        await _send(stream, conn.send(h11.EndOfMessage()) or b"", stall=stall)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


@dataclass(slots=True, eq=False)
class _Slot:
    """One connection: its cancel scope (an eviction cancels it), and whether any byte of the
    current response was handed to the socket."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: bool = False


def _peer(stream: trio.SocketStream) -> str:
    try:
        peername = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{peername[0]}:{peername[1]}"
