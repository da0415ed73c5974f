"""Wires the library's services into one running node agent."""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import httpx
import prometheus_client
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config import AgentConfig, ConfigError, HostPort
from p2pull.admin import Admin
from p2pull.blobs import BlobService
from p2pull.containerd_check import ContainerdCheck, State, inspect
from p2pull.discovery.dns import DnsDiscovery
from p2pull.discovery.mdns import MdnsDiscovery
from p2pull.discovery.static import StaticDiscovery
from p2pull.httpserver import Handler, HttpServer, Request, Response, ServerLimits
from p2pull.imagewalk import PREFETCH_HEADER
from p2pull.manifests import ManifestService
from p2pull.membership import Member, Membership
from p2pull.metrics import Metrics
from p2pull.mirror import Mirror
from p2pull.ratelimit import RateLimiter
from p2pull.sizes import SizeHints
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


def tune_prometheus() -> None:
    """No ``*_created`` series: one extra series per counter and histogram child that no
    dashboard or rule reads. A process-wide switch of prometheus_client, hence set here."""
    prometheus_client.disable_created_metrics()


HEALTH_PATHS = ("/metrics", "/healthz", "/readyz")


def listen_error(flag: str, addr: HostPort, exc: OSError) -> ConfigError:
    """A listener that cannot bind, said with the flag and address and what to do."""
    if exc.errno == errno.EADDRINUSE:
        hint = (
            f"something else listens on port {addr.port} "
            f"(`ss -ltnp 'sport = :{addr.port}'` shows what)"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = f"this host has no address {addr.host}"
    elif exc.errno == errno.EACCES:
        hint = f"port {addr.port} needs privileges this process lacks"
    else:
        hint = exc.strerror or str(exc)
    return ConfigError(f"{flag} {addr}: cannot listen: {hint}")


async def start_listener(
    nursery: trio.Nursery,
    run: Callable[..., Awaitable[object]],
    *,
    flag: str,
    addr: HostPort,
) -> int:
    try:
        port: int = await nursery.start(run)
    except OSError as exc:
        raise listen_error(flag, addr, exc) from exc
    return port


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
        self.containerd: ContainerdCheck | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[AgentPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        tune_httpcore()
        tune_prometheus()
        secret = config.cluster_secret
        if secret is None and config.cluster_secret_file is not None:
            secret = read_secret(config.cluster_secret_file)
        if secret is None and not config.standalone:
            raise ConfigError(
                "no cluster secret: peers cannot authenticate, so this node would pull alone; "
                "give it one (--cluster-secret-file) or run it with --standalone"
            )
        if config.standalone:
            log.info("standalone: no swarm, this node pulls every blob from the origin")
        store = await DiskStore.load(
            config.data_dir, chunk_size=config.chunk_size, quota_bytes=config.store_quota
        )
        self.store = store
        store.min_free_bytes = config.min_free_disk
        store.min_chunks = config.min_chunks
        store.on_evict = self.metrics.store_evictions.inc
        store.on_chunk_lost = self.metrics.store_chunks_lost.inc
        self.download_limit = RateLimiter(config.download_rate)
        self.metrics.store_quota_bytes.set(config.store_quota)
        self.metrics.store_bytes.set_function(lambda: store.used_bytes)
        credentials = Credentials.load(config.credentials_file) if config.credentials_file else None
        await self._check_containerd()
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
            sizes = SizeHints()  # blob sizes from the manifests served, for early headers
            blobs = BlobService(
                store=store,
                upstreams=upstreams,
                metrics=self.metrics,
                download_limit=self.download_limit,
                sizes=sizes,
            )
            manifests = ManifestService(store=store, upstreams=upstreams, sizes=sizes)
            admin = Admin(
                store=store,
                blobs=blobs,
                metrics=self.metrics,
                node=lambda: self.node,
                membership=lambda: self.membership,
                containerd=self._containerd_status,
            )
            mirror = Mirror(
                blobs=blobs, manifests=manifests, metrics=self.metrics, admin=admin.handle
            )

            async def serve_mirror(request: Request) -> Response:
                response = await mirror.handle(request)
                if (
                    response.status < 300
                    and request.path.startswith("/v2/")
                    and request.path != "/v2/"
                    and request.header(PREFETCH_HEADER) is None
                ):
                    self.metrics.mirror_last_success.set_to_current_time()
                return response

            async with trio.open_nursery() as nursery:
                await nursery.start(blobs.run)
                peer_port = None
                if secret is not None:
                    peer_port = await self._start_swarm(nursery, secret, store, blobs)
                mirror_port = await start_listener(
                    nursery,
                    self._http_server(
                        "mirror", serve_mirror, config.mirror_addr, config.mirror_max_connections
                    ).run,
                    flag="--mirror-addr",
                    addr=config.mirror_addr,
                )
                metrics_port = await start_listener(
                    nursery,
                    self._http_server(
                        "metrics", self._health, config.metrics_addr, config.metrics_max_connections
                    ).run,
                    flag="--metrics-addr",
                    addr=config.metrics_addr,
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
                rack_prefix=config.rack_prefix,
            ),
            download_limit=self.download_limit,
            membership=membership,
            store=store,
            blobs=blobs,
            metrics=self.metrics,
        )
        bound = await start_listener(
            nursery, node.run, flag="--peer-addr", addr=HostPort(config.peer_addr.host, port)
        )
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

    async def _check_containerd(self) -> None:
        check = await inspect(self.config.containerd_config)
        self.containerd = check
        self.metrics.set_containerd_state(check.state.value)
        where = {"source": check.source, "config_path": check.config_path}
        if check.state in (State.OK, State.OFF):
            log.info("containerd config: %s", check.state.value, extra=where)
        else:
            log.error(
                "containerd will not use this agent as its mirror (%s): %s",
                check.state.value,
                check.detail,
                extra=where,
            )

    def _containerd_status(self) -> dict[str, object]:
        check = self.containerd
        last = self.metrics.registry.get_sample_value(
            "p2pull_mirror_last_success_timestamp_seconds"
        )
        return {
            "state": check.state.value if check else None,
            "source": check.source if check else None,
            "config_path": check.config_path if check else None,
            "detail": check.detail if check else "",
            "last_mirror_success": last or None,
        }

    async def _health(self, request: Request) -> Response:
        """The metrics port: three read-only paths and nothing else (docs/security.md). The
        admin API and the mirror's routes are on the mirror listener only."""
        text = [("content-type", "text/plain")]
        if request.path not in HEALTH_PATHS:
            return Response(404, text, b"not found\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, [*text, ("allow", "GET, HEAD")], b"method not allowed\n")
        if request.path == "/metrics":
            return Response(
                200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.metrics.registry)
            )
        if request.path == "/healthz":
            return Response(200, text, b"ok\n")
        if self.ready:
            return Response(200, text, b"ready\n")
        return Response(503, text, b"starting\n")
