"""Peers from the A records of a name, typically a Kubernetes headless Service.

Every agent listens on the same peer port, so the records alone give the members. The name is
re-resolved every ``interval`` seconds; a failed (or empty) answer keeps the last good view rather
than emptying the cluster: dead peers leave through ``Membership.suspect`` instead.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from p2pull.discovery import DiscoveryError
from p2pull.membership import InvalidPeerAddress, Member, Membership

log = logging.getLogger(__name__)

SOURCE = "dns"

Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_ipv4(name: str) -> list[str]:
    """The IPv4 addresses ``name`` resolves to (sorted, unique); DiscoveryError if none."""
    try:
        infos = await trio.socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror included
        raise DiscoveryError(f"cannot resolve {name!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


class DnsDiscovery:
    source = SOURCE

    def __init__(
        self,
        name: str,
        port: int,
        membership: Membership,
        *,
        interval: float = 5.0,
        timeout: float = 5.0,
        resolve: Resolver = resolve_ipv4,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not name:
            raise DiscoveryError("DNS discovery needs a name to resolve")
        if interval <= 0 or timeout <= 0:
            raise DiscoveryError("DNS discovery interval and timeout must be positive")
        self.name = name
        self.port = port
        self.membership = membership
        self.interval = interval
        self.timeout = timeout
        self.resolve = resolve
        self.clock = clock
        self.view: frozenset[Member] | None = None  # the last good answer
        self.failures = 0  # consecutive failed resolutions

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resolve once (bounded by ``timeout``; a failure does not block the start), report
        started, then re-resolve every ``interval`` until cancelled; the view is withdrawn then."""
        try:
            await self.refresh()
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                await self.refresh()
        finally:
            self.membership.update_source(SOURCE, (), now=self.clock())

    async def refresh(self) -> None:
        """One resolution: publish the answer, or keep the last view and log why not."""
        members = await self._lookup()
        if members is None:
            return
        if self.failures:
            log.info("DNS discovery of %s recovered after %d failures", self.name, self.failures)
            self.failures = 0
        if members != self.view:
            log.info(
                "DNS discovery of %s: %d members %s",
                self.name,
                len(members),
                ", ".join(sorted(m.node_id for m in members)),
            )
            self.view = members
        self.membership.update_source(SOURCE, members, now=self.clock())

    async def _lookup(self) -> frozenset[Member] | None:
        reason: str | None = None
        with trio.move_on_after(self.timeout):
            try:
                addresses = await self.resolve(self.name)
                members = frozenset(Member.of(address, self.port) for address in addresses)
            except (OSError, DiscoveryError, InvalidPeerAddress) as exc:
                reason = str(exc)
            else:
                if members:
                    return members
                reason = "no addresses"
        self.failures += 1
        level = logging.WARNING if self.failures % 12 == 1 else logging.DEBUG  # ~1/min at 5 s
        log.log(
            level,
            "DNS discovery of %s failed (%s, %d in a row); keeping the last view of %d members",
            self.name,
            reason or f"timed out after {self.timeout}s",
            self.failures,
            len(self.view or ()),
        )
        return None
