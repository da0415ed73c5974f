"""The kubelet's pull path: CRI ``PullImage`` on containerd 1.6 goes through the agent exactly
when the CRI plugin's registry ``config_path`` names the certs.d that p2pull writes.

Real docker-registry, skopeo and containerd with its CRI plugin on (tests/realparts.py); the
CRI client (tests/cri_client.py) makes the kubelet's gRPC calls on containerd's socket. The
image reference names a counting proxy in front of the registry: to containerd the proxy *is*
the registry, while the agent reaches the registry without it. So the proxy counts what
containerd fetched from the origin itself, and the agent's /metrics what it served. The same
config.toml that containerd runs with goes through p2pull's own containerd check, whose
verdict must match what containerd did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pull.containerd import apply
from p2pull.containerd_check import State
from tests.cri_client import CriClient
from tests.realparts import (
    Containerd,
    CountingProxy,
    CriPlugin,
    OciImage,
    Registry,
    make_oci_layout,
    push_image,
    short_tmpdir,
)
from tests.test_realparts_agent import agent_config, background, blob_sizes, running_agent

pytestmark = pytest.mark.realparts

DEADLINE = 120
MiB = 1024 * 1024
LAYERS = [3 * MiB, 2 * MiB, MiB]  # incompressible: ~6 MiB on the wire
REPO = "p2pull/cri"
TAG = "v1"


@pytest.fixture(scope="module")
def image() -> Iterator[OciImage]:
    with short_tmpdir("p2p-cri-") as path:
        yield make_oci_layout(path / "layout", layers=LAYERS, seed=3, tag=TAG)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in a /metrics page, by its sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


@pytest.mark.parametrize("config_path_set", [True, False], ids=["config-path-set", "unset"])
async def test_cri_pull_goes_through_the_agent_only_with_config_path(
    workdir: Path, image: OciImage, *, config_path_set: bool
) -> None:
    certs = workdir / "certs.d"
    with trio.fail_after(DEADLINE):
        async with background() as services:
            registry = Registry(workdir / "registry")
            await services.start(registry.run)
            await push_image(image, f"{registry.host}/{REPO}:{TAG}")
            origin = CountingProxy("127.0.0.1", registry.port)
            await services.start(origin.run)
            ref = f"{origin.host}/{REPO}:{TAG}"
            cri = CriPlugin(config_path=certs if config_path_set else None)
            containerd = Containerd(workdir / "containerd", cri=cri)
            await services.start(containerd.run)
            config = agent_config(
                workdir / "agent",
                upstreams=[f"{origin.host}={registry.url}"],
                extra=["--check-containerd", str(containerd.config_file)],
            )
            async with running_agent(config) as agent:
                apply(
                    certs,
                    registries=[origin.host],
                    mirror_url=agent.url,
                    server_urls={origin.host: f"http://{origin.host}"},
                )
                with CriClient(containerd.address) as kubelet:
                    runtime = await kubelet.wait_ready()
                    image_ref = await kubelet.pull_image(ref)
                    listed = await kubelet.list_images()
                    status = await kubelet.image_status(ref)
                    absent = await kubelet.image_status(f"{origin.host}/{REPO}:absent")
                async with httpx.AsyncClient(trust_env=False) as http:
                    scraped = await http.get(f"http://127.0.0.1:{agent.ports.metrics}/metrics")

    assert runtime.startswith("containerd 1.6"), runtime
    # the kubelet sees the pulled image, by tag and by digest, whichever way it came
    assert image_ref == image.config  # CRI's image id: the config's digest
    (pulled,) = listed
    assert pulled.id == image.config
    assert list(pulled.repo_tags) == [ref]
    assert list(pulled.repo_digests) == [f"{origin.host}/{REPO}@{image.manifest}"]
    assert status is not None and status.id == image.config
    assert status.size == image.total_size  # manifest, config and layers as stored
    assert absent is None
    mirror_requests = samples(scraped.text, "p2pull_mirror_requests_total")
    (checked,) = [
        dict(labels)["state"]
        for labels, value in samples(scraped.text, "p2pull_containerd_config").items()
        if value == 1
    ]
    served_bytes = sum(samples(scraped.text, "p2pull_served_bytes_total").values())
    blobs = [image.config, *image.layers]
    blob_bytes = sum(blob_sizes(image)[d] for d in blobs)
    everything = [
        f"HEAD /v2/{REPO}/manifests/{TAG}",
        f"GET /v2/{REPO}/manifests/{image.manifest}",
        *(f"GET /v2/{REPO}/blobs/{d}" for d in blobs),
    ]
    if config_path_set:
        assert checked == State.OK.value
        # containerd asked the agent for everything, got it, and never went to the origin itself
        assert mirror_requests == {
            (("endpoint", "manifests"), ("method", "HEAD"), ("status", "200")): 1,
            (("endpoint", "manifests"), ("method", "GET"), ("status", "200")): 1,
            (("endpoint", "blobs"), ("method", "GET"), ("status", "200")): len(blobs),
        }
        assert served_bytes == blob_bytes
        assert origin.requests == [], "containerd went to the registry without the agent"
    else:
        assert checked == State.CONFIG_PATH_UNSET.value
        # containerd read no hosts.toml: it pulled straight from the registry, the agent saw nothing
        assert mirror_requests == {} and served_bytes == 0
        assert sorted(r.split("?")[0] for r in origin.requests) == sorted(everything)
        assert origin.bytes_from_upstream >= image.total_size
