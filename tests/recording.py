"""Test helper: record the sizes passed to a send function while still calling it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def record_sends(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Wrap ``owner.name`` (an async ``(stream, data)`` function or method) so every call's
    ``len(data)`` lands in the returned list."""
    original: Callable[[Any, Any], Awaitable[None]] = getattr(owner, name)
    sizes: list[int] = []

    async def recorded(stream: Any, data: Any) -> None:
        sizes.append(len(data))
        await original(stream, data)

    monkeypatch.setattr(owner, name, recorded)
    return sizes
