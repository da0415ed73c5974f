"""The start-up check of containerd's registry configuration: the judgement of a config (pure),
real containerd's own view of a config file (``containerd --config FILE config dump``: its
defaults included), and what a running agent reports (metric, ``p2pull status``, last use)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from agent.admin_cli import render_status
from agent.config import load_agent_config
from agent.service import Agent
from p2pull.containerd_check import State, check_text, inspect
from p2pull.imagewalk import PREFETCH_HEADER
from p2pull.testing.origin import TestOrigin

CONTAINERD = shutil.which("containerd")
needs_containerd = pytest.mark.skipif(CONTAINERD is None, reason="containerd not installed")

V2_SET = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/c.d"\n'
V3_IMAGES = '[plugins."io.containerd.cri.v1.images"]'


@pytest.mark.parametrize(
    ("text", "state", "config_path"),
    [
        pytest.param(V2_SET, State.OK, "/etc/c.d", id="v2-set"),
        pytest.param(
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\nbin_dir = "/usr/lib/cni"\n',
            State.CONFIG_PATH_UNSET,
            None,
            id="v2-cri-without-config-path",
        ),
        pytest.param("version = 2\n", State.CONFIG_PATH_UNSET, None, id="v2-empty"),
        pytest.param(
            V2_SET.replace('"/etc/c.d"', '""'), State.CONFIG_PATH_UNSET, None, id="v2-empty-path"
        ),
        pytest.param(
            '[plugins.cri.registry]\nconfig_path = "/etc/c.d"\n', State.OK, "/etc/c.d", id="v1"
        ),
        pytest.param(
            f"version = 3\n{V3_IMAGES}\nuse_local_image_pull = true\n",
            State.OK,
            "/etc/containerd/certs.d:/etc/docker/certs.d",
            id="v3-default-path-local-pull",
        ),
        pytest.param(
            "version = 3\n",
            State.TRANSFER_SERVICE,
            "/etc/containerd/certs.d:/etc/docker/certs.d",
            id="v3-transfer-service",
        ),
        pytest.param(
            f'version = 3\n{V3_IMAGES}\nuse_local_image_pull = true\n[plugins."io.containerd.cri'
            '.v1.images".registry]\nconfig_path = ""\n',
            State.CONFIG_PATH_UNSET,
            None,
            id="v3-empty-path",
        ),
        pytest.param("version = [", State.UNREADABLE, None, id="not-toml"),
    ],
)
def test_a_config_is_judged(text: str, state: State, config_path: str | None) -> None:
    check = check_text(text, source="config.toml")
    assert (check.state, check.config_path) == (state, config_path)
    assert check.uses_mirror is (state is State.OK)
    if state in (State.CONFIG_PATH_UNSET, State.TRANSFER_SERVICE):
        assert "restart containerd" in check.detail


@needs_containerd
@pytest.mark.parametrize(
    ("written", "state"),
    [
        pytest.param("version = 2\n", State.CONFIG_PATH_UNSET, id="unset-by-default"),
        pytest.param(V2_SET, State.OK, id="set"),
    ],
)
def test_real_containerd_dumps_what_the_check_reads(
    tmp_path: Path, written: str, state: State
) -> None:
    """containerd's merged view of a file (its built-in defaults included) judges like the file
    itself: in particular the 1.6 default is config_path = "" (containerd ignores hosts.toml)."""
    assert CONTAINERD is not None
    config = tmp_path / "config.toml"
    config.write_text(written)
    done = subprocess.run(
        [CONTAINERD, "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    dumped = check_text(done.stdout, source="containerd config dump")
    assert dumped.state is state is check_text(written, source=str(config)).state


async def test_inspect_reads_the_file_it_is_given(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_SET)
    with trio.fail_after(10):
        assert (await inspect(str(config))).state is State.OK
        assert (await inspect(str(tmp_path / "missing.toml"))).state is State.NOT_FOUND
        assert (await inspect("off")).state is State.OFF


async def test_the_agent_reports_containerd_and_when_containerd_last_used_it(
    tmp_path: Path,
) -> None:
    containerd_config = tmp_path / "config.toml"
    containerd_config.write_text("version = 2\n")  # containerd 1.6 without config_path
    origin = TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob("team/app", b"layer bytes" * 100)
            config = load_agent_config(
                [
                    "--standalone", "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
                    "--data-dir", str(tmp_path / "store"),
                    "--upstream", f"{origin.netloc}={origin.url}",
                    "--check-containerd", str(containerd_config),
                ],
                env={},
            )  # fmt: skip
            agent = Agent(config)
            ports = await nursery.start(agent.run)
            mirror = f"http://127.0.0.1:{ports.mirror}"
            url = f"{mirror}/v2/team/app/blobs/{digest}?ns={origin.netloc}"

            def sample(name: str, **labels: str) -> float:
                return agent.metrics.registry.get_sample_value(name, labels) or 0.0

            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{ports.metrics}/metrics")).text
                assert 'p2pull_containerd_config{state="config_path_unset"} 1.0' in metrics
                assert 'p2pull_containerd_config{state="ok"} 0.0' in metrics
                assert "p2pull_mirror_last_success_timestamp_seconds 0.0" in metrics
                status = (await client.get(f"{mirror}/_p2pull/v1/status")).json()
                assert status["containerd"]["state"] == "config_path_unset"
                assert status["containerd"]["source"] == str(containerd_config)
                assert status["containerd"]["last_mirror_success"] is None
                shown = render_status(status)
                assert "NOT USING THE MIRROR: containerd reads no hosts.toml" in shown
                assert "has not pulled through it since the agent started" in shown

                # a prefetch is not containerd using the mirror; a client's pull is
                assert (await client.get(url, headers={PREFETCH_HEADER: "1"})).status_code == 200
                assert sample("p2pull_mirror_last_success_timestamp_seconds") == 0
                assert (await client.get(url)).status_code == 200
                last = sample("p2pull_mirror_last_success_timestamp_seconds")
                assert last > 1e9
                assert (await client.get(f"{mirror}/v2/team/app/blobs/sha256:{'0' * 64}")).is_error
                assert sample("p2pull_mirror_last_success_timestamp_seconds") == last
                status = (await client.get(f"{mirror}/_p2pull/v1/status")).json()
                assert status["containerd"]["last_mirror_success"] == last
                assert "last served it" in render_status(status)
            nursery.cancel_scope.cancel()
