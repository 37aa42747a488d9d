"""An operator killed in the middle of reconciling 20 LoadBalancers converges after restart."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from tests.integration.operator_process import (
    OperatorProcess,
    condition,
    create_lb,
    get_lb,
    install,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import CHILD_KINDS, children, lb_body

COUNT = 20


def converged(kube: client.ApiClient, namespace: str) -> bool:
    for i in range(COUNT):
        lb = get_lb(kube, namespace, f"lb{i}")
        if condition(lb, "BackendsHealthy").get("status") != "True":
            return False
    return True


def test_restart_mid_reconcile_converges_without_duplicates(
        control_plane: Any, kube: client.ApiClient, namespace: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    install(control_plane)
    sample_app(kube, namespace, replicas=2)
    for i in range(COUNT):
        create_lb(kube, namespace, lb_body(f"lb{i}"))
    log = tmp_path_factory.mktemp("restart") / "operator.log"
    first = OperatorProcess(control_plane, log, "--namespace", namespace).start()
    # Kill it (SIGKILL: no graceful shutdown) as soon as it has started writing children.
    wait_for(lambda: client.AppsV1Api(kube).list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/managed-by=roundhouse").items, 60,
        "the first proxy Deployment")
    first.stop(kill=True)
    partial = len(client.AppsV1Api(kube).list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/managed-by=roundhouse").items)
    print(f"killed the operator after {partial}/{COUNT} proxy Deployments existed")

    second = OperatorProcess(control_plane, log, "--namespace", namespace).start()
    try:
        started = time.monotonic()
        wait_for(lambda: converged(kube, namespace), 180, "all 20 LoadBalancers to converge",
                 interval=1.0)
        print(f"converged {COUNT} LoadBalancers {time.monotonic() - started:.1f}s after restart")
    finally:
        second.stop()
    for i in range(COUNT):
        found = children(kube, namespace, f"lb{i}")
        kinds = sorted(key.split("/")[0] for key in found)
        # Exactly one of each child (two ConfigMaps: config + agent reports), none twice.
        expected = sorted([*CHILD_KINDS, "ConfigMap"])
        assert kinds == expected, f"lb{i}: {kinds}"
        assert all(obj["metadata"]["ownerReferences"][0]["name"] == f"lb{i}"
                   for obj in found.values())
    deployments = client.AppsV1Api(kube).list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/managed-by=roundhouse").items
    assert len(deployments) == COUNT
    assert not second.forbidden_errors() and not first.forbidden_errors()
