"""Real containerds on three nodes pull one image at once, each through its own agent; the
agents swarm, and the real registry (docker-registry behind a byte-counting proxy) sends the
image about once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agent.config import load_agent_config
from p2pull.containerd import apply
from tests.realparts import (
    Containerd,
    CountingProxy,
    OciImage,
    free_port,
    make_oci_layout,
    open_stack,
    push_image,
    short_tmpdir,
)
from tests.test_realparts_agent import assert_stored, blob_sizes, pull_ok, running_agent

pytestmark = pytest.mark.realparts

MiB = 1024 * 1024
NODES = 3
REPO, TAG = "p2pull/swarm", "v1"
HEADERS_ALLOWANCE = 32 * 1024


@pytest.fixture(scope="module")
def image() -> Iterator[OciImage]:
    with short_tmpdir("p2p-swimg-") as path:
        yield make_oci_layout(path / "layout", layers=[8 * MiB, 6 * MiB, 4 * MiB], seed=9, tag=TAG)


async def test_three_containerds_pull_through_swarming_agents_origin_sends_once(
    workdir: Path, image: OciImage
) -> None:
    secret = workdir / "secret"
    secret.write_bytes(b"realparts-swarm-secret-0123456789")
    peer_ports = [free_port() for _ in range(NODES)]
    peers = ",".join(f"127.0.0.1:{port}" for port in peer_ports)
    with trio.fail_after(120):
        async with open_stack(workdir) as stack:
            registry = stack.registry
            await push_image(image, f"{registry.host}/{REPO}:{TAG}")
            proxy = CountingProxy("127.0.0.1", registry.port)
            await stack.nursery.start(proxy.run)
            async with contextlib.AsyncExitStack() as running:
                agents = []
                for index, port in enumerate(peer_ports):
                    argv = [
                        "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
                        "--peer-addr", f"127.0.0.1:{port}", "--peers", peers,
                        "--cluster-secret-file", str(secret), "--chunk-size", "1MiB",
                        "--data-dir", str(workdir / f"agent{index}"),
                        "--upstream", f"{registry.host}=http://{proxy.host}",
                    ]  # fmt: skip
                    config = load_agent_config(argv, env={})
                    agents.append(await running.enter_async_context(running_agent(config)))
                nodes = []
                for index, agent in enumerate(agents):
                    certs = workdir / f"certs{index}"
                    apply(
                        certs,
                        registries=[registry.host],
                        mirror_url=agent.url,
                        server_urls={registry.host: registry.url},
                    )
                    containerd = stack.containerd
                    if index:
                        containerd = Containerd(workdir / f"ctd{index}")
                        await stack.nursery.start(containerd.run)
                    nodes.append((containerd, certs))
                ref = f"{registry.host}/{REPO}:{TAG}"
                async with trio.open_nursery() as pulls:
                    for containerd, certs in nodes:
                        pulls.start_soon(pull_ok, containerd, ref, certs)
                sizes = blob_sizes(image)
                for index, agent in enumerate(agents):
                    assert_stored(agent.store, workdir / f"agent{index}", sizes)
                from_peers = sum(agent.served("peer") for agent in agents)
    layer_bytes = sum(sizes[d] for d in image.layers)
    # three nodes pulled the image; the registry sent it about once (manifests and tag HEADs
    # come from it on every node: they are small and counted in the allowance)
    assert proxy.bytes_from_upstream <= 1.05 * image.total_size + NODES * HEADERS_ALLOWANCE, (
        proxy.bytes_from_upstream / image.total_size
    )
    assert from_peers >= (NODES - 1) * layer_bytes * 0.9
