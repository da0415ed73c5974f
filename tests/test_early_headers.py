"""Blob sizes from the manifests served: a client gets its headers while the origin is down."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import trio

from p2pull.origin_fetch import ResumePolicy
from p2pull.reference import Digest
from p2pull.sizes import SizeHints, descriptor_sizes
from p2pull.testing.fakes import MemoryUpstream
from tests.mirror_harness import running_mirror

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def manifest(config: tuple[str, int], *layers: tuple[str, int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config[0],
                "size": config[1],
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}
                for d, n in layers
            ],
        }
    ).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(manifest((D1, 10), (D2, 2000)), {D1: 10, D2: 2000}, id="image-manifest"),
        pytest.param(
            json.dumps({"manifests": [{"digest": D1, "size": 500}]}).encode(), {}, id="index"
        ),
        pytest.param(b"not json", {}, id="garbage"),
        pytest.param(b"[1, 2]", {}, id="not-an-object"),
        pytest.param(manifest(("sha256:XYZ", 10), (D2, 5)), {D2: 5}, id="bad-digest-skipped"),
        pytest.param(manifest((D1, -1), (D2, True)), {}, id="bad-sizes-skipped"),  # type: ignore[arg-type]
    ],
)
def test_sizes_come_from_image_manifests_only(body: bytes, expected: dict[str, int]) -> None:
    assert {str(d): n for d, n in descriptor_sizes(body).items()} == expected


def test_hints_keep_the_most_recent() -> None:
    hints = SizeHints(limit=2)
    hints.learn(manifest((D1, 1)))
    hints.learn(manifest((D2, 2)))
    hints.learn(manifest((D1, 1)))  # D1 is the most recent again
    hints.learn(manifest(("sha256:" + "3" * 64, 3)))
    assert hints.get(Digest.parse(D1)) == 1 and hints.get(Digest.parse(D2)) is None


@pytest.mark.parametrize("manifest_first", [True, False], ids=["manifest-first", "blob-alone"])
async def test_a_client_gets_headers_while_the_origin_is_down_when_a_manifest_named_the_size(
    tmp_path: Path, manifest_first: bool
) -> None:
    upstream = MemoryUpstream()
    data = random.Random(5).randbytes(300_000)
    layer = upstream.add_blob(data)
    upstream.add_manifest(
        "team/app", "v1", manifest((D1, 10), (str(layer), len(data))), OCI_MANIFEST
    )
    patient = ResumePolicy(patience=30.0, backoff_base=0.05, backoff_max=0.2)
    with trio.fail_after(20):
        async with running_mirror(tmp_path, upstream, resume=patient, early_headers=0.5) as m:
            if manifest_first:
                (await m.client.get("/v2/team/app/manifests/v1")).raise_for_status()
            start = trio.current_time()
            upstream.outages.append((start, start + 2.0))  # the blob's origin down for 2 s
            async with m.client.stream("GET", f"/v2/team/app/blobs/{layer}") as response:
                headers_after = trio.current_time() - start
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(data))
                body = await response.aread()
    assert hashlib.sha256(body).hexdigest() == layer.hex
    if manifest_first:
        assert headers_after < 1.0  # 0.5 s, then the manifest's size
    else:
        assert headers_after >= 2.0  # nothing to answer with until the origin is back


async def test_a_transfer_of_another_size_than_the_manifest_said_is_cut_off(
    tmp_path: Path,
) -> None:
    upstream = MemoryUpstream()
    data = random.Random(6).randbytes(100_000)
    layer = upstream.add_blob(data)
    lying = manifest((D1, 10), (str(layer), len(data) + 1))
    upstream.add_manifest("team/app", "v1", lying, OCI_MANIFEST)
    with trio.fail_after(20):
        async with running_mirror(tmp_path, upstream, early_headers=0.2) as m:
            (await m.client.get("/v2/team/app/manifests/v1")).raise_for_status()
            start = trio.current_time()
            upstream.outages.append((start, start + 0.6))
            async with m.client.stream("GET", f"/v2/team/app/blobs/{layer}") as response:
                assert response.headers["content-length"] == str(len(data) + 1)
                with pytest.raises(Exception) as broke:
                    await response.aread()
    assert "Error" in type(broke.value).__name__ or "Protocol" in type(broke.value).__name__
