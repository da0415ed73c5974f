"""The Grafana dashboard and the Prometheus rules: their shape, their PromQL, and that every
p2pull metric they use is really exported (two running agents are scraped over HTTP).

With ``promtool`` (Debian package ``prometheus``) the rules are also checked and every alert is
unit-tested on synthetic series (``promtool test rules``); without it those tests are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from p2pull import __version__
from p2pull.metrics import SOURCES
from p2pull.testing.origin import TestOrigin
from tests.swarm_harness import Node, get_blob, swarm

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "p2pull.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package: prometheus)"
)

# A p2pull metric name, not part of a recording rule name (those have colons).
METRIC_RE = re.compile(r"(?<![\w:])p2pull_[a-z0-9_]+(?![\w:])")
RECORDED_RE = re.compile(r"(?<![\w:])[a-z_]+:p2pull_[a-z0-9_]+:[a-z0-9_]+(?![\w:])")
SELECTOR_RE = re.compile(r"(?<![\w:])(p2pull_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_RE = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Added by Prometheus at scrape time (instance, job) or as an external label (cluster).
TARGET_LABELS = {"instance", "job", "cluster"}
# Every dashboard query follows the three variables.
SCOPE = 'cluster=~"$cluster", job=~"$job", instance=~"$node"'
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/p2pull/p2pull/blob/main/docs/operations.md#"
# Label values the code documents but a short healthy run does not produce.
DOCUMENTED_VALUES = {
    "source": set(SOURCES),
    "kind": {"connect", "timeout", "status_5xx", "truncated", "digest", "auth"},
}

# Panel title -> text its queries must contain (metric names, selectors, functions).
REQUIRED_PANELS: dict[str, tuple[str, ...]] = {
    "Peer hit ratio": ('p2pull_served_bytes_total{source="origin"', "1 - "),
    "Peer share": ('p2pull_served_bytes_total{source="peer"',),
    "Origin egress vs peer traffic": (
        "sum by (source) (rate(p2pull_fetched_bytes_total",
        "p2pull_peer_upload_bytes_total",
    ),
    "Transfers in flight": ("p2pull_origin_fetchers", "p2pull_swarms"),
    "Per-node throughput": ("sum by (instance) (rate(p2pull_served_bytes_total",),
    "Upstream errors by kind": ("sum by (kind) (rate(p2pull_upstream_errors_total",),
    "Integrity failures": (
        "p2pull_chunks_rejected_total",
        "p2pull_blob_digest_mismatches_total",
    ),
    "Mirror 5xx": ('p2pull_mirror_requests_total{status=~"5.."',),
    "Mirror response time p50 / p99": (
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "p2pull_mirror_response_seconds_bucket",
    ),
    "Store usage": ("p2pull_store_bytes", "p2pull_store_quota_bytes"),
    "Evictions and pass-through": ("p2pull_store_evictions_total",),
    "Peer links": ("p2pull_peer_links",),
    # what the runbooks in docs/operations.md tell an SRE to look at
    "containerd uses the mirror": ("p2pull_containerd_config",),
    "Since containerd last used the mirror": ("p2pull_mirror_last_success_timestamp_seconds",),
    "Peers known and linked": ("p2pull_peers_known", "p2pull_peer_links"),
    "Time to first byte p50 / p99": ("p2pull_mirror_first_byte_seconds_bucket",),
    "Swarm size": ("p2pull_swarm_members", "p2pull_swarms"),
    "Agent memory (RSS)": ("process_resident_memory_bytes",),
    "Agent CPU": ("process_cpu_seconds_total",),
    "Agent versions": ("p2pull_build_info",),
    "Prefetched bytes": ("p2pull_prefetched_bytes_total",),
}
ALERTS = {
    "P2pullPeerHitRatioLow",
    "P2pullOriginFetchersPerBlobHigh",
    "P2pullAgentNotReady",
    "P2pullStoreNearQuota",
    "P2pullContainerdNotUsingMirror",
}
SEVERITIES = {"critical", "warning", "info"}


# -- loading -------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def load_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row (rows may also nest collapsed panels)."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(load_dashboard()) for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def rule_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def promql_for_promtool(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by what they expand to."""
    for variable in ("$node", "$cluster", "$job"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", "5m")


# -- the dashboard -------------------------------------------------------------------------------


def test_dashboard_loads_with_its_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "p2pull" and dashboard["title"] == "p2pull"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert [v["name"] for v in dashboard["templating"]["list"]] == [
        "datasource",
        "cluster",
        "job",
        "node",
    ]
    definitions = {
        "cluster": "label_values(p2pull_build_info, cluster)",
        "job": 'label_values(p2pull_build_info{cluster=~"$cluster"}, job)',
        "node": 'label_values(p2pull_build_info{cluster=~"$cluster", job=~"$job"}, instance)',
    }
    for name, definition in definitions.items():
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["definition"] == variable["query"]["query"] == definition
        assert variable["datasource"]["uid"] == "${datasource}"
        # All is ".*", which also matches series without the label (one cluster, no label)
        assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"


def test_every_panel_queries_the_datasource_variable_with_a_non_empty_expr() -> None:
    dashboard = load_dashboard()
    all_panels = panels(dashboard)
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in [*rows, *all_panels]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in all_panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    for panel in all_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']} {target['refId']}: empty expr"
            assert target["datasource"]["uid"] == "${datasource}"
            for selector in SELECTOR_RE.findall(target["expr"]):
                assert selector[1].endswith(SCOPE), (
                    f"{panel['title']} {target['refId']}: {selector[0]} does not follow the "
                    f"cluster, job and node variables"
                )


def test_panels_do_not_overlap_on_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("title", sorted(REQUIRED_PANELS))
def test_dashboard_has_panel(title: str) -> None:
    by_title = {p["title"]: p for p in panels(load_dashboard())}
    assert title in by_title, f"no panel {title!r}"
    exprs = "\n".join(t["expr"] for t in by_title[title]["targets"])
    normalized = exprs.replace(f", {SCOPE}", "").replace(f"{{{SCOPE}}}", "")
    for needle in REQUIRED_PANELS[title]:
        assert needle in normalized, f"{title!r}: no {needle!r} in\n{exprs}"


# -- the rules -----------------------------------------------------------------------------------


def test_rules_file_is_a_prometheus_rule_spec() -> None:
    spec = load_rules()
    assert set(spec) == {"groups"}, "only `groups:` so the file is also a PrometheusRule spec"
    names = [group["name"] for group in spec["groups"]]
    assert len(names) == len(set(names))
    for group in spec["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert str(rule["expr"]).strip(), rule


def test_every_alert_has_for_severity_summary_and_description() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), name
        assert url.removeprefix(RUNBOOK_BASE) in runbook_anchors(), f"{name}: {url}"


def runbook_anchors() -> set[str]:
    """GitHub's anchors for the headings of docs/operations.md's runbooks."""
    runbooks = OPERATIONS.read_text().split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    return {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^### (.+)$", runbooks, re.M)
    }


def test_every_metric_a_runbook_names_is_on_the_dashboard() -> None:
    runbooks = OPERATIONS.read_text().split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?<![\w:])(?:p2pull|process)_[a-z0-9_]+", runbooks))
    on_dashboard = "\n".join(dashboard_exprs())
    assert named, "the runbooks name no metric"
    missing = {name for name in named if name not in on_dashboard}
    assert not missing, f"named in a runbook but on no dashboard panel: {sorted(missing)}"


def test_recording_rules_follow_the_naming_convention_and_every_use_is_defined() -> None:
    records = [rule["record"] for rule in rules() if "record" in rule]
    assert len(records) == len(set(records))
    for name in records:
        assert RECORDED_RE.fullmatch(name), f"{name}: want level:p2pull_metric:operations"
    used = {
        name for expr in [*rule_exprs(), *dashboard_exprs()] for name in RECORDED_RE.findall(expr)
    }
    assert used <= set(records), f"used but not recorded: {used - set(records)}"


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    records = [
        {"record": f"dashboard:p2pull_query_{i}:check", "expr": promql_for_promtool(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


MIB = 1024 * 1024
STEP = 30  # seconds between synthetic samples


def counter(rate_mib: float) -> str:
    """promtool series values for a counter growing at ``rate_mib`` MiB/s for 40 minutes."""
    return f"0+{int(rate_mib * MIB * STEP)}x80"


def series(metric: str, **labels: str) -> str:
    labels.setdefault("job", "p2pull")
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def served(instance: str, source: str, rate_mib: float) -> dict[str, str]:
    return {
        "series": series("p2pull_served_bytes_total", instance=instance, source=source),
        "values": counter(rate_mib),
    }


def fetched(instance: str, source: str, rate_mib: float) -> dict[str, str]:
    return {
        "series": series("p2pull_fetched_bytes_total", instance=instance, source=source),
        "values": counter(rate_mib),
    }


def gauge(metric: str, instance: str, value: str) -> dict[str, str]:
    return {"series": series(metric, instance=instance), "values": value}


def fires(alert: str, at: str, *expected: dict[str, Any]) -> dict[str, Any]:
    """At ``at``, exactly the ``expected`` alerts (see ``firing``) of rule ``alert`` fire."""
    severity = severity_of(alert)
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {**e, "exp_labels": {"severity": severity, **e["exp_labels"]}} for e in expected
        ],
    }


def firing(summary: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


def silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def severity_of(alert: str) -> str:
    return str(next(r for r in rules() if r.get("alert") == alert)["labels"]["severity"])


def alert_unit_tests() -> list[dict[str, Any]]:
    hit, fetchers = "P2pullPeerHitRatioLow", "P2pullOriginFetchersPerBlobHigh"
    ready, store = "P2pullAgentNotReady", "P2pullStoreNearQuota"
    containerd = "P2pullContainerdNotUsingMirror"

    def state(instance: str, name: str, value: str) -> dict[str, str]:
        return {
            "series": series("p2pull_containerd_config", instance=instance, state=name),
            "values": value,
        }

    return [
        {  # a: config_path unset; b: fine; c: the check is off (not an alarm)
            "name": "containerd not using the mirror",
            "input_series": [
                state("a:9395", "config_path_unset", "1x80"),
                state("a:9395", "ok", "0x80"),
                state("b:9395", "config_path_unset", "0x80"),
                state("b:9395", "ok", "1x80"),
                state("c:9395", "off", "1x80"),
            ],
            "alert_rule_test": [
                silent(containerd, "10m"),
                fires(
                    containerd,
                    "20m",
                    firing(
                        "containerd on a:9395 does not use its p2pull agent (config_path_unset)",
                        instance="a:9395",
                        state="config_path_unset",
                    ),
                ),
            ],
        },
        {  # a storm at 60 MiB/s, 3/4 of it from the origin: fires once `for: 10m` has passed
            "name": "hit ratio low during a storm",
            "input_series": [served("a:9395", "origin", 45), served("b:9395", "peer", 15)],
            "alert_rule_test": [
                silent(hit, "6m"),
                fires(hit, "20m", firing("p2pull peer hit ratio is 25% during a pull storm")),
            ],
        },
        {  # a healthy storm: 90% from peers and the local store
            "name": "hit ratio high during a storm",
            "input_series": [
                served("a:9395", "origin", 10),
                served("b:9395", "peer", 80),
                served("c:9395", "local", 10),
            ],
            "alert_rule_test": [silent(hit, "20m")],
        },
        {  # everything from the origin, but a trickle: not a storm
            "name": "hit ratio low when quiet",
            "input_series": [served("a:9395", "origin", 10)],
            "alert_rule_test": [silent(hit, "20m")],
        },
        {  # four nodes fetch 25 MiB/s each; two of them both fetch from the origin
            "name": "two origin fetchers per blob",
            "input_series": [
                fetched("a:9395", "origin", 25),
                fetched("b:9395", "origin", 25),
                fetched("c:9395", "peer", 25),
                fetched("d:9395", "peer", 25),
            ],
            "alert_rule_test": [
                silent(fetchers, "12m"),
                fires(
                    fetchers,
                    "30m",
                    firing("p2pull fetches each blob from the origin about 2.0 times"),
                ),
            ],
        },
        {  # the same storm with one seed
            "name": "one origin fetcher per blob",
            "input_series": [
                fetched("a:9395", "origin", 25),
                fetched("b:9395", "peer", 25),
                fetched("c:9395", "peer", 25),
                fetched("d:9395", "peer", 25),
            ],
            "alert_rule_test": [silent(fetchers, "30m")],
        },
        {  # n1 (job p2pull) and n4 (the PodMonitor's job) go down; n3 is not p2pull's
            "name": "agent down",
            "input_series": [
                gauge("up", "n1:9395", "1 1 0x80"),
                gauge("up", "n2:9395", "1x80"),
                {"series": 'up{job="p2pull/p2pull", instance="n4:9395"}', "values": "1 0x80"},
                {"series": 'up{job="node", instance="n3:9100"}', "values": "0x80"},
            ],
            "alert_rule_test": [
                silent(ready, "3m"),
                fires(
                    ready,
                    "10m",
                    firing(
                        "p2pull agent n1:9395 is down or not ready",
                        instance="n1:9395",
                        job="p2pull",
                    ),
                    firing(
                        "p2pull agent n4:9395 is down or not ready",
                        instance="n4:9395",
                        job="p2pull/p2pull",
                    ),
                ),
            ],
        },
        {  # a: 95% of its quota; b: no quota; c: half full
            "name": "store near quota",
            "input_series": [
                gauge("p2pull_store_bytes", "a:9395", "95x80"),
                gauge("p2pull_store_quota_bytes", "a:9395", "100x80"),
                gauge("p2pull_store_bytes", "b:9395", "95x80"),
                gauge("p2pull_store_quota_bytes", "b:9395", "0x80"),
                gauge("p2pull_store_bytes", "c:9395", "50x80"),
                gauge("p2pull_store_quota_bytes", "c:9395", "100x80"),
            ],
            "alert_rule_test": [
                silent(store, "10m"),
                fires(
                    store,
                    "20m",
                    firing(
                        "p2pull store on a:9395 is 95% of its quota",
                        instance="a:9395",
                        job="p2pull",
                    ),
                ),
            ],
        },
    ]


@needs_promtool
def test_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """``promtool test rules`` on synthetic series. The copy of the rules drops only the
    descriptions and runbook URLs (static; their templates are checked by ``promtool check
    rules``, the URLs by test_every_alert_has_for_severity_summary_and_description)."""
    assert PROMTOOL is not None
    spec = load_rules()
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.get("annotations", {}).pop("description", None)
            rule.get("annotations", {}).pop("runbook_url", None)
    rules_copy = tmp_path / "rules.yaml"
    rules_copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    tests = tmp_path / "rules_test.yaml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_copy)],
                "evaluation_interval": f"{STEP}s",
                "tests": [{"interval": f"{STEP}s", **case} for case in alert_unit_tests()],
            },
            sort_keys=False,
        )
    )
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- what a running agent exports ----------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    metric: str
    label: str
    op: str
    value: str


def referenced_names() -> dict[str, str]:
    """Every p2pull metric name in the dashboard and the rules file (queries, variables and
    annotations alike) -> where it was seen first."""
    found: dict[str, str] = {}
    for where, text in (("dashboard", DASHBOARD.read_text()), ("rules", RULES.read_text())):
        for name in METRIC_RE.findall(text):
            found.setdefault(name, where)
    return found


def selectors(exprs: list[str]) -> set[Selector]:
    return {
        Selector(metric, label, op, value)
        for expr in exprs
        for metric, body in SELECTOR_RE.findall(expr)
        for label, op, value in MATCHER_RE.findall(body)
        if label not in TARGET_LABELS
    }


@dataclass
class Scrape:
    sample_names: set[str]
    label_values: dict[tuple[str, str], set[str]]  # (sample name, label) -> values seen


async def scrape(http: httpx.AsyncClient, nodes: list[Node]) -> Scrape:
    result = Scrape(set(), defaultdict(set))
    for node in nodes:
        response = await http.get(f"http://127.0.0.1:{node.ports.metrics}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                result.sample_names.add(sample.name)
                for label, value in sample.labels.items():
                    result.label_values[(sample.name, label)].add(value)
    return result


async def pull_through_two_agents(tmp_path: Path, http: httpx.AsyncClient) -> Scrape:
    """Serve one blob from every source (origin, peer, local), one blob after an upstream 503
    and a retry, and one the origin refuses (401: a mirror 502 at once), so the labelled
    series have samples; then scrape both agents."""
    origin = TestOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)
        data = bytes(range(256)) * 1000  # 256 000 bytes: 4 chunks of 64 KiB
        digest = origin.add_blob("team/model", data)
        flaky_data = b"served after one retry" * 100
        flaky = origin.add_blob("team/model", flaky_data)
        origin.fault(flaky).fail_times = 1
        denied = origin.add_blob("team/model", b"never served" * 100)
        origin.fault(denied).fail_status = 401  # not retried, unlike a 5xx
        origin.fault(denied).fail_times = 1_000_000
        async with swarm(tmp_path, origin, 2, chunk_size=64 * 1024) as nodes:
            membership = nodes[0].agent.membership
            assert membership is not None
            assert len(membership.live(now=trio.current_time())) == 2
            seed_port = membership.seed_for(str(digest), now=trio.current_time()).port
            seed = next(n for n in nodes if n.ports.peer == seed_port)
            other = next(n for n in nodes if n is not seed)
            assert await get_blob(http, seed, origin.netloc, "team/model", digest) == data
            assert await get_blob(http, other, origin.netloc, "team/model", digest) == data
            assert await get_blob(http, seed, origin.netloc, "team/model", digest) == data
            assert await get_blob(http, other, origin.netloc, "team/model", flaky) == flaky_data
            response = await http.get(
                f"{other.mirror_url}/v2/team/model/blobs/{denied}?ns={origin.netloc}"
            )
            assert response.status_code >= 500
            for source in SOURCES:
                assert sum(n.metric("p2pull_served_bytes_total", source=source) for n in nodes)
            result = await scrape(http, nodes)
        nursery.cancel_scope.cancel()
    return result


async def test_every_metric_the_dashboard_and_rules_use_is_exported(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=30) as http:
            exported = await pull_through_two_agents(tmp_path, http)

    missing = {
        name: where
        for name, where in referenced_names().items()
        if name not in exported.sample_names
    }
    assert not missing, f"referenced but not exported by the agent: {missing}"

    for sel in selectors([*dashboard_exprs(), *rule_exprs()]):
        seen = exported.label_values.get((sel.metric, sel.label))
        assert seen, f"{sel.metric} has no label {sel.label!r}"
        known = seen | DOCUMENTED_VALUES.get(sel.label, set())
        if sel.op == "=":
            assert sel.value in known, f'{sel.metric}{{{sel.label}="{sel.value}"}}: not in {known}'
        elif sel.op == "=~":
            matched = [v for v in known if re.fullmatch(sel.value, v)]
            assert matched, f'{sel.metric}{{{sel.label}=~"{sel.value}"}} matches none of {known}'

    for expr in [*dashboard_exprs(), *rule_exprs()]:
        names = set(METRIC_RE.findall(expr))
        labels_here = {label for (name, label) in exported.label_values if name in names}
        for grouping in GROUPING_RE.findall(expr):
            for label in filter(None, (g.strip() for g in grouping.split(","))):
                assert label in TARGET_LABELS or label in labels_here, (
                    f"grouping by {label!r}, which none of {sorted(names)} has:\n{expr}"
                )


async def test_the_scrape_has_build_and_process_metrics_and_no_created_series(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=30) as http:
            exported = await pull_through_two_agents(tmp_path, http)
    names = exported.sample_names
    assert "p2pull_build_info" in names
    assert exported.label_values[("p2pull_build_info", "version")] == {__version__}
    # what the runbook's "RSS growing" and "CPU" read
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names
    assert not [name for name in names if name.endswith("_created")]
    # no label names a blob: every digest would leave a series behind
    assert not [key for key in exported.label_values if key[1] in ("blob", "digest")]


async def test_the_metrics_port_answers_three_paths_and_nothing_else(tmp_path: Path) -> None:
    origin = TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            async with (
                swarm(tmp_path, origin, 1) as (node,),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ports.metrics}") as http,
            ):
                for path in ("/metrics", "/healthz", "/readyz"):
                    assert (await http.get(path)).status_code == 200, path
                    assert (await http.head(path)).status_code == 200, path
                    refused = await http.post(path, content=b"x")
                    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
                # neither the admin API nor the mirror's routes, not even from loopback
                for path in ("/_p2pull/v1/status", "/v2/", "/metrics/", "/healthz/x", "/"):
                    assert (await http.get(path)).status_code == 404, path
                assert (
                    await http.delete(f"/_p2pull/v1/blobs/sha256:{'a' * 64}")
                ).status_code == 404
            nursery.cancel_scope.cancel()
