"""``p2pull status``, ``p2pull prefetch IMAGE…``, ``p2pull purge DIGEST|IMAGE…``: talk to the
local agent through its mirror listener (prefetch is a pull through the agent that keeps
nothing but what the agent stores)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

import httpx
import trio

from agent.config import env_name
from p2pull.errors import P2pullError
from p2pull.imageref import ImageRef, parse_image
from p2pull.imagewalk import ResolvedImage, fetch_blob, resolve
from p2pull.reference import Digest

ADMIN = "/_p2pull/v1"


class AgentDown(P2pullError):
    """No agent answers at the mirror URL."""


def default_mirror() -> str:
    explicit = os.environ.get(env_name("--mirror"))
    if explicit:
        return explicit
    addr = os.environ.get(env_name("--mirror-addr"), "127.0.0.1:5050")
    return f"http://{addr}"


def add_admin_commands(commands: Any) -> None:
    def mirror_flag(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mirror",
            default=default_mirror(),
            help="the local agent's mirror URL [env P2PULL_MIRROR, or P2PULL_MIRROR_ADDR]",
        )

    status = commands.add_parser("status", help="peers, swarms, store and hit ratio of this node")
    mirror_flag(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    prefetch = commands.add_parser("prefetch", help="pull images into this node's agent now")
    mirror_flag(prefetch)
    prefetch.add_argument("images", nargs="+", metavar="IMAGE")
    prefetch.add_argument("--platform", default="linux/amd64")
    prefetch.add_argument(
        "--all-nodes",
        action="store_true",
        help="also make every other live node fetch the blobs (through the swarm, in the "
        "background)",
    )
    purge = commands.add_parser("purge", help="drop blobs (a digest or an image's) from this node")
    mirror_flag(purge)
    purge.add_argument("targets", nargs="+", metavar="DIGEST|IMAGE")
    purge.add_argument("--platform", default="linux/amd64")
    purge.add_argument(
        "--all-nodes", action="store_true", help="also drop them on every other live node"
    )


async def _call(client: httpx.AsyncClient, method: str, url: str) -> httpx.Response:
    try:
        return await client.request(method, url)
    except httpx.ConnectError as exc:
        base = url.split("/_p2pull")[0].split("/v2/")[0]
        raise AgentDown(
            f"no p2pull agent answers at {base}: is it running? (start it with `p2pull agent`, "
            "or point --mirror / P2PULL_MIRROR at it)"
        ) from exc


async def run_status(args: argparse.Namespace) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await _call(client, "GET", f"{args.mirror}{ADMIN}/status")
    if response.status_code != 200:
        print(f"p2pull status: agent answered HTTP {response.status_code}", file=sys.stderr)
        return 1
    status = response.json()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(render_status(status))
    return 0


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"p2pull {status['version']}  node {status['node_id'] or '-'}  "
        f"swarm {'on' if status['swarm'] else 'OFF (no cluster secret)'}",
        "",
    ]
    served = status["served_bytes"]
    ratio = status["hit_ratio"]
    lines.append(
        "served      "
        + "  ".join(f"{source} {_mib(served[source])}" for source in ("local", "peer", "origin"))
        + (f"  hit ratio {ratio:.1%}" if ratio is not None else "  hit ratio -")
    )
    store = status["store"]
    quota = f" of {_mib(store['quota'])}" if store["quota"] else ""
    lines.append(
        f"store       {store['complete']} complete / {store['blobs']} blobs, "
        f"{_mib(store['bytes'])}{quota}"
    )
    lines.append("")
    lines.append(f"{'peer':<24} {'connected':<10} {'suspected':<9}")
    for peer in status["peers"] or []:
        lines.append(
            f"{peer['node_id']:<24} {('yes' if peer['connected'] else 'no'):<10} "
            f"{('yes' if peer['suspected'] else 'no'):<9}"
        )
    if not status["peers"]:
        lines.append("(no peers known)")
    lines.append("")
    lines.append(f"{'swarm (blob)':<22} {'role':<6} {'have':>11} {'peers':>5}  seed")
    for swarm in status["swarms"]:
        have = f"{swarm['have']}/{swarm['chunks'] if swarm['chunks'] is not None else '?'}"
        lines.append(
            f"{swarm['digest'][:21]:<22} {swarm['role']:<6} {have:>11} {swarm['peers']:>5}  "
            f"{swarm['seed'] or '-'}"
        )
    if not status["swarms"]:
        lines.append("(no blob downloading now)")
    return "\n".join(lines)


class _Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.done, self.label = max(total, 1), 0, label
        self._tty = sys.stderr.isatty()
        self._shown = -1

    def add(self, count: int) -> None:
        self.done += count
        percent = min(100, 100 * self.done // self.total)
        if percent != self._shown and (self._tty or percent % 10 == 0):
            self._shown = percent
            bar = "#" * (percent // 4)
            end = "\r" if self._tty else "\n"
            print(
                f"{self.label} [{bar:<25}] {percent:3d}% {_mib(self.done)} / {_mib(self.total)}",
                end=end,
                file=sys.stderr,
                flush=True,
            )


async def run_prefetch(args: argparse.Namespace) -> int:
    refs = [parse_image(text) for text in args.images]
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        await _call(client, "GET", f"{args.mirror}/v2/")
        for ref in refs:
            image = await resolve(client, args.mirror, ref, platform=args.platform)
            if args.all_nodes:
                await _prefetch_everywhere(client, args.mirror, ref, image)
            progress = _Progress(image.size, str(ref))
            async with trio.open_nursery() as nursery:
                for blob in image.blobs:
                    nursery.start_soon(
                        functools.partial(
                            fetch_blob, client, args.mirror, ref, blob, on_bytes=progress.add
                        )
                    )
            size = _mib(image.size)
            print(
                f"\n{ref}: {len(image.blobs)} blobs, {size} in this node's store", file=sys.stderr
            )
    return 0


async def _prefetch_everywhere(
    client: httpx.AsyncClient, mirror: str, ref: ImageRef, image: ResolvedImage
) -> None:
    digests = ",".join(str(blob.digest) for blob in image.blobs)
    query = httpx.QueryParams(
        {"ns": ref.registry, "name": ref.name, "digests": digests, "all_nodes": "1"}
    )
    response = await _call(client, "POST", f"{mirror}{ADMIN}/prefetch?{query}")
    answer = response.json()
    if response.status_code != 200:
        raise AgentDown(f"the agent refused the prefetch: {answer.get('error')}")
    print(
        f"{ref}: asked {len(answer['nodes_told'])} other nodes to fetch it in the background"
        + (f"; unreachable: {', '.join(answer['unreachable'])}" if answer["unreachable"] else ""),
        file=sys.stderr,
    )


async def run_purge(args: argparse.Namespace) -> int:
    failed = 0
    async with httpx.AsyncClient(timeout=30) as client:
        await _call(client, "GET", f"{args.mirror}/v2/")
        for target in args.targets:
            if target.startswith("sha256:"):
                digests = [Digest.parse(target)]
            else:
                ref = parse_image(target)
                image = await resolve(client, args.mirror, ref, platform=args.platform)
                digests = [*image.manifests, *(blob.digest for blob in image.blobs)]
            everywhere = "?all_nodes=1" if getattr(args, "all_nodes", False) else ""
            for digest in digests:
                url = f"{args.mirror}{ADMIN}/blobs/{digest}{everywhere}"
                response = await _call(client, "DELETE", url)
                answer = response.json()
                message = answer.get("error") or "removed"
                if "nodes_told" in answer:
                    message += f"; sent to {len(answer['nodes_told'])} other nodes"
                print(f"{digest}: {message}")
                failed += response.status_code not in (200, 404)
    return 1 if failed else 0
