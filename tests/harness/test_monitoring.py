"""The chart's monitoring objects: the operator's metrics port, and the optional
Prometheus Operator ServiceMonitor / PodMonitors (off by default) rendered by helm with
their values on, each selecting what really serves /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse.graph import ClusterState
from roundhouse.model import parse_loadbalancer
from roundhouse.pipeline import desired_for_loadbalancer
from tests.harness.test_manifests import (
    CHART,
    NAMESPACE,
    helm,
    load_all,
    only,
    operator_deployment,
)
from tests.harness.test_manifests import (
    docs as docs,  # the install.yaml fixture
)

MONITORING = "monitoring.coreos.com/v1"


def render(*sets: str) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    result = helm("template", "roundhouse", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return load_all(result.stdout)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def operator_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, Any]]:
    template = operator_deployment(docs)["spec"]["template"]
    return template["metadata"]["labels"], template["spec"]["containers"][0]


def test_monitors_are_off_by_default(docs: list[dict[str, Any]]) -> None:
    assert not [d for d in docs if d["apiVersion"] == MONITORING]
    assert not [d for d in docs if d["kind"] == "Service"]  # the metrics Service too
    _, container = operator_pod(docs)
    assert "--metrics-port=9100" in container["args"]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]


def test_service_monitor_scrapes_every_replica_through_the_metrics_service() -> None:
    docs = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.interval=15s",
                  "metrics.serviceMonitor.labels.release=prom")
    pod_labels, container = operator_pod(docs)
    service = only(docs, "Service", "roundhouse-metrics")
    monitor = only(docs, "ServiceMonitor", "roundhouse")
    assert monitor["apiVersion"] == MONITORING
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prom"
    # ServiceMonitor -> Service -> the operator Pods' named port that serves /metrics.
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert matches(service["spec"]["selector"], pod_labels)
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    [port] = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9100
    assert not [d for d in docs if d["kind"] == "PodMonitor"]


def test_pod_monitor_scrapes_the_operator_pods() -> None:
    docs = render("metrics.podMonitor.enabled=true", "metrics.port=9200")
    pod_labels, container = operator_pod(docs)
    monitor = only(docs, "PodMonitor", "roundhouse")
    assert monitor["apiVersion"] == MONITORING
    assert matches(monitor["spec"]["selector"]["matchLabels"], pod_labels)
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s"}
    # The port value moves the flag and the container port together.
    assert "--metrics-port=9200" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9200
    assert not [d for d in docs if d["kind"] in ("ServiceMonitor", "Service")]


def test_proxy_pod_monitor_selects_the_agents_the_operator_runs() -> None:
    docs = render("metrics.proxyPodMonitor.enabled=true")
    monitor = only(docs, "PodMonitor", "roundhouse-proxies")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    # A proxy Deployment exactly as the operator renders it.
    model = parse_loadbalancer({
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": "web", "namespace": "team-a", "uid": "u", "generation": 1},
        "spec": {"listeners": [{"name": "http", "port": 80}],
                 "backends": [{"service": "web", "port": 80}]}})
    children = desired_for_loadbalancer(model, ClusterState({}, [], {}, {})).children
    [deployment] = [c for c in children if c["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    assert matches(monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports and endpoint["port"] == "agent-metrics"
    # Only the proxies: the operator's own Pods are not selected by it.
    operator_labels, _ = operator_pod(docs)
    assert not matches(monitor["spec"]["selector"]["matchLabels"], operator_labels)


@pytest.mark.parametrize("bad", [
    "metrics.port=80",  # below 1024: the operator runs as non-root
    "metrics.port=8080",  # the health port
    "metrics.serviceMonitor.enabled=yes please",
    "metrics.podMonitor.interval=soon",
    "metrics.unknown=1",
])
def test_metrics_values_are_validated(bad: str) -> None:
    result = helm("template", "roundhouse", str(CHART), "--set", bad)
    assert result.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in result.stderr, result.stderr
