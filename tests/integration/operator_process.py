"""Run `roundhouse run` as a real process, with the identity install.yaml grants it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "manifests" / "install.yaml"
OPERATOR_NAMESPACE = "roundhouse-system"
OPERATOR_SA = "roundhouse"
GROUP, VERSION, PLURAL = "roundhouse.dev", "v1alpha1", "loadbalancers"


def sample_app(kube: client.ApiClient, namespace: str, name: str = "web", replicas: int = 3,
               port_name: str = "http") -> None:
    """Deployment `name` (kwok Pods) and its Service: port 80 `port_name` -> the Pods' 8080."""
    labels = {"app": name}
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "web", "image": "example.invalid/web:1",
                      "ports": [{"name": port_name, "containerPort": 8080}]}]}}},
    })
    client.CoreV1Api(kube).create_namespaced_service(namespace, {
        "metadata": {"name": name},
        "spec": {"selector": labels,
                 "ports": [{"name": port_name, "port": 80, "targetPort": port_name}]},
    })


def install(cp: Any) -> None:
    """What a user does: server-side apply manifests/install.yaml (CRDs, RBAC, namespace)."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(INSTALL))
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/loadbalancers.roundhouse.dev",
        "crd/reverseproxies.roundhouse.dev",
    )


class OperatorProcess:
    def __init__(self, cp: Any, log_path: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        """`env`: more environment, e.g. POD_NAME (the Lease identity, as in a Pod)."""
        self.kubeconfig = cp.kubeconfig_for_service_account(OPERATOR_NAMESPACE, OPERATOR_SA)
        self.log_path = log_path
        self.args = [sys.executable, "-m", "roundhouse.cli", "run", "--metrics-port", "0", *extra]
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
               **self.env}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def forbidden_errors(self) -> list[str]:
        """RBAC denials only ('User "..." cannot ...'), not e.g. a terminating namespace."""
        return [line for line in self.log().splitlines()
                if "is forbidden: User" in line and "cannot" in line]


@contextlib.contextmanager
def running_operator(cp: Any, log_path: Path, tail: int = 60) -> Iterator[OperatorProcess]:
    """install.yaml applied, then the operator as its ServiceAccount (leader-elected);
    stopped afterwards, with the last `tail` lines of its log printed (0: none)."""
    install(cp)
    proc = OperatorProcess(cp, log_path, "--leader-election-namespace",
                           OPERATOR_NAMESPACE).start()
    try:
        yield proc
    finally:
        proc.stop()
        if tail:
            print("---- operator log (tail) ----\n" + "\n".join(proc.log().splitlines()[-tail:]))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except client.ApiException as err:
            if err.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


PLURALS = {"LoadBalancer": "loadbalancers", "ReverseProxy": "reverseproxies"}


def get_obj(kube: client.ApiClient, namespace: str, name: str,
            plural: str = PLURAL) -> dict[str, Any]:
    obj: dict[str, Any] = custom(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return obj


def create_obj(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a LoadBalancer or a ReverseProxy (by its kind) in `namespace`."""
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    obj: dict[str, Any] = custom(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body.get("kind", "LoadBalancer")], body
    )
    return obj


def get_lb(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_obj(kube, namespace, name)


def get_rp(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return get_obj(kube, namespace, name, "reverseproxies")


def create_lb(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return create_obj(kube, namespace, body)


def condition(lb: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (lb.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def service_without_selector(kube: client.ApiClient, namespace: str, name: str) -> None:
    """A Service whose EndpointSlices are made by hand (many_endpoints): port http, 80 to
    8080, the port many_endpoints gives its endpoints."""
    client.CoreV1Api(kube).create_namespaced_service(namespace, {
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


def many_endpoints(kube: client.ApiClient, namespace: str, service: str, n: int,
                   not_ready: Container[int] = (), subnet: str = "10.244.128") -> None:
    """Hand-made EndpointSlices of 100 for Service `service` (service_without_selector):
    what a large Deployment's Service looks like, without n Pods. Endpoint i is
    big-i at <subnet + i // 250>.<i % 250 + 1>, ready unless i is in `not_ready`; the
    default subnet (inside the Pod CIDR) stays clear of the addresses kwok gives Pods.
    Created, or replaced when they exist."""
    discovery = client.DiscoveryV1Api(kube)
    prefix, third = subnet.rsplit(".", 1)
    for start in range(0, n, 100):
        name = f"{service}-{start // 100}"
        body: dict[str, Any] = {
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "roundhouse-tests"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"{prefix}.{int(third) + i // 250}.{i % 250 + 1}"],
                           "conditions": {"ready": i not in not_ready},
                           "targetRef": {"kind": "Pod", "name": f"{service}-{i}"}}
                          for i in range(start, min(n, start + 100))]}
        try:
            discovery.create_namespaced_endpoint_slice(namespace, body)
        except client.ApiException as err:
            if err.status != 409:
                raise
            current = discovery.read_namespaced_endpoint_slice(name, namespace)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            discovery.replace_namespaced_endpoint_slice(name, namespace, body)
