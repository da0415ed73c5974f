"""The swarm benchmark's PNG: completion-time CDF per strategy, and origin egress per strategy.

matplotlib is a bench-only dependency (``pip install matplotlib``); without it the plot is
skipped with a message and nothing else changes. Also usable on a saved JSON::

    python3 bench/plot.py bench/results/swarm.json   # writes bench/results/swarm.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_plot(results: list[dict[str, Any]], path: Path) -> str:
    """Draw ``results`` (the benchmark's per-strategy dicts) into ``path``; a one-line status."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"plot skipped: matplotlib is not installed (pip install matplotlib) -> no {path}"
    figure, (cdf, egress) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        # Completion time since the first node began, so late joiners show where they finished.
        times = sorted(node["finished_s"] for node in result["per_node"])
        fractions = [(i + 1) / len(times) for i in range(len(times))]
        cdf.step([0.0, *times], [0.0, *fractions], where="post", label=result["strategy"])
    if results:
        bound = results[0]["lower_bound_s"]
        cdf.axvline(bound, color="grey", linestyle="--", label=f"lower bound {bound:.1f} s")
    cdf.set_xlabel("completion time since the first node began (s)")
    cdf.set_ylabel("fraction of nodes done")
    cdf.set_ylim(0, 1.05)
    cdf.set_title("completion-time CDF")
    cdf.legend(loc="lower right")
    cdf.grid(alpha=0.3)

    names = [result["strategy"] for result in results]
    values = [result["origin_egress_payload"] for result in results]
    bars = egress.bar(names, values, color=[f"C{i}" for i in range(len(results))])
    egress.bar_label(bars, labels=[f"{value:.2f}x" for value in values])
    egress.set_ylim(0, 1.15 * max([*values, float(results[0]["nodes"]) if results else 1.0]))
    if results:
        egress.axhline(1.0, color="grey", linestyle="--", label="1x image size")
        egress.axhline(results[0]["nodes"], color="grey", linestyle=":", label="N x image size")
        egress.legend(loc="upper right")
    egress.set_ylabel("origin egress / image size (interface counters)")
    egress.set_title("origin egress per strategy")

    if results:
        first = results[0]
        late = f", {first['late_joiners']} late by {first['late_delay_s']:g} s"
        figure.suptitle(
            f"{first['nodes']} nodes, {first['size'] / (1 << 20):g} MiB in {first['layers']} "
            f"layer(s), {first['rate_mbit']:g} Mbit/s links"
            + (late if first.get("late_joiners") else "")
        )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"wrote {path}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 bench/plot.py RESULTS.json", file=sys.stderr)
        return 2
    source = Path(argv[0])
    print(write_plot(json.loads(source.read_text())["results"], source.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
