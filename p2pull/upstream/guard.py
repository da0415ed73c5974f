"""The upstream address policy applied where connections are made: an httpx transport whose
network backend resolves each host itself, checks every address against an
:class:`~p2pull.upstream.addresses.AddressPolicy`, and connects only to the addresses it checked
(so a name cannot resolve to a public address for the check and to a loopback one for the
connect). Hosts the operator listed connect as they are.

A refused connection raises :class:`~p2pull.errors.UpstreamRefused` before any packet is sent to
that address: the client gets the same answer whether a port there is open or not.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx
import trio

from p2pull.errors import UpstreamRefused
from p2pull.upstream.addresses import AddressPolicy

log = logging.getLogger(__name__)

HAPPY_EYEBALLS_DELAY = 0.25  # as trio.open_tcp_stream: the next address is tried after this

OnRefused = Callable[[str], None]
Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for *_, sockaddr in infos:
        if str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend behind the address policy."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        on_refused: OnRefused = lambda reason: None,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        self._policy = policy
        self._on_refused = on_refused
        self._inner = inner if inner is not None else httpcore.TrioBackend()
        self._resolve_host = resolve if resolve is not None else resolve_host

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._policy.is_trusted(host, port):
            return await self._inner.connect_tcp(
                host, port, timeout, local_address=local_address, socket_options=socket_options
            )
        deadline = trio.current_time() + (math.inf if timeout is None else timeout)
        addresses = await self._resolve(host, port, deadline)
        reason = self._policy.refusal(port, addresses)
        if reason is not None:
            self._on_refused(reason)
            log.warning(
                "not connecting to %s port %d for a client: it resolves to %s (%s); list it "
                "with --upstream to allow it",
                host[:100],
                port,
                ", ".join(addresses[:4]),
                reason,
            )
            raise UpstreamRefused("the agent does not fetch from this registry's address")

        async def attempt(address: str) -> httpcore.AsyncNetworkStream:
            remaining = max(0.0, deadline - trio.current_time())
            return await self._inner.connect_tcp(
                address,
                port,
                None if math.isinf(remaining) else remaining,
                local_address=local_address,
                socket_options=socket_options,
            )

        return await first_connected(addresses, attempt)

    async def _resolve(self, host: str, port: int, deadline: float) -> list[str]:
        with trio.move_on_at(deadline):
            try:
                addresses = await self._resolve_host(host.strip("[]"), port)
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host[:100]}: {exc}") from exc
            if not addresses:
                raise httpcore.ConnectError(f"{host[:100]} resolves to no address")
            return addresses
        raise httpcore.ConnectTimeout(f"resolving {host[:100]} timed out")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UpstreamRefused("the agent does not fetch over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def first_connected(
    addresses: list[str], attempt: Callable[[str], Awaitable[httpcore.AsyncNetworkStream]]
) -> httpcore.AsyncNetworkStream:
    """The first of ``attempt(address)`` to connect, starting the next one every
    HAPPY_EYEBALLS_DELAY seconds or when one fails (trio's happy eyeballs); the others are
    cancelled or closed. Raises the last error if none connects."""
    winner: list[httpcore.AsyncNetworkStream] = []
    errors: list[Exception] = []

    async def run(address: str, failed: trio.Event, done: trio.CancelScope) -> None:
        try:
            stream = await attempt(address)
        except Exception as exc:
            errors.append(exc)
            failed.set()
            return
        if winner:
            await stream.aclose()
            return
        winner.append(stream)
        done.cancel()

    async with trio.open_nursery() as nursery:
        for address in addresses:
            failed = trio.Event()
            nursery.start_soon(run, address, failed, nursery.cancel_scope)
            with trio.move_on_after(HAPPY_EYEBALLS_DELAY):
                await failed.wait()
    if winner:
        return winner[0]
    raise errors[-1]


def guarded_transport(
    policy: AddressPolicy, *, limits: httpx.Limits, on_refused: OnRefused = lambda reason: None
) -> httpx.AsyncHTTPTransport:
    """httpx's transport (certificates verified, no proxies from the environment) with its
    connections made by a GuardedBackend."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # httpx takes no network backend; its pool is rebuilt with one (same settings otherwise).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedBackend(policy, on_refused=on_refused),
    )
    return transport
