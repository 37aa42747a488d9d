"""Proxy high availability on a real cluster (kind): E2E_CLUSTER=kubeconfig only.

Needs what `make e2e-kind` sets up (e2e/kind/run.sh): the operator installed by the
chart, the echo image loaded, KUBECONFIG pointing at the cluster, 3 schedulable workers.
Skipped everywhere else (the local kwok control plane has no kubelet, kube-proxy or
real proxy Pods to delete).

1. Deleting one of the 2 proxy Pods while a load loop runs (fresh connection per
   request, through a node's nodePort, so kube-proxy spreads over both proxies) loses
   at most the requests in flight at that moment: failures <= the loop's concurrency.
   The count, the in-flight figure and when failures happened are printed.
2. The PodDisruptionBudget (maxUnavailable 1) refuses to evict the last ready proxy
   Pod: with every worker cordoned (as `kubectl drain` does), the first eviction is
   allowed, the second answered 429 Too Many Requests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from e2e.harness import kube_backends as kb
from e2e.harness.modes import kubeconfig_only
from kubernetes import client

pytestmark = [
    kubeconfig_only("kwok has no kubelet, kube-proxy or proxy Pods that really stop"),
    pytest.mark.timeout(900),
]

GROUP, VERSION, PLURAL = "roundhouse.dev", "v1alpha1", "loadbalancers"
LISTENER_PORT = 8080
CONCURRENCY = 8
PROXY_SELECTOR = "app.kubernetes.io/instance=web-lb"


@dataclass
class KindLB:
    api: client.ApiClient
    namespace: str
    backends: kb.KubeBackends
    endpoint: tuple[str, int]

    @property
    def core(self) -> Any:
        return kb.core_api(self.api)

    def proxy_pods(self, ready_only: bool = True) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=PROXY_SELECTOR).items
        pods = [p for p in pods if p.metadata.deletion_timestamp is None]
        return [p for p in pods if kb.pod_ready(p)] if ready_only else pods

    def wait_ready_proxies(self, n: int = 2, timeout: float = 180.0) -> list[Any]:
        pods: list[Any] = kb.wait_for(lambda: (p := self.proxy_pods()) and len(p) == n and p,
                                      timeout, f"{n} ready proxy Pods")
        return pods


def lb_ready(api: client.ApiClient, namespace: str) -> bool:
    lb: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, namespace, PLURAL, "web")
    conditions = lb.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def kind_lb(kube: client.ApiClient) -> Iterator[KindLB]:
    api = kube  # the session's, from $KUBECONFIG (tests/e2e/conftest.py)
    core = kb.core_api(api)
    namespace = f"kind-ha-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace,
                                        "labels": {"roundhouse.dev/test": "e2e"}}})
    try:
        kb.wait_for(lambda: core.read_namespaced_service_account("default", namespace), 60,
                    "the default ServiceAccount")
        backends = kb.KubeBackends(api, namespace).__enter__()
        backends.add_all([f"web-{i}" for i in range(3)])
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "LoadBalancer",
                "metadata": {"name": "web"},
                "spec": {"listeners": [{"name": "http", "port": LISTENER_PORT,
                                        "protocol": "HTTP"}],
                         "backends": [{"service": "web", "port": "http"}],
                         "proxy": {"replicas": 2, "serviceType": "NodePort"}}})
        kb.wait_for(lambda: lb_ready(api, namespace), 300, "LoadBalancer web Ready")
        lb = KindLB(api, namespace, backends, kb.node_endpoint(api, namespace, "web-lb"))
        pods = lb.wait_ready_proxies(2)
        print(f"proxies on {sorted(p.spec.node_name for p in pods)}; endpoint {lb.endpoint}")
        # Every backend answers through the proxies before anything is measured.
        seen: set[str] = set()

        def all_backends() -> bool:
            for _ in range(30):
                backend, error = kb.LoadLoop(*lb.endpoint, timeout=3.0).request_once()
                if error is None and backend:
                    seen.add(backend)
            return seen == set(backends.backends)

        kb.wait_for(all_backends, 120, "every backend answering through the proxies")
        yield lb
    finally:
        core.delete_namespace(namespace)


def test_deleting_one_of_two_proxy_pods_loses_at_most_the_requests_in_flight(
        kind_lb: KindLB) -> None:
    victim = kind_lb.wait_ready_proxies(2)[0].metadata.name
    with kb.running_load(*kind_lb.endpoint, concurrency=CONCURRENCY, timeout=5.0) as load:
        time.sleep(3.0)
        assert load.ok > 0 and not load.failures, load.summary()
        in_flight = load.in_flight()
        t_delete = time.monotonic()
        kind_lb.core.delete_namespaced_pod(victim, kind_lb.namespace)
        # Gone (preStop sleep, HAProxy stops) and replaced by a ready one.
        kb.wait_for(lambda: victim not in {p.metadata.name
                                           for p in kind_lb.proxy_pods(ready_only=False)}
                    and len(kind_lb.proxy_pods()) == 2, 180,
                    f"{victim} replaced by a ready proxy Pod")
        t_replaced = time.monotonic()
        time.sleep(3.0)
    summary = load.summary()
    late = [round(t - t_delete, 2) for t, _ in load.failures]
    print(f"deleted {victim} with {in_flight}/{CONCURRENCY} requests in flight; replaced after "
          f"{t_replaced - t_delete:.1f}s; {summary}; failures at +{late}s")
    assert load.ok > 0
    assert len(load.failures) <= CONCURRENCY, (
        f"{len(load.failures)} failed requests, more than the {CONCURRENCY} that can be in "
        f"flight at once: {summary}")


def test_pdb_refuses_to_evict_the_last_ready_proxy_pod(kind_lb: KindLB) -> None:
    core = kind_lb.core
    first, second = (p.metadata.name for p in kind_lb.wait_ready_proxies(2))
    policy = client.PolicyV1Api(kind_lb.api)
    pdb = kb.wait_for(lambda: (b := policy.read_namespaced_pod_disruption_budget(
        "web-lb", kind_lb.namespace)) and b.status and b.status.disruptions_allowed == 1 and b,
        60, "PodDisruptionBudget web-lb allowing 1 disruption")
    assert pdb.spec.max_unavailable == 1
    # Cordon every schedulable node, as a drain does: the evicted Pod's replacement
    # cannot start, so the budget stays spent.
    cordoned = [n.metadata.name for n in core.list_node().items
                if not n.spec.unschedulable and not (n.spec.taints or [])]
    assert len(cordoned) >= 3, cordoned

    def evict(pod: str) -> None:
        core.create_namespaced_pod_eviction(pod, kind_lb.namespace, {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": kind_lb.namespace}})

    try:
        for node in cordoned:
            core.patch_node(node, {"spec": {"unschedulable": True}})
        evict(first)
        with pytest.raises(client.ApiException) as refused:
            evict(second)
        assert refused.value.status == 429, refused.value
        assert "disruption budget" in str(refused.value.body), refused.value.body
        still = core.read_namespaced_pod(second, kind_lb.namespace)
        assert still.metadata.deletion_timestamp is None and kb.pod_ready(still)
        print(f"evicted {first}; eviction of {second} refused: 429 {refused.value.reason}")
    finally:
        for node in cordoned:
            core.patch_node(node, {"spec": {"unschedulable": False}})
    kind_lb.wait_ready_proxies(2)
