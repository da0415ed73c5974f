"""N agents on 127.0.0.1 with static peers and a TestOrigin, for swarm tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from agent.config import AgentConfig, HostPort
from agent.service import Agent, AgentPorts
from p2pull.membership import Member
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.ports import free_port

SECRET = b"test-cluster-secret-0123456789abcdef"


@dataclass
class Node:
    agent: Agent
    ports: AgentPorts
    scope: trio.CancelScope
    stopped: trio.Event
    nursery: trio.Nursery

    @property
    def mirror_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mirror}"

    def metric(self, name: str, **labels: str) -> float:
        return self.agent.metrics.registry.get_sample_value(name, labels) or 0.0

    def stop(self) -> None:
        self.scope.cancel()

    async def restart(self, while_down: Callable[[Path], Awaitable[None]] | None = None) -> None:
        """Stop the agent, call ``while_down(data_dir)`` (damage its store, say), and start a
        new agent with the same configuration (same peer port; new mirror and metrics ports)."""
        self.stop()
        await self.stopped.wait()
        if while_down is not None:
            await while_down(self.agent.config.data_dir)
        fresh = await _start(self.nursery, self.agent.config)
        self.agent, self.ports, self.scope, self.stopped = (
            fresh.agent,
            fresh.ports,
            fresh.scope,
            fresh.stopped,
        )


async def _start(nursery: trio.Nursery, config: AgentConfig) -> Node:
    agent = Agent(config)
    scope, stopped = trio.CancelScope(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[AgentPorts] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await agent.run(task_status=task_status)
        finally:
            stopped.set()

    ports = await nursery.start(run)
    return Node(agent, ports, scope, stopped, nursery)


@asynccontextmanager
async def swarm(
    tmp_path: Path,
    origin: TestOrigin,
    count: int,
    *,
    chunk_size: int = 1 << 20,
    min_chunks: int = 1,  # blobs in chunks of exactly ``chunk_size`` unless a test asks
    extra_peers: list[Member] = [],  # noqa: B006 - read only
    upload_rate: int = 0,
    configure: Callable[[int, AgentConfig], AgentConfig] = lambda index, config: config,
) -> AsyncIterator[list[Node]]:
    """``count`` agents peered with each other (``configure`` may change node i's config)."""
    ports = [free_port() for _ in range(count)]
    peers = tuple(HostPort("127.0.0.1", port) for port in ports) + tuple(
        HostPort(m.host, m.port) for m in extra_peers
    )
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for index, port in enumerate(ports):
            config = AgentConfig(
                mirror_addr=HostPort("127.0.0.1", 0),
                metrics_addr=HostPort("127.0.0.1", 0),
                peer_addr=HostPort("127.0.0.1", port),
                data_dir=tmp_path / f"node{index}",
                upstreams={origin.netloc: origin.url},
                peers=peers,
                discovery="static",
                cluster_secret=SECRET,
                chunk_size=chunk_size,
                min_chunks=min_chunks,
                upload_rate=upload_rate,
                containerd_config="off",
                log_level="WARNING",
            )
            nodes.append(await _start(nursery, configure(index, config)))
        yield nodes
        nursery.cancel_scope.cancel()


async def get_blob(
    client: httpx.AsyncClient, node: Node, ns: str, name: str, digest: Digest
) -> bytes:
    response = await client.get(f"{node.mirror_url}/v2/{name}/blobs/{digest}?ns={ns}")
    response.raise_for_status()
    assert hashlib.sha256(response.content).hexdigest() == digest.hex
    return response.content
