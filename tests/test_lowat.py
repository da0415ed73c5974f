"""SO_RCVLOWAT on real loopback TCP sockets: the reader wakes for big parts, never waits forever."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from p2pull.lowat import LOWAT_MAX, RecvLowat


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        yield client, accepted


def readable(sock: socket.socket, wait: float = 0.05) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


def test_the_socket_turns_readable_only_once_the_expected_bytes_are_there(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = pair
    lowat = RecvLowat(receiver)
    lowat.expect(100_000)
    sender.sendall(b"a" * 60_000)
    assert not readable(receiver)
    sender.sendall(b"b" * 40_000)
    assert readable(receiver, wait=5)
    received = b""
    while len(received) < 100_000:
        received += receiver.recv(1 << 20)
    assert received == b"a" * 60_000 + b"b" * 40_000
    lowat.reset()
    sender.sendall(b"c")
    assert readable(receiver, wait=5)  # one byte wakes the reader again


def test_expectations_are_capped_and_set_only_when_they_change(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, receiver = pair
    lowat = RecvLowat(receiver)
    lowat.expect(50 * LOWAT_MAX)
    assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == LOWAT_MAX
    for at_least in (0, -5):
        lowat.expect(at_least)
        assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 777)  # behind its back
    lowat.expect(1)  # unchanged as far as it knows: no system call
    assert receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 777


def test_reset_on_a_closed_socket_is_quiet() -> None:
    sock = socket.socket()
    lowat = RecvLowat(sock)
    lowat.expect(4096)
    sock.close()
    lowat.reset()
    with pytest.raises(OSError):
        lowat.expect(8192)
