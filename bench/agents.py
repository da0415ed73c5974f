"""The "p2pull" strategy of the swarm benchmark: an agent on every node, each node's client
pulling through its own agent's mirror (as containerd would), and what the agents report."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from agent.config import DEFAULT_MIN_CHUNKS
from tests.netns import Host, Network

ROOT = Path(__file__).resolve().parent.parent
MIRROR_PORT, PEER_PORT, METRICS_PORT = 5050, 5051, 9395
SECRET = "swarm-bench-cluster-secret-0123456789"


class AgentLog:
    """Drains one agent's stderr into a file and remembers the lines that matter here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ready = False
        self.joined: set[str] = set()
        self.changed = trio.Event()

    async def drain(self, process: trio.Process) -> None:
        assert process.stderr is not None
        buffer = b""
        with self.path.open("wb") as log:
            async for data in process.stderr:
                log.write(data)
                log.flush()  # readable while the agent runs
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    self.ready = self.ready or "agent ready" in text
                    if " joined" in text and "mDNS: " in text:
                        self.joined.add(text.split("mDNS: ", 1)[1].split(" ", 1)[0])
                self.changed.set()
                self.changed = trio.Event()


def agent_argv(
    host: Host,
    *,
    served: dict[str, Any],
    data_dir: Path,
    secret: Path,
    discovery: list[str],
    chunk_size: str,
    min_chunks: int = DEFAULT_MIN_CHUNKS,
    log_level: str = "INFO",
    launcher: str | None = None,
) -> list[str]:
    """The command line of ``host``'s agent (``python -m agent agent``, this checkout's code
    when run with ``cwd=ROOT``), its addresses on ``host``, the origin as its one upstream."""
    return [
        sys.executable, *([launcher] if launcher else ["-m", "agent"]), "agent",
        "--mirror-addr", f"{host.ip}:{MIRROR_PORT}",
        "--metrics-addr", f"{host.ip}:{METRICS_PORT}",
        "--peer-addr", f"{host.ip}:{PEER_PORT}", "--advertise-addr", host.ip,
        "--data-dir", str(data_dir), "--upstream", f"{served['netloc']}={served['url']}",
        *discovery, "--cluster-secret-file", str(secret), "--chunk-size", chunk_size,
        "--min-chunks", str(min_chunks),
        "--log-level", log_level, "--log-format", "text",
    ]  # fmt: skip


async def start_agents(
    net: Network,
    nursery: trio.Nursery,
    *,
    args: argparse.Namespace,
    workdir: Path,
    served: dict[str, Any],
    logdir: Path,
    env: dict[str, str],
) -> list[trio.Process]:
    """An agent on every host but the origin, its log drained by ``nursery``; returns once all
    are ready (and, with mDNS, have found each other). The harness kills them at teardown."""
    nodes = net.hosts[1:]
    secret = workdir / "secret"
    secret.write_text(SECRET)
    peers = ",".join(f"{h.ip}:{PEER_PORT}" for h in nodes)
    discovery = ["--discovery", "mdns"]
    if args.discovery == "static":
        discovery = ["--discovery", "static", "--peers", peers]
    agents, logs = [], []
    for host in nodes:
        log = AgentLog(logdir / f"agent{host.index}.log")
        argv = agent_argv(
            host, served=served, data_dir=workdir / f"node{host.index}", secret=secret,
            discovery=discovery, chunk_size=args.chunk_size, min_chunks=args.min_chunks,
            log_level=args.log_level,
            launcher=args.launcher,
        )  # fmt: skip
        agent = await net.start(
            host, *argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(ROOT)
        )
        nursery.start_soon(log.drain, agent)
        agents.append(agent)
        logs.append(log)
    with trio.fail_after(60):
        for log, host in zip(logs, nodes, strict=True):
            want = {f"{h.ip}:{PEER_PORT}" for h in nodes} - {f"{host.ip}:{PEER_PORT}"}
            while not log.ready or (args.discovery == "mdns" and not want <= log.joined):
                await log.changed.wait()
    return agents


async def agent_metrics(net: Network, host: Host) -> dict[str, float]:
    url = f"http://{host.ip}:{METRICS_PORT}/metrics"
    out = await net.run(host, "curl", "-sf", "--noproxy", "*", url, check=False)
    wanted = {
        'p2pull_fetched_bytes_total{source="peer"}': "from_peers",
        'p2pull_fetched_bytes_total{source="origin"}': "from_origin",
        "p2pull_peer_upload_bytes_total": "uploaded",
        "p2pull_peer_links": "links",  # peer connections open once the pull is done
        'p2pull_peer_messages_total{direction="sent"}': "messages_sent",  # pieces included
    }
    found: dict[str, float] = {}
    for line in out.stdout.decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key in wanted:
            found[wanted[key]] = float(value)
    return found
