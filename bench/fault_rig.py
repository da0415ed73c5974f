"""The processes of one fault scenario (``bench/faults.py``): the origin, the agents, the
clients, and the hostile peer, each in its own namespace of a ``tests/netns.py`` network.

Every process is started through the network, so its teardown kills it by PID (also on failure
or timeout); a tmpfs mounted for a node is unmounted by the scenario's own ``finally``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio

from agent.config import DEFAULT_MIN_CHUNKS
from bench.agents import METRICS_PORT, MIRROR_PORT, PEER_PORT, SECRET, AgentLog, agent_argv
from p2pull.membership import Member, rank
from p2pull.store.types import chunk_size_for
from tests.netns import Host, Network, iface_counters

ROOT = Path(__file__).resolve().parent.parent
NAME = "faults/blob"
CLIENT = ROOT / "bench" / "fault_client.py"
HOSTILE = ROOT / "bench" / "hostile_peer.py"
HOSTILE_PORT = 5052
CONTENT_SEED = 1
POLL = 0.1  # seconds between looks at a counter
READY_TIMEOUT = 60.0  # seconds for agents to start
CLIENT_IDLE_TIMEOUT = 120.0  # a client gives up after this long without a byte (the origin down
# 60 s keeps bodies silent for about that long)


class Lines:
    """The lines a process prints on stdout, one at a time."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self._buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = await self._stdout.receive_some()
            if not data:
                raise EOFError(f"the process closed stdout: {self._buffer[-200:]!r}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))


class Origin:
    """``python -m p2pull.testing.serve --control`` on ``host``: killed, stopped, restarted on
    its port, told faults; ``sent`` adds up what every life of it sent (a SIGKILLed life's
    last bytes are the last counter it answered with: the interface counters are exact)."""

    def __init__(self, net: Network, host: Host, *, size: int, logdir: Path, env: dict[str, str]):
        self.net, self.host, self.size, self.logdir, self.env = net, host, size, logdir, env
        self.process: trio.Process | None = None
        self.served: dict[str, Any] = {}
        self.port = 0
        self.lives = 0
        self._earlier = 0  # bytes of lives that ended
        self._last = 0  # the running life's last answered counter
        self._lines: Lines | None = None
        self._lock = trio.Lock()

    async def start(self) -> dict[str, Any]:
        argv = [
            sys.executable, "-m", "p2pull.testing.serve", "--host", self.host.ip,
            "--port", str(self.port), "--name", NAME, "--size", str(self.size),
            "--seed", str(CONTENT_SEED), "--control",
        ]  # fmt: skip
        self.lives += 1
        with (self.logdir / f"origin{self.lives}.log").open("wb") as log:
            self.process = await self.net.start(
                self.host, *argv, env=self.env, stdin=subprocess.PIPE, stderr=log, cwd=str(ROOT)
            )
        self._lines = Lines(self.process)
        self.served = await self._lines.next()
        self.port = int(self.served["netloc"].rpartition(":")[2])
        self._last = 0
        return self.served

    async def command(self, **fields: Any) -> dict[str, Any]:
        async with self._lock:
            assert self.process is not None and self.process.stdin is not None
            assert self._lines is not None
            await self.process.stdin.send_all(json.dumps(fields).encode() + b"\n")
            answer = await self._lines.next()
        if "error" in answer:
            raise ValueError(f"origin refused {fields}: {answer['error']}")
        self._last = int(answer["bytes_sent"])
        return answer

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def sent(self) -> int:
        if self.alive:
            await self.command()
        return self._earlier + self._last

    async def wait_share(self, share: float) -> None:
        """Until the origin has sent ``share`` of the blob (all its lives together)."""
        while await self.sent() < share * self.size:  # noqa: ASYNC110 - another process's count
            await trio.sleep(POLL)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._earlier += self._last
        self._last = 0

    async def ranges(self) -> list[str | None]:
        """The Range header of each GET this life of the origin answered."""
        return list((await self.command(ranges=True))["ranges"])

    async def stop(self) -> None:
        """SIGTERM; the last line is the exact count of this life."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        assert self._lines is not None
        with trio.move_on_after(10):
            while True:
                line = await self._lines.next()
                if set(line) == {"bytes_sent"}:
                    self._last = int(line["bytes_sent"])
                    break
        self._earlier += self._last
        self._last = 0


@dataclass
class Node:
    slot: int  # 1..N
    host: Host
    data_dir: Path
    extra: list[str] = field(default_factory=list)  # more agent flags
    process: trio.Process | None = None
    log: AgentLog | None = None
    lives: int = 0
    killed: bool = False  # on purpose: its exit is not a crash

    @property
    def member(self) -> Member:
        return Member.of(self.host.ip, PEER_PORT)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


@dataclass
class Attempt:
    slot: int
    result: dict[str, Any]


class Rig:
    """One scenario's network: host 0 the origin, hosts 1..N the nodes, the rest spare (a
    hostile peer's)."""

    def __init__(
        self,
        net: Network,
        nursery: trio.Nursery,
        *,
        nodes: int,
        size: int,
        chunk_size: int,
        min_chunks: int = DEFAULT_MIN_CHUNKS,
        workdir: Path,
        env: dict[str, str],
        log_level: str = "INFO",
    ) -> None:
        self.net, self.nursery, self.size = net, nursery, size
        self.agent_chunk_size = chunk_size  # the agents' --chunk-size
        self.min_chunks = min_chunks  # the agents' --min-chunks
        self.chunk_size = chunk_size_for(size, chunk_size, min_chunks)  # the blob's
        self.log_level = log_level
        self.workdir, self.env = workdir, env
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.secret = workdir / "secret"
        self.secret.write_text(SECRET)
        self.origin = Origin(net, net.hosts[0], size=size, logdir=self.logdir, env=env)
        self.nodes = [
            Node(slot, host, workdir / f"node{slot}")
            for slot, host in enumerate(net.hosts[1 : 1 + nodes], start=1)
        ]
        self.spare = net.hosts[1 + nodes :]
        self.attempts: list[Attempt] = []
        self.digest = ""

    @property
    def served(self) -> dict[str, Any]:
        return self.origin.served

    def ranked(self) -> list[Node]:
        """The nodes by HRW rank for the blob: the seed first, then its successors."""
        by_id = {node.member.node_id: node for node in self.nodes}
        return [by_id[m.node_id] for m in rank([n.member for n in self.nodes], self.digest)]

    async def start_origin(self) -> None:
        served = await self.origin.start()
        self.digest = served["digests"][0]

    async def start_agent(self, node: Node) -> None:
        node.lives += 1
        suffix = "" if node.lives == 1 else f".life{node.lives}"
        node.log = AgentLog(self.logdir / f"agent{node.slot}{suffix}.log")
        peers = ",".join(f"{n.host.ip}:{PEER_PORT}" for n in self.nodes)
        argv = agent_argv(
            node.host, served=self.served, data_dir=node.data_dir, secret=self.secret,
            discovery=["--discovery", "static", "--peers", peers],
            chunk_size=str(self.agent_chunk_size), min_chunks=self.min_chunks,
            log_level=self.log_level,
        )  # fmt: skip
        node.process = await self.net.start(
            node.host, *argv, *node.extra, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, cwd=str(ROOT),
        )  # fmt: skip
        node.killed = False
        self.nursery.start_soon(node.log.drain, node.process)

    async def wait_ready(self, nodes: list[Node]) -> None:
        with trio.fail_after(READY_TIMEOUT):
            for node in nodes:
                assert node.log is not None and node.process is not None
                while not node.log.ready:
                    if node.process.returncode is not None:
                        raise RuntimeError(f"agent {node.slot} exited at start: see its log")
                    await node.log.changed.wait()

    async def start_agents(self) -> None:
        for node in self.nodes:
            await self.start_agent(node)
        await self.wait_ready(self.nodes)

    async def kill(self, node: Node) -> None:
        assert node.process is not None
        node.killed = True
        node.process.send_signal(signal.SIGKILL)
        await node.process.wait()

    async def pull(self, node: Node, *, start_at: float = 0.0) -> None:
        """One client pull through ``node``'s mirror; its result joins ``attempts``."""
        url = (
            f"http://{node.host.ip}:{MIRROR_PORT}/v2/{NAME}/blobs/{self.digest}"
            f"?ns={self.served['netloc']}"
        )
        argv = [
            sys.executable, str(CLIENT), url, "--start-at", f"{start_at:.3f}",
            "--block", str(self.chunk_size), "--timeout", str(CLIENT_IDLE_TIMEOUT),
        ]  # fmt: skip
        with (self.logdir / f"client{node.slot}.log").open("ab") as log:
            process = await self.net.start(node.host, *argv, env=self.env, stderr=log)
        result = await Lines(process).next()
        await process.wait()
        self.attempts.append(Attempt(node.slot, result))

    async def metrics(self, node: Node) -> dict[str, float]:
        """The node's counters that the report reads (empty if it is down)."""
        if not node.alive:
            return {}
        url = f"http://{node.host.ip}:{METRICS_PORT}/metrics"
        out = await self.net.run(node.host, "curl", "-sf", "--noproxy", "*", url, check=False)
        found: dict[str, float] = {}
        for line in out.stdout.decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, _, value = line.rpartition(" ")
            if key.startswith(WANTED):
                found[key] = found.get(key, 0.0) + float(value)
        return found

    async def origin_counters(self) -> tuple[int, int]:
        return await iface_counters(self.net, self.origin.host)

    def progress(self, node: Node) -> float:
        """Share of the blob ``node``'s store holds as last persisted (0 if none yet)."""
        meta = node.data_dir / "blobs" / "sha256" / self.digest.removeprefix("sha256:") / "meta"
        try:
            have = msgpack.unpackb(meta.read_bytes())["have"]
        except (OSError, ValueError, KeyError, msgpack.UnpackException):
            return 0.0
        count = -(-self.size // self.chunk_size)
        return sum(bin(b).count("1") for b in have) / count


WANTED = (
    "p2pull_fetched_bytes_total",
    "p2pull_chunks_rejected_total",
    "p2pull_store_chunks_lost_total",
    "p2pull_passthrough_blobs_total",
    "p2pull_blob_digest_mismatches_total",
    "p2pull_upstream_retries_total",
    "p2pull_peer_upload_bytes_total",
    "p2pull_chunks_pushed_total",
)


def stored_blobs(data_dir: Path) -> list[dict[str, Any]]:
    """What a node's store holds: each blob's digest, whether its metadata says complete, and
    whether its bytes hash to the digest (checked only for complete ones)."""
    root = data_dir / "blobs" / "sha256"
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            meta = msgpack.unpackb((entry / "meta").read_bytes())
        except (OSError, ValueError, msgpack.UnpackException):
            found.append({"hex": entry.name, "complete": False, "intact": None})
            continue
        intact = None
        if meta.get("complete"):
            hasher = hashlib.sha256()
            with (entry / "data").open("rb") as data:
                while block := data.read(1 << 20):
                    hasher.update(block)
            intact = hasher.hexdigest() == entry.name
        found.append({"hex": entry.name, "complete": bool(meta.get("complete")), "intact": intact})
    return found


def rot_one_chunk(node: Node, digest: str, chunk_size: int) -> int | None:
    """Flip one byte of a chunk the node's persisted bitfield says it holds, as a disk would
    while the agent is down; the chunk's index (None: nothing persisted to rot)."""
    directory = node.data_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        meta = msgpack.unpackb((directory / "meta").read_bytes())
    except (OSError, ValueError, msgpack.UnpackException):
        return None
    have = bytes(meta["have"])
    held = [i for i in range(len(have) * 8) if have[i >> 3] & (0x80 >> (i & 7))]
    if not held:
        return None
    index = held[len(held) // 2]
    with (directory / "data").open("r+b") as data:
        data.seek(index * chunk_size + 1234)
        byte = data.read(1)
        data.seek(index * chunk_size + 1234)
        data.write(bytes([byte[0] ^ 0xFF]))
    return index


def now() -> float:
    return time.time()
