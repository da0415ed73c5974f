"""Settings every fuzz test uses: deterministic (the same examples on every run and machine, so
the suite stays fast and a failure reproduces), no per-example deadline (the test's own
trio deadlines bound the time), a fixed number of examples."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
