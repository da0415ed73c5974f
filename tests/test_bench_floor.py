"""The benchmark's ``floor`` nodes (``bench/floor_node.py``) on loopback: they relay a blob from
the origin to every node's client, and a blob whose bytes do not match its digest is never
served whole (so a floor figure is always for verified bytes)."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from bench.floor import NODE
from bench.floor_node import HTTP_PORT
from p2pull.reference import Digest
from p2pull.testing.origin import TestOrigin
from tests.netns import read_json_line

NAME = "bench/floor"
SEED, RELAY, OTHER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
CHUNK = 64 * 1024


@asynccontextmanager
async def floor_nodes(
    tmp_path: Path, origin: TestOrigin, blobs: dict[Digest, bytes]
) -> AsyncIterator[dict[str, trio.Process]]:
    """Three floor nodes (the first the seed) listening, by address; killed on the way out."""
    processes: dict[str, trio.Process] = {}
    async with trio.open_nursery() as nursery:
        for ip in (SEED, RELAY, OTHER):
            argv = [
                sys.executable, str(NODE), "--me", ip, "--seed", SEED,
                "--nodes", f"{SEED},{RELAY},{OTHER}", "--origin", origin.url, "--name", NAME,
                "--digests", ",".join(str(d) for d in blobs),
                "--sizes", ",".join(str(len(data)) for data in blobs.values()),
                "--chunk-sizes", ",".join(str(CHUNK) for _ in blobs),
                "--store", str(tmp_path / ip),
            ]  # fmt: skip
            run = functools.partial(trio.run_process, argv, stdout=subprocess.PIPE, check=False)
            process = processes[ip] = await nursery.start(run)
            assert (await read_json_line(process))["ready"] is True
        yield processes
        nursery.cancel_scope.cancel()  # run_process kills them


async def get(client: httpx.AsyncClient, ip: str, digest: Digest) -> bytes:
    response = await client.get(f"http://{ip}:{HTTP_PORT}/v2/{NAME}/blobs/{digest}")
    response.raise_for_status()
    return response.content


async def test_floor_nodes_relay_the_blob_to_every_client_and_never_serve_wrong_bytes(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    good, bad = rng.randbytes(10 * CHUNK + 123), rng.randbytes(3 * CHUNK)
    origin = TestOrigin()
    origin.redirect_blobs = True  # the seed follows the registry's redirect, as an agent does
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            good_digest = origin.add_blob(NAME, good)
            bad_digest = origin.add_blob(NAME, bad)
            origin.fault(bad_digest).corrupt = True
            blobs = {good_digest: good, bad_digest: bad}
            async with floor_nodes(tmp_path, origin, blobs), httpx.AsyncClient() as client:
                for ip in (SEED, RELAY, OTHER):  # the seed's client first: it starts the fetch
                    assert await get(client, ip, good_digest) == good
                for ip in (SEED, RELAY):
                    with pytest.raises(httpx.RemoteProtocolError):
                        await get(client, ip, bad_digest)
            assert origin.bytes_sent_by_digest[good_digest] == len(good)  # once, by the seed
            nursery.cancel_scope.cancel()


async def test_the_nodes_end_at_once_when_the_seed_dies_mid_blob(tmp_path: Path) -> None:
    # The relays send only to each other, so nothing they do fails: without the check they
    # would wait for the seed's chunks for ever and the benchmark out its clients' time limit.
    data = random.Random(8).randbytes(40 * CHUNK)
    origin = TestOrigin()
    broken: set[str] = set()

    async def pull(client: httpx.AsyncClient, ip: str, digest: Digest) -> None:
        try:
            await get(client, ip, digest)
        except httpx.RemoteProtocolError:
            broken.add(ip)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, data)
            origin.fault(digest).rate = 20 * CHUNK  # two seconds of origin stream
            async with (
                floor_nodes(tmp_path, origin, {digest: data}) as processes,
                httpx.AsyncClient() as client,
                trio.open_nursery() as pulls,
            ):
                for ip in (SEED, RELAY, OTHER):
                    pulls.start_soon(pull, client, ip, digest)
                await trio.sleep(0.5)
                processes[SEED].kill()
                with trio.fail_after(5):
                    assert await processes[RELAY].wait() == 1
                    assert await processes[OTHER].wait() == 1
            nursery.cancel_scope.cancel()
    assert {RELAY, OTHER} <= broken
