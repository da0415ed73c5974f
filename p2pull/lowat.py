"""Fewer, larger socket reads on slow links: SO_RCVLOWAT while a known-long body arrives.

On a link slower than the CPU, bytes trickle in a packet or two at a time, and every wakeup of
a trio reader (epoll, the task switch, the protocol parser) costs far more than the few KiB it
brings: measured on a 50 Mbit/s link, ~3 KiB per receive and over 10 000 wakeups for a 32 MiB
blob. While the reader knows that at least N more bytes must come (the rest of a peer frame, the
rest of an HTTP body), it sets SO_RCVLOWAT to N (at most ``LOWAT_MAX``): the socket reports
readable only once N bytes are there, or the kernel runs low on receive window (it then wakes
the reader anyway), or the peer closes. Never above what must come, so no read can wait for
bytes that will not be sent; back to 1 before the socket carries anything else.
"""

from __future__ import annotations

import socket
from typing import Protocol

LOWAT_MAX = 256 * 1024


class _Socket(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


class RecvLowat:
    """The SO_RCVLOWAT of one socket, set only when it changes."""

    def __init__(self, sock: _Socket) -> None:
        self._sock = sock
        self._value = 1

    def expect(self, at_least: int) -> None:
        """At least ``at_least`` more bytes will come before the reader needs anything else."""
        value = min(max(at_least, 1), LOWAT_MAX)
        if value != self._value:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
            self._value = value

    def reset(self) -> None:
        """Back to the default (1), ignoring a socket that is already closed."""
        try:
            self.expect(1)
        except OSError:
            self._value = 1


__all__ = ["LOWAT_MAX", "RecvLowat"]
