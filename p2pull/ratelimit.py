"""A token bucket shared by the tasks that move bytes (uploads to peers, downloads)."""

from __future__ import annotations

from collections.abc import Callable

import trio


class RateLimiter:
    """``await acquire(n)`` returns when ``n`` more bytes fit under ``rate`` bytes/s.

    Waiters that overdraw the bucket push it negative, so each later caller waits for the debt
    before it: the long-run rate holds however many tasks share the limiter. ``rate`` 0 means
    unlimited.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate * 0.1, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._last: float | None = None

    async def acquire(self, amount: int) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= amount
        if self._tokens < 0:
            await trio.sleep(-self._tokens / self.rate)


UNLIMITED = RateLimiter(0)
