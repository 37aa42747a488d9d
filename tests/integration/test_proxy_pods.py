"""Proxy Pods that cannot run, and the agents' reports of Pods that are gone, against a
real kube-apiserver: the status names the Pod, its container and the kubelet's words.

kwok runs the proxy Pods; a Pod annotated `kwok.x-k8s.io/status: custom` is left alone
by it, so its status is patched here as a kubelet would write it.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from tests.integration.operator_process import (
    OperatorProcess,
    condition,
    create_lb,
    get_lb,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import lb_body, report_as_agents

FD_ALERT = ("[NOTICE]   (1) : haproxy version is 3.2.26-1\n[ALERT]    (1) : "
            "[haproxy.main()] Cannot raise FD limit to 20041, limit is 20000.\n")

# containerStatuses is an atomic list: a patch replaces it whole, so it names both.
AGENT_RUNNING = {"name": "agent", "ready": True, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-12-02T04:00:00Z"}}}


def proxy_pods(kube: client.ApiClient, namespace: str, name: str = "web") -> list[str]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/instance={name}-lb").items
    return sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp)


def ready_lb(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    """A LoadBalancer whose two proxy Pods run and whose (stand-in) agents reported."""
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body())
    wait_for(lambda: client.AppsV1Api(kube).read_namespaced_deployment(
        "web-lb", namespace).status.ready_replicas == 2, 60, "2 ready proxy replicas")

    def reported_and_ready() -> dict[str, Any] | None:
        # As real agents do, report again whenever the config changed since.
        report_as_agents(kube, namespace, "web")
        lb = get_lb(kube, namespace, "web")
        return lb if lb and condition(lb, "Ready").get("status") == "True" else None
    ready: dict[str, Any] = wait_for(reported_and_ready, 30, "Ready=True", interval=1.0)
    return ready


def warning_events(kube: client.ApiClient, namespace: str, reason: str) -> list[str]:
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector="involvedObject.name=web").items
    return [e.message for e in events if e.reason == reason and e.type == "Warning"]


def test_a_crash_looping_proxy_pod_is_named_in_status(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    ready_lb(kube, namespace)
    core = client.CoreV1Api(kube)
    pod = proxy_pods(kube, namespace)[0]
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {
        "kwok.x-k8s.io/status": "custom"}}})
    back_off = f"back-off 40s restarting failed container=haproxy pod={pod}_{namespace}"
    core.patch_namespaced_pod_status(pod, namespace, {"status": {
        "conditions": [{"type": "Ready", "status": "False"},
                       {"type": "ContainersReady", "status": "False"}],
        "containerStatuses": [{
            "name": "haproxy", "ready": False, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "message": FD_ALERT}}}, AGENT_RUNNING]}})
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "Programmed"))
                   .get("reason") == "ProxyPodsFailing" and c, 30,
                   "Programmed=False/ProxyPodsFailing")
    assert bad["status"] == "False"
    assert bad["message"] == (
        f"1/2 proxy replicas are ready; {pod}: container haproxy CrashLoopBackOff: "
        f"{back_off}; last exit: [ALERT]    (1) : [haproxy.main()] Cannot raise FD limit "
        "to 20041, limit is 20000. (exit code 1)"), bad
    ready = condition(get_lb(kube, namespace, "web"), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ProxyPodsFailing")
    wait_for(lambda: any(pod in m and "Cannot raise FD limit" in m
                         for m in warning_events(kube, namespace, "ProxyPodsFailing")),
             30, "a ProxyPodsFailing Warning Event")

    # The kubelet restarted it and it runs: the Pod's status change alone re-evaluates.
    core.patch_namespaced_pod_status(pod, namespace, {"status": {
        "conditions": [{"type": "Ready", "status": "True"},
                       {"type": "ContainersReady", "status": "True"}],
        "containerStatuses": [{
            "name": "haproxy", "ready": True, "restartCount": 5,
            "state": {"running": {"startedAt": "2026-12-02T04:00:00Z"}}}, AGENT_RUNNING]}})
    wait_for(lambda: condition(get_lb(kube, namespace, "web"), "Ready").get("status")
             == "True", 30, "Ready=True again")


def test_unschedulable_proxy_pods_are_named_in_status(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """A nodeSelector no node matches: the real scheduler marks the Pods Unschedulable."""
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body(proxy={"nodeSelector": {"roundhouse.dev/nowhere": "x"}}))
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "Programmed"))
                   .get("reason") == "ProxyPodsFailing" and c, 60,
                   "Programmed=False/ProxyPodsFailing")
    assert bad["message"].startswith("0/2 proxy replicas are ready; web-lb-"), bad
    assert ": unschedulable: 0/" in bad["message"], bad
    assert "node(s) didn't match Pod's node affinity/selector" in bad["message"], bad
    wait_for(lambda: any("unschedulable" in m for m in warning_events(
        kube, namespace, "ProxyPodsFailing")), 30, "a ProxyPodsFailing Warning Event")


def test_reports_of_deleted_pods_are_dropped_and_their_errors_forgotten(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    ready_lb(kube, namespace)
    core = client.CoreV1Api(kube)
    gone = proxy_pods(kube, namespace)[0]
    old_error = "haproxy -c rejected the configuration: an error long fixed"
    core.patch_namespaced_config_map("web-lb-agents", namespace, {"data": {gone: json.dumps({
        "configHash": "0ld", "error": old_error, "time": "2026-01-01T00:00:00Z"})}})
    wait_for(lambda: old_error in condition(get_lb(kube, namespace, "web"), "Programmed").get(
        "message", ""), 30, "the error of a live Pod in status")

    core.delete_namespaced_pod(gone, namespace)
    wait_for(lambda: gone not in (core.read_namespaced_config_map(
        "web-lb-agents", namespace).data or {}), 30, f"the report of {gone} dropped")
    wait_for(lambda: len(proxy_pods(kube, namespace)) == 2, 60, "a replacement proxy Pod")
    # The Pod's deletion re-reconciles the LoadBalancer; its status is written after
    # the report is dropped, and later still when the operator is busy elsewhere.
    wait_for(lambda: old_error not in condition(get_lb(kube, namespace, "web"),
                                                "Programmed").get("message", ""),
             30, "the gone Pod's error out of the status")
    assert gone not in json.dumps(get_lb(kube, namespace, "web")["status"])
    wait_for(lambda: f"dropped the reports of Pods that are gone from {namespace}/"
             f"web-lb-agents: {gone}" in operator.log(), 10, "the drop in the operator's log")
    # The replacement's agent reports: Ready again.
    wait_for(lambda: client.AppsV1Api(kube).read_namespaced_deployment(
        "web-lb", namespace).status.ready_replicas == 2, 60, "2 ready proxy replicas")
    report_as_agents(kube, namespace, "web")
    wait_for(lambda: condition(get_lb(kube, namespace, "web"), "Ready").get("status")
             == "True", 30, "Ready=True with the replacement")
