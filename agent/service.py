"""Wires the library's services into one running node agent."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config import AgentConfig, ConfigError, HostPort
from p2pull.admin import Admin
from p2pull.blobs import BlobService
from p2pull.discovery.dns import DnsDiscovery
from p2pull.discovery.mdns import MdnsDiscovery
from p2pull.discovery.static import StaticDiscovery
from p2pull.httpserver import Handler, HttpServer, Request, Response, ServerLimits
from p2pull.manifests import ManifestService
from p2pull.membership import Member, Membership
from p2pull.metrics import Metrics
from p2pull.mirror import Mirror
from p2pull.ratelimit import RateLimiter
from p2pull.store.disk import DiskStore
from p2pull.swarm.node import SwarmConfig, SwarmNode
from p2pull.upstream.addresses import AddressPolicy
from p2pull.upstream.client import RegistrySet
from p2pull.upstream.credentials import Credentials
from p2pull.upstream.endpoints import listed_origins
from p2pull.upstream.guard import guarded_transport

log = logging.getLogger(__name__)

# httpcore reads a response body 64 KiB at a time; blob downloads run ~1.6x faster with 1 MiB
# reads (measured on loopback against docker-registry: 290 -> 457 MB/s). It is a class attribute
# of the HTTP/1.1 connection, so the composition root sets it once for the process.
UPSTREAM_READ_BYTES = 1024 * 1024


def tune_httpcore() -> None:
    import httpcore._async.http11 as http11

    http11.AsyncHTTP11Connection.READ_NUM_BYTES = UPSTREAM_READ_BYTES


@dataclass(frozen=True, slots=True)
class AgentPorts:
    mirror: int
    metrics: int
    peer: int | None = None  # None: the swarm is off (no cluster secret)


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"--cluster-secret-file: cannot read {path}: {exc}") from exc
    if len(secret) < 16:
        raise ConfigError(f"--cluster-secret-file: {path} holds fewer than 16 bytes")
    return secret


def advertised_host(config: AgentConfig) -> str:
    if config.advertise_addr:
        return config.advertise_addr
    if config.peer_addr.host not in ("0.0.0.0", "::", ""):
        return config.peer_addr.host
    return socket.gethostbyname(socket.gethostname())


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_FREE_PORT = 10_000  # below: well-known and registered services are more likely


def free_ports(host: str, count: int, *, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports that ``host`` can bind now, none in ``avoid``, for listeners
    that bind later (a peer address with port 0, the demo's nodes). They come from below the
    kernel's ephemeral range: connect() takes local ports from that range, so a connection made
    before the listener binds could otherwise take the port ("Address already in use")."""
    bind_host = host if host not in ("", "::") else "0.0.0.0"
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    chosen: list[int] = []
    for _ in range(100 * count + 1000):
        if len(chosen) == count:
            return chosen
        if low > LOWEST_FREE_PORT:
            port = random.randrange(LOWEST_FREE_PORT, low)
        else:  # an unusual ephemeral range: let the kernel choose
            port = _bind(bind_host, 0)
        if port not in chosen and port not in avoid and _bind(bind_host, port):
            chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise OSError(f"no {count} free TCP ports on {bind_host}")


def _bind(host: str, port: int) -> int:
    """Bind ``host:port`` and let go; the port bound, or 0 if it is taken."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return 0
        return int(sock.getsockname()[1])


class Agent:
    """One node's agent. ``await nursery.start(agent.run)`` returns the bound ports."""

    def __init__(self, config: AgentConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.ready = False
        self.store: DiskStore | None = None
        self.membership: Membership | None = None
        self.node: SwarmNode | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[AgentPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        tune_httpcore()
        secret = config.cluster_secret
        if secret is None and config.cluster_secret_file is not None:
            secret = read_secret(config.cluster_secret_file)
        if secret is None:
            log.warning("no cluster secret: peer exchange is off, this node pulls alone")
        store = await DiskStore.load(
            config.data_dir, chunk_size=config.chunk_size, quota_bytes=config.store_quota
        )
        self.store = store
        store.min_free_bytes = config.min_free_disk
        store.on_evict = self.metrics.store_evictions.inc
        store.on_chunk_lost = self.metrics.store_chunks_lost.inc
        self.download_limit = RateLimiter(config.download_rate)
        self.metrics.store_quota_bytes.set(config.store_quota)
        self.metrics.store_bytes.set_function(lambda: store.used_bytes)
        credentials = Credentials.load(config.credentials_file) if config.credentials_file else None
        # Only the registries the operator listed may be on loopback, link-local or metadata
        # addresses; any other host a client's ns (or a redirect) names is checked when it is
        # connected to (p2pull.upstream.addresses).
        policy = AddressPolicy.trusting(listed_origins(config.upstreams, config.default_upstream))
        refused = self.metrics.upstream_refused
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=30.0),
            transport=guarded_transport(
                policy,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                on_refused=lambda reason: refused.labels(reason).inc(),
            ),
            follow_redirects=False,
        ) as http:
            upstreams = RegistrySet(
                http,
                metrics=self.metrics,
                upstreams=config.upstreams,
                default=config.default_upstream,
                only_listed=config.only_listed_upstreams,
                credentials=credentials,
            )
            blobs = BlobService(
                store=store,
                upstreams=upstreams,
                metrics=self.metrics,
                download_limit=self.download_limit,
            )
            manifests = ManifestService(store=store, upstreams=upstreams)
            admin = Admin(
                store=store,
                blobs=blobs,
                metrics=self.metrics,
                node=lambda: self.node,
                membership=lambda: self.membership,
            )
            mirror = Mirror(
                blobs=blobs, manifests=manifests, metrics=self.metrics, admin=admin.handle
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(blobs.run)
                peer_port = None
                if secret is not None:
                    peer_port = await self._start_swarm(nursery, secret, store, blobs)
                mirror_port = await nursery.start(
                    self._http_server(
                        "mirror", mirror.handle, config.mirror_addr, config.mirror_max_connections
                    ).run
                )
                metrics_port = await nursery.start(
                    self._http_server(
                        "metrics", self._admin, config.metrics_addr, config.metrics_max_connections
                    ).run
                )
                self.ready = True
                log.info(
                    "agent ready",
                    extra={
                        "mirror_port": mirror_port,
                        "metrics_port": metrics_port,
                        "data_dir": str(config.data_dir),
                    },
                )
                task_status.started(
                    AgentPorts(mirror=mirror_port, metrics=metrics_port, peer=peer_port)
                )

    def _http_server(
        self, name: str, handler: Handler, addr: HostPort, max_connections: int
    ) -> HttpServer:
        refused = self.metrics.http_refused
        return HttpServer(
            handler,
            host=addr.host,
            port=addr.port,
            limits=ServerLimits(max_connections=max_connections),
            on_refused=lambda reason: refused.labels(name, reason).inc(),
        )

    async def _start_swarm(
        self, nursery: trio.Nursery, secret: bytes, store: DiskStore, blobs: BlobService
    ) -> int:
        config = self.config
        host = advertised_host(config)
        port = config.peer_addr.port or free_ports(config.peer_addr.host, 1)[0]
        member = Member.of(host, port)
        membership = Membership(self_member=member)
        self.membership = membership
        self.metrics.peers_known.set_function(lambda: len(membership.live(now=trio.current_time())))
        node = SwarmNode(
            config=SwarmConfig(
                member=member,
                secret=secret,
                bind_host=config.peer_addr.host,
                # Frames after the handshake: one chunk of this size plus a Piece header. A peer's
                # blob with larger chunks is fetched from elsewhere (p2pull.peer.wire).
                max_chunk_size=config.chunk_size,
                upload_slots=config.max_uploads,
                upload_rate=config.upload_rate,
            ),
            download_limit=self.download_limit,
            membership=membership,
            store=store,
            blobs=blobs,
            metrics=self.metrics,
        )
        bound = await nursery.start(node.run)
        blobs.swarm = node
        self.node = node
        discovery: StaticDiscovery | MdnsDiscovery | DnsDiscovery
        if config.discovery == "static":
            peers = [Member.of(p.host, p.port) for p in config.peers]
            discovery = StaticDiscovery(membership, peers)
        elif config.discovery == "mdns":
            discovery = MdnsDiscovery(membership, host=host, port=port)
        else:
            discovery = DnsDiscovery(config.discovery.removeprefix("dns:"), port, membership)
        await nursery.start(discovery.run)
        log.info("swarm on", extra={"node_id": member.node_id, "discovery": config.discovery})
        return int(bound)

    async def _admin(self, request: Request) -> Response:
        if request.path == "/metrics":
            return Response(
                200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.metrics.registry)
            )
        if request.path == "/healthz":
            return Response(200, [("content-type", "text/plain")], b"ok\n")
        if request.path == "/readyz":
            if self.ready:
                return Response(200, [("content-type", "text/plain")], b"ready\n")
            return Response(503, [("content-type", "text/plain")], b"starting\n")
        return Response(404, [("content-type", "text/plain")], b"not found\n")
