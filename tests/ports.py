"""TCP ports for test servers that bind some time after the port is chosen.

Choosing a port by binding port 0 and closing the socket races with outgoing connections: the
kernel gives connect() local ports from the same ephemeral range, so a connection made in the
meantime (agents dial each other as they start) can take the port before its server binds it
("Address already in use": an agent of test_swarm_failover, once in CI). These ports come from
below the ephemeral range, which connect() does not use, and one test process never hands out
the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below: well-known and registered services more likely
_handed_out: set[int] = set()
_lock = threading.Lock()


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, that connect() will not pick as a
    local port, and that this process has not handed out before."""
    low = ephemeral_low()
    with _lock:
        for _ in range(10_000):
            port = random.randrange(_LOWEST, low) if low - _LOWEST >= 1_000 else _any_port()
            if port in _handed_out or not _bindable(port):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _any_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
