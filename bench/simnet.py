"""The simulator's clock and network: a discrete-event loop and a byte model of racks.

Not the protocol: ``bench/simnode.py`` runs the agent's own pure protocol code over this.

Every byte stream crosses a chain of links: the sender's uplink, then (between racks) its
rack's uplink and the other rack's downlink, then the receiver's downlink (from the origin: the
origin's uplink, the rack's downlink, the node's downlink). Each link is a fluid queue at a
rate: a transfer of ``n`` bytes adds ``n / rate`` to the backlog of every link on its path (from
now, after what each already has to carry), and has arrived when the last of them is done with
it, then ``latency`` (one way). A link carries its backlog without pause: a stream from a slow
sender takes a share of a fast receiver's downlink, not the whole of it while it trickles in.
Messages between two nodes arrive in the order they were sent, as on a TCP connection. This is
the same model as the tests' in-memory network (``p2pull/testing/peernet.py``) with racks
added: coarse (no TCP dynamics), exact in bytes.

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
    data: int = 0  # of which pieces (chunk bytes), not control messages


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

    @property
    def cross_rack_data(self) -> int:
        return sum(link.data for link in self.rack_down)

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
        now = at = self.clock.now
        finished = []
        for link in self.path(src, dst):
            took = size / link.rate
            at += min(max(0.0, link.free - at), self.queue) + took  # an urgent message's way
            link.free = max(link.free, now) + took
            link.carried += size
            link.data += 0 if urgent else size
            finished.append(link.free)
        if urgent:
            return self._arrive(src, dst, at)
        return finished[0], self._arrive(src, dst, max(finished))[1]

    def _arrive(self, src: int | None, dst: int, done: float) -> tuple[float, float]:
        arrival = done + self.latency
        key = (-1 if src is None else src, dst)
        arrival = max(arrival, self._last.get(key, 0.0))
        self._last[key] = arrival
        return done, arrival


__all__ = ["Clock", "Host", "Link", "Network"]
