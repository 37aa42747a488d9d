"""Proxy high availability on a real cluster: E2E_CLUSTER=kubeconfig only.

Needs what `make test-e2e-pods` (e2e/pods/run.sh: a real kubelet node beside the kwok
nodes) or `make e2e-kind` (e2e/kind/run.sh) sets up: the operator installed by the
chart, the echo image on the nodes, KUBECONFIG pointing at the cluster, at least one
schedulable node. Skipped on the local kwok tier (no kubelet, kube-proxy or proxy Pods
that really stop).

The LoadBalancer here keeps the default limits (maxConnections 10000), so its reaching
Ready on a node whose open-files limit is 20000 is itself checked.

1. Deleting one of the 2 proxy Pods while 20 concurrent clients run (fresh connection
   per request, through a node's nodePort, so kube-proxy spreads over both proxies):
   the proxy Pod's preStop pause lets kube-proxy drop it from the Service before
   HAProxy stops. The goal is no failed request; the test fails beyond the requests in
   flight (20) and records the count.
2. The PodDisruptionBudget (maxUnavailable 1) refuses to evict the last ready proxy
   Pod: with every schedulable node cordoned (as `kubectl drain` does), the first
   eviction is allowed, the second answered 429 Too Many Requests.
3. `helm upgrade` of the operator to another image tag under the same load (the agent
   sidecar runs the operator image, so the proxy Pods roll too): the same goal and bound.
   Runs where the runner provides the second tag (E2E_UPGRADE_IMAGE_TAG, set by
   e2e/pods/run.sh).

Before measuring, the fixture deletes the conntrack flows to the nodePort that kube-proxy
did not translate (kb.forget_untranslated_flows): requests sent from this node while
kube-proxy still rejected the new Service would otherwise refuse later connections that
reuse their source ports, a flake of the client's position, not of the proxies.

Each figure is printed and, with E2E_ARTIFACTS set, written to proxy-ha.json there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import kube_backends as kb
from e2e.harness.modes import kubeconfig_only
from e2e.harness.service_relay import check_local_route
from kubernetes import client

pytestmark = [
    kubeconfig_only("kwok has no kubelet, kube-proxy or proxy Pods that really stop"),
    pytest.mark.timeout(900),
]

GROUP, VERSION, PLURAL = "roundhouse.dev", "v1alpha1", "loadbalancers"
LISTENER_PORT = 8080
CONCURRENCY = 20
UPGRADE_TAG_ENV = "E2E_UPGRADE_IMAGE_TAG"
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
        endpoint = kb.node_endpoint(api, namespace, "web-lb")
        check_local_route(endpoint[0])  # a node address of this machine, never beyond it
        lb = KindLB(api, namespace, backends, endpoint)
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
        # The first of those requests may have met kube-proxy's REJECT (no endpoints
        # programmed yet); from this node that leaves untranslated flows that would
        # refuse the load's connections reusing their source ports (see the helper).
        stale = kb.forget_untranslated_flows(*lb.endpoint)
        record("untranslated_flows_removed", {"endpoint": list(lb.endpoint), "count": stale})
        yield lb
    finally:
        core.delete_namespace(namespace)


def record(name: str, figures: dict[str, Any]) -> None:
    """Print one measured figure; keep it in $E2E_ARTIFACTS/proxy-ha.json too."""
    print(f"proxy HA: {name}: {json.dumps(figures)}")
    artifacts = os.environ.get("E2E_ARTIFACTS")
    if not artifacts:
        return
    path = Path(artifacts) / "proxy-ha.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_deleting_one_of_two_proxy_pods_loses_no_request(
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
    record("delete_one_of_two_proxy_pods", {
        "concurrency": CONCURRENCY, "ok": load.ok, "failed": len(load.failures),
        "in_flight_at_delete": in_flight, "replaced_after_s": round(t_replaced - t_delete, 1),
        "failures_at_s": late, "errors": summary["errors"]})
    assert load.ok > 0
    # The goal is 0: the preStop pause outlasts kube-proxy's update, so the deleted Pod
    # gets no new connection before HAProxy stops (0 in every isolated run here). The
    # bound that must never break: no more failures than requests in flight.
    assert len(load.failures) <= CONCURRENCY, (
        f"{len(load.failures)} failed requests while a proxy Pod was deleted, more than "
        f"the {CONCURRENCY} in flight: {summary}")


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
    assert cordoned, "no schedulable node to cordon"

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


def _proxy_rolled_out(lb: KindLB, image: str) -> bool:
    d = client.AppsV1Api(lb.api).read_namespaced_deployment("web-lb", lb.namespace)
    agent = next(c for c in d.spec.template.spec.containers if c.name == "agent")
    st = d.status
    return bool(agent.image == image and st.observed_generation == d.metadata.generation
                and st.updated_replicas == d.spec.replicas == st.ready_replicas
                and st.replicas == d.spec.replicas)


@pytest.mark.skipif(not os.environ.get(UPGRADE_TAG_ENV),
                    reason=f"needs {UPGRADE_TAG_ENV}: a second tag of the operator image on "
                           "the nodes (e2e/pods/run.sh provides it)")
def test_helm_upgrade_of_the_operator_under_load_loses_no_request(kind_lb: KindLB) -> None:
    tag = os.environ[UPGRADE_TAG_ENV]
    release = os.environ.get("E2E_OPERATOR_RELEASE", "roundhouse")
    namespace = os.environ.get("E2E_OPERATOR_NAMESPACE", "roundhouse-system")
    chart = os.environ.get("E2E_CHART") or str(Path(__file__).resolve().parents[2]
                                               / "manifests" / "roundhouse")
    helm = os.environ.get("HELM", "helm")
    apps = client.AppsV1Api(kind_lb.api)
    operator = apps.list_namespaced_deployment(
        namespace, label_selector=f"app.kubernetes.io/instance={release}").items[0]
    old_image = operator.spec.template.spec.containers[0].image
    new_image = f"{old_image.rsplit(':', 1)[0]}:{tag}"
    assert new_image != old_image, f"the upgrade tag {tag} is the running one"
    kind_lb.wait_ready_proxies(2)
    with kb.running_load(*kind_lb.endpoint, concurrency=CONCURRENCY, timeout=5.0) as load:
        time.sleep(3.0)
        assert load.ok > 0 and not load.failures, load.summary()
        t0 = time.monotonic()
        done = subprocess.run(
            [helm, "upgrade", release, chart, "--namespace", namespace, "--reuse-values",
             "--set", f"image.tag={tag}", "--wait", "--timeout", "300s"],
            capture_output=True, text=True, check=False, timeout=360,
            env={**os.environ, "KUBECONFIG": os.environ.get("KUBECONFIG", "")})
        assert done.returncode == 0, done.stderr[-2000:]
        kb.wait_for(lambda: _proxy_rolled_out(kind_lb, new_image), 300,
                    f"proxy Deployment web-lb rolled out with agent {new_image}")
        t_rolled = time.monotonic()
        time.sleep(3.0)
    summary = load.summary()
    record("helm_upgrade_operator", {
        "concurrency": CONCURRENCY, "ok": load.ok, "failed": len(load.failures),
        "rollout_s": round(t_rolled - t0, 1), "from": old_image, "to": new_image,
        "failures_at_s": [round(t - t0, 2) for t, _ in load.failures],
        "errors": summary["errors"]})
    assert load.ok > 0
    # As above: 0 is the goal (and what isolated runs measure); never more than in flight.
    assert len(load.failures) <= CONCURRENCY, (
        f"{len(load.failures)} failed requests during the upgrade, more than the "
        f"{CONCURRENCY} in flight: {summary}")
