"""bench/sim.py: its byte model, and a small storm on the agent's own protocol code held to the
targets docs/scale.md states (the ones not met yet are strict xfails: they fail once met, so
that the doc and this file move together)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import sim
from bench.simnet import Clock, Host, Link, Network

SMALL = [
    "--nodes", "64", "--size", "32MiB", "--layers", "2", "--rate-gbit", "25",
    "--origin-rate-gbit", "10", "--rack", "16", "--oversub", "4", "--seed", "1",
]  # fmt: skip


def three_hosts(queue: float) -> Network:
    net = Network(clock=Clock(), latency=0.001, queue=queue)
    net.hosts = [Host(Link(1000.0), Link(1000.0), 0) for _ in range(3)]
    return net


def test_a_control_message_waits_at_most_the_queue_behind_other_connections_bulk() -> None:
    net = three_hosts(queue=0.05)
    _, bulk = net.send(0, 1, 1000)  # one second of bytes on host 0's uplink
    assert bulk == pytest.approx(1.001)
    _, control = net.send(0, 2, 10, urgent=True)  # to another peer: jumps all but 50 ms
    assert control == pytest.approx(0.05 + 0.01 + 0.01 + 0.001)
    _, after = net.send(0, 1, 10, urgent=True)  # behind the bulk on the same connection
    assert after >= bulk
    _, more = net.send(0, 2, 100)  # the control bytes delayed the bulk behind them
    assert more == pytest.approx(1.0 + 0.01 + 0.01 + 0.1 + 0.001)
    unbounded = three_hosts(queue=math.inf)
    _, bulk = unbounded.send(0, 1, 1000)
    _, control = unbounded.send(0, 2, 10, urgent=True)
    assert control > bulk  # an unlimited buffer: it waits for everything


def test_a_slow_senders_stream_takes_a_share_of_the_downlink_not_all_of_it() -> None:
    net = Network(clock=Clock(), latency=0.0)
    net.hosts = [Host(Link(rate), Link(rate), 0) for rate in (100.0, 1000.0, 1000.0)]
    _, slow = net.send(0, 2, 100)  # one second on the slow sender's uplink
    _, fast = net.send(1, 2, 100)  # a tenth of a second on each fast link
    assert slow == pytest.approx(1.0)
    assert fast == pytest.approx(0.2)  # behind the slow stream's share of the downlink only


@pytest.fixture(scope="module")
def small_storm() -> dict[str, Any]:
    return sim.run(sim.parser().parse_args(SMALL))


def test_small_storm_completes_with_one_origin_copy(small_storm: dict[str, Any]) -> None:
    assert small_storm["completed"] == small_storm["attempted"] == 64
    assert small_storm["origin_ratio"] <= 1.05


def test_the_same_seed_gives_the_same_storm(small_storm: dict[str, Any]) -> None:
    again = sim.run(sim.parser().parse_args(SMALL))
    drop = {"wall_seconds"}
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in small_storm.items() if k not in drop
    }


def test_a_killed_seed_and_slow_nodes_still_complete_with_one_successor() -> None:
    args = sim.parser().parse_args([*SMALL, "--kill", "0.01:1", "--slow", "0.1"])
    result = sim.run(args)
    assert result["attempted"] == 63
    assert result["completed"] == 63
    assert result["origin_ratio"] <= 1.10


def test_small_storm_p99_within_1_3x_the_bound(small_storm: dict[str, Any]) -> None:
    assert small_storm["over_lower_bound"]["p99"] <= 1.3


@pytest.mark.xfail(strict=True, reason="cross-rack bytes 1.42x racks x size here (chunks 1.21x)")
def test_small_storm_crosses_each_rack_uplink_about_once(small_storm: dict[str, Any]) -> None:
    assert small_storm["cross_rack_ratio"] <= 1.1


def test_docs_scale_md_shows_this_storm(small_storm: dict[str, Any]) -> None:
    """docs/scale.md's first row is this run, as ``bench/sim.py ... --markdown`` prints it."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scale.md").read_text()
    assert sim.markdown_row(SMALL, small_storm) in doc.splitlines()


SLOW = [
    "--nodes", "32", "--size", "32MiB", "--layers", "2", "--rate-gbit", "25",
    "--origin-rate-gbit", "10", "--rack", "32", "--oversub", "4", "--slow", "0.1", "--seed", "1",
]  # fmt: skip


@pytest.mark.xfail(strict=True, reason="1.99x with 3 slow nodes of 32 here")
def test_slow_nodes_slow_only_themselves() -> None:
    """Every node, fast or slow, within 1.3x its own bound while a tenth of them are slow."""
    storm = sim.run(sim.parser().parse_args(SLOW))
    assert storm["completed"] == 32 and storm["origin_ratio"] <= 1.05
    assert storm["over_lower_bound"]["p99"] <= 1.3


def test_a_fanout_tree_completes_without_waiting_out_a_timeout() -> None:
    """With ``--fanout`` each member asks its parent in the tree, whose uplink its children
    share; a member that never heard what its siblings hold would wait out the 15 s info
    timeout (the 8 MiB take 7 ms at the origin's rate)."""
    fanout = ["--nodes", "40", "--size", "8MiB", "--layers", "1", "--rack", "40", "--fanout", "4"]
    storm = sim.run(sim.parser().parse_args(fanout))
    assert storm["completed"] == 40 and storm["origin_ratio"] <= 1.05
    assert storm["connections_per_node"]["max"] <= 2 * 4
    assert storm["over_lower_bound"]["max"] <= 4.0


def test_a_storm_does_not_depend_on_the_interpreters_hash_order() -> None:
    """Sets of peers are iterated in hash order, which differs between runs (PYTHONHASHSEED):
    what the nodes decide must not."""
    root = Path(__file__).resolve().parent.parent
    argv = ["--nodes", "24", "--size", "8MiB", "--layers", "2", "--rack", "8", "--slow", "0.1"]
    runs = []
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, str(root / "bench" / "sim.py"), *argv, "--json"],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        result = json.loads(done.stdout)
        del result["wall_seconds"]
        runs.append(result)
    assert runs[0] == runs[1]
