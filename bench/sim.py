"""The pull storm at cluster scale, simulated with the agent's own protocol code.

    python3 bench/sim.py --nodes 1000 --size 10GiB --layers 4 --rate-gbit 25 \\
        --origin-rate-gbit 10 --rack 32 --oversub 4 --slow 0.1 --seed 1 --json

Every node runs the agent's pure protocol (``BlobSession``, the scheduler, relay,
super-seeding, latecomers, upload admission, HRW membership: ``bench/simnode.py``) over a byte
model of a cluster (``bench/simnet.py``): per-node links, racks of ``--rack`` nodes behind a
shared uplink ``--oversub`` times narrower than their nodes together, one-way ``--latency-ms``,
an origin with its own uplink. A fraction ``--slow`` of the nodes, never a layer's seed (as in
``bench/swarm_bench.py --slow``: a slow seed bounds its layer for everyone), have
``--slow-factor`` times their rate; ``--late`` of them start ``--late-delay`` s after the
others; ``--kill T:K`` kills K nodes (the first blob's seed among them) at T s. Every node's
client wants every layer at once.

One JSON line (``--json``) or a short report: origin bytes over the image size, each node's
completion over its lower bound (the image at ``min(its downlink, the origin's uplink)``: p50,
p99, max), peer connections per node, control messages and bytes per node, bytes that crossed
a rack boundary over ``racks x size`` (all bytes, and chunk bytes alone), and the run's own
cost (events, wall seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.config import DEFAULT_CHUNK_SIZE, DEFAULT_MIN_CHUNKS  # noqa: E402
from bench.simnet import Clock, Host, Link, Network  # noqa: E402
from bench.simnode import Blob, SimNode, World  # noqa: E402
from p2pull.membership import Member, Membership, rack_of, rank  # noqa: E402
from p2pull.peer.events import SessionConfig  # noqa: E402
from p2pull.store.types import chunk_size_for  # noqa: E402

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1] if cleaned and cleaned[-1] in UNITS else ""
    return int(float(cleaned.removesuffix(unit)) * UNITS[unit])


def address(index: int, rack_size: int) -> Member:
    """Node ``index``'s peer address, in 198.18.0.0/15: one /24 per rack (the agents take a
    member's rack from its address: ``--rack-prefix 24``)."""
    rack, slot = divmod(index, rack_size)
    return Member.of(f"198.{18 + (rack >> 8)}.{rack & 255}.{slot + 1}", 5051)


def layer_digest(seed: int, layer: int) -> str:
    return "sha256:" + hashlib.sha256(f"{seed} layer {layer}".encode()).hexdigest()


class SharedMembership:
    """Every node's membership starts as one shared view (a static peer list of N members
    costs N entries per node otherwise); a node that suspects someone gets its own copy from
    then on. Reads go to whichever it has."""

    def __init__(self, base: Membership, me: Member, members: frozenset[Member]) -> None:
        self._base, self._me, self._members = base, me, members
        self._own: Membership | None = None

    def _view(self) -> Membership:
        return self._own or self._base

    def seed_for(self, digest: str, *, now: float, excluding: Any = ()) -> Member:
        return self._view().seed_for(digest, now=now, excluding=excluding)

    def successors(self, digest: str, *, now: float) -> list[Member]:
        return self._view().successors(digest, now=now)

    def ranking(self, digest: str, *, now: float) -> tuple[tuple[Member, ...], dict[str, int]]:
        return self._view().ranking(digest, now=now)

    def alive(self, node_id: str) -> None:
        if self._own is not None:
            self._own.alive(node_id)

    def suspect(self, node_id: str, *, now: float) -> None:
        if self._own is None:
            self._own = Membership(self_member=self._me)
            self._own.update_source("static", self._members, now=now)
        self._own.suspect(node_id, now=now)


def build(args: argparse.Namespace) -> World:
    rng = random.Random(args.seed)
    clock = Clock()
    net = Network(clock=clock, latency=args.latency_ms / 1000, queue=args.queue_ms / 1000)
    rate = args.rate_gbit * 1e9 / 8
    racks = math.ceil(args.nodes / args.rack)
    members = [address(i, args.rack) for i in range(args.nodes)]
    digests = [layer_digest(args.seed, layer) for layer in range(args.layers)]
    seeds = {members.index(rank(members, digest)[0]) for digest in digests}
    drawn = rng.sample(range(args.nodes), round(args.slow * args.nodes))
    spare = (i for i in range(args.nodes) if i not in drawn and i not in seeds)
    slow = {next(spare) if i in seeds else i for i in drawn}
    for index in range(args.nodes):
        node_rate = rate * (args.slow_factor if index in slow else 1.0)
        net.hosts.append(Host(Link(node_rate), Link(node_rate), index // args.rack))
    rack_rate = args.rack * rate / args.oversub if args.oversub > 0 else math.inf
    net.rack_up = [Link(rack_rate) for _ in range(racks)]
    net.rack_down = [Link(rack_rate) for _ in range(racks)]
    net.origin_up = Link(args.origin_rate_gbit * 1e9 / 8)
    config = SessionConfig(
        peers_handout=args.peers_handout,
        max_in_flight=args.max_in_flight,
        downlink_queue=args.downlink_queue,
        fanout=args.fanout,
        relay_up_to=args.relay_up_to,
        busy_retry=args.busy_retry,
        far_wait=args.far_wait,
    )
    world = World(clock=clock, net=net, session_config=config)
    racks_of = {m.node_id: ("" if args.no_racks else rack_of(m.node_id, 24)) for m in members}
    world.rack = racks_of.__getitem__
    everyone = frozenset(members)
    base = Membership(self_member=members[0])
    base.update_source("static", everyone, now=0.0)
    corrupt = set(rng.sample(range(args.nodes), round(args.corrupt * args.nodes)))
    for index, member in enumerate(members):
        membership = SharedMembership(base, member, everyone)
        node = SimNode(world, index, member, membership, corrupt=index in corrupt)  # type: ignore[arg-type]
        world.nodes.append(node)
        world.waiting += 1
        world.index_of[member.node_id] = index
    size, layers = args.size, args.layers
    for layer in range(layers):
        digest = digests[layer]
        part = size // layers + (size % layers if layer == layers - 1 else 0)
        chunk_size = chunk_size_for(part, args.chunk_size, args.min_chunks)  # as an agent would
        world.blobs[digest] = Blob(digest, "sim/image", part, chunk_size)
    world.slow = slow  # type: ignore[attr-defined]
    world.late = set(rng.sample(sorted(set(range(args.nodes))), round(args.late * args.nodes)))  # type: ignore[attr-defined]
    return world


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    world = build(args)
    blobs = list(world.blobs.values())
    for node in world.nodes:
        delay = args.late_delay if node.index in world.late else 0.0  # type: ignore[attr-defined]
        world.clock.at(delay, node.start_client, blobs)
    for spec in args.kill:
        at, count = spec.split(":")
        world.clock.at(float(at), _kill, world, int(count), args.seed)
    world.clock.run(until=args.max_time, stop=world.everyone_done)
    return report(args, world, wall=time.perf_counter() - started)


def _kill(world: World, count: int, seed: int) -> None:
    """Kill ``count`` live nodes: the first blob's seed, then others at random."""
    first = next(iter(world.blobs))
    seed_id = world.nodes[0].membership.seed_for(first, now=world.clock.now).node_id
    victims = [world.index_of[seed_id]]
    rng = random.Random(seed + 1)
    others = [n.index for n in world.nodes if n.alive and n.index != victims[0]]
    victims += rng.sample(others, max(0, count - 1))
    for index in victims:
        world.kill(index)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def report(args: argparse.Namespace, world: World, *, wall: float) -> dict[str, Any]:
    size = args.size
    origin_rate = world.net.origin_up.rate
    ratios, seconds, failed = [], [], 0
    for node in world.nodes:
        if not node.alive:
            continue
        start = args.late_delay if node.index in world.late else 0.0  # type: ignore[attr-defined]
        if node.finished_at is None or any(b in node.failed for b in world.blobs):
            failed += 1
            continue
        took = node.finished_at - start
        bound = size / min(world.net.hosts[node.index].down.rate, origin_rate)
        ratios.append(took / bound)
        seconds.append(took)
    live = [node for node in world.nodes if node.alive]
    links = [node.stats.max_links for node in live]
    control = [node.stats.control_sent for node in live]
    control_bytes = [node.stats.control_bytes for node in live]
    racks = len(world.net.rack_down)
    return {
        "nodes": args.nodes,
        "size": size,
        "layers": args.layers,
        "chunk_size": args.chunk_size,
        "min_chunks": args.min_chunks,
        "chunk_sizes": sorted({blob.chunk_size for blob in world.blobs.values()}),
        "rate_gbit": args.rate_gbit,
        "origin_rate_gbit": args.origin_rate_gbit,
        "rack": args.rack,
        "oversub": args.oversub,
        "slow": args.slow,
        "late": args.late,
        "kill": args.kill,
        "seed": args.seed,
        "completed": len(ratios),
        "attempted": len(live),
        "failed": failed,
        "origin_ratio": round(world.origin_bytes / size, 4),
        "over_lower_bound": {
            "p50": round(_pct(ratios, 0.5), 3),
            "p99": round(_pct(ratios, 0.99), 3),
            "max": round(max(ratios, default=math.nan), 3),
        },
        "seconds": {
            "p50": round(_pct(seconds, 0.5), 3),
            "p99": round(_pct(seconds, 0.99), 3),
            "max": round(max(seconds, default=math.nan), 3),
        },
        "connections_per_node": {"p50": statistics.median(links), "max": max(links)},
        "control_messages_per_node": {"p50": statistics.median(control), "max": max(control)},
        "control_bytes_per_node": {
            "p50": statistics.median(control_bytes),
            "max": max(control_bytes),
        },
        "cross_rack_ratio": round(world.net.cross_rack_bytes / (racks * size), 3)
        if racks > 1
        else 0.0,
        "cross_rack_data_ratio": round(world.net.cross_rack_data / (racks * size), 3)
        if racks > 1
        else 0.0,
        "sim_seconds": round(world.clock.now, 3),
        "events": world.clock.events,
        "wall_seconds": round(wall, 1),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--chunk-size", type=parse_size, default=parse_size(f"{DEFAULT_CHUNK_SIZE}"))
    p.add_argument(
        "--min-chunks",
        type=int,
        default=DEFAULT_MIN_CHUNKS,
        help="the agents' --min-chunks: a layer in fewer chunks gets finer ones",
    )
    p.add_argument("--rate-gbit", type=float, default=25.0, help="each node's link, both ways")
    p.add_argument("--origin-rate-gbit", type=float, default=10.0, help="the origin's uplink")
    p.add_argument("--rack", type=int, default=32, help="nodes per rack")
    p.add_argument("--oversub", type=float, default=4.0, help="rack uplink oversubscription")
    p.add_argument("--latency-ms", type=float, default=0.1, help="one way, between any two hosts")
    p.add_argument(
        "--queue-ms",
        type=float,
        default=5.0,
        help="the longest a control message waits in one interface's queue (a tbf's latency)",
    )
    p.add_argument("--slow", type=float, default=0.0, help="fraction of slow nodes")
    p.add_argument("--slow-factor", type=float, default=0.1, help="their rate over the others'")
    p.add_argument("--late", type=float, default=0.0, help="fraction of nodes that start late")
    p.add_argument("--late-delay", type=float, default=10.0)
    p.add_argument("--kill", action="append", default=[], metavar="T:K")
    p.add_argument("--corrupt", type=float, default=0.0, help="fraction sending bad pieces")
    p.add_argument("--peers-handout", type=int, default=SessionConfig().peers_handout)
    p.add_argument("--max-in-flight", type=int, default=SessionConfig().max_in_flight)
    p.add_argument("--downlink-queue", type=int, default=SessionConfig().downlink_queue)
    p.add_argument("--fanout", type=int, default=SessionConfig().fanout)
    p.add_argument("--relay-up-to", type=int, default=SessionConfig().relay_up_to)
    p.add_argument("--busy-retry", type=float, default=SessionConfig().busy_retry)
    p.add_argument("--far-wait", type=float, default=SessionConfig().far_wait)
    p.add_argument(
        "--no-racks", action="store_true", help="the agents do not know racks (no preference)"
    )
    p.add_argument("--max-time", type=float, default=3600.0, help="simulated seconds at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.add_argument(
        "--markdown", action="store_true", help="a row of docs/scale.md's table (no wall time)"
    )
    return p


def markdown_row(argv: list[str], result: dict[str, Any]) -> str:
    """The run as a row of docs/scale.md's table: its arguments, then the figures."""
    shown = " ".join(a for a in argv if a not in ("--json", "--markdown"))
    bound, links = result["over_lower_bound"], result["connections_per_node"]
    control = result["control_messages_per_node"]
    return (
        f"| `{shown}` | {result['origin_ratio']:.2f} | {bound['p50']:.2f} / {bound['p99']:.2f} / "
        f"{bound['max']:.2f} | {links['p50']:g} / {links['max']} | {control['p50']:,.0f} / "
        f"{control['max']:,} | {result['cross_rack_ratio']:.2f}x / "
        f"{result['cross_rack_data_ratio']:.2f}x |"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    result = run(args)
    if args.markdown:
        print(markdown_row(argv, result))
    elif args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
