"""Load benchmark: many clients at once through real agents, bounded in count and time.

    python3 bench/load.py [--clients 200] [--blobs 20] [--blob-size 4MiB] [--cached 0.5] \
        [--swarm-agents 8] [--swarm-clients 16] [--swarm-blobs 4] [--timeout 300] [--out FILE]

Two scenarios, each on 127.0.0.1 with the project's TestOrigin (``python -m p2pull.testing.serve``)
and agents as their own processes (``python -m agent agent``, the code of this checkout):

- ``one_agent``: one agent; ``--blobs`` blobs of ``--blob-size``, the first ``--cached`` share of
  them pulled once beforehand (in its store), the others cold; ``--clients`` clients start at
  once, client i pulling blob i mod blobs (so cold blobs have many concurrent first readers:
  single flight and streaming to followers).
- ``swarm``: ``--swarm-agents`` agents in one swarm (static peers, a cluster secret); on each,
  ``--swarm-clients`` clients pull the ``--swarm-blobs`` blobs (client i: blob i mod blobs),
  all at once, all cold: every agent serves its clients and exchanges chunks with its peers.

Reported per scenario (JSON on stdout and in ``--out``): ``errors`` (failed requests, short or
wrong bodies: each body's sha256 is checked), ``peak_rss_mb`` of each agent (VmHWM: the most it
was resident since it started; its start-up is in it), the pull time of every client,
``slowest_over_median`` (the slowest client's time over the median client's) and
``slowest_progress_at_median`` (the share of its blob the slowest client had when the median
client finished: 1.0 is perfectly fair), and ``origin_egress`` (bytes the origin sent over the
bytes of distinct blobs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import parse_size  # noqa: E402
from agent.service import free_ports  # noqa: E402

NAME = "load/test"
SECRET = "load-bench-cluster-secret-0123456789"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--blobs", type=int, default=20)
    parser.add_argument("--blob-size", type=parse_size, default=parse_size("4MiB"))
    parser.add_argument("--cached", type=float, default=0.5, help="share of blobs pre-pulled")
    parser.add_argument("--swarm-agents", type=int, default=8)
    parser.add_argument("--swarm-clients", type=int, default=16, help="clients per agent")
    parser.add_argument("--swarm-blobs", type=int, default=4)
    parser.add_argument("--hold-connections", type=int, default=3000)
    parser.add_argument("--hold-bytes", type=int, default=15000, help="of a head, each")
    parser.add_argument("--scenario", default="one_agent,swarm,hold")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, all scenarios")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 2000 or not 1 <= args.blobs <= 200:
        parser.error("--clients must be 1-2000 and --blobs 1-200")
    if not 1 <= args.swarm_agents <= 16 or not 1 <= args.swarm_clients <= 64:
        parser.error("--swarm-agents must be 1-16 and --swarm-clients 1-64")
    if not 1 <= args.hold_connections <= 10000 or not 0 <= args.hold_bytes <= 1 << 20:
        parser.error("--hold-connections must be 1-10000 and --hold-bytes at most 1 MiB")
    if not 0 <= args.cached <= 1:
        parser.error("--cached is a share, 0-1")
    return args


# -- processes ----------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The checkout's code first (an editable install may point at another tree)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@dataclass
class Origin:
    process: trio.Process
    info: dict[str, Any]

    @property
    def netloc(self) -> str:
        return str(self.info["netloc"])


async def start_origin(nursery: trio.Nursery, *, size: int, layers: int, seed: int) -> Origin:
    process = await nursery.start(
        _run_process,
        [sys.executable, "-m", "p2pull.testing.serve", "--name", NAME, "--size", str(size),
         "--layers", str(layers), "--seed", str(seed)],
    )  # fmt: skip
    assert process.stdout is not None
    nursery.start_soon(_discard, process.stderr)
    line = await _read_line(process.stdout)
    return Origin(process, json.loads(line))


async def stop_origin(origin: Origin) -> int:
    """SIGTERM; the bytes it sent (its last JSON line)."""
    origin.process.terminate()
    assert origin.process.stdout is not None
    line = await _read_line(origin.process.stdout)
    return int(json.loads(line)["bytes_sent"])


async def _run_process(
    command: list[str], *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``command`` (stdout and stderr piped) until it exits or the caller is cancelled."""
    await trio.run_process(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
        env=child_env(),
        cwd=str(ROOT),
        task_status=task_status,
    )


async def _discard(stream: trio.abc.ReceiveStream | None) -> None:
    if stream is not None:
        async for _ in stream:
            pass


async def _read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        piece = await stream.receive_some(1)
        if not piece:
            raise RuntimeError(f"process ended before a line: {data!r}")
        data += piece
    return data.decode()


@dataclass
class AgentProcess:
    process: trio.Process
    mirror: str
    log: bytearray = field(default_factory=bytearray)
    ready: trio.Event = field(default_factory=trio.Event)

    async def drain(self) -> None:
        """Keep the first MiB of the agent's log (for errors); notice when it is ready."""
        assert self.process.stderr is not None
        async for data in self.process.stderr:
            self.log += data[: max(0, (1 << 20) - len(self.log))]
            if not self.ready.is_set() and b"agent ready" in self.log:
                self.ready.set()

    def peak_rss_mb(self) -> float:
        """The most the agent was resident since it started (VmHWM)."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS")

    def _status_mb(self, key: str) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith(key))
        return round(kib / 1024, 1)


async def start_agents(
    nursery: trio.Nursery, workdir: Path, origin: Origin, count: int, *, swarm: bool
) -> list[AgentProcess]:
    ports = free_ports("127.0.0.1", 3 * count)
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    secret = workdir / "secret"
    await trio.Path(secret).write_text(SECRET)
    peers = ",".join(f"127.0.0.1:{ports[3 * i + 2]}" for i in range(count))
    agents = []
    for i in range(count):
        mirror, metrics, peer = ports[3 * i : 3 * i + 3]
        command = [
            sys.executable, "-m", "agent", "agent",
            "--mirror-addr", f"127.0.0.1:{mirror}", "--metrics-addr", f"127.0.0.1:{metrics}",
            "--data-dir", str(workdir / f"agent{i}"), "--min-free-disk", "0",
            "--upstream", f"{origin.netloc}={origin.info['url']}",
            "--log-level", "INFO", "--log-format", "text",
        ]  # fmt: skip
        command += ["--check-containerd", "off"]
        if not swarm:
            command += ["--standalone"]
        if swarm:
            command += [
                "--peer-addr", f"127.0.0.1:{peer}", "--advertise-addr", "127.0.0.1",
                "--discovery", "static", "--peers", peers,
                "--cluster-secret-file", str(secret),
            ]  # fmt: skip
        process = await nursery.start(_run_process, command)
        agent = AgentProcess(process, f"http://127.0.0.1:{mirror}")
        nursery.start_soon(agent.drain)
        nursery.start_soon(_discard, process.stdout)
        agents.append(agent)
    with trio.fail_after(60):
        for agent in agents:
            await agent.ready.wait()
    return agents


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Pull:
    size: int
    started: float = 0.0
    progress: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes so far)
    finished: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return end - self.started

    def bytes_at(self, moment: float) -> int:
        done = 0
        for at, count in self.progress:
            if at > moment:
                break
            done = count
        return done


async def pull(http: httpx.AsyncClient, url: str, digest: str, record: Pull) -> None:
    record.started = time.perf_counter()
    hasher, received = hashlib.sha256(), 0
    try:
        async with http.stream("GET", url) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}"
                return
            async for data in response.aiter_raw():
                hasher.update(data)
                received += len(data)
                record.progress.append((time.perf_counter(), received))
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
        return
    if received != record.size or f"sha256:{hasher.hexdigest()}" != digest:
        record.error = f"wrong body: {received} bytes"
        return
    record.finished = time.perf_counter()


async def storm(targets: list[tuple[str, str, int]]) -> list[Pull]:
    """Every (url, digest, size) pulled by its own client, all started together."""
    records = [Pull(size) for _, _, size in targets]
    limits = httpx.Limits(max_connections=len(targets) + 8, max_keepalive_connections=0)
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as http,
        trio.open_nursery() as nursery,
    ):
        for (url, digest, _), record in zip(targets, records, strict=True):
            nursery.start_soon(pull, http, url, digest, record)
    return records


def summarize(records: list[Pull]) -> dict[str, Any]:
    done = [r for r in records if r.error is None and r.finished is not None]
    errors = [r.error for r in records if r.error is not None]
    summary: dict[str, Any] = {"clients": len(records), "errors": len(errors)}
    if errors:
        summary["error_samples"] = sorted(set(errors))[:5]
    if not done:
        return summary
    times = sorted(r.seconds for r in done)
    median = statistics.median(times)
    slowest = max(done, key=lambda r: r.seconds)
    median_moment = sorted(r.finished for r in done)[len(done) // 2]  # type: ignore[type-var]
    summary.update(
        p50_s=round(median, 3),
        max_s=round(times[-1], 3),
        slowest_over_median=round(times[-1] / median, 2) if median else 1.0,
        slowest_progress_at_median=round(slowest.bytes_at(median_moment) / slowest.size, 3),
    )
    return summary


def targets(mirror: str, origin: Origin, blobs: range | list[int]) -> list[tuple[str, str, int]]:
    """(url, digest, size) through ``mirror`` for the origin's blobs ``i mod count``."""
    digests, sizes = origin.info["digests"], origin.info["sizes"]
    chosen = [i % len(digests) for i in blobs]
    return [
        (f"{mirror}/v2/{NAME}/blobs/{digests[i]}?ns={origin.netloc}", digests[i], sizes[i])
        for i in chosen
    ]


# -- scenarios ----------------------------------------------------------------------------------


async def one_agent(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        origin = await start_origin(
            nursery, size=args.blobs * args.blob_size, layers=args.blobs, seed=1
        )
        sizes = origin.info["sizes"]
        (agent,) = await start_agents(nursery, workdir / "one", origin, 1, swarm=False)
        cached = round(args.cached * len(sizes))
        warm = await storm(targets(agent.mirror, origin, range(cached)))
        assert all(r.error is None for r in warm), [r.error for r in warm]
        idle = agent.rss_mb()
        started = time.perf_counter()
        records = await storm(targets(agent.mirror, origin, range(args.clients)))
        elapsed = time.perf_counter() - started
        rss = agent.peak_rss_mb()
        sent = await stop_origin(origin)
        nursery.cancel_scope.cancel()
    distinct = sum(sizes)
    return {
        "scenario": "one_agent",
        "blobs": len(sizes),
        "blob_size": args.blob_size,
        "cached_blobs": cached,
        **summarize(records),
        "wall_s": round(elapsed, 3),
        "rss_before_mb": idle,
        "peak_rss_mb": [rss],
        "origin_egress": round(sent / distinct, 3),
        "served_mb": round(sum(r.size for r in records) / 2**20, 1),
    }


async def swarm(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        origin = await start_origin(
            nursery, size=args.swarm_blobs * args.blob_size, layers=args.swarm_blobs, seed=2
        )
        sizes = origin.info["sizes"]
        agents = await start_agents(
            nursery, workdir / "swarm", origin, args.swarm_agents, swarm=True
        )
        every = [
            target
            for agent in agents
            for target in targets(agent.mirror, origin, range(args.swarm_clients))
        ]
        started = time.perf_counter()
        records = await storm(every)
        elapsed = time.perf_counter() - started
        rss = [agent.peak_rss_mb() for agent in agents]
        sent = await stop_origin(origin)
        nursery.cancel_scope.cancel()
    return {
        "scenario": "swarm",
        "agents": len(agents),
        "clients_per_agent": args.swarm_clients,
        "blobs": len(sizes),
        "blob_size": args.blob_size,
        **summarize(records),
        "wall_s": round(elapsed, 3),
        "peak_rss_mb": rss,
        "origin_egress": round(sent / sum(sizes), 3),
    }


async def hold(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``--hold-connections`` connections each send ``--hold-bytes`` of a request head and
    stop; meanwhile one client pulls a cached blob. What the agent holds, what it refuses."""
    async with trio.open_nursery() as nursery:
        origin = await start_origin(nursery, size=args.blob_size, layers=1, seed=3)
        (agent,) = await start_agents(nursery, workdir / "hold", origin, 1, swarm=False)
        port = int(agent.mirror.rsplit(":", 1)[1])
        (warm,) = await storm(targets(agent.mirror, origin, [0]))
        assert warm.error is None, warm.error
        idle = agent.rss_mb()
        answers: dict[str, int] = {}
        held: list[trio.SocketStream] = []
        head = b"GET /v2/ HTTP/1.1\r\nhost: x\r\nx-fill: " + b"a" * args.hold_bytes
        for _ in range(args.hold_connections):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            held.append(stream)
            with trio.move_on_after(0.5):
                await stream.send_all(head)
        await trio.sleep(1.0)  # the agent reads what it was sent
        during = await storm(targets(agent.mirror, origin, [0]))
        rss_held = agent.rss_mb()

        async def answer(stream: trio.SocketStream) -> None:
            with trio.move_on_after(2.0):
                try:
                    first = await stream.receive_some(64)
                except trio.BrokenResourceError:
                    first = b"reset"
                key = first[:12].decode(errors="replace") or "closed"
                answers[key] = answers.get(key, 0) + 1
                return
            answers["still open"] = answers.get("still open", 0) + 1

        async with trio.open_nursery() as readers:
            for stream in held:
                readers.start_soon(answer, stream)
        for stream in held:
            await trio.aclose_forcefully(stream)
        peak = agent.peak_rss_mb()
        await stop_origin(origin)
        nursery.cancel_scope.cancel()
    return {
        "scenario": "hold",
        "connections": args.hold_connections,
        "bytes_each": args.hold_bytes,
        "rss_before_mb": idle,
        "rss_held_mb": rss_held,
        "peak_rss_mb": [peak],
        "answers": answers,
        "pull_during_hold": during[0].error or "ok",
        "errors": 0,
    }


SCENARIOS = {"one_agent": one_agent, "swarm": swarm, "hold": hold}


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="p2pull-load-", dir=args.workdir) as tmp:
        with trio.fail_after(args.timeout):
            for name in args.scenario.split(","):
                results.append(await SCENARIOS[name](args, Path(tmp)))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = trio.run(amain, args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
