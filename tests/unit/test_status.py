"""status.py: the conditions table (tests/cases/conditions.yaml), the status body and the
Events a change of conditions deserves. Pure functions, no cluster."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from typing import Any

import pytest
import yaml

from roundhouse import status
from roundhouse.graph import Certificate, Problem, ProxyGraph, build_loadbalancer_graph
from roundhouse.model import parse_loadbalancer
from roundhouse.model.pods import ProxyPod
from roundhouse.status import Condition, Event
from tests.unit.cluster_fixtures import state
from tests.unit.conftest import REPO, lb_object

TABLE = yaml.safe_load((REPO / "tests" / "cases" / "conditions.yaml").read_text())
CONFIG_HASH = "c0ffee"  # what CURRENT stands for in the table


@functools.cache
def base_graph() -> ProxyGraph:
    return build_loadbalancer_graph(parse_loadbalancer(lb_object()), state(3))


def graph_of(row: dict[str, Any]) -> ProxyGraph:
    """A real graph with the row's problems, counts, certificates and limits."""
    g = base_graph()
    ready, total = row.get("backends", [3, 3])
    return dataclasses.replace(
        g,
        problems=tuple(Problem(*p) for p in row.get("problems", [])),
        backends_ready=ready, backends_total=total,
        certificates=tuple(Certificate(f"{secret}-{i}.pem", secret, "fp", False)
                           for i, secret in enumerate(row.get("certificates", []))),
        limits=dataclasses.replace(g.limits,
                                   max_connections=row.get("maxConnections", 10_000)))


def pods_of(row: dict[str, Any]) -> list[ProxyPod]:
    given = row.get("pods", [{"name": "p-a", "ready": True}, {"name": "p-b", "ready": True}])
    return [ProxyPod(p["name"], p.get("ready", False), p.get("problem")) for p in given]


def reports_of(row: dict[str, Any], pods: list[ProxyPod]) -> dict[str, str]:
    """The report ConfigMap's data, as the agents write it (JSON per Pod)."""
    given = row.get("reports", {p.name: {"configHash": "CURRENT"} for p in pods if p.ready})
    out = {}
    for pod, report in given.items():
        if isinstance(report, dict) and report.get("configHash") == "CURRENT":
            report = {**report, "configHash": CONFIG_HASH}
        out[pod] = report if isinstance(report, str) else json.dumps(report)
    return out


def conditions_of(row: dict[str, Any]) -> list[Condition]:
    """What the reconciler computes for the row's inputs."""
    if "invalidSpec" in row:
        return status.invalid_spec(row["invalidSpec"])
    pods = pods_of(row)
    found = status.conditions(graph_of(row), CONFIG_HASH, row.get("replicas", 2), pods,
                              reports_of(row, pods))
    if "applyFailed" in row:
        return status.apply_failed(found, row["applyFailed"])
    return found


@pytest.mark.parametrize("row", TABLE, ids=[r["name"] for r in TABLE])
def test_conditions(row: dict[str, Any]) -> None:
    found = conditions_of(row)
    expected = row["expect"]
    # Every condition, in the order status.CONDITION_TYPES gives them.
    assert [c.type for c in found] == [t for t in status.CONDITION_TYPES if t in expected]
    for c in found:
        want_status, want_reason, want_message = expected[c.type]
        assert (c.status, c.reason) == (want_status, want_reason), c
        assert want_message in c.message, c
        assert c.reason in status.REASONS.get(c.type, ()) or (
            c.type == "Ready" and (c.reason == "Ready" or any(
                c.reason == other.reason for other in found if other.type != "Ready")))


def test_the_table_covers_every_reason() -> None:
    covered = {(t, e[1]) for row in TABLE for t, e in row["expect"].items() if t != "Ready"}
    every = {(t, r) for t, reasons in status.REASONS.items() for r in reasons}
    assert every - covered == set(), "rows missing for these reasons"
    assert covered - every == set(), "reasons status.REASONS does not list"
    ready = {tuple(e["Ready"][:2]) for row in TABLE if "Ready" in (e := row["expect"])}
    assert {(True, "Ready"), (True, "ConnectionLimitReduced")} <= ready
    assert {r for s, r in ready if not s} >= {"HostnameConflict", "ProxyPodsFailing",
                                              "NoEndpoints", "SecretNotFound", "ApplyFailed"}


def test_the_table_names_only_known_condition_types() -> None:
    for row in TABLE:
        assert set(row["expect"]) <= set(status.CONDITION_TYPES), row["name"]


# -- the status body --------------------------------------------------------------------------

T0 = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)
READY = conditions_of({})
NO_PODS = conditions_of({"pods": [], "reports": {}})


def test_the_body_of_a_valid_spec() -> None:
    body = status.status_body([], READY, 3, T0, {"ready": 2, "total": 3}, "10.96.0.7")
    assert body["observedGeneration"] == 3
    assert body["backends"] == {"ready": 2, "total": 3} and body["backendSummary"] == "2/3"
    assert body["address"] == "10.96.0.7"
    assert [c["type"] for c in body["conditions"]] == list(status.CONDITION_TYPES)
    assert all(c["lastTransitionTime"] == "2026-11-25T10:00:00Z" and
               c["observedGeneration"] == 3 for c in body["conditions"])


def test_an_invalid_spec_has_no_counts_nor_address() -> None:
    body = status.status_body([], status.invalid_spec("bad"), 1, T0)
    assert set(body) == {"observedGeneration", "conditions"}
    assert [(c["type"], c["status"], c["reason"]) for c in body["conditions"]] == [
        ("Accepted", "False", "InvalidSpec")]


def test_transition_times_move_only_with_the_status() -> None:
    first = status.status_body([], NO_PODS, 1, T0, {"ready": 3, "total": 3})
    second = status.status_body(first["conditions"], READY, 1, T1, {"ready": 3, "total": 3})
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Accepted"] == times["BackendsHealthy"] == "2026-11-25T10:00:00Z"
    assert times["Programmed"] == times["Ready"] == "2026-11-25T10:05:00Z"


def test_a_long_message_is_cut_to_what_the_status_keeps() -> None:
    long = status.apply_failed(READY, "x" * 5000)
    body = status.status_body([], long, 1, T0)
    assert {len(c["message"]) for c in body["conditions"] if c["type"] == "Programmed"} == {
        status.MESSAGE_CHARS}


def test_an_equal_status_is_not_written_again() -> None:
    body = status.status_body([], READY, 1, T0, {"ready": 3, "total": 3})
    again = status.status_body(body["conditions"], READY, 1, T1, {"ready": 3, "total": 3})
    assert status.unchanged({**body, "somethingElse": 1}, again)
    assert not status.unchanged(body, {**again, "backendSummary": "2/3"})
    assert not status.unchanged({}, again)


# -- Events -----------------------------------------------------------------------------------

def written(found: list[Condition]) -> list[dict[str, Any]]:
    return status.merge_conditions([], found, 1, T0)


EVENT_CASES: list[tuple[str, list[Condition], list[Condition], list[Event]]] = [
    ("first status of a resource that waits for its Pods: progress, no Event", [], NO_PODS,
     []),
    ("the same False condition again: nothing", NO_PODS, NO_PODS, []),
    ("Ready turns True", NO_PODS, READY, [Event("Normal", "Ready", "all conditions are met")]),
    ("Ready stays True: nothing", READY, READY, []),
    ("progress whose message changes (a new config): no Event", NO_PODS,
     conditions_of({"pods": [], "reports": {}, "replicas": 3}), []),
    ("a False condition whose message changes", status.apply_failed(READY, "quota a"),
     status.apply_failed(READY, "quota b"),
     [Event("Warning", "ApplyFailed", "quota b")]),
    ("a degraded reason appears: one Warning, Ready stays True", READY,
     conditions_of({"reports": {"p-a": {"configHash": "CURRENT", "maxconn": 10},
                                "p-b": {"configHash": "CURRENT"}}}),
     [Event("Warning", "ConnectionLimitReduced",
            "HAProxy accepts fewer connections than spec.limits.maxConnections (10000): "
            "p-a at most 10 (open-files limit ?); raise the nodes' open-files limit "
            "(RLIMIT_NOFILE) or lower maxConnections; 2 ready proxy replica(s) run config "
            "c0ffee")]),
    ("the same degraded reason with another message: nothing",
     conditions_of({"reports": {"p-a": {"configHash": "CURRENT", "maxconn": 10},
                                "p-b": {"configHash": "CURRENT"}}}),
     conditions_of({"reports": {"p-a": {"configHash": "CURRENT", "maxconn": 11},
                                "p-b": {"configHash": "CURRENT"}}}), []),
    ("an unchanged message longer than the status keeps: nothing",
     status.apply_failed(READY, "x" * 5000), status.apply_failed(READY, "x" * 5000), []),
]


@pytest.mark.parametrize(("before", "after", "expected"), [c[1:] for c in EVENT_CASES],
                         ids=[c[0] for c in EVENT_CASES])
def test_events(before: list[Condition], after: list[Condition],
                expected: list[Event]) -> None:
    assert status.events(written(before), after) == expected
