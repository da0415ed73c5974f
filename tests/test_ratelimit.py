"""RateLimiter on trio's virtual clock: the long-run rate holds however many tasks share it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pull.ratelimit import RateLimiter


@pytest.mark.parametrize("tasks", [1, 4, 16])
async def test_shared_rate_holds(tasks: int, autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(1_000_000, burst=100_000)
    start = trio.current_time()

    async def mover() -> None:
        for _ in range(10):
            await limiter.acquire(100_000)

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(mover)
    elapsed = trio.current_time() - start
    moved = tasks * 10 * 100_000
    # everything but the initial burst waits for the rate
    assert elapsed == pytest.approx((moved - 100_000) / 1_000_000, rel=0.01)


async def test_zero_means_unlimited(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(0)
    start = trio.current_time()
    for _ in range(100):
        await limiter.acquire(1 << 30)
    assert trio.current_time() == start
