"""Pull-storm benchmark: N shaped nodes pull the same content at once.

    python3 bench/swarm_bench.py --nodes 8 --rate-mbit 200 --size 128MiB [--layers 1] \
        [--rtt-ms 0] [--strategy direct,central,bittorrent,p2pull,floor] \
        [--discovery static|mdns] \
        [--late-joiners 0.5 --late-delay 5] [--out-dir DIR | --out FILE.json] [--no-plot] \
        [--py-spy DIR] [--repeat N] [--slow K --slow-rate-mbit R]

Run as root. For each strategy a fresh network of namespaces is built (``tests/netns.py``): host 0
runs the origin (``python -m p2pull.testing.serve``), hosts 1..N are the nodes; every host's link
is shaped to ``--rate-mbit`` in both directions (the origin's too), optionally with ``--rtt-ms``
of delay (netem under the tbf). Strategies:

- ``direct``: every node pulls straight from the origin, all at once (curl).
- ``central``: docker-registry 2.8 as a pull-through cache (proxy mode) on node 1; every node
  pulls through it (``bench/central.py``).
- ``bittorrent``: opentracker + a libtorrent seeder on the origin host, a libtorrent leecher on
  every node (``bench/bittorrent.py``; needs Debian's opentracker and python3-libtorrent).
- ``p2pull``: every node runs an agent (static peers by default: same data path as mDNS, no
  convergence wait) and pulls through its own mirror, all at once (curl; ``bench/agents.py``).
- ``floor``: not a product but the measure of the machine: a relay tree with no protocol
  (``bench/floor.py``; node 1 fetches, relays forward, every node stores, hashes and streams to
  its curl). Its slowest node is what the bytes alone need here.

``--repeat N`` runs every strategy N times, interleaved, and reports the run with the median
slowest node (and every run's slowest node): this machine's run-to-run spread is about ±5 %.
``--slow K``: K nodes, none of them a layer's seed (its HRW-first agent), are shaped to
``--slow-rate-mbit`` both ways (a slow NIC); each node's completion is then reported over its own
bound, the fast and the slow nodes apart (``fast_slowest_over_lower_bound``,
``slow_slowest_over_lower_bound``). ``--late-joiners F --late-delay S``: the last
``round(F * N)`` nodes start S seconds after the others (every strategy). With ``--layers K``
the origin serves K blobs that split ``--size`` and each node fetches all of them in parallel
(as containerd does). Reported per strategy: origin
egress / size from the origin host's interface counters (wire bytes, and wire bytes minus
per-packet header bytes) and from the origin's own count (plus the seeder's, for bittorrent);
per-node pull time (p50, max) and finish time since the first node began; the bandwidth lower
bound ``size / min(node rate, origin rate)``; slowest / lower bound; CPU seconds of the helpers
(agents, the cache, or the leechers) during the pull (utime + stime from /proc); for p2pull, the
peer connections each agent holds once all are done (``peer_links``: p50, max) and the peer
messages each sent, pieces included (``peer_messages``). Output: JSON,
a Markdown table next to it (``.md``) and a PNG (``.png``: completion-time CDF and origin egress
per strategy; skipped when matplotlib is missing). ``--py-spy DIR`` records each helper with
py-spy during the pull (raw collapsed stacks). ``--launcher FILE`` runs ``python FILE agent ...``
instead of ``python -m agent agent ...``: a way to try swarm tunings without editing the agent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import DEFAULT_MIN_CHUNKS, parse_size  # noqa: E402
from bench.agents import MIRROR_PORT, PEER_PORT, agent_metrics, start_agents  # noqa: E402
from bench.bittorrent import Swarm, bittorrent_missing  # noqa: E402
from bench.central import start_cache  # noqa: E402
from bench.floor import HTTP_PORT as FLOOR_PORT  # noqa: E402
from bench.floor import start_floor  # noqa: E402
from bench.plot import write_plot  # noqa: E402
from p2pull.membership import Member, rank  # noqa: E402
from tests.netns import (  # noqa: E402
    Host,
    NetnsError,
    Network,
    iface_counters,
    netns_missing,
    netns_network,
    read_json_line,
    reshape,
)

STRATEGIES = ("direct", "central", "bittorrent", "p2pull", "floor")
# whose CPU is reported
CPU_OF = {"p2pull": "agents", "central": "cache", "bittorrent": "leechers", "floor": "nodes"}

NAME = "bench/model"
FRAME_OVERHEAD = 66  # Ethernet + IPv4 + TCP with timestamps, per packet the interface counts
TICKS = os.sysconf("SC_CLK_TCK")

# Runs in a node's namespace: wait for the common start instant, fetch every URL in parallel with
# curl (to /dev/null, so the client is not the bottleneck), report one JSON line. Each URL gets its
# own connection at once (--parallel-immediate): otherwise curl waits for the first connection to
# learn whether it multiplexes and, on HTTP/1.1, sends the next request after the first response.
CLIENT = """
import json, subprocess, sys, time
start_at, urls = float(sys.argv[1]), sys.argv[2:]
argv = ["curl", "-s", "--noproxy", "*", "--max-time", "900", "-Z", "--parallel-immediate",
        "--parallel-max", "64",
        "-w", "%{http_code} %{size_download}\\n"]
for url in urls:
    argv += ["-o", "/dev/null", url]
time.sleep(max(0.0, start_at - time.time()))
began = time.time()
out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
seconds = time.time() - began
codes, sizes = out[0::2], [int(s) for s in out[1::2]]
print(json.dumps({"seconds": seconds, "began": began, "codes": codes, "bytes": sum(sizes)}))
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


class ProcStat(NamedTuple):
    """CPU seconds of a process (all its threads) so far, and its minor page faults (fresh
    memory touched: expensive on a ballooned VM)."""

    user: float
    system: float
    faults: int

    @property
    def cpu(self) -> float:
        return self.user + self.system


def proc_stat(pid: int) -> ProcStat:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return ProcStat(int(fields[11]) / TICKS, int(fields[12]) / TICKS, int(fields[7]))


def cpu_seconds(pid: int) -> float:
    return proc_stat(pid).cpu


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


async def add_delay(net: Network, rtt_ms: float, rate_bit: int) -> None:
    """Half the RTT as netem delay on each host's egress, under a tbf at the link rate."""
    burst = max(rate_bit // 8 // 100, 16_000)
    for host in net.hosts:
        await net.run(
            host, "tc", "qdisc", "replace", "dev", host.dev, "root", "handle", "1:", "tbf",
            "rate", f"{rate_bit}bit", "burst", str(burst), "latency", "200ms",
        )  # fmt: skip
        try:
            await net.run(
                host, "tc", "qdisc", "add", "dev", host.dev, "parent", "1:1", "handle", "10:",
                "netem", "delay", f"{rtt_ms / 2}ms", "limit", "100000",
            )  # fmt: skip
        except NetnsError as exc:
            raise SystemExit(f"swarm_bench: --rtt-ms needs the netem qdisc: {exc}") from None


def slow_slots(nodes: list[Host], digests: list[str], count: int) -> list[int]:
    """The first ``count`` node slots (0-based) that seed no layer (their agent is not the
    first in any layer's HRW order), so that the slow nodes slow only themselves, if anything."""
    members = [Member.of(host.ip, PEER_PORT) for host in nodes]
    seeds = {rank(members, digest)[0] for digest in digests}
    slots = [slot for slot, member in enumerate(members) if member not in seeds]
    return slots[:count]


@contextlib.asynccontextmanager
async def profilers(directory: Path | None, pids: list[int]) -> AsyncIterator[None]:
    """py-spy record on each pid while the body runs; SIGINT makes it write its file."""
    processes: list[trio.Process] = []
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        for index, pid in enumerate(pids, start=1):
            out = str(directory / f"agent{index}.txt")
            argv = ["py-spy", "record", "--pid", str(pid), "--rate", "50", "--format", "raw"]
            argv += ["--nonblocking", "-o", out]
            quiet = subprocess.DEVNULL
            processes.append(await trio.lowlevel.open_process(argv, stdout=quiet, stderr=quiet))
        await trio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
            for process in processes:
                with trio.move_on_after(20):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def run_strategy(strategy: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rate_bit = int(args.rate_mbit * 1_000_000)
    (workdir / strategy / "logs").mkdir(parents=True)
    async with netns_network(1 + args.nodes, rate_bit=rate_bit) as net:
        if args.rtt_ms > 0:
            await add_delay(net, args.rtt_ms, rate_bit)
        return await run_on(net, strategy, args, workdir)


async def run_on(
    net: Network, strategy: str, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    rate_bit = int(args.rate_mbit * 1_000_000)
    logdir = workdir / strategy / "logs"
    env = clean_env()
    async with trio.open_nursery() as nursery:
        origin_host, nodes = net.hosts[0], net.hosts[1:]
        serve_argv = [
            sys.executable, "-m", "p2pull.testing.serve", "--host", origin_host.ip, "--port", "0",
            "--name", NAME, "--size", str(args.size_bytes), "--seed", "1",
        ]  # fmt: skip
        if args.layers > 1:
            serve_argv += ["--layers", str(args.layers)]
        with (logdir / "origin.log").open("wb") as err:
            serve = await net.start(origin_host, *serve_argv, env=env, stderr=err, cwd=str(ROOT))
        served = await read_json_line(serve)
        size, digests = int(served["size"]), list(served["digests"])
        slow = slow_slots(nodes, digests, args.slow)
        slow_bit = int(args.slow_rate_mbit * 1_000_000)
        for slot in slow:
            await reshape(net, nodes[slot], rate_bit=slow_bit)
        agents: list[trio.Process] = []  # the helpers whose CPU is reported
        if strategy == "p2pull":
            agents = await start_agents(
                net, nursery, args=args, workdir=workdir / strategy, served=served,
                logdir=logdir, env=env,
            )  # fmt: skip
            targets = [f"http://{h.ip}:{MIRROR_PORT}" for h in nodes]
            query = f"?ns={served['netloc']}"
        elif strategy == "central":
            cache, cache_url = await start_cache(
                net, nodes[0], workdir=workdir / strategy, origin_url=served["url"],
                log=logdir / "cache.log", env=env,
            )  # fmt: skip
            agents = [cache]
            targets, query = [cache_url] * len(nodes), ""
        elif strategy == "bittorrent":
            swarm = Swarm(
                workdir / strategy, size=args.size_bytes, layers=len(digests),
                piece_size=parse_size(args.bt_piece_size),
            )  # fmt: skip
            await swarm.start(net, origin_host, digests=digests, logdir=logdir, env=env)
            targets, query = [""] * len(nodes), ""
        elif strategy == "floor":
            agents = await start_floor(
                net, workdir=workdir / strategy, served=served, name=NAME,
                chunk_size=parse_size(args.chunk_size), min_chunks=args.min_chunks,
                logdir=logdir, env=env,
            )  # fmt: skip
            targets, query = [f"http://{h.ip}:{FLOOR_PORT}" for h in nodes], ""
        else:
            targets, query = [served["url"]] * len(nodes), ""
        before = [proc_stat(a.pid) for a in agents]
        origin_cpu_before = cpu_seconds(serve.pid)
        tx_before, packets_before = await iface_counters(net, origin_host)
        start_at = time.time() + 2.0
        clients = []
        late = late_nodes(len(nodes), args.late_joiners)
        profile_dir = Path(args.py_spy) / strategy if args.py_spy and agents else None
        async with profilers(profile_dir, [a.pid for a in agents]):
            start_at = max(start_at, time.time() + 0.5)
            for slot, (host, target) in enumerate(zip(nodes, targets, strict=True)):
                urls = [f"{target}/v2/{NAME}/blobs/{d}{query}" for d in digests]
                begin = start_at + (args.late_delay if slot in late else 0.0)
                argv = [sys.executable, "-c", CLIENT, f"{begin:.3f}", *urls]
                if strategy == "bittorrent":
                    argv = swarm.leecher_argv(host, begin)
                with (logdir / f"client{host.index}.log").open("wb") as err:
                    clients.append(await net.start(host, *argv, env=env, stderr=err))
            await trio.sleep(max(0.0, start_at - time.time()))
            machine_before = machine_cpu()  # the clients begin now
            results = [await read_json_line(client) for client in clients]
            machine_after = machine_cpu()
        tx_after, packets_after = await iface_counters(net, origin_host)
        after = [proc_stat(a.pid) for a in agents]
        cpu = [a.cpu - b.cpu for a, b in zip(after, before, strict=True)]
        kernel = [a.system - b.system for a, b in zip(after, before, strict=True)]
        faults = [a.faults - b.faults for a, b in zip(after, before, strict=True)]
        origin_cpu = cpu_seconds(serve.pid) - origin_cpu_before
        sources = []
        if strategy == "p2pull":
            sources = [await agent_metrics(net, host) for host in nodes]
        app_sent = 0
        if strategy == "bittorrent":
            leechers = [proc_stat(client.pid) for client in clients]  # their whole life
            cpu = [stat.cpu for stat in leechers]
            kernel = [stat.system for stat in leechers]
            faults = [stat.faults for stat in leechers]
            app_sent = await swarm.seeder_sent()
        serve.send_signal(signal.SIGTERM)
        app_sent += int((await read_json_line(serve))["bytes_sent"])
        nursery.cancel_scope.cancel()
    failed = [r for r in results if set(r["codes"]) != {"200"} or r["bytes"] != size]
    times = sorted(r["seconds"] for r in results)
    first = min(r["began"] for r in results)
    finished = sorted(r["began"] + r["seconds"] - first for r in results)
    per_node = [
        {"node": slot + 1, "late": slot in late, "slow": slot in slow,
         "seconds": round(r["seconds"], 3),
         "finished_s": round(r["began"] + r["seconds"] - first, 3)}
        for slot, r in enumerate(results)
    ]  # fmt: skip
    lower_bound = size * 8 / rate_bit  # node and origin links have the same rate here
    slow_bound = size * 8 / min(slow_bit, rate_bit) if slow else lower_bound
    fast_over = [r["seconds"] / lower_bound for s, r in enumerate(results) if s not in slow]
    slow_over = [r["seconds"] / slow_bound for s, r in enumerate(results) if s in slow]
    wire = tx_after - tx_before
    busy = machine_after[0] - machine_before[0]
    machine_busy = busy / max(machine_after[1] - machine_before[1], 1e-9)
    payload = wire - FRAME_OVERHEAD * (packets_after - packets_before)
    return {
        "strategy": strategy,
        "nodes": args.nodes,
        "size": size,
        "layers": len(digests),
        "rate_mbit": args.rate_mbit,
        "rtt_ms": args.rtt_ms,
        "late_joiners": len(late),
        "late_delay_s": args.late_delay if late else 0.0,
        "slow_nodes": [slot + 1 for slot in slow],
        "slow_rate_mbit": args.slow_rate_mbit if slow else None,
        "fast_slowest_over_lower_bound": round(max(fast_over), 3) if fast_over else None,
        "slow_slowest_over_lower_bound": round(max(slow_over), 3) if slow_over else None,
        "ok": not failed,
        "failed": failed,
        "origin_egress_wire": round(wire / size, 4),
        "origin_egress_payload": round(payload / size, 4),
        "origin_egress_app": round(app_sent / size, 4),
        "times": [round(t, 3) for t in times],  # each node's own pull duration, sorted
        "p50_s": round(statistics.median(times), 3),
        "max_s": round(times[-1], 3),
        "last_finished_s": round(finished[-1], 3),  # since the first node began
        "per_node": per_node,
        "lower_bound_s": round(lower_bound, 3),
        "slowest_over_lower_bound": round(times[-1] / lower_bound, 3),
        "agent_cpu_s": [round(c, 2) for c in cpu],
        "agent_cpu_kernel_s": [
            round(c, 2) for c in kernel
        ],  # the part of agent_cpu_s in the kernel
        "agent_page_faults": faults,
        "cpu_of": CPU_OF.get(strategy),
        "origin_cpu_s": round(origin_cpu, 2),
        "machine_cpus": os.cpu_count(),
        "machine_busy_cpu_s": round(busy, 2),
        "machine_busy_fraction": round(machine_busy, 3),  # from the clients' start to the end
        "agent_sources": sources,
        # peer connections each agent holds once every node is done (links stay open): p50, max
        "peer_links": _spread([source["links"] for source in sources if "links" in source]),
        # peer messages each agent sent during the storm, pieces included: p50, max
        "peer_messages": _spread([s["messages_sent"] for s in sources if "messages_sent" in s]),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    return {"p50": statistics.median(values), "max": max(values)} if values else None


def late_nodes(count: int, fraction: float) -> set[int]:
    """Slots (0-based) of the nodes that start late: the last ``round(fraction * count)``."""
    late = min(count, max(0, int(fraction * count + 0.5)))
    return set(range(count - late, count))


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| strategy | origin egress (wire / payload / app) x size | p50 s | max s | lower bound s "
        "| slowest / LB | last done s | helper CPU s (mean / max) | machine CPU busy | ok "
        "| slowest s, every run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cpu = r["agent_cpu_s"]
        cpu_text = f"{statistics.mean(cpu):.1f} / {max(cpu):.1f} ({r['cpu_of']})" if cpu else "-"
        rows.append(
            f"| {r['strategy']} | {r['origin_egress_wire']:.3f} / {r['origin_egress_payload']:.3f}"
            f" / {r['origin_egress_app']:.3f} | {r['p50_s']:.2f} | {r['max_s']:.2f} "
            f"| {r['lower_bound_s']:.2f} | {r['slowest_over_lower_bound']:.2f} "
            f"| {r['last_finished_s']:.2f} | {cpu_text} "
            f"| {100 * r['machine_busy_fraction']:.0f}% of {r['machine_cpus']} "
            f"| {'yes' if r['ok'] else 'NO'} "
            f"| {' / '.join(f'{t:.2f}' for t in r['runs_max_s'])} |"
        )
    return "\n".join(rows)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One result per strategy: with ``--repeat N`` the run with the median slowest node, the
    strategies interleaved (a b a b ...) so that the machine's drift spreads over all of them;
    ``runs_max_s`` lists every run's slowest node."""
    workdir = Path(tempfile.mkdtemp(prefix="p2pull-swarm-bench-", dir=args.workdir))
    runs: dict[str, list[dict[str, Any]]] = {strategy: [] for strategy in args.strategies}
    try:
        for repeat in range(args.repeat):
            for strategy in args.strategies:
                print(f"== {strategy}: {args.nodes} nodes, {args.size}, {args.rate_mbit} Mbit/s"
                      f" (run {repeat + 1} of {args.repeat})", flush=True)  # fmt: skip
                result = await run_strategy(strategy, args, workdir / f"run{repeat + 1}")
                print(json.dumps({k: v for k, v in result.items() if k != "agent_sources"}),
                      flush=True)  # fmt: skip
                runs[strategy].append(result)
    finally:
        if args.keep:
            print(f"logs and stores kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return [median_run(runs[strategy]) for strategy in args.strategies]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose slowest node is the median (the lower one of an even count), noting every
    run's slowest node and whether every run succeeded."""
    ordered = sorted(runs, key=lambda r: r["max_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_max_s"] = [r["max_s"] for r in runs]
    chosen["ok"] = all(r["ok"] for r in runs)
    chosen["failed"] = [f for r in runs for f in r["failed"]]
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; adds ``size_bytes`` and ``strategies``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--size", default="128MiB")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per strategy; reports the median run"
    )
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--strategy", default="p2pull,direct", help=",".join(STRATEGIES))
    parser.add_argument(
        "--late-joiners", type=float, default=0.0, help="fraction of nodes that start late"
    )
    parser.add_argument("--late-delay", type=float, default=5.0, help="their delay, seconds")
    parser.add_argument("--slow", type=int, default=0, help="nodes with a slow link (no seed)")
    parser.add_argument(
        "--slow-rate-mbit", type=float, default=None, help="their rate (default: a tenth)"
    )
    parser.add_argument(
        "--bt-piece-size",
        default="4MiB",
        help="bittorrent: piece size (4MiB was fastest here)",
    )
    parser.add_argument("--discovery", choices=("static", "mdns"), default="static")
    parser.add_argument("--chunk-size", default="1MiB", help="the agents' --chunk-size")
    parser.add_argument(
        "--min-chunks",
        type=int,
        default=DEFAULT_MIN_CHUNKS,
        help="the agents' --min-chunks (the floor chunks each layer the same way)",
    )
    parser.add_argument("--log-level", default="INFO", help="the agents' --log-level")
    parser.add_argument("--py-spy", default=None, help="record agents with py-spy into DIR")
    parser.add_argument(
        "--launcher",
        default=None,
        help="a Python file run instead of `-m agent` (same arguments), to try tunings",
    )
    parser.add_argument("--workdir", default=None, help="parent of the stores and logs")
    parser.add_argument("--keep", action="store_true", help="keep stores and logs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "swarm.json"))
    parser.add_argument(
        "--out-dir",
        default=None,
        help="write swarm.json, swarm.md and swarm.png there (instead of --out and its siblings)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    args.size_bytes = parse_size(args.size)
    args.strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    if not set(args.strategies) <= set(STRATEGIES) or not args.strategies:
        parser.error(f"--strategy: a comma-separated list of {', '.join(STRATEGIES)}")
    if not 0.0 <= args.late_joiners <= 1.0 or args.late_delay < 0:
        parser.error("--late-joiners is a fraction in [0, 1], --late-delay >= 0")
    if "bittorrent" in args.strategies and (reason := bittorrent_missing()) is not None:
        parser.error(f"--strategy bittorrent: {reason}")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.slow_rate_mbit is None:
        args.slow_rate_mbit = args.rate_mbit / 10
    if not 0 <= args.slow < args.nodes or args.slow_rate_mbit <= 0:
        parser.error("--slow must be in [0, --nodes) and --slow-rate-mbit > 0")
    if args.slow and args.rtt_ms > 0:
        parser.error("--slow and --rtt-ms together are not supported (both reshape the links)")
    if args.nodes < 1 or args.layers < 1 or args.size_bytes < args.layers:
        parser.error("--nodes and --layers must be >= 1, --size at least one byte per layer")
    return args


def write_outputs(args: argparse.Namespace, results: list[dict[str, Any]]) -> Path:
    """The JSON, the Markdown table next to it and (unless ``--no-plot``) the PNG; the JSON path."""
    markdown = table(results)
    print()
    print(markdown)
    config = {k: v for k, v in vars(args).items() if k not in ("strategies",)}
    out = Path(args.out_dir) / "swarm.json" if args.out_dir else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    if not args.no_plot:
        print(write_plot(results, out.with_suffix(".png")))
    return out


def main() -> int:
    args = parse_args()
    reason = netns_missing()
    if reason is not None:
        print(f"swarm_bench: {reason}", file=sys.stderr)
        return 2
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = trio.run(amain, args)
    write_outputs(args, results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
