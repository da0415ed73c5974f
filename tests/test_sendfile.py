"""Sending helpers on real loopback TCP: sendfile ranges and eager sends, whole, in order, and a
clear error when the peer is gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from p2pull.sendfile import FileRegion, send_all_eager, sendfile_all
from tests.recording import record_sends


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def _read_exactly(stream: trio.SocketStream, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = await stream.receive_some(1 << 20)
        assert chunk, "closed early"
        data += chunk
    return bytes(data)


async def test_eager_sends_larger_than_the_socket_buffer_arrive_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waited = record_sends(monkeypatch, trio.SocketStream, "send_all")
    parts = [os.urandom(n) for n in (100, 8 << 20, 3, 5 << 20)]  # MiBs overflow the buffers
    client, server = await _pair()
    received = b""
    async with client, server, trio.open_nursery() as nursery:

        async def read() -> None:
            nonlocal received
            await trio.sleep(0.2)  # let the first big send fill the kernel's buffers
            received = await _read_exactly(server, sum(map(len, parts)))

        nursery.start_soon(read)
        with trio.fail_after(20):
            for part in parts:
                await send_all_eager(client, part)
    assert received == b"".join(parts)
    # the 100 bytes went at once; the rest of what the kernel could not take went by send_all
    assert 1 <= len(waited) <= 3 and all(n < (8 << 20) for n in waited), waited


async def test_an_eager_send_to_a_closed_peer_is_a_broken_resource() -> None:
    client, server = await _pair()
    await server.aclose()
    with pytest.raises(trio.BrokenResourceError):
        with trio.fail_after(10):
            for _ in range(100):  # the first writes may still be accepted before the RST
                await send_all_eager(client, b"x" * 65536)
                await trio.sleep(0.01)
    await client.aclose()


async def test_sendfile_sends_exactly_the_region(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    client, server = await _pair()
    fd = os.open(tmp_path / "blob", os.O_RDONLY)
    try:
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(sendfile_all, client, FileRegion(fd, 12345, 2 << 20))
            with trio.fail_after(20):
                got = await _read_exactly(server, 2 << 20)
    finally:
        os.close(fd)
    assert got == data[12345 : 12345 + (2 << 20)]


async def test_sendfile_of_a_region_past_the_end_of_the_file_is_a_broken_resource(
    tmp_path: Path,
) -> None:
    (tmp_path / "blob").write_bytes(b"short")
    client, server = await _pair()
    fd = os.open(tmp_path / "blob", os.O_RDONLY)
    try:
        async with client, server:
            with pytest.raises(trio.BrokenResourceError, match="shorter"):
                await sendfile_all(client, FileRegion(fd, 0, 100))
    finally:
        os.close(fd)
