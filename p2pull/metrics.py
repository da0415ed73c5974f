"""All p2pull metrics, created on an injected CollectorRegistry (no process-wide registry).

Names follow ``p2pull_<subject>_<unit>[_total]``; label values are bounded (sources, kinds,
methods, states) and never a digest: every blob would leave a series of its own behind.
The process collector (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, open
file descriptors) is on the same registry.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from p2pull import __version__

SOURCES = ("local", "peer", "origin")
CONTAINERD_STATES = (
    "ok",
    "config_path_unset",
    "transfer_service",
    "unreadable",
    "not_found",
    "off",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "p2pull_build_info",
            "Always 1; the labels say which p2pull and Python this agent runs",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.containerd_config = Gauge(
            "p2pull_containerd_config",
            "1 for the state of containerd's registry configuration found at start (ok: "
            "config_path is set, so containerd reads the hosts.toml files that name the agent)",
            ["state"],
            registry=r,
        )
        self.mirror_last_success = Gauge(
            "p2pull_mirror_last_success_timestamp_seconds",
            "Unix time of the last manifest or blob request a client (containerd) got a 2xx "
            "answer for; 0: none since the agent started",
            registry=r,
        )
        self.prefetched_bytes = Counter(
            "p2pull_prefetched_bytes",
            "Blob bytes read by `p2pull prefetch` through the mirror, by where the agent got "
            "them (not counted in p2pull_served_bytes_total)",
            ["source"],
            registry=r,
        )
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
        self.upstream_refused = Counter(
            "p2pull_upstream_refused",
            "Upstream connections not made: the host is at an address the agent does not "
            "contact for clients, by reason (loopback, link_local, metadata, unspecified, "
            "multicast, reserved, port)",
            ["reason"],
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
        self.first_byte = Histogram(
            "p2pull_mirror_first_byte_seconds",
            "Time from a blob request to its first body byte leaving the agent",
            buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.swarm_members = Gauge(
            "p2pull_swarm_members",
            "Peers in the swarms of the blobs this node is downloading now, summed "
            "(divide by p2pull_swarms for the average swarm size)",
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
        self.chunks_pushed = Counter(
            "p2pull_chunks_pushed",
            "Chunks sent to peers unasked: the seed hands each chunk from the origin to one "
            "peer, which relays it to the others",
            registry=r,
        )
        self.peer_links = Gauge(
            "p2pull_peer_links", "Authenticated connections to peers open now", registry=r
        )
        self.peer_messages = Counter(
            "p2pull_peer_messages",
            "Peer protocol messages, pieces included, by direction (sent, received): control "
            "traffic grows with chunks x members, the first cost of a larger swarm",
            ["direction"],
            registry=r,
        )
        self.swarms = Gauge(
            "p2pull_swarms", "Blobs this node is downloading through the swarm now", registry=r
        )
        self.passthrough_blobs = Counter(
            "p2pull_passthrough_blobs",
            "Blobs served without caching (store full): from peers in a window of memory, or "
            "from the origin",
            registry=r,
        )
        self.peers_known = Gauge(
            "p2pull_peers_known",
            "Members in this node's live view of the cluster, itself included (discovered and "
            "not suspected): the number of nodes when discovery works, 1 when it finds nobody, "
            "0 with the swarm off (--standalone)",
            registry=r,
        )
        self.store_evictions = Counter(
            "p2pull_store_evictions", "Blobs evicted by the LRU quota", registry=r
        )
        self.store_chunks_lost = Counter(
            "p2pull_store_chunks_lost",
            "Stored chunks that did not match their recorded sha256 when read back (disk rot, "
            "torn writes): dropped and fetched again",
            registry=r,
        )
        self.http_refused = Counter(
            "p2pull_http_refused",
            "Connections an HTTP server ended on its own, by server (mirror, metrics) and reason "
            "(over_cap, timeout, bad_request, error: an unexpected exception, logged)",
            ["server", "reason"],
            registry=r,
        )
        for direction in ("sent", "received"):
            self.peer_messages.labels(direction)
        for source in SOURCES:  # the series exist at 0 before the first byte
            self.served_bytes.labels(source)
            self.fetched_bytes.labels(source)
            self.prefetched_bytes.labels(source)
        for state in CONTAINERD_STATES:
            self.containerd_config.labels(state)

    def set_containerd_state(self, state: str) -> None:
        for known in CONTAINERD_STATES:
            self.containerd_config.labels(known).set(1 if known == state else 0)
