"""bench/load.py at toy size, so it cannot rot: both storms and the hold scenario end to end
(real agent processes of this checkout, a TestOrigin process, 127.0.0.1 only), and the
figures it reports are there and sane."""

from __future__ import annotations

from pathlib import Path

import trio

from bench import load

DEADLINE = 120


async def test_load_bench_toy_size(tmp_path: Path) -> None:
    args = load.parse_args(
        [
            "--clients", "24", "--blobs", "4", "--blob-size", "2MiB", "--cached", "0.5",
            "--swarm-agents", "3", "--swarm-clients", "4", "--swarm-blobs", "2",
            "--hold-connections", "40", "--hold-bytes", "2000", "--timeout", "100",
            "--workdir", str(tmp_path),
        ]
    )  # fmt: skip
    with trio.fail_after(DEADLINE):
        one, swarm, hold = await load.amain(args)
    assert (one["scenario"], swarm["scenario"], hold["scenario"]) == ("one_agent", "swarm", "hold")
    assert one["errors"] == 0 and swarm["errors"] == 0, (one, swarm)
    assert one["clients"] == 24 and one["cached_blobs"] == 2
    assert swarm["clients"] == 12 and len(swarm["peak_rss_mb"]) == 3
    for result in (one, swarm):
        assert result["origin_egress"] == 1.0  # each blob fetched from the origin once
        assert result["slowest_over_median"] >= 1.0
        assert 0.0 <= result["slowest_progress_at_median"] <= 1.0
        assert all(0 < rss < 1000 for rss in result["peak_rss_mb"])
    assert hold["pull_during_hold"] == "ok"
    assert sum(hold["answers"].values()) == 40
