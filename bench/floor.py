"""The "floor" strategy of the swarm benchmark: what the machine allows any swarm.

Every node runs ``bench/floor_node.py``: a relay tree with no protocol (the first node fetches
from the origin and hands each chunk to one relay, the relay forwards it to every other node;
each node stores and hashes every chunk and streams the blob to its client). The clients, the
origin, the shaping and the measurements are the other strategies', so the floor's slowest node
is the time the bytes alone need here: p2pull's distance from it is what its protocol costs,
and what is left of the lower bound is the network's and the machine's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from agent.config import DEFAULT_MIN_CHUNKS
from bench.floor_node import HTTP_PORT
from p2pull.store.types import chunk_size_for
from tests.netns import Network, read_json_line

NODE = Path(__file__).resolve().parent / "floor_node.py"
__all__ = ["HTTP_PORT", "NODE", "start_floor"]  # each node's clients: http://IP:HTTP_PORT


async def start_floor(
    net: Network,
    *,
    workdir: Path,
    served: dict[str, Any],
    name: str,
    chunk_size: int,
    min_chunks: int = DEFAULT_MIN_CHUNKS,
    logdir: Path,
    env: dict[str, str],
) -> list[trio.Process]:
    """One floor node per host but the origin, the first of them the seed; returns once every
    one listens. The harness kills them at teardown."""
    nodes = net.hosts[1:]
    everyone = ",".join(host.ip for host in nodes)
    # each layer in the chunks an agent with these --chunk-size and --min-chunks would give it
    chunk_sizes = [chunk_size_for(size, chunk_size, min_chunks) for size in served["sizes"]]
    processes = []
    for host in nodes:
        argv = [
            sys.executable, str(NODE), "--me", host.ip, "--seed", nodes[0].ip,
            "--nodes", everyone, "--origin", served["url"], "--name", name,
            "--digests", ",".join(served["digests"]),
            "--sizes", ",".join(str(size) for size in served["sizes"]),
            "--chunk-sizes", ",".join(str(c) for c in chunk_sizes),
            "--store", str(workdir / f"node{host.index}"),
        ]  # fmt: skip
        with (logdir / f"floor{host.index}.log").open("wb") as err:
            processes.append(
                await net.start(host, *argv, env=env, stdout=subprocess.PIPE, stderr=err)
            )
    with trio.fail_after(30):
        for process in processes:
            if not (await read_json_line(process)).get("ready"):
                raise RuntimeError("a floor node did not start; see its log")
    return processes
