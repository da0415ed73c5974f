"""The agent's local admin API, under ``/_p2pull/v1/`` on the mirror listener.

Only loopback clients are served (the mirror normally listens on 127.0.0.1 only; this holds even
if an operator binds it wider). ``GET status`` describes the node; ``DELETE blobs/<digest>``
drops a blob from this node's store.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

import trio

from p2pull import __version__
from p2pull.blobs import BlobService
from p2pull.errors import P2pullError
from p2pull.httpserver import Request, Response
from p2pull.membership import Member, Membership
from p2pull.metrics import Metrics
from p2pull.peer.messages import Interested, Message, Purge
from p2pull.reference import Digest, RegistryHost, validate_name
from p2pull.store.types import BlobStore
from p2pull.swarm.node import SwarmNode

PREFIX = "/_p2pull/v1/"


def _json(status: int, body: object) -> Response:
    return Response(status, [("content-type", "application/json")], json.dumps(body).encode())


def _is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Admin:
    def __init__(
        self,
        *,
        store: BlobStore,
        blobs: BlobService,
        metrics: Metrics,
        node: Callable[[], SwarmNode | None] = lambda: None,
        membership: Callable[[], Membership | None] = lambda: None,
        containerd: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._metrics = metrics
        self._node = node
        self._membership = membership
        self._containerd = containerd

    async def handle(self, request: Request) -> Response:
        if not _is_loopback(request.peer):
            return _json(403, {"error": "the admin API answers local clients only"})
        path = request.path.removeprefix(PREFIX)
        if request.path == f"{PREFIX}status" and request.method == "GET":
            return _json(200, self.status())
        if path.startswith("blobs/") and request.method == "DELETE":
            return await self._purge(
                path.removeprefix("blobs/"), all_nodes=request.query.get("all_nodes") == "1"
            )
        if path == "prefetch" and request.method == "POST":
            return await self._prefetch(request.query)
        return _json(404, {"error": f"no admin endpoint {request.method} {request.path[:100]}"})

    async def _purge(self, raw: str, *, all_nodes: bool) -> Response:
        try:
            digest = Digest.parse(raw)
        except P2pullError as exc:
            return _json(400, {"error": str(exc)})
        status, answer = await self._purge_here(digest)
        if all_nodes:
            told, unreachable = await self._tell_everyone([Purge(str(digest))])
            answer.update({"nodes_told": told, "unreachable": unreachable})
            if status == 404:  # not held here, but the others were told: that is a success
                status = 200
        return _json(status, answer)

    async def _purge_here(self, digest: Digest) -> tuple[int, dict[str, Any]]:
        if digest in self._blobs.transfers:
            return 409, {"error": f"{digest} is being downloaded; try again when done"}
        blob = self._store.lookup(digest)
        if blob is None:
            return 404, {"error": f"{digest} is not in this node's store"}
        removed = await self._store.remove(digest)
        return 200, {"removed": removed, "digest": str(digest), "bytes": blob.size}

    async def _prefetch(self, query: dict[str, str]) -> Response:
        """Start downloading blobs on this node and, with ``all_nodes=1``, on every live member
        (an ``Interested`` makes a node fetch a blob through the swarm)."""
        try:
            name = validate_name(query.get("name", ""))
            ns = query.get("ns") or None
            if ns is not None:
                ns = str(RegistryHost.parse(ns))
            digests = [Digest.parse(d) for d in query.get("digests", "").split(",") if d]
        except P2pullError as exc:
            return _json(400, {"error": str(exc)})
        started = sum(self._blobs.ensure(ns, name, d) is not None for d in digests)
        told: list[str] = []
        unreachable: list[str] = []
        if query.get("all_nodes") == "1":
            told, unreachable = await self._tell_everyone(
                [Interested(str(digest), name, ns) for digest in digests]
            )
        return _json(
            200,
            {"started_here": started, "nodes_told": sorted(told), "unreachable": unreachable},
        )

    async def _tell_everyone(self, messages: list[Message]) -> tuple[list[str], list[str]]:
        """Send ``messages`` to every live member; returns (told, unreachable) node ids."""
        node, membership = self._node(), self._membership()
        told: list[str] = []
        unreachable: list[str] = []
        if node is None or membership is None:
            return told, unreachable
        me = membership.self_member.node_id
        others = [m for m in membership.live(now=trio.current_time()) if m.node_id != me]

        async def tell(member: Member) -> None:
            try:
                link = await node.pool.connect(member)
            except P2pullError:
                unreachable.append(member.node_id)
                return
            for message in messages:
                link.send(message)
            told.append(member.node_id)

        async with trio.open_nursery() as nursery:
            for member in others:
                nursery.start_soon(tell, member)
        return sorted(told), sorted(unreachable)

    def _served(self) -> dict[str, float]:
        registry = self._metrics.registry
        return {
            source: registry.get_sample_value("p2pull_served_bytes_total", {"source": source})
            or 0.0
            for source in ("local", "peer", "origin")
        }

    def status(self) -> dict[str, Any]:
        served = self._served()
        total = sum(served.values())
        node, membership = self._node(), self._membership()
        peers: list[dict[str, Any]] = []
        if membership is not None:
            now = trio.current_time()
            live = {m.node_id for m in membership.live(now=now)}
            suspected = set(membership.suspected())
            known = live | suspected
            for node_id in sorted(known - {membership.self_member.node_id}):
                peers.append(
                    {
                        "node_id": node_id,
                        "connected": node is not None and node.pool.link(node_id) is not None,
                        "suspected": node_id in suspected,
                    }
                )
        swarms = []
        if node is not None:
            for snapshot in node.snapshots():
                swarms.append(
                    {
                        "digest": snapshot.digest,
                        "role": "seed" if snapshot.seeding else "leech",
                        "phase": snapshot.phase.value,
                        "seed": snapshot.seed,
                        "chunks": snapshot.chunks or None,
                        "have": snapshot.held,
                        "peers": snapshot.peers,
                    }
                )
        digests = self._store.digests()
        complete = [d for d in digests if (b := self._store.lookup(d)) is not None and b.complete]
        return {
            "version": __version__,
            "node_id": membership.self_member.node_id if membership is not None else None,
            "swarm": node is not None,
            "peers": peers,
            "swarms": swarms,
            "transfers": [str(d) for d in self._blobs.transfers],
            "store": {
                "blobs": len(digests),
                "complete": len(complete),
                "bytes": self._store.used_bytes,
                "quota": getattr(self._store, "quota_bytes", 0),
            },
            "served_bytes": served,
            # what containerd's config says about using this agent, and when it last did
            "containerd": self._containerd(),
            # bytes served that did not come from the origin, and the part that came from peers
            "hit_ratio": 1 - served["origin"] / total if total else None,
            "peer_ratio": served["peer"] / total if total else None,
        }
