"""The operator's /metrics against the real control plane: two replicas (leader election as
install.yaml runs it), each scraped over HTTP as Prometheus would. The leader's counters
show the reconciles of the LoadBalancers it was given and the API requests they cost; its
condition gauge agrees with the status the API server holds; the standby serves metrics
too, with leader 0 and no reconcile."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    condition,
    create_lb,
    custom,
    get_lb,
    install,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import lb_body, report_as_agents

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape_or_none(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None  # not listening yet


def conditions_in_status(bodies: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for body in bodies:
        for c in (body.get("status") or {}).get("conditions") or []:
            key = (c["type"], c["status"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_metrics_of_reconciled_loadbalancers(
        control_plane: Any, kube: client.ApiClient, namespace: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    install(control_plane)
    sample_app(kube, namespace, replicas=3)
    logs = tmp_path_factory.mktemp("metrics")
    args = ("--leader-election-namespace", OPERATOR_NAMESPACE, "--namespace", namespace)
    leader_port, standby_port = free_port(), free_port()
    leader = OperatorProcess(control_plane, logs / "leader.log", *args,
                             "--metrics-port", str(leader_port)).start()
    standby: OperatorProcess | None = None
    try:
        wait_for(lambda: (s := scrape_or_none(leader_port)) is not None and total(
            s, "roundhouse_operator_leader") == 1, 60, "the first replica leads (leader 1)")
        standby = OperatorProcess(control_plane, logs / "standby.log", *args,
                                  "--metrics-port", str(standby_port)).start()
        wait_for(lambda: "standing by" in standby.log(), 30, "the second replica stands by")
        # Served from before the election: the standby answers while it waits.
        waiting = scrape(standby_port)
        assert total(waiting, "roundhouse_operator_leader") == 0

        create_lb(kube, namespace, lb_body())  # "web", its Service exists
        create_lb(kube, namespace, lb_body("orphan", backends=[{"service": "nope", "port": 80}]))
        wait_for(lambda: get_lb(kube, namespace, "web").get("status", {}).get("backends") == {
            "ready": 3, "total": 3}, 90, "web: backends 3/3")
        wait_for(lambda: client.AppsV1Api(kube).read_namespaced_deployment(
            "web-lb", namespace).status.ready_replicas == 2, 60, "2 ready proxy replicas")
        report_as_agents(kube, namespace, "web")
        wait_for(lambda: condition(get_lb(kube, namespace, "web"), "Ready").get(
            "status") == "True", 30, "web: Ready=True")
        wait_for(lambda: condition(get_lb(kube, namespace, "orphan"), "BackendsHealthy").get(
            "reason"), 30, "orphan: a BackendsHealthy condition")

        # The condition gauge is the status the API server holds, condition by condition
        # (waited for: the scrape and the read are two moments).
        def agree() -> tuple[Samples, dict[tuple[str, str], int]] | None:
            samples = scrape(leader_port)
            items = custom(kube).list_namespaced_custom_object(
                "roundhouse.dev", "v1alpha1", namespace, "loadbalancers")["items"]
            in_status = conditions_in_status(items)
            gauge = {(dict(ls)["condition"], dict(ls)["status"]): int(v)
                     for (n, ls), v in samples.items()
                     if n == "roundhouse_operator_resource_conditions"
                     and dict(ls)["kind"] == "LoadBalancer" and v}
            return (samples, in_status) if gauge == in_status else None

        samples, in_status = wait_for(agree, 30, "the condition gauge to match the status")
        assert in_status[("Ready", "True")] == 1 and in_status[("Ready", "False")] == 1
        assert in_status[("Accepted", "True")] == 2

        lb = "LoadBalancer"
        reconciles = "roundhouse_operator_reconciles_total"
        # web: created and reconciled; re-reconciled when its proxy Pods, Service and the
        # agents' reports changed.
        assert total(samples, reconciles, kind=lb, trigger="create", outcome="success") >= 1
        assert total(samples, reconciles, kind=lb, trigger="dependency", outcome="success") >= 1
        # orphan: done, but waiting for its Service; kopf runs it again.
        assert total(samples, reconciles, kind=lb, trigger="create", outcome="waiting") >= 1
        assert total(samples, "roundhouse_operator_retries_total", kind=lb) >= 1
        assert total(samples, reconciles, outcome="error") == 0
        assert total(samples, "roundhouse_operator_trigger_events_total") >= 1

        requests = "roundhouse_operator_api_requests_total"
        # Two LoadBalancers' children by server-side apply, each at least once...
        for resource in ("serviceaccounts", "roles", "rolebindings", "configmaps",
                         "deployments", "poddisruptionbudgets", "services"):
            assert total(samples, requests, verb="apply", resource=resource,
                         result="2xx") >= 2, resource
        # ... their status by merge patch, and nothing refused.
        assert total(samples, requests, verb="patch", resource="loadbalancers/status",
                     result="2xx") >= 2
        assert total(samples, requests, result="4xx") + total(samples, requests,
                                                              result="5xx") == 0
        assert ("roundhouse_operator_api_requests_in_flight", frozenset()) in samples
        assert total(samples, "process_resident_memory_bytes") > 0

        # Every reconcile and every request is timed too (one scrape is not atomic: a
        # reconcile may end between two metrics, so until a scrape shows them equal).
        def timed(s: Samples) -> bool:
            return total(s, "roundhouse_operator_reconcile_duration_seconds_count",
                         kind=lb) == total(s, reconciles, kind=lb) and total(
                s, "roundhouse_operator_api_request_duration_seconds_count",
                verb="apply") == total(s, requests, verb="apply")
        wait_for(lambda: timed(scrape(leader_port)), 30, "every reconcile and request timed")

        standing_by = scrape(standby_port)
        assert total(standing_by, "roundhouse_operator_leader") == 0
        assert total(standing_by, reconciles) == 0, "a standby must not reconcile"
        assert total(standing_by, requests) == 0
        print("leader: " + ", ".join(
            f"{dict(ls)['verb']} {dict(ls)['resource']} {int(v)}"
            for (n, ls), v in sorted(samples.items(), key=lambda kv: sorted(kv[0][1]))
            if n == requests and v))
        assert not leader.forbidden_errors() and not standby.forbidden_errors()
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()
