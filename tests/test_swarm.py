"""Agents exchanging chunks on 127.0.0.1: one origin download per blob for the whole swarm."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import trio

from p2pull.testing.origin import TestOrigin
from tests.swarm_harness import get_blob, swarm

NAME = "team/model"


async def test_five_agents_pull_one_blob_at_once_origin_sends_it_once(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(64 << 20)
    origin = TestOrigin()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, data)
            async with swarm(tmp_path, origin, 5) as nodes, httpx.AsyncClient(timeout=60) as http:
                results: list[bytes] = []

                async def pull(node_index: int) -> None:
                    results.append(
                        await get_blob(http, nodes[node_index], origin.netloc, NAME, digest)
                    )

                async with trio.open_nursery() as pulls:
                    for index in range(5):
                        pulls.start_soon(pull, index)
                assert results == [data] * 5
                assert origin.bytes_sent <= 1.05 * len(data), origin.bytes_sent / len(data)
                from_peers = sum(
                    n.metric("p2pull_fetched_bytes_total", source="peer") for n in nodes
                )
                assert from_peers >= 3.9 * len(data)
                served = {
                    source: sum(n.metric("p2pull_served_bytes_total", source=source) for n in nodes)
                    for source in ("local", "peer", "origin")
                }
                assert sum(served.values()) == 5 * len(data)
                assert served["peer"] >= 3.9 * len(data) and served["origin"] <= 1.05 * len(data)
                for node in nodes:
                    assert node.agent.store is not None
                    blob = node.agent.store.lookup(digest)
                    assert blob is not None and blob.complete
            nursery.cancel_scope.cancel()
