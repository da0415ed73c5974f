"""The HTTP server under hostile clients, over real sockets on 127.0.0.1: no request ends the
server, and what one client can hold (connections, time, head size, a stalled download) is
bounded by ServerLimits."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pull.httpserver import (
    BodySink,
    HttpServer,
    Request,
    Response,
    ServerLimits,
    parse_target,
)

DEADLINE = 20


@dataclass
class Running:
    port: int
    server: HttpServer
    refused: list[str] = field(default_factory=list)


async def ok_handler(request: Request) -> Response:
    return Response(200, [("content-type", "text/plain")], f"ok {request.path}\n".encode())


@asynccontextmanager
async def serving(
    handler: Callable[[Request], object] = ok_handler, **limits: float
) -> AsyncIterator[Running]:
    refused: list[str] = []
    server = HttpServer(
        handler,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        limits=ServerLimits(**limits),  # type: ignore[arg-type]
        on_refused=refused.append,
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        yield Running(port, server, refused)
        nursery.cancel_scope.cancel()


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``wait`` passes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(wait):
            while True:
                try:
                    piece = await stream.receive_some(65536)
                except trio.BrokenResourceError:  # a reset
                    break
                if not piece:
                    break
                received += piece
    return received


async def until(condition: Callable[[], bool]) -> None:
    """Wait (under the test's deadline) until the server's own tasks made ``condition`` true."""
    while not condition():  # noqa: ASYNC110 - the server acts on its sockets by itself
        await trio.sleep(0.01)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


async def still_serves(port: int) -> None:
    response = await exchange(port, b"GET /alive HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert status_of(response) == 200, response


# -- nothing a request does ends the server ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param(b"//[x", 200, id="bad-ipv6-netloc-is-a-path"),
        pytest.param(b"//[::1", 200, id="unclosed-bracket-is-a-path"),
        pytest.param(b"/?%zz=%ff&&=", 200, id="odd-query"),
        pytest.param(b"http://[x/", 400, id="absolute-bad-host"),
        pytest.param(b"http://example/v2/", 400, id="absolute-form"),
        pytest.param(b"*", 400, id="asterisk"),
    ],
)
async def test_odd_targets_are_answered_and_the_server_keeps_serving(
    target: bytes, status: int
) -> None:
    """``GET //[x`` made urlsplit raise outside any handler: it ended the server."""
    with trio.fail_after(DEADLINE):
        async with serving() as running:
            request = b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n"
            response = await exchange(running.port, request, wait=0.5)
            assert status_of(response) == status, response
            await still_serves(running.port)
    assert running.refused == ([] if status == 200 else ["bad_request"])


async def test_a_refused_head_request_gets_a_head_answer() -> None:
    """Found by the mirror fuzzing: ``HEAD *`` was refused with a body, which h11 (rightly)
    will not send after a HEAD: 500 and a traceback."""
    with trio.fail_after(DEADLINE):
        async with serving() as running:
            response = await exchange(running.port, b"HEAD * HTTP/1.0\r\n\r\n", wait=1)
            await still_serves(running.port)
    assert status_of(response) == 400 and response.endswith(b"\r\n\r\n")
    assert running.refused == ["bad_request"]


async def failing_handler(request: Request) -> Response:
    if request.path == "/alive":
        return await ok_handler(request)
    if request.path == "/raise":
        raise RuntimeError("a bug in the handler")
    if request.path == "/bad-header-value":
        return Response(200, [("x-name", "caf\u00e9\u20ac")], b"")  # not latin-1
    if request.path == "/newline-in-header":
        return Response(200, [("x-evil", "a\r\nset-cookie: x")], b"")
    if request.path == "/bad-status":
        return Response(99, [], b"")
    if request.path == "/short-body":
        return Response(200, [("content-length", "10")], b"abc")
    raise AssertionError(request.path)


@pytest.mark.parametrize(
    "path",
    ["/raise", "/bad-header-value", "/newline-in-header", "/bad-status", "/short-body"],
)
async def test_an_unexpected_exception_is_answered_500_or_reset_and_the_server_keeps_serving(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE):
        async with serving(failing_handler) as running:
            request = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
            response = await exchange(running.port, request)
            await still_serves(running.port)
    if path == "/short-body":  # the head went out: the client sees the body break instead
        assert status_of(response) in (0, 200)
    else:
        assert status_of(response) == 500, response
        assert b"internal error" in response
    assert b"set-cookie" not in response
    assert all(len(record.getMessage()) < 600 for record in caplog.records)


async def test_a_stream_body_that_raises_resets_the_connection() -> None:
    class Broken:
        length = 1000

        async def send(self, sink: BodySink) -> None:
            await sink.write(b"x" * 100)
            raise ValueError("the transfer failed")

    async def handler(request: Request) -> Response:
        if request.path == "/alive":
            return await ok_handler(request)
        return Response(200, [], Broken())

    with trio.fail_after(DEADLINE):
        async with serving(handler) as running:
            response = await exchange(running.port, b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
            await still_serves(running.port)
    assert status_of(response) == 200 and len(response.split(b"\r\n\r\n", 1)[1]) < 1000


# -- what one client can hold -----------------------------------------------------------------


async def test_at_the_cap_the_connection_waiting_longest_for_a_request_is_closed() -> None:
    """3,000 connections holding partial heads took RSS from 60 to 420 MB. Now they are capped,
    and clients that hold connections without requests cannot lock a new client out."""
    with trio.fail_after(DEADLINE):
        async with serving(max_connections=2, head_timeout=30) as running:
            oldest = await trio.open_tcp_stream("127.0.0.1", running.port)
            await until(lambda: running.server.connections == 1)
            newer = await trio.open_tcp_stream("127.0.0.1", running.port)
            await newer.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-part")  # a head, unfinished
            await until(lambda: running.server.connections == 2)
            await still_serves(running.port)  # the oldest made room
            assert await oldest.receive_some(100) == b""  # closed, without an answer
            await newer.aclose()
            await oldest.aclose()
    assert running.refused[0] == "evicted"  # (then the unfinished head: bad_request)


async def test_when_every_connection_is_busy_a_new_one_gets_503() -> None:
    release = trio.Event()

    async def slow(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return await ok_handler(request)

    with trio.fail_after(DEADLINE):
        async with serving(slow, max_connections=2) as running, trio.open_nursery() as nursery:
            for _ in range(2):
                request = b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                nursery.start_soon(exchange, running.port, request)
            await until(lambda: running.server.connections == 2)
            await trio.testing.wait_all_tasks_blocked()
            refused = await exchange(running.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            release.set()
    assert status_of(refused) == 503 and b"retry-after: 1" in refused
    assert running.refused == ["over_cap"]


async def test_a_request_dripping_in_is_cut_off_at_the_head_deadline() -> None:
    """The deadline is for the whole request, not per receive: a byte every 0.1 s never
    finishes a head within 0.6 s."""
    with trio.fail_after(DEADLINE):
        async with serving(head_timeout=0.6) as running:
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            started = trio.current_time()
            received = b""
            async with stream:
                for byte in b"GET / HTTP/1.1\r\nhost: " + b"x" * 200:
                    try:
                        await stream.send_all(bytes([byte]))
                    except trio.BrokenResourceError:
                        break
                    with trio.move_on_after(0.1):
                        try:
                            piece = await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            break
                        if not piece:
                            break
                        received += piece
            elapsed = trio.current_time() - started
    assert status_of(received) == 408, received
    assert 0.5 < elapsed < 2.0
    assert running.refused == ["timeout"]


async def test_a_silent_connection_is_closed_at_the_head_deadline() -> None:
    with trio.fail_after(DEADLINE):
        async with serving(head_timeout=0.3) as running:
            started = trio.current_time()
            response = await exchange(running.port, b"", wait=5)
            elapsed = trio.current_time() - started
    assert status_of(response) == 408 and elapsed < 2.0


async def test_a_kept_alive_connection_is_closed_when_idle() -> None:
    with trio.fail_after(DEADLINE):
        async with serving(idle_timeout=0.3, head_timeout=5) as running:
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
                received = b""
                started = trio.current_time()
                while True:
                    piece = await stream.receive_some(65536)
                    if not piece:
                        break
                    received += piece
                elapsed = trio.current_time() - started
    assert status_of(received) == 200 and received.endswith(b"ok /one\n")
    assert 0.25 < elapsed < 2.0
    assert running.refused == []  # an idle close is the normal end of a kept-alive connection


async def test_a_partial_request_head_over_the_limit_is_431() -> None:
    """What a connection may hold of an unfinished head is bounded (3,000 connections holding
    60 KB each took 360 MB)."""
    with trio.fail_after(DEADLINE):
        async with serving(max_head_bytes=4096) as running:
            partial = b"GET / HTTP/1.1\r\nhost: x\r\nx-fill: " + b"a" * 8000
            response = await exchange(running.port, partial)
            small = b"GET / HTTP/1.1\r\nhost: x\r\nx-fill: " + b"a" * 3000 + b"\r\n\r\n"
            fits = await exchange(running.port, small, wait=1)
    assert status_of(response) == 431
    assert status_of(fits) == 200


async def test_a_client_that_stops_reading_is_dropped_after_the_stall_timeout(
    tmp_path: Path,
) -> None:
    size = 32 * 1024 * 1024
    path = tmp_path / "blob"
    path.touch()
    os.truncate(path, size)

    class FileBody:
        length = size

        async def send(self, sink: BodySink) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                await sink.sendfile(fd, offset=0, count=size)
            finally:
                os.close(fd)

    async def handler(request: Request) -> Response:
        return Response(200, [], FileBody())

    with trio.fail_after(DEADLINE):
        async with serving(handler, send_stall_timeout=0.5) as running:
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", running.port))
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            started = trio.current_time()
            await until(lambda: running.server.connections == 1)
            await until(lambda: running.server.connections == 0)  # it never reads: dropped
            elapsed = trio.current_time() - started
            await trio.aclose_forcefully(stream)
    assert elapsed < 5.0


# -- parse_target -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        pytest.param("/v2/", "/v2/", {}, id="plain"),
        pytest.param("/v2/a/blobs/x?ns=reg%3A5000", "/v2/a/blobs/x", {"ns": "reg:5000"}, id="ns"),
        pytest.param("//[x", "//[x", {}, id="double-slash-kept-as-path"),
        pytest.param("/a%2fb?x", "/a%2fb", {"x": ""}, id="raw-path-blank-value"),
        pytest.param("/a#frag?x=1", "/a", {}, id="fragment"),
    ],
)
def test_parse_target(target: str, path: str, query: dict[str, str]) -> None:
    assert parse_target(target) == (path, query)


@pytest.mark.parametrize("target", ["", "*", "http://h/x", "v2/"])
def test_parse_target_refuses_other_forms(target: str) -> None:
    with pytest.raises(ValueError):
        parse_target(target)
