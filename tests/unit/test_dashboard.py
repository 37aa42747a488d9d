"""docs/dashboards/roundhouse.json, the example Grafana dashboard: every PromQL expression
in it parses (a real PromQL parser), selects only series the operator or the agent export,
and groups or matches only by labels those series carry (or the labels Prometheus adds to
every target); every metric of ours is on the dashboard and in the README."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import promql_parser as promql
import pytest
from prometheus_client.metrics import MetricWrapperBase

from roundhouse import metrics
from roundhouse.agent.metrics import AgentMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "dashboards" / "roundhouse.json"
README = REPO / "README.md"
# Labels Prometheus' Kubernetes discovery adds to every series of a target.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
# Grafana's variables, replaced by what Grafana would put there.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$job": ".*"}
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}


def _wrappers(owner: object) -> Iterator[MetricWrapperBase]:
    for item in vars(owner).values():
        if isinstance(item, MetricWrapperBase):
            yield item


def exported() -> dict[str, set[str]]:
    """Every series name the operator (its registry, with prometheus_client's process
    and Python collectors) and the agent export, with the labels it carries."""
    series: dict[str, set[str]] = {}
    labels = {w._name: set(w._labelnames)  # type: ignore[attr-defined]
              for w in [*_wrappers(metrics), *_wrappers(AgentMetrics())]}
    agent = AgentMetrics().registry
    for registry in (prometheus_client.REGISTRY, agent):
        for family in registry.collect():
            for suffix in SUFFIXES[family.type]:
                names = set(labels.get(family.name, set()))
                for sample in family.samples:
                    names.update(sample.labels)
                if suffix == "_bucket":
                    names.add("le")
                series[family.name + suffix] = names
    return series


def expressions() -> list[tuple[str, str]]:
    """(panel title, expr) of every query: panel targets and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            found.append((variable["name"], text))
    return found


def _label_values_metric(query: str) -> str | None:
    """label_values(metric, label): Grafana's own function, not PromQL."""
    if query.startswith("label_values(") and query.endswith(")"):
        return query[len("label_values("):-1].split(",")[0].strip()
    return None


def selections(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, labels it is matched or grouped by) of every selector in `expr`."""
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    found: list[tuple[str, set[str]]] = []

    def walk(node: Any, grouping: set[str]) -> None:
        if isinstance(node, promql.VectorSelector):
            matched = {m.name for m in node.matchers.matchers}
            found.append((str(node.name), matched | grouping))
        elif isinstance(node, promql.MatrixSelector):
            walk(node.vector_selector, grouping)
        elif isinstance(node, promql.AggregateExpr):
            by = set(node.modifier.labels) if node.modifier is not None else set()
            walk(node.expr, grouping | by)
        elif isinstance(node, promql.BinaryExpr):
            modifier = node.modifier
            on = set(modifier.matching.labels) if (
                modifier is not None and modifier.matching is not None) else set()
            lhs = rhs = grouping | on
            # group_left: the result has the left side's labels (plus the listed ones of
            # the right side), so the outer grouping says nothing about the right side.
            if modifier is not None and modifier.card == promql.VectorMatchCardinality.ManyToOne:
                rhs = on | set(modifier.group_labels)
            elif modifier is not None and modifier.card == promql.VectorMatchCardinality.OneToMany:
                lhs = on | set(modifier.group_labels)
            walk(node.lhs, lhs)
            walk(node.rhs, rhs)
        elif isinstance(node, promql.Call):
            for arg in node.args:
                walk(arg, grouping)
        elif isinstance(node, promql.ParenExpr | promql.UnaryExpr | promql.SubqueryExpr):
            walk(node.expr, grouping)
        elif not isinstance(node, promql.NumberLiteral | promql.StringLiteral):
            raise AssertionError(f"unknown PromQL node {type(node).__name__} in {expr}")

    walk(promql.parse(expr), set())
    return found


def test_the_checker_catches_unknown_metrics_and_labels() -> None:
    """The checks below can fail: a misspelt metric or label is found."""
    series = exported()
    [(name, labels)] = selections(
        'sum by (kindd) (rate(roundhouse_operator_reconcile_total{outcome="success"}[5m]))')
    assert name not in series
    assert labels == {"kindd", "outcome"}
    assert "kindd" not in series["roundhouse_operator_reconciles_total"]
    with pytest.raises(Exception):  # noqa: B017 (the parser's own error type)
        promql.parse("sum by (kind (rate(x[5m]))")


def test_every_expression_uses_only_exported_metrics_and_labels() -> None:
    series = exported()
    checked = 0
    for title, expr in expressions():
        metric = _label_values_metric(expr)
        if metric is not None:
            assert metric in series, f"{title}: {metric} is not exported"
            continue
        found = selections(expr)
        assert found, f"{title}: {expr} selects no series"
        for name, labels in found:
            assert name in series, f"{title}: {name} is not exported (in {expr})"
            unknown = labels - series[name] - TARGET_LABELS
            assert not unknown, f"{title}: {name} has no label {sorted(unknown)} (in {expr})"
            checked += 1
    assert checked >= 20


def test_every_metric_of_ours_is_on_the_dashboard_and_in_the_readme() -> None:
    used = {name for _, expr in expressions()
            for name, _ in (selections(expr) if not _label_values_metric(expr) else [])}
    used |= {m for _, expr in expressions() if (m := _label_values_metric(expr))}
    ours = {family.name: family.type
            for registry in (prometheus_client.REGISTRY, AgentMetrics().registry)
            for family in registry.collect() if family.name.startswith("roundhouse_")}
    assert len(ours) >= 16
    readme = README.read_text()
    for family, kind in sorted(ours.items()):
        assert any(family + suffix in used for suffix in SUFFIXES[kind]), (
            f"{family} is not on the dashboard")
        assert f"`{family}" in readme, f"{family} is not documented in the README"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "roundhouse" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel.get("description"), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
