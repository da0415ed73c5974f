"""Wires the library's services into one running node agent."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config import AgentConfig
from p2pull.blobs import BlobService
from p2pull.httpserver import HttpServer, Request, Response
from p2pull.manifests import ManifestService
from p2pull.metrics import Metrics
from p2pull.mirror import Mirror
from p2pull.store.disk import DiskStore
from p2pull.upstream.client import RegistrySet
from p2pull.upstream.credentials import Credentials

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


class Agent:
    """One node's agent. ``await nursery.start(agent.run)`` returns the bound ports."""

    def __init__(self, config: AgentConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.ready = False
        self.store: DiskStore | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[AgentPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        tune_httpcore()
        if config.peers or config.cluster_secret_file:
            log.warning(
                "peer exchange is not implemented yet: --peers/--cluster-secret-file ignored"
            )
        store = await DiskStore.load(
            config.data_dir, chunk_size=config.chunk_size, quota_bytes=config.store_quota
        )
        self.store = store
        self.metrics.store_quota_bytes.set(config.store_quota)
        self.metrics.store_bytes.set_function(lambda: store.used_bytes)
        credentials = Credentials.load(config.credentials_file) if config.credentials_file else None
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
        ) as http:
            upstreams = RegistrySet(
                http,
                metrics=self.metrics,
                upstreams=config.upstreams,
                default=config.default_upstream,
                credentials=credentials,
            )
            blobs = BlobService(store=store, upstreams=upstreams, metrics=self.metrics)
            manifests = ManifestService(store=store, upstreams=upstreams)
            mirror = Mirror(blobs=blobs, manifests=manifests, metrics=self.metrics)
            async with trio.open_nursery() as nursery:
                await nursery.start(blobs.run)
                mirror_port = await nursery.start(
                    HttpServer(
                        mirror.handle, host=config.mirror_addr.host, port=config.mirror_addr.port
                    ).run
                )
                metrics_port = await nursery.start(
                    HttpServer(
                        self._admin, host=config.metrics_addr.host, port=config.metrics_addr.port
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
                task_status.started(AgentPorts(mirror=mirror_port, metrics=metrics_port))

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
