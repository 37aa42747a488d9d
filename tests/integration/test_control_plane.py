"""The local control plane behaves like a real cluster where the operator needs it to."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from e2e.cluster.controlplane import ControlPlane
from kubernetes import client, config

T = TypeVar("T")

POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
CUSTOM_STATUS = {"kwok.x-k8s.io/status": "custom"}
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def is_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def endpoint_readiness(kube: client.ApiClient, namespace: str, service: str) -> dict[str, bool]:
    """{endpoint IP: ready} over every EndpointSlice of `service`."""
    slices = client.DiscoveryV1Api(kube).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service}"
    )
    return {
        address: bool(ep.conditions.ready)
        for s in slices.items
        for ep in s.endpoints or []
        for address in ep.addresses
    }


def wait_endpoints(
    kube: client.ApiClient,
    namespace: str,
    service: str,
    what: str,
    predicate: Callable[[dict[str, bool]], bool],
) -> dict[str, bool]:
    def probe() -> dict[str, bool] | None:
        endpoints = endpoint_readiness(kube, namespace, service)
        return endpoints if predicate(endpoints) else None

    return wait_until(what, probe)


@dataclass
class WebApp:
    namespace: str
    name: str
    pods: list[client.V1Pod]


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    # Required anti-affinity: three replicas only fit if they land on three distinct nodes.
    anti_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {"podAntiAffinity": anti_affinity},
                    # kwok never pulls images; the name only has to be valid.
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.invalid/roundhouse/web:1",
                            "ports": [{"containerPort": 8080}],
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture
def web_app(kube: client.ApiClient, namespace: str) -> WebApp:
    """A 3-replica Deployment plus Service `web`, returned once all Pods are Ready."""
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, deployment("web", 3))
    client.CoreV1Api(kube).create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )

    def ready_pods() -> list[client.V1Pod] | None:
        pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector="app=web")
        good = [p for p in pods.items if p.status.phase == "Running" and is_ready(p)]
        return good if len(good) == 3 else None

    return WebApp(namespace, "web", wait_until("3 Running+Ready pods", ready_pods))


def test_readyz_ok(control_plane: ControlPlane) -> None:
    assert control_plane.readyz() == "ok"
    out = control_plane.kubectl("get", "--raw", "/readyz").stdout
    assert out.strip() == "ok"


def test_server_version(control_plane: ControlPlane, kube: client.ApiClient) -> None:
    assert client.VersionApi(kube).get_code().git_version == "v1.36.3"
    assert control_plane.version["gitVersion"] == "v1.36.3"


@pytest.mark.parametrize("address", ["10.244.0.5", "10.96.0.1"])
def test_fake_ranges_are_unreachable(control_plane: ControlPlane, address: str) -> None:
    res = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
    assert res.returncode != 0 or res.stdout.startswith("unreachable"), res.stdout
    assert " via " not in res.stdout


def test_fake_nodes_ready_across_zones(kube: client.ApiClient) -> None:
    nodes = client.CoreV1Api(kube).list_node(label_selector="type=kwok").items
    assert len(nodes) == 3
    for node in nodes:
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", node.metadata.name
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert node.metadata.labels["kubernetes.io/hostname"] == node.metadata.name
    assert len({n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes}) == 3


def test_deployment_pods_run_on_fake_nodes(kube: client.ApiClient, web_app: WebApp) -> None:
    nodes = {n.metadata.name for n in client.CoreV1Api(kube).list_node().items}
    placed = [p.spec.node_name for p in web_app.pods]
    assert set(placed) <= nodes
    assert len(set(placed)) == 3, f"anti-affinity ignored: {placed}"
    for pod in web_app.pods:
        assert ipaddress.ip_address(pod.status.pod_ip) in POD_NETWORK, pod.status.pod_ip
    # The Deployment's status follows its Pods' through two controllers (ReplicaSet, then
    # Deployment): it may lag the Pods turning Ready.
    wait_until("Deployment web readyReplicas 3", lambda: client.AppsV1Api(
        kube).read_namespaced_deployment("web", web_app.namespace).status.ready_replicas == 3,
        timeout=30)


def test_service_gets_endpointslice_with_ready_endpoints(
    kube: client.ApiClient, web_app: WebApp
) -> None:
    pod_ips = {p.status.pod_ip for p in web_app.pods}
    endpoints = wait_endpoints(
        kube, web_app.namespace, "web", "3 ready endpoints", lambda e: sum(e.values()) == 3
    )
    assert set(endpoints) == pod_ips
    assert all(endpoints.values())


def test_custom_status_pod_not_ready_is_reflected_and_kept(
    kube: client.ApiClient, web_app: WebApp
) -> None:
    core = client.CoreV1Api(kube)
    ns, pod = web_app.namespace, web_app.pods[0]
    name, ip = pod.metadata.name, pod.status.pod_ip
    wait_endpoints(kube, ns, "web", "3 ready endpoints", lambda e: sum(e.values()) == 3)

    # The annotation tells kwok this Pod's status belongs to the test.
    core.patch_namespaced_pod(
        name, ns, {"metadata": {"annotations": CUSTOM_STATUS}}, _content_type=MERGE
    )
    not_ready = {
        "status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "TestForcedNotReady"}]
        }
    }
    core.patch_namespaced_pod_status(name, ns, not_ready, _content_type=STRATEGIC)

    endpoints = wait_endpoints(
        kube, ns, "web", f"endpoint {ip} ready=false", lambda e: e.get(ip) is False
    )
    assert sum(endpoints.values()) == 2
    time.sleep(5)  # give kwok every chance to put the status back
    assert not is_ready(core.read_namespaced_pod(name, ns))
    assert endpoint_readiness(kube, ns, "web")[ip] is False


def test_garbage_collector_deletes_dependents(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_until("dependent ConfigMap to be garbage collected", dependent_gone)


def test_rbac_enforced_for_service_account(
    control_plane: ControlPlane, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "probe"}})
    path = control_plane.kubeconfig_for_service_account(namespace, "probe")
    sa_api = config.new_client_from_config(config_file=str(path))
    try:
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
        assert denied.value.status == 403  # authenticated (not 401) but not authorized

        # Same identity, now bound: proves the 403 came from RBAC, not a broken kubeconfig.
        rbac = client.RbacAuthorizationV1Api(kube)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-secrets"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "read-secrets"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-secrets",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": namespace}],
            },
        )

        def allowed() -> bool:
            try:
                client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
            except client.ApiException as err:
                if err.status != 403:
                    raise
                return False
            return True

        wait_until("RoleBinding to take effect", allowed, timeout=30)
    finally:
        sa_api.close()
