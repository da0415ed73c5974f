"""An in-memory peer network: the swarm's MockTransport.

``PeerNet`` hands each simulated host a ``MemoryTransport`` (a ``p2pull.swarm.transport``
PeerTransport) with its own uplink and downlink rate; a connection is a pair of in-memory
byte pipes. Sending ``n`` bytes holds the sender for ``n / up`` seconds after what its uplink
was already carrying; the receiver's downlink takes them as they come (``n / down`` seconds,
after what it carries: a switch port with a buffer), and they arrive ``latency`` seconds later,
in order. Time is trio's clock, so under ``trio.testing.MockClock``
(autojump) a whole swarm runs in simulated time, deterministically when nothing else (threads,
real sockets) is involved.

Everything above the transport (handshake, links, sessions) is the agent's real code.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from dataclasses import dataclass, field

import trio

from p2pull.swarm.transport import Handler


@dataclass(slots=True)
class Nic:
    """One host's link: bytes per second each way (inf: unshaped), and when each is free."""

    up: float = math.inf
    down: float = math.inf
    up_free: float = 0.0
    down_free: float = 0.0
    sent: int = 0
    received: int = 0


@dataclass(slots=True)
class _Pipe:
    """One direction of a connection: bytes in flight and bytes arrived."""

    arrived: bytearray = field(default_factory=bytearray)
    in_flight: deque[tuple[float, bytes]] = field(default_factory=deque)
    eof: bool = False  # the writer closed
    reader_gone: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class MemoryStream(trio.abc.HalfCloseableStream):
    def __init__(
        self, *, net: PeerNet, local: Nic, remote: Nic, inbound: _Pipe, outbound: _Pipe
    ) -> None:
        self._net, self._local, self._remote = net, local, remote
        self._inbound, self._outbound = inbound, outbound
        self._closed = False
        self._write_closed = False
        self._sending = trio.Lock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed or self._write_closed:
            raise trio.ClosedResourceError("stream closed")
        async with self._sending:
            payload = bytes(data)
            if self._outbound.reader_gone:
                raise trio.BrokenResourceError("peer closed the connection")
            if not payload:
                await trio.lowlevel.checkpoint()
                return
            local, remote, size = self._local, self._remote, len(payload)
            now = trio.current_time()
            left = max(now, local.up_free) + size / local.up
            local.up_free = left
            # the receiver's downlink carries them after what it already has to, and they have
            # arrived once both links are done with them (a fluid queue: a slow sender uses a
            # share of the downlink, it does not hold the whole of it)
            taken = max(now, remote.down_free) + size / remote.down
            remote.down_free = taken
            arrived = max(left, taken)
            local.sent += size
            remote.received += size
            await trio.sleep_until(left)
            if self._outbound.reader_gone:
                raise trio.BrokenResourceError("peer closed the connection")
            self._net.deliver(self._outbound, payload, at=arrived + self._net.latency)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        pipe = self._inbound
        while not pipe.arrived and not pipe.eof:
            await pipe.changed.wait()
        if not pipe.arrived:
            await trio.lowlevel.checkpoint()
            return b""
        count = len(pipe.arrived) if max_bytes is None else min(max_bytes, len(pipe.arrived))
        data = bytes(pipe.arrived[:count])
        del pipe.arrived[:count]
        await trio.lowlevel.checkpoint()
        return data

    async def send_eof(self) -> None:
        async with self._sending:
            if not self._write_closed:
                self._write_closed = True
                self._net.deliver_eof(self._outbound)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbound.reader_gone = True
            self._inbound.wake()
            if not self._write_closed:
                self._write_closed = True
                self._net.deliver_eof(self._outbound)
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """One host of a ``PeerNet``: dials the others and serves on ``host:port``."""

    def __init__(self, net: PeerNet, host: str, port: int, nic: Nic) -> None:
        self.net, self.host, self.port, self.nic = net, host, port, nic

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self.net.listeners.get((host, port))
        if listener is None or self.host in self.net.down or host in self.net.down:
            raise OSError(errno.ECONNREFUSED, f"nothing listens on {host}:{port}")
        handler, nic, nursery = listener
        there, back = _Pipe(), _Pipe()
        net = self.net
        ours = MemoryStream(net=net, local=self.nic, remote=nic, inbound=back, outbound=there)
        theirs = MemoryStream(net=net, local=nic, remote=self.nic, inbound=there, outbound=back)
        nursery.start_soon(_serve_one, handler, theirs)
        return ours

    async def serve(
        self, handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            bound = self.port or self.net.next_port()
            if (self.host, bound) in self.net.listeners:
                raise OSError(errno.EADDRINUSE, f"{self.host}:{bound} is taken")
            self.net.listeners[(self.host, bound)] = (handler, self.nic, nursery)
            try:
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                self.net.listeners.pop((self.host, bound), None)


async def _serve_one(handler: Handler, stream: trio.abc.Stream) -> None:
    async with stream:
        await handler(stream)


class PeerNet:
    """The network. Start it with ``await nursery.start(net.run)`` before any host connects."""

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.listeners: dict[tuple[str, int], tuple[Handler, Nic, trio.Nursery]] = {}
        self.down: set[str] = set()  # hosts whose new connections are refused
        self._ports = 40000
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def host(
        self, host: str, *, port: int = 0, up: float = math.inf, down: float = math.inf
    ) -> MemoryTransport:
        """A host's transport (``port`` 0: the next free one when it serves)."""
        return MemoryTransport(self, host, port, Nic(up=up, down=down))

    def next_port(self) -> int:
        self._ports += 1
        return self._ports

    def deliver(self, pipe: _Pipe, data: bytes, *, at: float) -> None:
        if at <= trio.current_time() and not pipe.in_flight:
            pipe.arrived += data
            pipe.wake()
            return
        pipe.in_flight.append((at, data))
        if len(pipe.in_flight) == 1:
            assert self._nursery is not None, "PeerNet.run is not running"
            self._nursery.start_soon(self._carry, pipe)

    def deliver_eof(self, pipe: _Pipe) -> None:
        if not pipe.in_flight:
            pipe.eof = True
            pipe.wake()
        else:
            pipe.in_flight.append((-math.inf, b""))  # after what is in flight

    async def _carry(self, pipe: _Pipe) -> None:
        while pipe.in_flight:
            at, data = pipe.in_flight[0]
            if at > trio.current_time():
                await trio.sleep_until(at)
            pipe.in_flight.popleft()
            if data:
                pipe.arrived += data
            else:
                pipe.eof = True
            pipe.wake()


__all__ = ["MemoryStream", "MemoryTransport", "Nic", "PeerNet"]
