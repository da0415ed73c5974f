"""Which network addresses the agent may contact for a client: the upstream address policy.

Pure: no sockets, no resolver. A client's ``ns`` (or a registry's redirect) names the host the
agent connects to, so without a policy the mirror is a proxy to any address its clients name.
Registries on private addresses (10/8, 172.16/12, 192.168/16, fc00::/7, ``registry.internal``)
are normal in clusters and stay reachable. Refused, unless the operator listed that host and
port as an upstream (``--upstream NS=URL``, ``--default-upstream``): loopback, link-local
(169.254/16, fe80::/10), unspecified (0.0.0.0/8, ``::``), multicast, reserved (240/4, the
broadcast address, IPv4-compatible ``::a.b.c.d``), the cloud metadata addresses that are not
link-local (fd00:ec2::254, 100.100.100.200), and the IPv6 forms that lead to a refused IPv4
address (mapped ``::ffff:``, NAT64 ``64:ff9b::``, 6to4 ``2002::``). A name is checked by every
address it resolves to, at connect time (see :mod:`p2pull.upstream.guard`): one refused
address refuses the name, so a resolver that answers a public and a loopback address (DNS
rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the local host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (and :: and ::1)

# The reasons a refusal is counted under (p2pull_upstream_refused_total{reason}).
REASONS = ("metadata", "loopback", "link_local", "unspecified", "multicast", "reserved", "port")


def address_refusal(address: IPAddress) -> str | None:
    """Why the agent must not contact ``address`` for a client (one of REASONS), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_refusal(embedded)
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK
    ):
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address):
        # (IPv6's is_reserved is every unassigned block, NAT64's prefix included: not used)
        return "reserved" if address in _IPV4_COMPATIBLE else None
    return "reserved" if address.is_reserved else None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a packet to ``address`` ends up at: mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::a.b.c.d, the IPv6-only cluster's way out) or 6to4 (2002:aabb:ccdd::)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def normalize_host(host: str) -> str:
    """A host as a URL or a connection names it: lowercase, IPv6 without brackets."""
    return host.strip("[]").lower()


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """``trusted``: (host, port) pairs the operator configured (listed upstreams and the
    default); connections to them are not checked. Everything else is."""

    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def trusting(cls, origins: Iterable[tuple[str, int]]) -> AddressPolicy:
        return cls(frozenset((normalize_host(host), port) for host, port in origins))

    def is_trusted(self, host: str, port: int) -> bool:
        return (normalize_host(host), port) in self.trusted

    def refusal(self, port: int, addresses: Iterable[str]) -> str | None:
        """Why a connection to ``port`` on ``addresses`` (everything the host resolved to) is
        refused, or None. An unparsable address is refused as reserved."""
        if not 0 < port < 65536:
            return "port"
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                return "reserved"
            reason = address_refusal(address)
            if reason is not None:
                return reason
        return None
