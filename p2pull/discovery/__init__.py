"""Discovery sources: each keeps one source's view in a ``Membership`` up to date.

- ``static.StaticDiscovery`` / ``static.run_static``: a fixed ``host:port,host:port`` list.
- ``dns.DnsDiscovery``: the A records of a Kubernetes headless Service, re-resolved periodically.
- ``mdns.MdnsDiscovery``: zeroconf/mDNS on a flat L2 network (registers this node, browses others).

Every source is a trio service (``await nursery.start(source.run)``) that replaces its own view
with ``membership.update_source(name, members, now=...)``; when it stops, its view is withdrawn.
"""

from __future__ import annotations

from typing import Protocol

import trio

from p2pull.errors import P2pullError


class DiscoveryError(P2pullError):
    """A discovery source could not start (bad configuration, no usable interface)."""

    oci_code = "UNAVAILABLE"
    http_status = 503


class Discovery(Protocol):
    """What the agent starts for each configured discovery source."""

    source: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish a first view (or give up on it within a bounded time), call
        ``task_status.started()``, then keep the view current until cancelled."""
        ...


__all__ = ["Discovery", "DiscoveryError"]
