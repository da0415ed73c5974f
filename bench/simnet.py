"""The simulator's clock and network: a discrete-event loop and a byte model of racks.

Not the protocol: ``bench/simnode.py`` runs the agent's own pure protocol code over this.

Every byte stream crosses a chain of links, each a FIFO at a rate: the sender's uplink, then
(between racks) its rack's uplink and the other rack's downlink, then the receiver's downlink
(from the origin: the origin's uplink, the rack's downlink, the node's downlink). A transfer of
``n`` bytes holds each link for ``n / rate`` after what it already carries, and streams through
(cut-through: a link starts passing the bytes as the one before it starts sending them, and
cannot finish before it). Then ``latency`` (one way). Messages between two nodes arrive in the
order they were sent, as on a TCP connection. This is the same model as the tests' in-memory
network (``p2pull/testing/peernet.py``) with racks added: coarse (no TCP dynamics), exact in
bytes.

A control message (``urgent``: anything but a piece) waits at each link for what is queued
there, but at most ``queue`` seconds: on its own TCP connection it queues only behind the
bytes in the interface's queue (a tbf's ``latency``, a switch buffer), not behind every byte
the other connections still hold in their socket buffers. Its bytes delay the bulk behind it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Clock:
    """A discrete-event loop: callbacks at times, in time order (ties in the order scheduled)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.events = 0

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), callback, args))

    def run(self, *, until: float = float("inf"), stop: Callable[[], bool] = lambda: False) -> None:
        queue = self._queue
        while queue and not stop():
            when, _, callback, args = heapq.heappop(queue)
            if when > until:
                heapq.heappush(queue, (when, 0, callback, args))
                self.now = until
                return
            self.now = when
            self.events += 1
            callback(*args)


@dataclass(slots=True)
class Link:
    """One direction of one wire: bytes per second, and when it is free again."""

    rate: float
    free: float = 0.0
    carried: int = 0


@dataclass(slots=True)
class Host:
    up: Link
    down: Link
    rack: int


@dataclass
class Network:
    clock: Clock
    latency: float  # one way, seconds
    queue: float = float("inf")  # the longest a control message waits at one link, seconds
    hosts: list[Host] = field(default_factory=list)
    rack_up: list[Link] = field(default_factory=list)  # out of each rack, to the core
    rack_down: list[Link] = field(default_factory=list)  # into each rack
    origin_up: Link = field(default_factory=lambda: Link(float("inf")))
    _last: dict[tuple[int, int], float] = field(default_factory=dict)  # per pair: last arrival

    @property
    def cross_rack_bytes(self) -> int:
        return sum(link.carried for link in self.rack_down)

    def path(self, src: int | None, dst: int) -> list[Link]:
        """The links from ``src`` (None: the origin, outside every rack) to ``dst``."""
        to = self.hosts[dst]
        if src is None:
            return [self.origin_up, self.rack_down[to.rack], to.down]
        frm = self.hosts[src]
        if frm.rack == to.rack:
            return [frm.up, to.down]
        return [frm.up, self.rack_up[frm.rack], self.rack_down[to.rack], to.down]

    def send(
        self, src: int | None, dst: int, size: int, *, urgent: bool = False
    ) -> tuple[float, float]:
        """Start ``size`` bytes from ``src`` to ``dst`` now: (when the first link is done with
        them, when they arrive). Ordered after everything sent earlier between the two."""
        now = self.clock.now
        start = now
        done = now
        if urgent:
            for link in self.path(src, dst):
                took = size / link.rate
                start += min(max(0.0, link.free - start), self.queue) + took
                link.free = max(link.free, start - took) + took
                link.carried += size
            return self._arrive(src, dst, start)
        for k, link in enumerate(self.path(src, dst)):
            begin = max(start, link.free)
            finish = begin + size / link.rate
            done = finish if k == 0 else max(done, finish)
            link.free = done
            link.carried += size
            start = begin
            if k == 0:
                sender_done = done
        return sender_done, self._arrive(src, dst, done)[1]

    def _arrive(self, src: int | None, dst: int, done: float) -> tuple[float, float]:
        arrival = done + self.latency
        key = (-1 if src is None else src, dst)
        arrival = max(arrival, self._last.get(key, 0.0))
        self._last[key] = arrival
        return done, arrival


__all__ = ["Clock", "Host", "Link", "Network"]
