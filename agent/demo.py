"""``p2pull demo``: a local pull storm on loopback, on embedded defaults.

Starts the project's test origin with a multi-layer image, N agents (each its own data dir and
ports on 127.0.0.1), and a simultaneous pull of the image by clients on every node, each pulling
through its own node's agent the way containerd does. Prints live progress and a final table.

The agents find each other through a static peer list (loopback has no multicast to speak of)
and share one generated cluster secret; the origin sends each blob about once, to its seed.
"""

from __future__ import annotations

import argparse
import functools
import random
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from agent.config import AgentConfig, ConfigError, HostPort, parse_size
from agent.service import Agent, free_ports
from p2pull.imageref import ImageRef
from p2pull.imagewalk import fetch_blob, resolve
from p2pull.testing.origin import TestOrigin, tar_layer
from p2pull.testing.serve import random_bytes

NAME, TAG = "demo/pytorch-cuda", "2.5"


@dataclass
class Node:
    index: int
    agent: Agent
    mirror_url: str = ""
    received: int = 0
    times: list[float] = field(default_factory=list)

    def sample(self, metric: str, **labels: str) -> float:
        value = self.agent.metrics.registry.get_sample_value(metric, labels)
        return value or 0.0


def make_layers(size: int, count: int, *, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    per_layer = max(1, size // count)
    return [
        tar_layer({f"opt/layer{i}/blob.bin": random_bytes(rng, per_layer)}, compress=False)
        for i in range(count)
    ]


async def run_demo(args: argparse.Namespace) -> int:
    nodes_count, clients = args.nodes, args.clients
    size = parse_size(args.size)
    if not args.layers <= size <= 8 << 30:
        raise ConfigError(f"--size: expected {args.layers}B (one byte per layer) to 8GiB")
    workdir = (
        Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="p2pull-demo-"))
    )
    print(
        f"p2pull demo: {nodes_count} agents x {clients} clients, image {args.size} "
        f"in {args.layers} layers, origin throttled to {args.rate}/s per stream"
    )
    layers = make_layers(size, args.layers, seed=7)
    image_size = sum(len(layer) for layer in layers)
    origin = TestOrigin()
    rate = parse_size(args.rate)
    if rate:
        origin.faults.rate = rate
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            _, _ = origin.add_image(NAME, TAG, layers)
            nodes = []
            peer_ports = free_ports("127.0.0.1", nodes_count)
            peers = tuple(HostPort("127.0.0.1", port) for port in peer_ports)
            secret = secrets.token_bytes(32)
            for index in range(nodes_count):
                config = AgentConfig(
                    mirror_addr=HostPort("127.0.0.1", 0),
                    metrics_addr=HostPort("127.0.0.1", 0),
                    peer_addr=HostPort("127.0.0.1", peer_ports[index]),
                    data_dir=workdir / f"node{index}",
                    upstreams={origin.netloc: origin.url},
                    peers=peers,
                    discovery="static",
                    cluster_secret=secret,
                    log_level="WARNING",
                    containerd_config="off",  # loopback agents: no containerd pulls through them
                )
                node = Node(index, Agent(config))
                ports = await nursery.start(node.agent.run)
                node.mirror_url = f"http://127.0.0.1:{ports.mirror}"
                nodes.append(node)
            print(f"origin {origin.url}; agents on " + ", ".join(n.mirror_url for n in nodes))
            started = time.perf_counter()
            await _storm(nodes, clients, origin, image_size)
            elapsed = time.perf_counter() - started
            _report(nodes, origin, image_size, clients, elapsed)
            nursery.cancel_scope.cancel()
    finally:
        if not args.data_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def _storm(nodes: list[Node], clients: int, origin: TestOrigin, image_size: int) -> None:
    total = image_size * clients * len(nodes)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:

        async def one(node: Node) -> None:
            def count(n: int) -> None:
                node.received += n

            # what containerd does: resolve the tag, then config and layers in parallel
            started = trio.current_time()
            ref = ImageRef(registry=origin.netloc, name=NAME, tag=TAG, digest=None)
            image = await resolve(http, node.mirror_url, ref)
            async with trio.open_nursery() as blobs:
                for blob in image.blobs:
                    blobs.start_soon(
                        functools.partial(
                            fetch_blob, http, node.mirror_url, ref, blob, on_bytes=count
                        )
                    )
            node.times.append(trio.current_time() - started)

        async def progress() -> None:
            while True:
                await trio.sleep(0.5)
                parts = [
                    f"n{n.index}:{100 * n.received // (image_size * clients):3d}%" for n in nodes
                ]
                done = sum(n.received for n in nodes)
                line = f"  {100 * done // total:3d}% | " + " ".join(parts)
                line += f" | origin sent {origin.bytes_sent / 2**20:8.1f} MiB"
                print(line, flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress)
            async with trio.open_nursery() as pulls:
                for node in nodes:
                    for _ in range(clients):
                        pulls.start_soon(one, node)
            nursery.cancel_scope.cancel()


def _report(
    nodes: list[Node], origin: TestOrigin, image_size: int, clients: int, elapsed: float
) -> None:
    mib = 2**20
    print()
    print(
        f"{'node':>5} {'slowest pull s':>14} {'from origin MiB':>16} {'from peers MiB':>15} "
        f"{'served MiB':>11}"
    )
    for node in nodes:
        origin_bytes = node.sample("p2pull_fetched_bytes_total", source="origin")
        peer_bytes = node.sample("p2pull_fetched_bytes_total", source="peer")
        served = sum(
            node.sample("p2pull_served_bytes_total", source=s) for s in ("local", "origin", "peer")
        )
        print(
            f"{node.index:>5} {max(node.times):>14.2f} {origin_bytes / mib:>16.1f} "
            f"{peer_bytes / mib:>15.1f} {served / mib:>11.1f}"
        )
    print()
    print(
        f"image size           {image_size / mib:.1f} MiB, {len(nodes)} nodes x {clients} clients"
    )
    print(
        f"origin egress        {origin.bytes_sent / mib:.1f} MiB = "
        f"{origin.bytes_sent / image_size:.2f} x image size"
    )
    print(f"wall time            {elapsed:.2f} s")
    print("every pulled byte was verified against its digest")
    sys.stdout.flush()
