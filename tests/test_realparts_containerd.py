"""containerd 1.6 pulls through hosts.toml files written by :mod:`p2pull.containerd`.

Real docker-registry, skopeo, containerd and ctr (see tests/realparts.py). What these establish:
the agent can stop at any time (containerd falls back to ``server``), real containerd accepts what
``render_hosts_toml`` writes into an operator's file, and p2pull's host is tried first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from p2pull.containerd import apply, remove
from tests.realparts import (
    CountingProxy,
    OciImage,
    Stack,
    free_port,
    make_oci_layout,
    open_stack,
    push_image,
    requested_urls,
)

pytestmark = pytest.mark.realparts

DEADLINE = 120
LAYERS = [1536 * 1024, 2 * 1024 * 1024, 768 * 1024]  # incompressible: 4.3 MiB on the wire
REPO = "p2pull/synthetic"


@contextlib.asynccontextmanager
async def pushed_image(workdir: Path) -> AsyncIterator[tuple[Stack, OciImage, str]]:
    async with open_stack(workdir) as stack:
        image = make_oci_layout(workdir / "image", layers=LAYERS, seed=7, tag="v1")
        ref = f"{stack.registry.host}/{REPO}:v1"
        await push_image(image, ref)
        yield stack, image, ref


async def pull_ok(stack: Stack, ref: str, hosts_dir: Path) -> list[str]:
    done = await stack.containerd.pull(ref, hosts_dir=hosts_dir)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    assert await stack.containerd.is_unpacked(ref)
    return requested_urls(done.stderr)


async def test_pull_falls_back_to_origin_when_agent_is_down(workdir: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with pushed_image(workdir) as (stack, image, ref):
            registry, dead = stack.registry, f"127.0.0.1:{free_port()}"
            certs = workdir / "certs.d"
            apply(
                certs,
                registries=[registry.host],
                mirror_url=f"http://{dead}",
                server_urls={registry.host: registry.url},
            )

            urls = await pull_ok(stack, ref, certs)

    # containerd tries the dead agent first for the manifest and again for every blob
    tried_agent = [u for u in urls if u.startswith(f"http://{dead}/")]
    assert len(tried_agent) == 2 + len(image.layers) + 1  # HEAD tag, manifest, layers, config
    assert any(u.startswith(f"{registry.url}/v2/{REPO}/manifests/v1") for u in urls)


OPERATOR_FILE = """\
# Operator's file: p2pull must keep every line of it.
server = "{server}"  # the origin

# in-house pull-through cache
[host."http://{cache}"]
  capabilities = ["pull", "resolve"]
  [host."http://{cache}".header]
    X-Operator = ["kept"]
"""


@pytest.mark.parametrize("agent_up", [True, False], ids=["agent-up", "agent-down"])
async def test_operator_file_kept_and_agent_tried_first(workdir: Path, *, agent_up: bool) -> None:
    with trio.fail_after(DEADLINE):
        async with pushed_image(workdir) as (stack, image, ref):
            registry = stack.registry
            agent = CountingProxy("127.0.0.1", registry.port)  # a transparent stand-in agent
            cache = CountingProxy("127.0.0.1", registry.port)  # the operator's own cache
            await stack.nursery.start(cache.run)
            agent_port = await stack.nursery.start(agent.run) if agent_up else free_port()
            hosts_toml = workdir / "certs.d" / registry.host / "hosts.toml"
            hosts_toml.parent.mkdir(parents=True)
            original = OPERATOR_FILE.format(server=registry.url, cache=cache.host)
            hosts_toml.write_text(original)
            apply(
                workdir / "certs.d",
                registries=[registry.host],
                mirror_url=f"http://127.0.0.1:{agent_port}",
                server_urls=None,
            )
            rendered = hosts_toml.read_text()

            await pull_ok(stack, ref, workdir / "certs.d")

    assert all(line in rendered for line in original.splitlines())
    ns = f"?ns={registry.host.replace(':', '%3A')}"
    served = agent if agent_up else cache
    assert [r.split(" ")[0] for r in served.requests] == ["HEAD"] + ["GET"] * 5
    assert all(r.endswith(ns) for r in served.requests)
    assert served.bytes_from_upstream >= image.total_size
    if agent_up:
        assert cache.connections == 0
    assert remove(workdir / "certs.d", registries=[registry.host]) == [hosts_toml]
    assert hosts_toml.read_text() == original


async def test_counting_proxy_sees_every_byte_from_the_origin(workdir: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with pushed_image(workdir) as (stack, image, ref):
            origin = CountingProxy("127.0.0.1", stack.registry.port)
            await stack.nursery.start(origin.run)
            certs = workdir / "certs.d"
            apply(
                certs,
                registries=[stack.registry.host],
                mirror_url=f"http://127.0.0.1:{free_port()}",
                server_urls={stack.registry.host: f"http://{origin.host}"},
            )

            await pull_ok(stack, ref, certs)

    assert origin.bytes_from_upstream >= image.total_size
    fetched = {r.split(" ")[1].split("?")[0].rsplit("/", 1)[1] for r in origin.requests}
    assert {image.manifest, image.config, *image.layers} <= fetched
