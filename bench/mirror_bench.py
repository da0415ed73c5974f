"""Single-node mirror benchmark: run as root on an idle-ish machine.

    python3 bench/mirror_bench.py [--cached-size 512MiB] [--rss-size 2GiB] [--rounds 5]

Measures, each against a baseline taken in the same run (this machine is shared and noisy):
1. cached blob throughput: agent (from its store) vs docker-registry serving the same blob;
2. cold pull time: through a fresh agent vs straight from the registry;
3. the agent's peak RSS (VmHWM) while streaming a large blob cold.
The client is curl writing to /dev/null, so the client is not the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import parse_size  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
        )
        if result.stdout.strip() == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_registry(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'registry-data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/v2/")
    return proc, port


def push_blob(port: int, path: Path, digest: str) -> None:
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            f"http://127.0.0.1:{port}/v2/bench/blob/blobs/uploads/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    location = next(
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.lower().startswith("location:")
    )
    if location.startswith("/"):
        location = f"http://127.0.0.1:{port}{location}"
    sep = "&" if "?" in location else "?"
    subprocess.run(
        [
            "curl",
            "-s",
            "-f",
            "-o",
            "/dev/null",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(path),
            f"{location}{sep}digest={digest}",
        ],
        check=True,
    )


def make_blob(path: Path, size: int) -> str:
    import hashlib

    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            piece = os.urandom(min(remaining, 16 << 20))
            hasher.update(piece)
            handle.write(piece)
            remaining -= len(piece)
    return f"sha256:{hasher.hexdigest()}"


class AgentProcess:
    def __init__(self, registry_port: int, data_dir: Path) -> None:
        self.port = free_port()
        metrics = free_port()
        ns = f"127.0.0.1:{registry_port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "agent",
                "--standalone",
                "--mirror-addr",
                f"127.0.0.1:{self.port}",
                "--metrics-addr",
                f"127.0.0.1:{metrics}",
                "--data-dir",
                str(data_dir),
                "--upstream",
                f"{ns}=http://{ns}",
                "--default-upstream",
                f"http://{ns}",
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
        )
        wait_http(f"http://127.0.0.1:{self.port}/v2/")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def timed_get(url: str, expect: int, *, to: str = "/dev/null") -> float:
    start = time.perf_counter()
    result = subprocess.run(
        ["curl", "-s", "-f", "-o", to, "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    if int(result.stdout) != expect:
        raise RuntimeError(f"{url}: got {result.stdout} bytes, expected {expect}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cached-size", default="512MiB")
    parser.add_argument("--rss-size", default="2GiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mirror.json"))
    args = parser.parse_args()
    cached_size, rss_size = parse_size(args.cached_size), parse_size(args.rss_size)
    workdir = Path(tempfile.mkdtemp(prefix="p2pull-bench-"))
    registry, rport = start_registry(workdir)
    results: dict[str, object] = {"cached_size": cached_size, "rss_size": rss_size}
    agents: list[AgentProcess] = []
    try:
        small = workdir / "blob-small"
        small_digest = make_blob(small, cached_size)
        push_blob(rport, small, small_digest)
        big = workdir / "blob-big"
        big_digest = make_blob(big, rss_size)
        push_blob(rport, big, big_digest)
        direct = f"http://127.0.0.1:{rport}/v2/bench/blob/blobs/{small_digest}"

        # 1 + 2: cold pulls (fresh agent each round) vs direct, then cached vs registry.
        cold, direct_times, cold_cpu, direct_disk = [], [], [], []
        for round_ in range(args.rounds):
            agent = AgentProcess(rport, workdir / f"agent-{round_}")
            agents.append(agent)
            url = f"http://127.0.0.1:{agent.port}/v2/bench/blob/blobs/{small_digest}?ns=127.0.0.1%3A{rport}"
            direct_times.append(timed_get(direct, cached_size))
            # what containerd does without the agent: the layer lands in a new file on disk
            target = workdir / f"direct-{round_}"
            direct_disk.append(timed_get(direct, cached_size, to=str(target)))
            cpu_before = agent.cpu_seconds()
            cold.append(timed_get(url, cached_size))
            cold_cpu.append(agent.cpu_seconds() - cpu_before)
            if round_ < args.rounds - 1:
                agent.stop()
                agents.remove(agent)
                shutil.rmtree(workdir / f"agent-{round_}")
        agent = agents[-1]
        url = f"http://127.0.0.1:{agent.port}/v2/bench/blob/blobs/{small_digest}?ns=127.0.0.1%3A{rport}"
        cached, registry_times, cached_cpu = [], [], []
        for _ in range(args.rounds):
            registry_times.append(timed_get(direct, cached_size))
            cpu_before = agent.cpu_seconds()
            cached.append(timed_get(url, cached_size))
            cached_cpu.append(agent.cpu_seconds() - cpu_before)
        agent.stop()
        agents.remove(agent)

        # 3: peak RSS streaming a big blob cold.
        agent = AgentProcess(rport, workdir / "agent-rss")
        agents.append(agent)
        rss_base = agent.peak_rss_mb()
        big_url = (
            f"http://127.0.0.1:{agent.port}/v2/bench/blob/blobs/{big_digest}?ns=127.0.0.1%3A{rport}"
        )
        big_time = timed_get(big_url, rss_size)
        results["rss"] = {
            "idle_mb": round(rss_base, 1),
            "peak_mb": round(agent.peak_rss_mb(), 1),
            "cold_seconds": round(big_time, 2),
        }

        def gbps(times: list[float], size: int) -> float:
            return size / statistics.median(times) / 1e9

        results["cached"] = {
            "agent_gbps": round(gbps(cached, cached_size), 3),
            "registry_gbps": round(gbps(registry_times, cached_size), 3),
            "ratio": round(statistics.median(registry_times) / statistics.median(cached), 3),
            "agent_cpu_s_per_gib": round(statistics.median(cached_cpu) / (cached_size / 2**30), 3),
        }
        results["cold"] = {
            "agent_seconds": round(statistics.median(cold), 3),
            "direct_seconds": round(statistics.median(direct_times), 3),
            "ratio": round(statistics.median(cold) / statistics.median(direct_times), 3),
            "direct_to_disk_seconds": round(statistics.median(direct_disk), 3),
            "ratio_vs_direct_to_disk": round(
                statistics.median(cold) / statistics.median(direct_disk), 3
            ),
            "agent_cpu_s_per_gib": round(statistics.median(cold_cpu) / (cached_size / 2**30), 3),
        }
    finally:
        for agent in agents:
            agent.stop()
        registry.terminate()
        registry.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
