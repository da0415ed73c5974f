"""TCP ports for test servers that bind some time after the port is chosen.

Choosing a port by binding port 0 and closing the socket races with outgoing connections: the
kernel gives connect() local ports from the same ephemeral range, so a connection made in the
meantime (agents dial each other as they start) can take the port before its server binds it
("Address already in use": an agent of test_swarm_failover, once in CI). ``free_port`` takes
ports from below that range (``agent.service.free_ports``) and one test process never hands
out the same port twice.
"""

from __future__ import annotations

import threading

from agent.service import free_ports

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, that connect() will not pick as a
    local port, and that this process has not handed out before."""
    with _lock:
        port = free_ports("127.0.0.1", 1, avoid=_handed_out)[0]
        _handed_out.add(port)
        return port
