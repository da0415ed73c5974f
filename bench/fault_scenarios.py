"""The scenarios of ``bench/faults.py``: what fails, when, and what is checked besides the
common checks (``faults.judge``).

A scenario's ``prepare`` runs once the origin is up and before the agents start (static origin
faults, a small disk); its ``act`` runs alongside the storm and times its fault by the origin's
byte counter (``Context.at_share``) or by a node's store.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.agents import PEER_PORT
from bench.fault_rig import (
    CONTENT_SEED,
    HOSTILE,
    HOSTILE_PORT,
    NAME,
    POLL,
    ROOT,
    Lines,
    Rig,
    now,
    rot_one_chunk,
    stored_blobs,
)
from p2pull.testing.serve import make_content

Action = Callable[["Context"], Awaitable[None]]
MiB = 1 << 20


class Missed(Exception):
    """The moment a fault waited for never came (the storm ended first)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line, for --list and the docs
    act: Action | None = None
    prepare: Action | None = None
    nodes: int | None = None  # None: --nodes
    size: int | None = None  # None: --size
    rate_mbit: float | None = None  # None: --rate-mbit
    hostile: bool = False  # a spare host for a hostile peer
    retries: int = 0  # client pulls after a failed one (kubelet retrying)
    origin_limit: float = 1.10  # origin egress / size allowed
    deadline: float = 150.0  # seconds, set-up and teardown included


@dataclass
class Context:
    rig: Rig
    scenario: Scenario
    rate_mbit: float
    start_at: float = 0.0
    clients_done: trio.Event = field(default_factory=trio.Event)
    notes: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)  # the scenario's own
    expected_failures: set[int] = field(default_factory=set)  # nodes failed on purpose
    missed: bool = False
    mounts: list[Path] = field(default_factory=list)
    hostile: trio.Process | None = None

    def completed(self, slot: int) -> bool:
        hex_digest = self.rig.digest.removeprefix("sha256:")
        return any(
            a.slot == slot and a.result["error"] is None and a.result["sha256"] == hex_digest
            for a in self.rig.attempts
        )

    def mark(self, what: str) -> None:
        """Note when (seconds since the clients started) ``what`` happened."""
        self.notes[f"{what}_at_s"] = round(now() - self.start_at, 2)

    async def at_share(self, share: float) -> None:
        """Until the origin has sent ``share`` of the blob; Missed if the storm ends first."""
        reached = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal reached
                await self.rig.origin.wait_share(share)
                reached = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await self.clients_done.wait()
            nursery.cancel_scope.cancel()
        if not reached:
            raise Missed(f"the storm ended before the origin sent {share:.0%} of the blob")

    async def prepare(self) -> None:
        if self.scenario.prepare is not None:
            await self.scenario.prepare(self)

    async def act(self) -> None:
        try:
            if self.scenario.act is not None:
                await self.scenario.act(self)
        except Missed as exc:
            self.missed = True
            self.notes["missed"] = str(exc)

    async def collect(self) -> None:
        """What the live agents counted: who fetched from the origin, chunks refused or lost."""
        totals: dict[str, float] = {}
        fetchers: dict[str, float] = {}
        for node in self.rig.nodes:
            counters = await self.rig.metrics(node)
            for key, value in counters.items():
                totals[key] = totals.get(key, 0.0) + value
            origin = counters.get('p2pull_fetched_bytes_total{source="origin"}', 0.0)
            if origin:
                fetchers[str(node.slot)] = round(origin / self.rig.size, 3)
        self.notes["origin_share_by_node"] = fetchers
        if self.rig.origin.alive:
            self.notes["origin_gets"] = await self.rig.origin.ranges()
        self.notes["seed"] = self.rig.ranked()[0].slot
        for key, value in totals.items():
            if "fetched_bytes" not in key and value:
                self.notes[key.removeprefix("p2pull_").removesuffix("_total")] = int(value)

    async def cleanup(self) -> None:
        """The hostile peer's counters, agents on a mount stopped, mounts gone (never raises)."""
        if self.hostile is not None and self.hostile.returncode is None:
            self.hostile.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                self.notes["hostile"] = await Lines(self.hostile).next()
        for node in self.rig.nodes:
            if node.alive and node.data_dir in self.mounts:
                await self.rig.kill(node)
        for mount in self.mounts:
            result = await trio.run_process(["umount", str(mount)], check=False)
            if result.returncode != 0:
                await trio.run_process(["umount", "-l", str(mount)], check=False)


@functools.lru_cache(maxsize=4)
def truth_blocks(size: int, chunk_size: int) -> tuple[str, ...]:
    """The sha256 of each chunk of the origin's blob (the content serve.py makes)."""
    data = make_content(size, seed=CONTENT_SEED, layers=1)[0]
    return tuple(
        hashlib.sha256(data[at : at + chunk_size]).hexdigest() for at in range(0, size, chunk_size)
    )


# -- the origin ---------------------------------------------------------------------------------


async def set_faults(ctx: Context, *, faults: dict[str, Any]) -> None:
    await ctx.rig.origin.command(faults=faults)


async def set_faults_of_size(ctx: Context, *, share: float) -> None:
    """One response truncated once it has sent ``share`` of the blob."""
    cut = int(ctx.rig.size * share)
    await ctx.rig.origin.command(faults={"truncate_at": cut, "truncate_times": 1})


async def mid_body(
    ctx: Context, *, share: float, faults: dict[str, Any], interrupt: str = "reset"
) -> None:
    """At ``share``: set ``faults`` (for the requests that follow), then break the body being
    sent (``reset``) or make it stop sending (``stall``)."""
    await ctx.at_share(share)
    if faults:
        await ctx.rig.origin.command(faults=faults)
    answer = await ctx.rig.origin.command(interrupt=interrupt)
    ctx.notes["bodies_interrupted"] = answer["sending"]
    ctx.mark("fault")


async def origin_down(ctx: Context, *, share: float, seconds: float) -> None:
    """At ``share``: SIGKILL the origin (connections reset, the port refuses), start it again on
    its port ``seconds`` later."""
    await ctx.at_share(share)
    await ctx.rig.origin.kill()
    ctx.mark("origin_killed")
    await trio.sleep(seconds)
    await ctx.rig.origin.start()
    ctx.mark("origin_back")


# -- nodes --------------------------------------------------------------------------------------


async def kill_seeds(ctx: Context, *, share: float, count: int) -> None:
    """At ``share``: SIGKILL the blob's seed (and its next ``count - 1`` successors) at once."""
    await ctx.at_share(share)
    victims = ctx.rig.ranked()[:count]
    # What the seed had from the origin and had uploaded to peers, just before it dies: the
    # difference is what only it held (or was still sending).
    counters = await ctx.rig.metrics(victims[0])
    ctx.notes["seed_at_kill"] = {
        "from_origin": counters.get('p2pull_fetched_bytes_total{source="origin"}', 0.0),
        "uploaded": counters.get("p2pull_peer_upload_bytes_total", 0.0),
        "pushed_chunks": counters.get("p2pull_chunks_pushed_total", 0.0),
    }
    ctx.expected_failures.update(v.slot for v in victims)
    async with trio.open_nursery() as nursery:
        for victim in victims:
            nursery.start_soon(ctx.rig.kill, victim)
    ctx.notes["killed"] = [v.slot for v in victims]
    ctx.mark("killed")


async def restart_mid_pull(ctx: Context) -> None:
    """SIGKILL the last-ranked node once its store has checkpointed part of the blob, flip a
    byte of a chunk it holds on disk, start it again and pull again: the partial blob resumes
    (it fetches less than the blob) and the rotted chunk is detected (dropped, fetched again)."""
    rig = ctx.rig
    victim = rig.ranked()[-1]
    while (held := rig.progress(victim)) == 0:
        if ctx.clients_done.is_set():
            raise Missed("the node never checkpointed part of the blob")
        await trio.sleep(POLL)
    await rig.kill(victim)
    ctx.mark("killed")
    ctx.notes.update(victim=victim.slot, held_at_kill=round(held, 3))
    ctx.notes["rotted_chunk"] = rot_one_chunk(victim, rig.digest, rig.chunk_size)
    await trio.sleep(1.0)
    await rig.start_agent(victim)
    await rig.wait_ready([victim])
    ctx.mark("restarted")
    await rig.pull(victim)
    counters = await rig.metrics(victim)
    lost = counters.get("p2pull_store_chunks_lost_total", 0.0)
    fetched = sum(v for k, v in counters.items() if k.startswith("p2pull_fetched_bytes_total"))
    ctx.notes.update(chunks_lost_after_restart=int(lost), fetched_after_restart=int(fetched))
    ctx.checks["rot_detected"] = lost >= 1
    ctx.checks["resumed"] = fetched < rig.size


async def small_disk(ctx: Context) -> None:
    """The last-ranked node's data dir on a tmpfs of half the blob (and no free-disk floor, so
    the write itself hits ENOSPC)."""
    victim = ctx.rig.ranked()[-1]
    victim.data_dir.mkdir(parents=True, exist_ok=True)
    size = max(1 << 20, ctx.rig.size // 2)
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(victim.data_dir)]
    await trio.run_process(argv)
    ctx.mounts.append(victim.data_dir)
    victim.extra = ["--min-free-disk", "0"]
    ctx.notes["small_disk_node"] = victim.slot


async def disk_full_checks(ctx: Context) -> None:
    """Runs alongside the storm: once it is over, the clear log line and the store's state."""
    await ctx.clients_done.wait()
    victim = ctx.rig.nodes[ctx.notes["small_disk_node"] - 1]
    assert victim.log is not None
    text = victim.log.path.read_text(errors="replace").splitlines()
    lines = [line for line in text if "passing it through" in line]  # what it does, and why
    ctx.notes["log_line"] = lines[0][:400] if lines else None
    ctx.notes["stored"] = stored_blobs(victim.data_dir)
    ctx.checks["log_line"] = bool(lines)
    ctx.checks["nothing_kept"] = not any(b["complete"] for b in ctx.notes["stored"])


async def drop_link(ctx: Context, *, share: float, seconds: float, rank_index: int) -> None:
    """At ``share``: the link of the node ranked ``rank_index`` goes down for ``seconds``."""
    rig = ctx.rig
    victim = rig.ranked()[rank_index]
    await ctx.at_share(share)
    await rig.net.run(victim.host, "ip", "link", "set", victim.host.dev, "down")
    ctx.mark("link_down")
    ctx.notes["victim"] = victim.slot
    await trio.sleep(seconds)
    await rig.net.run(victim.host, "ip", "link", "set", victim.host.dev, "up")
    ctx.mark("link_up")


async def hostile_peer(ctx: Context, *, mode: str) -> None:
    """A peer with the cluster secret that dials every agent a tenth of a second into the storm and
    misbehaves (``bench/hostile_peer.py``)."""
    rig = ctx.rig
    host = rig.spare[0]
    argv = [
        sys.executable, str(HOSTILE), "--mode", mode, "--me", f"{host.ip}:{HOSTILE_PORT}",
        "--agents", ",".join(f"{n.host.ip}:{PEER_PORT}" for n in rig.nodes),
        "--secret-file", str(rig.secret), "--digest", rig.digest, "--size", str(rig.size),
        "--chunk-size", str(rig.chunk_size), "--name", NAME, "--ns", rig.served["netloc"],
        "--start-at", f"{ctx.start_at + 0.1:.3f}", "--content-seed", str(CONTENT_SEED),
    ]  # fmt: skip
    with (rig.logdir / "hostile.log").open("wb") as log:
        ctx.hostile = await rig.net.start(
            host, *argv, env=rig.env, stdout=subprocess.PIPE, stderr=log, cwd=str(ROOT)
        )
    await Lines(ctx.hostile).next()  # ready


def origin_scenarios() -> list[Scenario]:
    return [
        Scenario(
            "origin_5xx",
            "at 30 % the origin resets the body and answers the next 8 requests 503",
            act=functools.partial(
                mid_body, share=0.3, faults={"fail_times": 8, "fail_status": 503}
            ),
        ),
        Scenario(
            "origin_resets",
            "every origin response is reset after 4 MiB of body",
            prepare=functools.partial(set_faults, faults={"truncate_at": 4 * MiB}),
        ),
        Scenario(
            "origin_stall",
            "at 30 % the origin stops sending mid-body, the connection left open",
            act=functools.partial(mid_body, share=0.3, faults={}, interrupt="stall"),
        ),
        Scenario(
            "origin_truncated",
            "the first response is cut off (reset) at 50 % of the blob",
            prepare=functools.partial(set_faults_of_size, share=0.5),
        ),
        Scenario(
            "origin_wrong_bytes",
            "the first response carries wrong bytes of the right length; clients retry once",
            prepare=functools.partial(set_faults, faults={"corrupt": True, "corrupt_times": 1}),
            retries=1,
            origin_limit=2.2,  # the wrong copy, then the right one
        ),
        Scenario(
            "origin_down_10s",
            "at 30 % the origin is SIGKILLed, and started again on its port 10 s later",
            act=functools.partial(origin_down, share=0.3, seconds=10),
            nodes=16,
        ),
        Scenario(
            "origin_down_60s",
            "at 30 % the origin is SIGKILLed, and started again on its port 60 s later",
            act=functools.partial(origin_down, share=0.3, seconds=60),
            nodes=16,
            deadline=240,
        ),
        Scenario(
            "origin_429",
            "at 30 % the origin resets the body and answers the next 4 requests 429, "
            "Retry-After: 3",
            act=functools.partial(
                mid_body,
                share=0.3,
                faults={"fail_times": 4, "fail_status": 429, "retry_after": 3},
            ),
        ),
    ]


def node_scenarios() -> list[Scenario]:
    seeds = [
        Scenario(
            f"seed_killed_{int(share * 100)}",
            f"the seed is SIGKILLed when the origin has sent {share:.0%} of the blob",
            act=functools.partial(kill_seeds, share=share, count=1),
        )
        for share in (0.1, 0.5, 0.9)
    ]
    peers = [
        Scenario(f"peer_{mode}", what, act=functools.partial(hostile_peer, mode=mode), hostile=True)
        for mode, what in (
            ("stall", "a peer claims every chunk and never answers a request"),
            ("corrupt", "a peer claims every chunk and answers with random bytes"),
            ("garbage", "a peer sends frames that are not messages after the handshake"),
            ("disconnect", "a peer serves one right chunk per connection, then disconnects"),
        )
    ]
    return [
        *seeds,
        Scenario(
            "two_killed",
            "the seed and its successor are SIGKILLed at once at 40 %",
            act=functools.partial(kill_seeds, share=0.4, count=2),
        ),
        *peers,
        Scenario(
            "agent_restart",
            "a node SIGKILLed mid-pull, a byte of a stored chunk flipped, restarted, pulled again",
            act=restart_mid_pull,
            nodes=4,
            size=96 * MiB,  # past the store's first checkpoint (64 MiB of chunks)
            rate_mbit=100,
        ),
        Scenario(
            "disk_full",
            "a node's data dir is a tmpfs of half the blob (no free-disk floor)",
            prepare=small_disk,
            act=disk_full_checks,
        ),
        Scenario(
            "link_drop",
            "at 30 % one node's link goes down (ip link) for 10 s, then up",
            act=functools.partial(drop_link, share=0.3, seconds=10, rank_index=2),
        ),
        Scenario(
            "seed_link_drop",
            "at 30 % the seed's link goes down (ip link) for 10 s, then up",
            act=functools.partial(drop_link, share=0.3, seconds=10, rank_index=0),
        ),
    ]


SCENARIOS = [*origin_scenarios(), *node_scenarios()]
