"""Peers by zeroconf/mDNS on a flat L2 network (bare metal; multicast does not cross routers).

Each agent registers one service instance ``p2pull-<host>-<port>`` of ``_p2pull._tcp.local.``
(TXT ``node_id=<host:port>``, ``port``, ``version=1``) and browses the type. A service that appears
is resolved (SRV + A + TXT) into a Member; one that says goodbye leaves the view. A node that dies
without a goodbye stays until its records expire (``ttl``, 2 minutes by default rather than the
RFC 6762 75 minutes for PTR records), so the peer layer's ``Membership.suspect`` is what removes
dead peers quickly.

zeroconf's sync ``Zeroconf`` runs its own asyncio loop in a thread: its blocking calls run through
``trio.to_thread``, and browser callbacks (on the browser's own thread) reach trio through
``trio.from_thread.run_sync`` into a memory channel drained by one task, which owns the view.
IPv4 only; sockets are bound to the given interface addresses (default: ``host``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
from collections.abc import Callable

import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from p2pull.discovery import DiscoveryError
from p2pull.membership import InvalidPeerAddress, Member, Membership

log = logging.getLogger(__name__)

SOURCE = "mdns"
SERVICE_TYPE = "_p2pull._tcp.local."
TXT_VERSION = "1"
TTL = 120  # seconds, for every record (zeroconf's default for PTR/TXT is 75 minutes)

Event = tuple[str, ServiceStateChange]  # (service instance name, what happened)


def instance_name(host: str, port: int, service_type: str = SERVICE_TYPE) -> str:
    """``p2pull-198-18-0-2-5051._p2pull._tcp.local.``: unique per node, no dots in the label."""
    return f"p2pull-{host.replace('.', '-')}-{port}.{service_type}"


def service_info(
    member: Member, service_type: str = SERVICE_TYPE, *, ttl: int = TTL
) -> ServiceInfo:
    """What this node announces, every record with the same ``ttl``."""
    label = instance_name(member.host, member.port, service_type).removesuffix(f".{service_type}")
    return ServiceInfo(
        service_type,
        instance_name(member.host, member.port, service_type),
        port=member.port,
        properties={"node_id": member.node_id, "port": str(member.port), "version": TXT_VERSION},
        server=f"{label}.local.",
        addresses=[socket.inet_aton(member.host)],
        host_ttl=ttl,
        other_ttl=ttl,
    )


def member_from_info(info: ServiceInfo) -> Member | None:
    """The member a resolved service announces, or None if it is unusable (logged).

    The identity is an advertised IPv4 address with the SRV port; the TXT ``node_id`` picks which
    address when the service has several (it must be one of them, or it is ignored).
    """
    txt = info.decoded_properties
    version = txt.get("version")
    if version not in (None, TXT_VERSION):
        log.info("mDNS: ignoring %s: protocol version %s", info.name, version)
        return None
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or not info.port:
        log.info("mDNS: ignoring %s: no IPv4 address or port", info.name)
        return None
    try:
        members = [Member.of(address, info.port) for address in addresses]
    except InvalidPeerAddress as exc:
        log.info("mDNS: ignoring %s: %s", info.name, exc)
        return None
    wanted = txt.get("node_id")
    return next((m for m in members if m.node_id == wanted), min(members))


class MdnsDiscovery:
    source = SOURCE

    def __init__(
        self,
        membership: Membership,
        *,
        host: str,
        port: int,
        interfaces: list[str] | None = None,
        service_type: str = SERVICE_TYPE,
        ttl: int = TTL,
        resolve_timeout: float = 3.0,
        cleanup_timeout: float = 3.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        try:
            ipaddress.IPv4Address(host)
            self.member = Member.of(host, port)
        except (ValueError, InvalidPeerAddress) as exc:
            raise DiscoveryError(f"mDNS discovery needs an IPv4 host and a port: {exc}") from exc
        self.membership = membership
        self.interfaces = list(interfaces) if interfaces else [self.member.host]
        self.service_type = service_type
        self.ttl = ttl
        self.resolve_timeout = resolve_timeout
        self.cleanup_timeout = cleanup_timeout
        self.clock = clock
        self._resolved: dict[str, Member] = {}  # instance name -> member
        self._generation: dict[str, int] = {}  # instance name -> events seen (stale resolutions)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register this node and browse; ``started`` once registered (probing takes ~1-2 s).
        On cancellation: goodbye, close (shielded, bounded by ``cleanup_timeout``), withdraw."""
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[Event](math.inf)

        def on_service(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:  # on the browser's thread
            shutting_down = (
                trio.RunFinishedError,
                trio.ClosedResourceError,
                trio.BrokenResourceError,
            )
            with contextlib.suppress(*shutting_down):
                trio.from_thread.run_sync(send.send_nowait, (name, state_change), trio_token=token)

        zc = await trio.to_thread.run_sync(self._open)
        info = service_info(self.member, self.service_type, ttl=self.ttl)
        browser: ServiceBrowser | None = None
        try:
            await trio.to_thread.run_sync(zc.register_service, info)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, self.service_type, handlers=[on_service])
            )
            log.info("mDNS: registered %s on %s", info.name, ", ".join(self.interfaces))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consume, zc, receive, nursery)
                task_status.started()
        finally:
            send.close()
            with trio.CancelScope(shield=True), trio.move_on_after(self.cleanup_timeout) as scope:
                await trio.to_thread.run_sync(
                    self._close, zc, browser, info, abandon_on_cancel=True
                )
            if scope.cancelled_caught:
                log.warning("mDNS: cleanup took over %ss; abandoned it", self.cleanup_timeout)
            self._resolved.clear()
            self.membership.update_source(SOURCE, (), now=self.clock())

    def _open(self) -> Zeroconf:
        try:
            return Zeroconf(interfaces=list(self.interfaces), ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise DiscoveryError(f"mDNS: cannot open sockets on {self.interfaces}: {exc}") from exc

    @staticmethod
    def _close(zc: Zeroconf, browser: ServiceBrowser | None, info: ServiceInfo) -> None:
        try:
            if browser is not None:
                browser.cancel()
            zc.unregister_service(info)  # goodbye packets: peers drop us within ~1 s
        except Exception:  # a failed goodbye must not skip the close
            log.warning("mDNS: unregistering %s failed", info.name, exc_info=True)
        finally:
            zc.close()

    async def _consume(
        self,
        zc: Zeroconf,
        receive: trio.MemoryReceiveChannel[Event],
        nursery: trio.Nursery,
    ) -> None:
        async for name, change in receive:
            generation = self._generation.get(name, 0) + 1
            self._generation[name] = generation
            if change is ServiceStateChange.Removed:
                if (gone := self._resolved.pop(name, None)) is not None:
                    log.info("mDNS: %s (%s) left", gone.node_id, name)
                    self._publish()
            else:
                nursery.start_soon(self._resolve, zc, name, generation)

    async def _resolve(self, zc: Zeroconf, name: str, generation: int) -> None:
        timeout_ms = int(self.resolve_timeout * 1000)
        info: ServiceInfo | None = None
        for _attempt in range(3):
            info = await trio.to_thread.run_sync(
                zc.get_service_info, self.service_type, name, timeout_ms, abandon_on_cancel=True
            )
            if info is not None or self._generation.get(name) != generation:
                break
        if self._generation.get(name) != generation:
            return  # a newer event about this name took over (or it was removed meanwhile)
        if info is None:
            log.warning("mDNS: could not resolve %s", name)
            return
        member = member_from_info(info)
        if member is None or self._resolved.get(name) == member:
            return
        log.info("mDNS: %s (%s) joined", member.node_id, name)
        self._resolved[name] = member
        self._publish()

    def _publish(self) -> None:
        self.membership.update_source(SOURCE, self._resolved.values(), now=self.clock())
