"""The pull-storm benchmark (``bench/swarm_bench.py``) at toy size, so it cannot rot.

3 nodes, one 8 MiB blob, 1 Gbit/s links, one late joiner (1 s): direct, the central
pull-through cache (when docker-registry is installed), BitTorrent (when opentracker and
python3-libtorrent are), p2pull and the protocol-free floor, run end to end in-process
through the namespace harness (``tests/netns.py``: skips when not root or without ``ip``; kills
every process and deletes the namespaces at teardown, also on failure or timeout). Checks the
JSON and Markdown it writes and that the figures are sane; no plot (matplotlib is bench-only).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from bench import swarm_bench
from bench.bittorrent import bittorrent_missing
from p2pull.membership import Member, rank
from tests.netns import Host, netns_missing

NODES = 3
SIZE = 8 << 20
RATE_MBIT = 1000
LATE_DELAY = 1.0
DEADLINE = 60.0
FIELDS = {
    "strategy", "nodes", "size", "layers", "rate_mbit", "late_joiners", "late_delay_s", "ok",
    "failed", "origin_egress_wire", "origin_egress_payload", "origin_egress_app", "times",
    "p50_s", "max_s", "last_finished_s", "per_node", "lower_bound_s", "slowest_over_lower_bound",
    "agent_cpu_s", "cpu_of", "origin_cpu_s", "machine_busy_fraction",
}  # fmt: skip


async def test_swarm_bench_toy_size_every_strategy(tmp_path: Path) -> None:
    reason = netns_missing()
    if reason is not None:
        pytest.skip(reason)
    strategies = ["direct", "p2pull", "floor"]
    # The baselines that need extra Debian packages run when those are installed.
    if shutil.which("docker-registry") is not None:
        strategies.insert(1, "central")
    if bittorrent_missing() is None:
        strategies.insert(-2, "bittorrent")
    out_dir = tmp_path / "out"
    args = swarm_bench.parse_args(
        [
            "--nodes", str(NODES), "--size", f"{SIZE}", "--rate-mbit", str(RATE_MBIT),
            "--strategy", ",".join(strategies), "--late-joiners", "0.34",
            "--late-delay", str(LATE_DELAY), "--workdir", str(tmp_path), "--out-dir",
            str(out_dir), "--no-plot",
        ]
    )  # fmt: skip
    with trio.fail_after(DEADLINE):
        results = await swarm_bench.amain(args)
    out = swarm_bench.write_outputs(args, results)

    saved = json.loads(out.read_text())
    assert saved["config"]["nodes"] == NODES
    assert [r["strategy"] for r in saved["results"]] == strategies
    markdown = (out_dir / "swarm.md").read_text()
    assert all(f"| {name} |" in markdown for name in strategies), markdown
    by_name = {r["strategy"]: r for r in saved["results"]}
    for name, r in by_name.items():
        assert set(r) >= FIELDS, (name, FIELDS - set(r))
        assert r["ok"] and not r["failed"], (name, r["failed"])
        assert r["runs_max_s"] == [r["max_s"]]
        assert r["size"] == SIZE and r["nodes"] == NODES and r["layers"] == 1
        assert len(r["times"]) == len(r["per_node"]) == NODES
        assert 0 < r["times"][0] <= r["p50_s"] <= r["max_s"] < DEADLINE
        assert r["lower_bound_s"] == pytest.approx(SIZE * 8 / (RATE_MBIT * 1e6), abs=1e-3)
        assert r["slowest_over_lower_bound"] >= 1.0
        late = [node for node in r["per_node"] if node["late"]]
        assert len(late) == r["late_joiners"] == 1, r["per_node"]
        assert late[0]["finished_s"] >= LATE_DELAY + late[0]["seconds"] - 0.5, late
        # Interface counters see at least the payload, and the app count agrees with them.
        for field in ("origin_egress_wire", "origin_egress_payload", "origin_egress_app"):
            assert r[field] >= 0.99, (name, field, r[field])
        assert r["origin_egress_wire"] >= r["origin_egress_payload"]
    assert NODES - 0.05 <= by_name["direct"]["origin_egress_payload"] <= NODES + 0.1
    assert by_name["p2pull"]["origin_egress_payload"] <= 1.1
    assert len(by_name["p2pull"]["agent_cpu_s"]) == NODES
    links = by_name["p2pull"]["peer_links"]  # every agent linked to a peer, none to itself
    assert links is not None and 1 <= links["p50"] <= links["max"] <= NODES - 1, links
    assert by_name["floor"]["peer_links"] is None
    messages = by_name["p2pull"]["peer_messages"]  # the leeches' requests, the seed's pieces
    assert messages is not None and messages["max"] >= SIZE // (1 << 20), messages
    # The floor's relay tree takes the blob from the origin once, too.
    assert by_name["floor"]["origin_egress_payload"] <= 1.1
    assert by_name["floor"]["cpu_of"] == "nodes" and len(by_name["floor"]["agent_cpu_s"]) == NODES
    if "central" in by_name:
        # One cache, not coalescing concurrent misses: between once and N + 1 times.
        assert by_name["central"]["origin_egress_payload"] <= (NODES + 1) * 1.05
        assert by_name["central"]["cpu_of"] == "cache"
    if "bittorrent" in by_name:
        assert by_name["bittorrent"]["origin_egress_payload"] <= NODES * 1.05
        assert len(by_name["bittorrent"]["agent_cpu_s"]) == NODES


def test_repeated_runs_report_the_median_and_every_run() -> None:
    runs = [
        {"max_s": 9.0, "ok": True, "failed": [], "p50_s": 8.0},
        {"max_s": 11.0, "ok": False, "failed": [{"codes": ["502"]}], "p50_s": 9.0},
        {"max_s": 10.0, "ok": True, "failed": [], "p50_s": 7.0},
    ]
    chosen = swarm_bench.median_run(runs)
    assert (chosen["max_s"], chosen["p50_s"]) == (10.0, 7.0)
    assert chosen["runs_max_s"] == [9.0, 11.0, 10.0]
    assert chosen["ok"] is False and chosen["failed"] == [{"codes": ["502"]}]
    assert swarm_bench.median_run(runs[:2])["max_s"] == 9.0  # even count: the lower middle
    assert swarm_bench.parse_args(["--repeat", "3"]).repeat == 3


def test_a_nodes_client_asks_for_every_layer_at_once() -> None:
    # containerd fetches an image's layers in parallel; a client that waits for one layer
    # before asking for the next measures another storm (the next layer's seed starts late).
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    arrivals: list[float] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            arrivals.append(time.monotonic())
            time.sleep(1.0)
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"abc")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        argv = [sys.executable, "-c", swarm_bench.CLIENT, str(time.time())]
        done = subprocess.run(
            [*argv, f"{base}/a", f"{base}/b", f"{base}/c"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    result = json.loads(done.stdout)
    assert result["codes"] == ["200"] * 3 and result["bytes"] == 9
    assert len(arrivals) == 3 and max(arrivals) - min(arrivals) < 0.5
    assert result["seconds"] < 2.0  # one second each, all at once


def test_slow_nodes_are_never_a_layers_seed() -> None:
    hosts = [Host(i, f"ns{i}", f"198.18.0.{10 + i}") for i in range(1, 9)]
    digests = ["sha256:" + hashlib.sha256(bytes([layer])).hexdigest() for layer in range(3)]
    members = [Member.of(host.ip, swarm_bench.PEER_PORT) for host in hosts]
    seeds = {members.index(rank(members, digest)[0]) for digest in digests}
    slow = swarm_bench.slow_slots(hosts, digests, 4)
    assert len(slow) == 4 and not seeds & set(slow)
    assert slow == sorted(set(range(8)) - seeds)[:4]
