"""``p2pull status``, ``p2pull prefetch IMAGE…``, ``p2pull purge DIGEST|IMAGE…``: talk to the
local agent through its mirror listener (prefetch is a pull through the agent that keeps
nothing but what the agent stores)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from typing import Any

import httpx
import trio

from agent.config import ConfigError, env_name
from p2pull.errors import P2pullError
from p2pull.imageref import ImageRef, parse_image
from p2pull.imagewalk import PREFETCH_HEADER, ResolvedImage, fetch_blob, refusal, resolve
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


_MIRROR_RE = re.compile(
    r"(?:(?P<scheme>https?)://)?(?P<netloc>\[[0-9a-fA-F:.]+\]|[^/:\[\]\s]+):\d{1,5}/?"
)


def mirror_url(text: str) -> str:
    """The agent's URL from ``--mirror``: ``http(s)://HOST:PORT``, or ``HOST:PORT`` (as in
    ``P2PULL_MIRROR_ADDR``) for ``http://HOST:PORT``."""
    match = _MIRROR_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"--mirror / P2PULL_MIRROR: expected http://HOST:PORT (the agent's --mirror-addr), "
            f"got {text!r}"
        )
    return f"{match['scheme'] or 'http'}://{text.strip().split('://')[-1].rstrip('/')}"


def add_admin_commands(commands: Any) -> None:
    def mirror_flag(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mirror",
            default=default_mirror(),
            help="the local agent's mirror URL [env P2PULL_MIRROR, or P2PULL_MIRROR_ADDR]",
        )

    status = commands.add_parser(
        "status", help="peers, swarms, store and hit ratio of this node", allow_abbrev=False
    )
    mirror_flag(status)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    prefetch = commands.add_parser(
        "prefetch", help="pull images into this node's agent now", allow_abbrev=False
    )
    mirror_flag(prefetch)
    prefetch.add_argument("images", nargs="+", metavar="IMAGE")
    prefetch.add_argument("--platform", default="linux/amd64")
    prefetch.add_argument(
        "--all-nodes",
        action="store_true",
        help="also make every other live node fetch the blobs (through the swarm, in the "
        "background)",
    )
    purge = commands.add_parser(
        "purge", help="drop blobs (a digest or an image's) from this node", allow_abbrev=False
    )
    mirror_flag(purge)
    purge.add_argument("targets", nargs="+", metavar="DIGEST|IMAGE")
    purge.add_argument("--platform", default="linux/amd64")
    purge.add_argument(
        "--all-nodes", action="store_true", help="also drop them on every other live node"
    )


class AgentError(P2pullError):
    """The agent answered, but not as a p2pull agent does, or the connection broke."""


def _down(base: str) -> AgentDown:
    return AgentDown(
        f"no p2pull agent answers at {base}: is it running? (start it with `p2pull agent`, "
        "or point --mirror / P2PULL_MIRROR at it)"
    )


async def _call(client: httpx.AsyncClient, method: str, url: str) -> httpx.Response:
    base = url.split("/_p2pull")[0].split("/v2/")[0]
    try:
        return await client.request(method, url)
    except httpx.ConnectError as exc:
        raise _down(base) from exc
    except httpx.HTTPError as exc:
        raise AgentError(f"talking to the agent at {base}: {exc!r}") from exc


def _json_answer(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError as exc:
        raise AgentError(
            f"{response.url} answered HTTP {response.status_code} without JSON: is that a "
            "p2pull agent's mirror address?"
        ) from exc
    if not isinstance(answer, dict):
        raise AgentError(f"{response.url} answered {str(answer)[:100]!r}")
    return answer


async def run_status(args: argparse.Namespace) -> int:
    mirror = mirror_url(args.mirror)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await _call(client, "GET", f"{mirror}{ADMIN}/status")
    if response.status_code != 200:
        print(f"p2pull status: the agent answered {refusal(response)}", file=sys.stderr)
        return 1
    status = _json_answer(response)
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
    lines.extend(_containerd_lines(status.get("containerd") or {}))
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


def _containerd_lines(containerd: dict[str, Any], *, now: float | None = None) -> list[str]:
    state = containerd.get("state")
    if state is None:
        return []
    last = containerd.get("last_mirror_success")
    if last:
        age = max(0.0, (time.time() if now is None else now) - float(last))
        used = f"last served it {age:,.0f} s ago"
    else:
        used = "has not pulled through it since the agent started"
    lines = [f"containerd  {state} ({containerd.get('source')}); containerd {used}"]
    if state not in ("ok", "off"):
        lines.append(f"            NOT USING THE MIRROR: {containerd.get('detail')}")
    lines.append("")
    return lines


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
    mirror = mirror_url(args.mirror)
    refs = [parse_image(text) for text in args.images]
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(60.0), headers={PREFETCH_HEADER: "1"}
    ) as client:
        await _call(client, "GET", f"{mirror}/v2/")
        for ref in refs:
            try:
                await _prefetch_one(client, mirror, ref, all_nodes=args.all_nodes, args=args)
            except httpx.HTTPError as exc:
                raise AgentError(f"{ref}: talking to the agent at {mirror}: {exc!r}") from exc
    return 0


async def _prefetch_one(
    client: httpx.AsyncClient, mirror: str, ref: ImageRef, *, all_nodes: bool, args: Any
) -> None:
    image = await resolve(client, mirror, ref, platform=args.platform)
    if all_nodes:
        await _prefetch_everywhere(client, mirror, ref, image)
    progress = _Progress(image.size, str(ref))
    async with trio.open_nursery() as nursery:
        for blob in image.blobs:
            nursery.start_soon(
                functools.partial(fetch_blob, client, mirror, ref, blob, on_bytes=progress.add)
            )
    size = _mib(image.size)
    print(f"\n{ref}: {len(image.blobs)} blobs, {size} in this node's store", file=sys.stderr)


async def _prefetch_everywhere(
    client: httpx.AsyncClient, mirror: str, ref: ImageRef, image: ResolvedImage
) -> None:
    digests = ",".join(str(blob.digest) for blob in image.blobs)
    query = httpx.QueryParams(
        {"ns": ref.registry, "name": ref.name, "digests": digests, "all_nodes": "1"}
    )
    response = await _call(client, "POST", f"{mirror}{ADMIN}/prefetch?{query}")
    if response.status_code != 200:
        raise AgentError(f"the agent refused the prefetch: {refusal(response)}")
    answer = _json_answer(response)
    print(
        f"{ref}: asked {len(answer['nodes_told'])} other nodes to fetch it in the background"
        + (f"; unreachable: {', '.join(answer['unreachable'])}" if answer["unreachable"] else ""),
        file=sys.stderr,
    )


async def run_purge(args: argparse.Namespace) -> int:
    mirror = mirror_url(args.mirror)
    failed = 0
    async with httpx.AsyncClient(timeout=30) as client:
        await _call(client, "GET", f"{mirror}/v2/")
        for target in args.targets:
            if target.startswith("sha256:"):
                digests = [Digest.parse(target)]
            else:
                ref = parse_image(target)
                image = await resolve(client, mirror, ref, platform=args.platform)
                digests = [*image.manifests, *(blob.digest for blob in image.blobs)]
            everywhere = "?all_nodes=1" if getattr(args, "all_nodes", False) else ""
            for digest in digests:
                url = f"{mirror}{ADMIN}/blobs/{digest}{everywhere}"
                response = await _call(client, "DELETE", url)
                answer = _json_answer(response)
                message = answer.get("error") or "removed"
                if "nodes_told" in answer:
                    message += f"; sent to {len(answer['nodes_told'])} other nodes"
                print(f"{digest}: {message}")
                failed += response.status_code not in (200, 404)
    return 1 if failed else 0
