"""The local admin API and the status / prefetch / purge commands against running agents."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import httpx
import pytest
import trio

from agent.admin_cli import render_status, run_prefetch, run_purge
from agent.cli import main
from p2pull.admin import _is_loopback
from p2pull.imageref import parse_image
from p2pull.testing.origin import TestOrigin, tar_layer
from tests.swarm_harness import swarm

MiB = 1 << 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io/nvidia/pytorch:24.05-py3"),
        ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
        ("127.0.0.1:5000/a/b@sha256:" + "a" * 64, "127.0.0.1:5000/a/b@sha256:" + "a" * 64),
        ("user/repo:v1", "docker.io/user/repo:v1"),
    ],
)
def test_image_references(text: str, expected: str) -> None:
    assert str(parse_image(text)) == expected


@pytest.mark.parametrize("peer", ["127.0.0.1:5000", "[::1]:80", "127.3.2.1:1"])
def test_loopback_peers_are_admin_clients(peer: str) -> None:
    assert _is_loopback(peer)


@pytest.mark.parametrize("peer", ["198.18.0.2:5000", "[fd00::1]:80", "?", ""])
def test_other_peers_are_not(peer: str) -> None:
    assert not _is_loopback(peer)


def test_commands_say_when_no_agent_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["prefetch", "ubuntu"], ["purge", "sha256:" + "b" * 64]):
        assert main([*command, "--mirror", "http://127.0.0.1:9"]) == 2
        assert "no p2pull agent answers at http://127.0.0.1:9" in capsys.readouterr().err


async def test_status_prefetch_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(2)
    layers = [tar_layer({"a.bin": rng.randbytes(3 * MiB)}), tar_layer({"b": rng.randbytes(MiB)})]
    origin = TestOrigin()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            manifest, layer_digests = origin.add_image("team/app", "v1", layers)
            async with swarm(tmp_path, origin, 2) as nodes:
                mirror = nodes[0].mirror_url
                image = f"{origin.netloc}/team/app:v1"
                args = argparse.Namespace(
                    mirror=mirror, images=[image], platform="linux/amd64", all_nodes=False
                )
                assert await run_prefetch(args) == 0
                store = nodes[0].agent.store
                assert store is not None
                for digest in (manifest, *layer_digests):
                    blob = store.lookup(digest)
                    assert blob is not None and blob.complete

                async with httpx.AsyncClient() as client:
                    status = (await client.get(f"{mirror}/_p2pull/v1/status")).json()
                assert status["swarm"] is True
                assert status["store"]["complete"] == 4  # manifest, config, two layers
                assert [p["node_id"] for p in status["peers"]] == [
                    nodes[1].agent.membership.self_member.node_id  # type: ignore[union-attr]
                ]
                # prefetch reads are not client pulls: counted apart, never as hits
                assert status["served_bytes"] == {"local": 0, "peer": 0, "origin": 0}
                prefetched = sum(
                    nodes[0].metric("p2pull_prefetched_bytes_total", source=source)
                    for source in ("local", "peer", "origin")
                )
                assert prefetched > 4 * MiB
                assert nodes[0].metric("p2pull_mirror_last_success_timestamp_seconds") == 0
                table = render_status(status)
                assert "hit ratio" in table and status["node_id"] in table

                purge = argparse.Namespace(mirror=mirror, targets=[str(layer_digests[0])])
                assert await run_purge(purge) == 0
                assert store.lookup(layer_digests[0]) is None
                purge_image = argparse.Namespace(
                    mirror=mirror, targets=[image], platform="linux/amd64"
                )
                assert await run_purge(purge_image) == 0  # already-gone blobs are not errors
                assert store.digests() == []
                out = capsys.readouterr().out
                assert f"{layer_digests[0]}: removed" in out
            nursery.cancel_scope.cancel()


async def test_prefetch_all_nodes_makes_every_node_fetch(tmp_path: Path) -> None:
    rng = random.Random(3)
    layers = [tar_layer({"w.bin": rng.randbytes(2 * MiB)}), tar_layer({"x": rng.randbytes(MiB)})]
    origin = TestOrigin()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            _, layer_digests = origin.add_image("team/big", "v2", layers)
            async with swarm(tmp_path, origin, 3) as nodes:
                args = argparse.Namespace(
                    mirror=nodes[0].mirror_url,
                    images=[f"{origin.netloc}/team/big:v2"],
                    platform="linux/amd64",
                    all_nodes=True,
                )
                assert await run_prefetch(args) == 0

                def everywhere() -> bool:
                    for node in nodes:
                        assert node.agent.store is not None
                        for digest in layer_digests:
                            blob = node.agent.store.lookup(digest)
                            if blob is None or not blob.complete:
                                return False
                    return True

                # the other nodes fetch in the background and nothing on this side signals when
                # they are done: wait for it, bounded by the test's deadline
                while not everywhere():  # noqa: ASYNC110
                    await trio.sleep(0.05)
                layer_bytes = sum(len(layer) for layer in layers)
                assert origin.bytes_sent < 1.2 * layer_bytes + 64 * 1024  # about once

                purge = argparse.Namespace(
                    mirror=nodes[0].mirror_url, targets=[str(layer_digests[0])], all_nodes=True
                )
                assert await run_purge(purge) == 0

                def gone_everywhere() -> bool:
                    return all(
                        n.agent.store is not None and n.agent.store.lookup(layer_digests[0]) is None
                        for n in nodes
                    )

                while not gone_everywhere():  # noqa: ASYNC110 - other nodes act in the background
                    await trio.sleep(0.05)
                assert all(
                    n.agent.store is not None and n.agent.store.lookup(layer_digests[1]) is not None
                    for n in nodes
                )
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("command", "mirror"),
    [
        pytest.param("status", "foo", id="status-no-port"),
        pytest.param("prefetch", "ftp://127.0.0.1:5050", id="prefetch-other-scheme"),
        pytest.param("purge", "http://127.0.0.1:5050/v2/x", id="purge-with-a-path"),
    ],
)
def test_a_mirror_that_is_not_an_agent_url_is_one_clear_line(
    command: str, mirror: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {"status": [], "prefetch": ["ubuntu"], "purge": ["sha256:" + "c" * 64]}[command]
    assert main([command, *target, "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert "--mirror / P2PULL_MIRROR: expected http://HOST:PORT" in err and mirror in err
    assert "Traceback" not in err


def test_a_mirror_without_a_scheme_is_taken_as_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prefetch", "ubuntu", "--mirror", "127.0.0.1:9"]) == 2
    assert "no p2pull agent answers at http://127.0.0.1:9" in capsys.readouterr().err


async def test_prefetch_says_why_the_agent_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent's answer carries the origin's reason (an OCI error body); prefetch prints it
    rather than a bare status."""
    origin = TestOrigin()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            _, (layer,) = origin.add_image("team/app", "v1", [tar_layer({"a": b"x" * 1000})])
            origin.fault(layer).fail_status = 401  # not retried: the agent answers at once
            origin.fault(layer).fail_times = 1_000_000
            async with swarm(tmp_path, origin, 1) as nodes:
                argv = ["prefetch", f"{origin.netloc}/team/app:v1", "--mirror", nodes[0].mirror_url]
                code = await trio.to_thread.run_sync(main, argv)
            nursery.cancel_scope.cancel()
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"blob {layer}: HTTP 502 (BLOB_UNKNOWN: " in err and ": 401 " in err, err
    assert "Traceback" not in err
