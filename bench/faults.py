"""The fault suite: pull storms through real agents while the origin, a seed, a peer, a disk or a
link fails, and what the clients got.

    python3 bench/faults.py [--scenario NAME[,NAME]] [--nodes 8] [--size 32MiB] \
        [--rate-mbit 50] [--out FILE.json] [--workdir DIR] [--keep] [--list]

Run as root. Each scenario builds its own network of namespaces (``tests/netns.py``): host 0
runs the origin (``python -m p2pull.testing.serve --control``: faults set from stdin, killed and
restarted on its port), hosts 1..N run an agent each (``python -m agent agent`` of this checkout,
static peers, a cluster secret; ``bench/agents.py``), every link shaped to ``--rate-mbit`` both
ways. On every node one client (``bench/fault_client.py``) pulls the blob through the node's
mirror as containerd does, all at once, and hashes what it got, whole and per chunk. The
scenarios (``--list`` prints them) are in ``SCENARIOS`` below; the fault in each is timed by the
origin's own byte counter ("at 30 %": once the origin has sent 30 % of the blob).

Reported per scenario (one JSON line each, then a Markdown table): nodes whose pull completed
with the right digest / nodes that pulled (a node killed on purpose, or whose own store is gone,
counts as attempted-not-completed: containerd would fall back to the registry), ``corrupt bytes
served`` (bytes of whole bodies that differ from the blob: must be 0; a body that breaks off
with a reset is a failed pull, not corruption), origin egress / blob size (the origin host's
interface counters less per-packet headers, across the origin's restarts), the slowest node's
pull (from its first attempt to its completion), and the machine's busy CPU share while the
storm ran (other work on the machine included). A scenario passes when the nodes expected to
complete did, nothing corrupt was served or kept in a store, origin egress is within its limit
(1.10x unless the fault itself makes the origin send more: said in its row), no agent crashed
and the scenario met its deadline. Every scenario cleans up its namespaces, processes and
mounts, also on failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import DEFAULT_MIN_CHUNKS, parse_size  # noqa: E402
from bench.fault_rig import Rig, now, stored_blobs  # noqa: E402
from bench.fault_scenarios import SCENARIOS, Context, Scenario, truth_blocks  # noqa: E402
from bench.swarm_bench import FRAME_OVERHEAD, clean_env, machine_cpu  # noqa: E402
from tests.netns import netns_missing, netns_network  # noqa: E402

START_DELAY = 1.0  # seconds from starting the clients to their common start instant
RETRY_DELAY = 2.0  # a client whose pull failed tries again (where the scenario allows) after


async def client_loop(ctx: Context, node_slot: int, start_at: float) -> None:
    """A node's client: one pull, and ``retries`` more after a failure while its agent lives
    (kubelet retrying; a dead agent's client would go to the registry instead)."""
    rig, scenario = ctx.rig, ctx.scenario
    node = rig.nodes[node_slot - 1]
    for attempt in range(1 + scenario.retries):
        await rig.pull(node, start_at=start_at if attempt == 0 else 0.0)
        if ctx.completed(node.slot) or node.killed or not node.alive:
            return
        await trio.sleep(RETRY_DELAY)


async def storm(ctx: Context) -> dict[str, Any]:
    """Clients on every node at once, the scenario's fault alongside; the measurements."""
    rig = ctx.rig
    tx_before, packets_before = await rig.origin_counters()
    start_at = now() + START_DELAY
    ctx.start_at = start_at
    busy_before = total_before = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.act)
        async with trio.open_nursery() as clients:
            for node in rig.nodes:
                clients.start_soon(client_loop, ctx, node.slot, start_at)
            await trio.sleep(max(0.0, start_at - now()))
            busy_before, total_before = machine_cpu()
        busy_after, total_after = machine_cpu()
        ctx.clients_done.set()
    tx_after, packets_after = await rig.origin_counters()
    payload = (tx_after - tx_before) - FRAME_OVERHEAD * (packets_after - packets_before)
    busy = (busy_after - busy_before) / max(total_after - total_before, 1e-9)
    return {"origin_x": round(payload / rig.size, 3), "machine_busy": round(busy, 3)}


def judge(ctx: Context, measured: dict[str, Any]) -> dict[str, Any]:
    """The scenario's row: what the clients got, checked against the blob."""
    rig, scenario = ctx.rig, ctx.scenario
    truth = truth_blocks(rig.size, rig.chunk_size)
    digest_hex = rig.digest.removeprefix("sha256:")
    corrupt = wrong_in_broken = 0
    done: dict[int, float] = {}
    first: dict[int, float] = {}
    failures: dict[int, str] = {}
    for attempt in rig.attempts:
        r = attempt.result
        first[attempt.slot] = min(first.get(attempt.slot, r["began"]), r["began"])
        wrong = sum(
            min(rig.chunk_size, rig.size - i * rig.chunk_size)
            for i, block in enumerate(r["blocks"])
            if i < len(truth) and block != truth[i] and (i + 1) * rig.chunk_size <= r["bytes"]
        )
        whole = r["error"] is None and r["status"] == 200
        if whole and (r["bytes"] != rig.size or r["sha256"] != digest_hex):
            corrupt += max(wrong, 1)  # a whole body that is not the blob
        elif whole:
            done[attempt.slot] = r["ended"]
        else:
            wrong_in_broken += wrong
            failures[attempt.slot] = str(r["error"])[:200]
    times = sorted(done[slot] - first[slot] for slot in done)
    expected_to_fail = sorted(ctx.expected_failures)
    should = [n.slot for n in rig.nodes if n.slot not in ctx.expected_failures]
    missing = [slot for slot in should if slot not in done]
    crashed = [n.slot for n in rig.nodes if not n.alive and not n.killed]
    kept = [
        {"node": n.slot, **blob}
        for n in rig.nodes
        for blob in stored_blobs(n.data_dir)
        if blob["complete"] and blob["intact"] is False
    ]
    checks = {
        "completed": not missing,
        "corrupt_served": corrupt == 0,
        "corrupt_kept": not kept,
        "origin": measured["origin_x"] <= scenario.origin_limit,
        "no_crash": not crashed,
        "fault_happened": not ctx.missed,
        **ctx.checks,
    }
    return {
        "scenario": scenario.name,
        "nodes": len(rig.nodes),
        "size": rig.size,
        "rate_mbit": ctx.rate_mbit,
        "completed": len(done),
        "attempted": len(first),
        "expected_failures": expected_to_fail,
        "failed": {str(s): failures.get(s, "?") for s in sorted(first) if s not in done},
        "corrupt_bytes_served": corrupt,
        "wrong_bytes_in_broken_bodies": wrong_in_broken,
        "corrupt_kept": kept,
        "origin_x": measured["origin_x"],
        "origin_limit": scenario.origin_limit,
        "per_node_s": {str(slot): round(done[slot] - first[slot], 2) for slot in sorted(done)},
        "slowest_s": round(times[-1], 2) if times else None,
        "p50_s": round(statistics.median(times), 2) if times else None,
        "lower_bound_s": round(rig.size * 8 / (ctx.rate_mbit * 1e6), 2),
        "machine_busy": measured["machine_busy"],
        "crashed": crashed,
        "notes": ctx.notes,
        "checks": checks,
        "ok": all(checks.values()),
    }


async def run_scenario(
    scenario: Scenario, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    nodes = scenario.nodes or args.nodes
    size = scenario.size or args.size_bytes
    rate = scenario.rate_mbit or args.rate_mbit
    began = now()
    spare = 1 if scenario.hostile else 0
    ctx: Context | None = None
    try:
        with trio.fail_after(scenario.deadline):
            async with (
                netns_network(1 + nodes + spare, rate_bit=int(rate * 1e6)) as net,
                trio.open_nursery() as nursery,
            ):
                rig = Rig(
                    net, nursery, nodes=nodes, size=size, chunk_size=args.chunk_size_bytes,
                    min_chunks=args.min_chunks,
                    workdir=workdir, env=clean_env() | {"PYTHONPATH": str(ROOT)},
                    log_level=args.log_level,
                )  # fmt: skip
                ctx = Context(rig=rig, scenario=scenario, rate_mbit=rate)
                try:
                    await rig.start_origin()
                    await ctx.prepare()
                    await rig.start_agents()
                    measured = await storm(ctx)
                    await ctx.collect()
                    row = judge(ctx, measured)
                finally:
                    with trio.CancelScope(shield=True):
                        await ctx.cleanup()
                nursery.cancel_scope.cancel()
    except Exception as exc:
        row = {
            "scenario": scenario.name,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:500],
            "traceback": traceback.format_exc()[-2000:],
            "notes": ctx.notes if ctx is not None else {},
        }
        if ctx is not None:
            row["attempts_so_far"] = len(ctx.rig.attempts)
    row["elapsed_s"] = round(now() - began, 1)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | nodes | completed / attempted | corrupt bytes served | origin / size "
        "| slowest pull s | machine busy | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scenario']} | - | - | - | - | - | - | NO: {r['error'][:80]} |")
            continue
        by_design = f" ({len(r['expected_failures'])} by design)" if r["expected_failures"] else ""
        limit = f" (limit {r['origin_limit']:.2f})" if r["origin_limit"] != 1.10 else ""
        slowest = f"{r['slowest_s']:.1f}" if r["slowest_s"] is not None else "-"
        failed = [name for name, good in r["checks"].items() if not good]
        verdict = "yes" if r["ok"] else "NO: " + ", ".join(failed)
        lines.append(
            f"| {r['scenario']} | {r['nodes']} | {r['completed']}/{r['attempted']}{by_design} "
            f"| {r['corrupt_bytes_served']} | {r['origin_x']:.2f}{limit} | {slowest} "
            f"| {100 * r['machine_busy']:.0f}% | {verdict} |"
        )
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="p2pull-faults-", dir=args.workdir))
    rows = []
    try:
        for scenario in args.scenarios:
            print(f"== {scenario.name}: {scenario.what}", flush=True)
            row = await run_scenario(scenario, args, workdir / scenario.name)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if args.keep:
            print(f"logs and stores kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/faults.py", description=__doc__.split("\n\n")[0])
    names = [s.name for s in SCENARIOS]
    parser.add_argument("--scenario", default=",".join(names), help="comma-separated names")
    parser.add_argument("--nodes", type=int, default=8, help="where a scenario names none")
    parser.add_argument("--size", default="32MiB", help="the blob, where a scenario names none")
    parser.add_argument("--rate-mbit", type=float, default=50.0, help="every link, both ways")
    parser.add_argument("--chunk-size", default="1MiB", help="the agents' --chunk-size")
    parser.add_argument(
        "--min-chunks", type=int, default=DEFAULT_MIN_CHUNKS, help="the agents' --min-chunks"
    )
    parser.add_argument("--log-level", default="INFO", help="the agents' --log-level")
    parser.add_argument("--workdir", default=None, help="parent of the stores and logs")
    parser.add_argument("--keep", action="store_true", help="keep stores and logs")
    parser.add_argument("--out", default=None, help="also write the rows there (JSON) and .md")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.scenario.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown or not wanted:
        parser.error(f"--scenario: unknown {unknown}; one or more of {', '.join(names)}")
    args.scenarios = [s for s in SCENARIOS if s.name in wanted]
    args.size_bytes = parse_size(args.size)
    args.chunk_size_bytes = parse_size(args.chunk_size)
    if args.nodes < 3 or args.size_bytes < 4 * args.chunk_size_bytes or args.rate_mbit <= 0:
        parser.error("--nodes at least 3, --size at least 4 chunks, --rate-mbit positive")
    return args


def main() -> int:
    args = parse_args()
    if args.list:
        for scenario in args.scenarios:
            print(f"{scenario.name:20} {scenario.what}")
        return 0
    reason = netns_missing()
    if reason is not None:
        print(f"faults: {reason}", file=sys.stderr)
        return 2
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = trio.run(amain, args)
    markdown = table(rows)
    print()
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
