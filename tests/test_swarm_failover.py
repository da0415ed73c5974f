"""Seed failover with real agent processes: SIGKILL the blob's seed mid-transfer.

Five ``python -m agent agent`` processes on 127.0.0.1 with static peers pull one throttled blob
from a TestOrigin in this process. When the origin has sent ~40 % of the blob, the seed (the
highest-HRW member) is killed with SIGKILL. Its own client must fail fast; the four others must
still get the right bytes, the next HRW member must take over with Range requests for what no
live peer has, and the origin must send at most 1.5x the blob in total.
"""

from __future__ import annotations

import collections
import hashlib
import random
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.config import DEFAULT_CHUNK_SIZE, DEFAULT_MIN_CHUNKS
from p2pull.membership import Member, rank
from p2pull.reference import Digest
from p2pull.store.types import chunk_size_for
from p2pull.testing.origin import TestOrigin
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NAME = "team/failover"
NODES = 5
SIZE = 56 << 20
CHUNK = chunk_size_for(SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_MIN_CHUNKS)  # what the agents pick
RATE = 16 << 20  # origin bytes/s per response: ~3.5 s for the whole blob
KILL_AT = 0.4  # kill the seed once the origin has sent this share of the blob
SECRET = b"failover-cluster-secret-0123456789abcdef"
RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class AgentProcess:
    index: int
    peer_port: int
    mirror_port: int
    metrics_port: int
    log_path: Path
    log_file: IO[bytes] | None = None
    process: trio.Process | None = None

    @property
    def member(self) -> Member:
        return Member.of("127.0.0.1", self.peer_port)

    @property
    def mirror_url(self) -> str:
        return f"http://127.0.0.1:{self.mirror_port}"

    def argv(self, *, peers: str, ns: str, upstream: str, data: Path, secret: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agent",
            "agent",
            "--mirror-addr", f"127.0.0.1:{self.mirror_port}",
            "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
            "--peer-addr", f"127.0.0.1:{self.peer_port}",
            "--data-dir", str(data),
            "--upstream", f"{ns}={upstream}",
            "--peers", peers,
            "--discovery", "static",
            "--cluster-secret-file", str(secret),
            "--chunk-size", f"{DEFAULT_CHUNK_SIZE}",
            "--log-level", "INFO",
            "--log-format", "text",
        ]  # fmt: skip

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


class ThresholdCounter(collections.Counter[Digest]):
    """``origin.bytes_sent_by_digest`` that sets ``reached`` once ``digest`` crosses a count."""

    def __init__(self, digest: Digest, threshold: float) -> None:
        super().__init__()
        self.digest, self.threshold = digest, threshold
        self.reached = trio.Event()

    def __setitem__(self, key: Digest, value: int) -> None:
        super().__setitem__(key, value)
        if key == self.digest and value >= self.threshold:
            self.reached.set()


@dataclass
class PullResult:
    ok: bool = False
    sha256: str | None = None
    received: int = 0
    error: str | None = None
    finished_at: float | None = None
    started_at: float = field(default=0.0)


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def _wait_ready(http: httpx.AsyncClient, agent: AgentProcess) -> None:
    """Poll the mirror's ``/v2/`` until it answers 200 (the process is external: no event)."""
    assert agent.process is not None
    while True:
        if agent.process.returncode is not None:
            raise AssertionError(
                f"agent {agent.index} exited with {agent.process.returncode}:\n{agent.tail()}"
            )
        try:
            response = await http.get(f"{agent.mirror_url}/v2/", timeout=1.0)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.05)


async def _origin_bytes_by_node(http: httpx.AsyncClient, agent: AgentProcess) -> float:
    response = await http.get(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=5.0)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "p2pull_fetched_bytes_total"
                and sample.labels.get("source") == "origin"
            ):
                return float(sample.value)
    return 0.0


async def _pull(
    http: httpx.AsyncClient, agent: AgentProcess, ns: str, digest: Digest, result: PullResult
) -> None:
    result.started_at = trio.current_time()
    url = f"{agent.mirror_url}/v2/{NAME}/blobs/{digest}?ns={ns}"
    hasher = hashlib.sha256()
    try:
        async with http.stream("GET", url) as response:
            response.raise_for_status()
            async for piece in response.aiter_bytes():
                hasher.update(piece)
                result.received += len(piece)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    else:
        result.ok = True
        result.sha256 = hasher.hexdigest()
    result.finished_at = trio.current_time()


async def _reap(agents: list[AgentProcess]) -> None:
    """SIGKILL (by PID) and wait for every agent process still running; close the log files."""
    with trio.CancelScope(shield=True):
        for agent in agents:
            process = agent.process
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGKILL)
        for agent in agents:
            if agent.process is not None:
                with trio.move_on_after(10):
                    await agent.process.wait()
            if agent.log_file is not None:
                agent.log_file.close()


async def test_seed_killed_mid_transfer_others_complete_origin_sends_at_most_1_5x(
    tmp_path: Path,
) -> None:
    data = random.Random(7).randbytes(SIZE)
    origin = TestOrigin()
    origin.faults.rate = RATE
    secret_file = tmp_path / "cluster-secret"
    secret_file.write_bytes(SECRET)
    agents = [
        AgentProcess(
            index=i,
            peer_port=free_port(),
            mirror_port=free_port(),
            metrics_port=free_port(),
            log_path=tmp_path / f"agent{i}.log",
        )
        for i in range(NODES)
    ]
    peers = ",".join(f"127.0.0.1:{a.peer_port}" for a in agents)
    timings: dict[str, float] = {}
    t0 = trio.current_time()
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as http:
                await nursery.start(origin.run)
                digest = origin.add_blob(NAME, data)
                for agent in agents:
                    agent.log_file = _open_log(agent.log_path)
                    argv = agent.argv(
                        peers=peers,
                        ns=origin.netloc,
                        upstream=origin.url,
                        data=tmp_path / f"node{agent.index}",
                        secret=secret_file,
                    )
                    agent.process = await trio.lowlevel.open_process(
                        argv, cwd=ROOT, stdin=None, stdout=agent.log_file, stderr=agent.log_file
                    )
                with trio.fail_after(30):
                    async with trio.open_nursery() as starting:
                        for agent in agents:
                            starting.start_soon(_wait_ready, http, agent)
                timings["agents ready"] = trio.current_time() - t0

                order = rank([a.member for a in agents], str(digest))
                by_id = {a.member.node_id: a for a in agents}
                seed, successor = by_id[order[0].node_id], by_id[order[1].node_id]
                survivors = [a for a in agents if a is not seed]
                results = {a.index: PullResult() for a in agents}
                kill: dict[str, float] = {}

                sent = origin.bytes_sent_by_digest = ThresholdCounter(digest, KILL_AT * SIZE)

                async def kill_seed_at_threshold() -> None:
                    await sent.reached.wait()
                    assert seed.process is not None
                    kill["requests"] = len(origin.requests)
                    kill["bytes"] = origin.bytes_sent_by_digest[digest]
                    kill["at"] = trio.current_time()
                    seed.process.send_signal(signal.SIGKILL)  # this PID only
                    await seed.process.wait()

                pulls_started = trio.current_time()
                with trio.fail_after(60):
                    async with trio.open_nursery() as pulls:
                        pulls.start_soon(kill_seed_at_threshold)
                        async with trio.open_nursery() as clients:
                            for agent in agents:
                                clients.start_soon(
                                    _pull, http, agent, origin.netloc, digest, results[agent.index]
                                )
                        pulls.cancel_scope.cancel()  # the kill task, if the threshold never came
                done = trio.current_time()
                assert "at" in kill, f"the seed was never killed: {results}"
                timings["pull wall time"] = done - pulls_started
                timings["kill after"] = kill["at"] - pulls_started
                timings["slowest survivor after kill"] = max(
                    (results[a.index].finished_at or done) - kill["at"] for a in survivors
                )

                # The seed's client failed when its agent died, promptly (not at a timeout).
                seed_result = results[seed.index]
                assert not seed_result.ok, "the killed seed's client completed a body"
                assert seed_result.error is not None
                assert seed_result.finished_at is not None
                assert seed_result.finished_at - kill["at"] < 5.0, seed_result
                assert seed_result.received < SIZE

                # Every other node got the right bytes.
                for agent in survivors:
                    result = results[agent.index]
                    assert result.ok, (agent.index, result)
                    assert result.received == SIZE, (agent.index, result)
                    assert result.sha256 == digest.hex, (agent.index, result)
                    assert agent.process is not None and agent.process.returncode is None

                # Origin egress: the seed's share before the kill plus the gaps, <= 1.5x.
                ratio = origin.bytes_sent / SIZE
                timings["origin ratio"] = ratio
                timings["origin share at kill"] = kill["bytes"] / SIZE
                assert KILL_AT <= kill["bytes"] / SIZE < 0.55, kill
                assert origin.bytes_sent <= 1.5 * SIZE, ratio

                blob_path = f"/v2/{NAME}/blobs/{digest}"
                cut = int(kill["requests"])
                gets = [
                    (i, r)
                    for i, r in enumerate(origin.requests)
                    if r.method == "GET" and r.path == blob_path
                ]
                before = [r for i, r in gets if i < cut]
                after = [r for i, r in gets if i >= cut]
                # Before the kill only the seed fetched, from byte 0.
                assert len(before) == 1 and before[0].range is None, before
                # After it: Range requests for the gaps (chunk-aligned, never from 0) ...
                assert after, "nobody fetched the rest from the origin"
                for request in after:
                    match = RANGE_RE.fullmatch(request.range or "")
                    assert match is not None, request
                    start = int(match.group(1))
                    assert 0 < start < SIZE and start % CHUNK == 0, request
                # ... all from one node, the next in HRW order (attributed by its metrics).
                from_origin = {a.index: await _origin_bytes_by_node(http, a) for a in survivors}
                fetchers = [index for index, amount in from_origin.items() if amount > 0]
                assert fetchers == [successor.index], (from_origin, successor.index)
                after_kill = origin.bytes_sent - kill["bytes"]
                assert from_origin[successor.index] <= after_kill + CHUNK, (from_origin, kill)
                timings["successor origin bytes / size"] = from_origin[successor.index] / SIZE
                timings["range requests after kill"] = len(after)
                print(
                    "failover timings:",
                    ", ".join(f"{key}={value:.2f}" for key, value in timings.items()),
                )
                nursery.cancel_scope.cancel()
    except BaseException:
        print("timings so far:", timings)
        print("origin requests:", [(r.method, r.path[-20:], r.range) for r in origin.requests])
        for agent in agents:
            code = agent.process.returncode if agent.process is not None else None
            print(f"===== agent {agent.index} ({agent.member.node_id}, exit {code}) =====")
            print(agent.tail())
        raise
    finally:
        await _reap(agents)
