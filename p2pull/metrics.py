"""All p2pull metrics, created on an injected CollectorRegistry (no process-wide registry).

Names follow ``p2pull_<subject>_<unit>[_total]``; label values are bounded (sources, kinds,
methods) and never a raw digest.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SOURCES = ("local", "peer", "origin")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.served_bytes = Counter(
            "p2pull_served_bytes",
            "Blob bytes sent to local clients, by where the agent got them",
            ["source"],
            registry=r,
        )
        self.fetched_bytes = Counter(
            "p2pull_fetched_bytes",
            "Blob bytes the agent fetched into its store, by source",
            ["source"],
            registry=r,
        )
        self.upstream_bytes = Counter(
            "p2pull_upstream_bytes",
            "Bytes received from upstream registries (blobs and manifests)",
            registry=r,
        )
        self.upstream_requests = Counter(
            "p2pull_upstream_requests",
            "Requests sent to upstream registries, by kind and HTTP status class",
            ["kind", "status"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "p2pull_upstream_errors",
            "Upstream failures, by kind (connect, timeout, status_5xx, truncated, digest, auth)",
            ["kind"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "p2pull_upstream_retries", "Upstream requests retried after an error", registry=r
        )
        self.token_fetches = Counter(
            "p2pull_upstream_token_fetches", "Bearer tokens fetched from a token realm", registry=r
        )
        self.origin_fetchers = Gauge(
            "p2pull_origin_fetchers",
            "Blob downloads from the origin running now on this node",
            registry=r,
        )
        self.mirror_requests = Counter(
            "p2pull_mirror_requests",
            "Mirror requests answered, by endpoint kind, method and status",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.mirror_latency = Histogram(
            "p2pull_mirror_response_seconds",
            "Time from request to response headers, by endpoint kind",
            ["endpoint"],
            buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.chunks_verified = Counter(
            "p2pull_chunks_verified", "Chunks whose sha256 was checked and stored", registry=r
        )
        self.chunks_rejected = Counter(
            "p2pull_chunks_rejected", "Chunks refused because their hash did not match", registry=r
        )
        self.blobs_completed = Counter(
            "p2pull_blobs_completed", "Blobs whose whole digest was verified", registry=r
        )
        self.digest_mismatches = Counter(
            "p2pull_blob_digest_mismatches", "Whole blobs refused: bytes did not match", registry=r
        )
        self.store_bytes = Gauge(
            "p2pull_store_bytes",
            "Bytes held in the content store (complete and partial)",
            registry=r,
        )
        self.store_quota_bytes = Gauge(
            "p2pull_store_quota_bytes", "Configured store quota in bytes (0: none)", registry=r
        )
        self.peer_upload_bytes = Counter(
            "p2pull_peer_upload_bytes", "Chunk bytes sent to peers", registry=r
        )
        self.peer_links = Gauge(
            "p2pull_peer_links", "Authenticated connections to peers open now", registry=r
        )
        self.swarms = Gauge(
            "p2pull_swarms", "Blobs this node is downloading through the swarm now", registry=r
        )
        self.passthrough_blobs = Counter(
            "p2pull_passthrough_blobs",
            "Blobs served straight from the origin without caching (store full / low disk)",
            registry=r,
        )
        self.store_evictions = Counter(
            "p2pull_store_evictions", "Blobs evicted by the LRU quota", registry=r
        )
