"""TestOrigin's fault knobs used by the fault bench (``bench/faults.py``): 429 with Retry-After,
a stall mid-body, corruption of the first responses only, interrupting the bodies being sent,
a fixed port, and ``python -m p2pull.testing.serve --control`` driving them from stdin."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from p2pull.testing.origin import Interrupt, TestOrigin
from tests.netns import read_json_line
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = "test/faults"
DATA = random.Random(3).randbytes(1 << 20)
BROKEN = (httpx.ReadError, httpx.RemoteProtocolError)  # a reset, as httpx reports it


async def _read_until_broken(
    client: httpx.AsyncClient, url: str, on_piece: Callable[[int], None] = lambda got: None
) -> bytes:
    """The body's bytes until the connection breaks (it must break)."""
    got = bytearray()
    with pytest.raises(BROKEN):
        async with client.stream("GET", url) as response:
            async for piece in response.aiter_bytes():
                got += piece
                on_piece(len(got))
    return bytes(got)


async def test_fail_times_carry_retry_after() -> None:
    origin = TestOrigin()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, DATA)
            origin.faults.fail_times, origin.faults.fail_status = 1, 429
            origin.faults.retry_after = 7
            url = f"{origin.url}/v2/{NAME}/blobs/{digest}"
            first = await client.get(url)
            assert (first.status_code, first.headers.get("retry-after")) == (429, "7")
            second = await client.get(url)
            assert second.status_code == 200 and second.content == DATA
            nursery.cancel_scope.cancel()


async def test_stall_at_sends_that_much_then_nothing_then_resets() -> None:
    origin = TestOrigin(piece_size=64 << 10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, DATA)
            origin.faults.stall_at, origin.faults.stall_times = 300_000, 1
            origin.faults.stall_for = 1.0
            url = f"{origin.url}/v2/{NAME}/blobs/{digest}"
            began = trio.current_time()
            got = await _read_until_broken(client, url)
            assert got == DATA[:300_000]
            assert trio.current_time() - began >= 1.0  # it held the connection, then reset
            assert (await client.get(url)).content == DATA  # stall_times: the next is whole
            nursery.cancel_scope.cancel()


async def test_corrupt_times_and_interrupting_the_bodies_being_sent() -> None:
    origin = TestOrigin(piece_size=16 << 10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, DATA)
            url = f"{origin.url}/v2/{NAME}/blobs/{digest}"
            origin.faults.corrupt, origin.faults.corrupt_times = True, 1
            first = await client.get(url)
            assert len(first.content) == len(DATA) and first.content != DATA
            assert (await client.get(url)).content == DATA
            origin.faults.rate = 256 << 10  # ~4 s for the blob: time to interrupt it
            for kind in ("reset", "stall"):
                origin.faults.stall_for = 0.5

                def interrupt(got: int, kind: Interrupt = kind) -> None:
                    if got >= 100_000 and origin.sending:
                        assert origin.interrupt(kind) == 1

                got = await _read_until_broken(client, url, interrupt)
                assert 100_000 <= len(got) < len(DATA), kind
                assert got == DATA[: len(got)]
            assert origin.sending == 0
            nursery.cancel_scope.cancel()


async def test_serve_listens_on_a_given_port_and_obeys_control_lines() -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "p2pull.testing.serve", "--port", str(port), "--size", "64KiB",
        "--name", NAME, "--control",
    ]  # fmt: skip
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        try:
            served = await read_json_line(process)
            assert served["netloc"] == f"127.0.0.1:{port}"
            assert process.stdin is not None and process.stdout is not None
            lines = [
                {"faults": {"fail_times": 1, "fail_status": 429, "retry_after": 3}},
                {"faults": {"no_such_knob": 1}},
                {"interrupt": "sideways"},
                {},
            ]
            await process.stdin.send_all(b"".join(json.dumps(c).encode() + b"\n" for c in lines))
            answers = b""
            while answers.count(b"\n") < len(lines):
                answers += await process.stdout.receive_some()
            ok, bad_field, bad_kind, counters = (json.loads(a) for a in answers.splitlines())
            assert ok == {"bytes_sent": 0, "requests": 0, "sending": 0}
            assert "no_such_knob" not in json.dumps(bad_field) and "error" in bad_field
            assert "error" in bad_kind and counters == ok
            async with httpx.AsyncClient() as client:
                url = f"{served['url']}/v2/{NAME}/blobs/{served['digests'][0]}"
                limited = await client.get(url)
                assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
                assert len((await client.get(url)).content) == 64 << 10
        finally:
            process.kill()
            await process.wait()
