"""One conformance suite for both peer transports (TCP on 127.0.0.1, the in-memory PeerNet),
then what only the in-memory one models: link rates and latency, in simulated time."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from p2pull.swarm.transport import NOTSENT_LOWAT, Handler, PeerTransport, TcpTransport
from p2pull.testing.peernet import PeerNet
from tests.ports import free_port


@dataclass
class Pair:
    server: PeerTransport
    client: PeerTransport
    host: str
    nursery: trio.Nursery

    async def serve(self, handler: Handler) -> int:
        return int(await self.nursery.start(self.server.serve, handler))


@asynccontextmanager
async def tcp() -> AsyncIterator[Pair]:
    async with trio.open_nursery() as nursery:
        yield Pair(
            TcpTransport(host="127.0.0.1", port=0),
            TcpTransport(host="127.0.0.1", port=0),
            "127.0.0.1",
            nursery,
        )
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def memory() -> AsyncIterator[Pair]:
    net = PeerNet()
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        yield Pair(net.host("198.18.0.1"), net.host("198.18.0.2"), "198.18.0.1", nursery)
        nursery.cancel_scope.cancel()


TRANSPORTS: dict[str, Callable[[], AsyncIterator[Pair]]] = {"tcp": tcp, "memory": memory}  # type: ignore[dict-item]


@pytest.fixture(params=sorted(TRANSPORTS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _read_all(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some(65536):
        out += chunk
    return bytes(out)


async def test_bytes_cross_both_ways_in_order(kind: str) -> None:
    data = os.urandom(3 << 20)
    got: list[bytes] = []

    async def echo_reversed(stream: trio.abc.Stream) -> None:
        received = await _read_all(stream)
        got.append(received)
        await stream.send_all(received[::-1])

    with trio.fail_after(20):
        async with TRANSPORTS[kind]() as pair:
            port = await pair.serve(echo_reversed)
            stream = await pair.client.connect(pair.host, port)
            for offset in range(0, len(data), 100_000):
                await stream.send_all(data[offset : offset + 100_000])
            assert isinstance(stream, trio.abc.HalfCloseableStream)
            await stream.send_eof()
            answer = await _read_all(stream)
            await stream.aclose()
    assert got == [data] and answer == data[::-1]


async def test_the_reader_sees_the_end_when_the_writer_closes(kind: str) -> None:
    done = trio.Event()
    seen: list[bytes] = []

    async def read(stream: trio.abc.Stream) -> None:
        seen.append(await _read_all(stream))
        done.set()

    with trio.fail_after(10):
        async with TRANSPORTS[kind]() as pair:
            port = await pair.serve(read)
            stream = await pair.client.connect(pair.host, port)
            await stream.send_all(b"hello")
            await stream.aclose()
            await done.wait()
    assert seen == [b"hello"]


async def test_sending_to_a_closed_peer_breaks(kind: str) -> None:
    async def close_at_once(stream: trio.abc.Stream) -> None:
        await stream.aclose()

    with trio.fail_after(10):
        async with TRANSPORTS[kind]() as pair:
            port = await pair.serve(close_at_once)
            stream = await pair.client.connect(pair.host, port)
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(1000):  # TCP: the first sends may still be taken before the RST
                    await stream.send_all(b"x" * 65536)
                    await trio.sleep(0.01)
            await stream.aclose()


async def test_connecting_where_nothing_listens_is_an_os_error(kind: str) -> None:
    with trio.fail_after(10):
        async with TRANSPORTS[kind]() as pair:
            with pytest.raises(OSError):
                await pair.client.connect(pair.host, free_port())


async def test_each_connection_is_served_on_its_own(kind: str) -> None:
    started = 0
    all_started, release = trio.Event(), trio.Event()

    async def hold(stream: trio.abc.Stream) -> None:
        nonlocal started
        started += 1
        if started == 3:
            all_started.set()
        await release.wait()
        await stream.send_all(b"bye")

    with trio.fail_after(10):
        async with TRANSPORTS[kind]() as pair:
            port = await pair.serve(hold)
            streams = [await pair.client.connect(pair.host, port) for _ in range(3)]
            await all_started.wait()
            release.set()
            for stream in streams:
                assert await stream.receive_some(10) == b"bye"
                await stream.aclose()


# -- what the in-memory network models ------------------------------------------------------------


async def test_a_transfer_takes_size_over_the_slower_end_plus_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = PeerNet(latency=0.05)
    arrived: list[float] = []
    done = trio.Event()

    async def receive(stream: trio.abc.Stream) -> None:
        data = await _read_all(stream)
        arrived.append(trio.current_time())
        assert len(data) == 4 << 20
        done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        server = net.host("198.18.0.1", down=2 << 20)  # 2 MiB/s down
        client = net.host("198.18.0.2", up=8 << 20)
        port = await nursery.start(server.serve, receive)
        stream = await client.connect("198.18.0.1", port)
        start = trio.current_time()
        for _ in range(4):
            await stream.send_all(b"x" * (1 << 20))
        await stream.aclose()
        await done.wait()
        nursery.cancel_scope.cancel()
    assert arrived[0] - start == pytest.approx(2.0 + 0.05, abs=0.02)
    assert server.nic.received == client.nic.sent == 4 << 20


async def test_two_senders_share_the_receivers_downlink(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = PeerNet()
    finished: list[float] = []
    both = trio.Event()

    async def receive(stream: trio.abc.Stream) -> None:
        await _read_all(stream)
        finished.append(trio.current_time())
        if len(finished) == 2:
            both.set()

    async def send(client: PeerTransport, port: int) -> None:
        stream = await client.connect("198.18.0.1", port)
        for _ in range(2):
            await stream.send_all(b"x" * (1 << 20))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        port = await nursery.start(net.host("198.18.0.1", down=1 << 20).serve, receive)
        async with trio.open_nursery() as senders:
            senders.start_soon(send, net.host("198.18.0.2"), port)
            senders.start_soon(send, net.host("198.18.0.3"), port)
        await both.wait()
        nursery.cancel_scope.cancel()
    assert max(finished) == pytest.approx(4.0, abs=0.02)  # 4 MiB through one 1 MiB/s downlink


async def test_tcp_peer_sockets_queue_little_unsent() -> None:
    """Both ends of a peer connection bound what they hold unsent (TCP_NOTSENT_LOWAT): bytes a
    seed counts as uploaded are on the wire, not in a send buffer that dies with it."""
    accepted: list[int] = []

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        accepted.append(stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
        await stream.send_all(b"x")

    with trio.fail_after(10):
        async with tcp() as pair:
            port = await pair.serve(handler)
            client = await pair.client.connect(pair.host, port)
            assert isinstance(client, trio.SocketStream)
            assert await client.receive_some(1) == b"x"
            lowat = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
            assert (lowat, accepted) == (NOTSENT_LOWAT, [NOTSENT_LOWAT])
            await client.aclose()
