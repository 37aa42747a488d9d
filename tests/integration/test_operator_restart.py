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


def describe(kube: client.ApiClient, namespace: str) -> str:
    """Every LoadBalancer's status, one line each (BackendsHealthy first): what a timeout
    left behind."""
    lines = []
    for i in range(COUNT):
        try:
            lb = get_lb(kube, namespace, f"lb{i}")
        except client.ApiException as err:
            lines.append(f"lb{i}: cannot read ({err.status})")
            continue
        st = lb.get("status") or {}
        conds = "; ".join(
            f"{c.get('type')}={c.get('status')} {c.get('reason')} ({c.get('message')})"
            for c in sorted(st.get("conditions") or [],
                            key=lambda c: c.get("type") != "BackendsHealthy"))
        written = [f"{m.get('manager')}@{m.get('time')}"
                   for m in lb["metadata"].get("managedFields") or []
                   if m.get("subresource") == "status"]
        lines.append(f"lb{i} rv={lb['metadata'].get('resourceVersion')} status written by "
                     f"{', '.join(written) or 'nobody'} backends={st.get('backendSummary')}: "
                     f"{conds or 'no conditions'}")
    return "\n".join(lines)


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

    with log.open("a") as marker:  # both runs share the log: where the second begins
        marker.write(f"---- restarted at {time.strftime('%H:%M:%S')} ----\n")
    second = OperatorProcess(control_plane, log, "--namespace", namespace).start()
    try:
        started = time.monotonic()
        try:
            wait_for(lambda: converged(kube, namespace), 180,
                     "all 20 LoadBalancers to converge", interval=1.0)
        except AssertionError as err:
            # What each one reports, and both operators' log (one file, appended to).
            raise AssertionError(
                f"{err}\n---- LoadBalancers ----\n{describe(kube, namespace)}"
                f"\n---- operator log (both runs, {log}) ----\n"
                + "\n".join(second.log().splitlines()[-400:])) from None
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


def test_a_new_term_rewrites_no_child_already_applied(
        control_plane: Any, kube: client.ApiClient, namespace: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each child carries the fingerprint of what was applied: a restarted operator lists
    them (metadata only) and writes nothing that is in place, where it used to re-apply
    every child of every resource."""
    count = 3
    install(control_plane)
    sample_app(kube, namespace, replicas=2)
    for i in range(count):
        create_lb(kube, namespace, lb_body(f"fp{i}"))
    logs = tmp_path_factory.mktemp("fingerprints")
    first = OperatorProcess(control_plane, logs / "first.log", "--namespace", namespace).start()
    try:
        wait_for(lambda: all(condition(get_lb(kube, namespace, f"fp{i}"), "BackendsHealthy")
                             .get("status") == "True" for i in range(count)), 120,
                 "the LoadBalancers to converge", interval=0.5)
    finally:
        first.stop()
    configmap = client.CoreV1Api(kube).read_namespaced_config_map("fp0-lb", namespace)
    assert configmap.metadata.annotations["roundhouse.dev/applied"]
    second = OperatorProcess(control_plane, logs / "second.log", "--namespace",
                             namespace).start()
    try:
        wait_for(lambda: second.log().count("reconciled (resume)") >= count, 60,
                 "the restarted operator to resume every LoadBalancer", interval=0.5)
        # A change after the restart is still written (the recall is no blindfold).
        sample_app(kube, namespace, name="other", replicas=1)
        client.CustomObjectsApi(kube).patch_namespaced_custom_object(
            "roundhouse.dev", "v1alpha1", namespace, "loadbalancers", "fp1",
            {"spec": {"backends": [{"service": "other", "port": "http"}]}})
        wait_for(lambda: " of LoadBalancer " + namespace + "/fp1" in second.log(), 60,
                 "the changed LoadBalancer's ConfigMap to be written", interval=0.5)
    finally:
        second.stop()
    log = second.log()
    assert f"children of {count} resources are applied already" in log, log[-3000:]
    written = [line for line in log.splitlines() if " applied " in line and namespace in line]
    # Only the changed one is written (its ConfigMap, again once the new Service's
    # endpoints are there); the unchanged two are left alone.
    assert written and all(f"{namespace}/fp1 " in line for line in written), written
    assert all(" applied ConfigMap fp1-lb of " in line for line in written), written
