"""k8s/monitoring: the alert rules and the dashboard query what the service exports, in valid PromQL,
and every alert leads to a section of the runbook that exists."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "k8s" / "monitoring"
# Series from outside the service: Prometheus' own `up`, kube-state-metrics' limits.
EXTERNAL = {"up", "kube_pod_container_resource_limits"}
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",), "gauge": ("",)}


def exported() -> set[str]:
    """Every series name a service replica exposes (its process and its model process included)."""
    metrics = Metrics()
    metrics.watch_model_process(os.getpid)
    return {family.name + suffix for family in metrics.registry.collect()
            for suffix in SUFFIXES.get(family.type, ("",))}


def alert_rules() -> list[dict]:
    rule = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def series_named(query: str) -> set[str]:
    """The series a query reads: identifiers left once label lists, matchers, ranges and strings are
    removed, other than functions and aggregations (followed by a parenthesis) and keywords."""
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", query)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", bare)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
    return {n for n in names if n not in {"or", "and", "unless", "bool", "offset"}}


QUERIES = [r["expr"] for r in alert_rules()] + dashboard_queries()


@pytest.mark.parametrize("query", QUERIES)
def test_every_query_parses_and_reads_series_that_exist(query):
    promql_parser.parse(query)   # raises on a syntax error
    unknown = series_named(query) - exported() - EXTERNAL
    assert not unknown, f"{query}: no such series {sorted(unknown)}"


def test_a_misspelt_series_or_a_broken_query_is_caught():
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(llmemb_queue_depth[5m])")
    assert series_named("avg(llmemb_queue_dept) > 3") - exported() == {"llmemb_queue_dept"}


def test_the_alerts_cover_the_failures_an_operator_must_hear_of():
    rules = {r["alert"]: r for r in alert_rules()}
    queries = " ".join(r["expr"] for r in rules.values())
    for series in ("llmemb_catalogue_lost", "llmemb_redis_up", 'status="429"', 'status="503"', "llmemb_queue_depth",
                   "llmemb_model_restarts_total", "llmemb_model_process_resident_memory_bytes"):
        assert series in queries
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in rules.values())


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_to_a_runbook_section():
    headings = {_anchor(line.lstrip("#")) for line in (ROOT / "docs" / "RUNBOOK.md").read_text().splitlines()
                if line.startswith("#")}
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/RUNBOOK.md" and anchor in headings, rule["alert"]


def test_dashboard_panels_do_not_overlap():
    panels = json.loads((MONITORING / "dashboard.json").read_text())["panels"]
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in panels
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
