"""Fixtures for e2e tests: real operator + real agent + real HAProxy + netns backends.

The control plane fixtures come from tests/integration/conftest.py. The proxy Pods are
kwok Pods; one of them gets a local stand-in (e2e/harness/proxy.py) that runs the
agent under that Pod's name, so the operator's Programmed condition comes from a real
agent report. Every backend Pod's IP is owned by a network namespace (e2e/harness/netns.py).
Needs root.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e.harness.netns import Backends
from e2e.harness.proxy import ProxyStandIn
from kubernetes import client
from tests.integration.conftest import control_plane, kube  # noqa: F401  (fixtures)
from tests.integration.operator_process import (
    OperatorProcess,
    create_lb,
    create_obj,
    running_operator,
    wait_for,
)

HERE = Path(__file__).resolve().parent
LISTENER_PORT = 28080  # HAProxy binds it on the host: keep clear of well-known ports


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def operator(control_plane: Any, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
             ) -> Iterator[OperatorProcess]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, mount namespaces)", pytrace=False)
    with running_operator(control_plane, tmp_path_factory.mktemp("op") / "operator.log",
                          tail=40) as proc:
        yield proc


def new_namespace(kube: client.ApiClient, prefix: str = "e2e") -> str:  # noqa: F811
    core = client.CoreV1Api(kube)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name,
                                        "labels": {"roundhouse.dev/test": "e2e"}}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), 30,
             "default ServiceAccount")
    return name


def sample_app(kube: client.ApiClient, namespace: str, name: str = "web",  # noqa: F811
               replicas: int = 3) -> None:
    labels = {"app": name}
    client.AppsV1Api(kube).create_namespaced_deployment(namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "web", "image": "example.invalid/web:1",
                      "ports": [{"name": "http", "containerPort": 8080}]}]}}},
    })
    client.CoreV1Api(kube).create_namespaced_service(namespace, {
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80,
                                                "targetPort": "http"}]},
    })


def lb_body(name: str = "web", port: int = LISTENER_PORT, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": name},
        "spec": {"listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
                 "backends": [{"service": "web", "port": "http"}],
                 "proxy": {"replicas": 1},
                 # The default (10000) makes HAProxy want 20041 FDs; this sandbox caps
                 # RLIMIT_NOFILE at 20000 without CAP_SYS_RESOURCE to raise it.
                 "limits": {"maxConnections": 4000}},
    }
    body["spec"].update(spec)
    return body


def running_pods(kube: client.ApiClient, namespace: str, selector: str  # noqa: F811
                 ) -> list[client.V1Pod]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.status.pod_ip and p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None]


def set_ready(kube: client.ApiClient, namespace: str, pod: str, ready: bool  # noqa: F811
              ) -> None:
    """Take the Pod's status from kwok (annotation) and set its Ready condition."""
    core = client.CoreV1Api(kube)
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {
        "kwok.x-k8s.io/status": "custom"}}})
    value = "True" if ready else "False"
    core.patch_namespaced_pod_status(pod, namespace, {"status": {"conditions": [
        {"type": "Ready", "status": value}, {"type": "ContainersReady", "status": value}]}})


@dataclass
class Env:
    """One LoadBalancer `web` in its own namespace, its backends and its proxy stand-in."""

    kube: client.ApiClient
    cp: Any
    namespace: str
    log_dir: Path
    backends: Backends
    port: int = LISTENER_PORT
    proxy: ProxyStandIn | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    suffix: str = "lb"  # the children's suffix: "lb" (LoadBalancer) or "rp" (ReverseProxy)

    def pods(self, selector: str = "app=web") -> list[client.V1Pod]:
        return running_pods(self.kube, self.namespace, selector)

    def sync_backends(self, replicas: int, timeout: float = 90.0, prune: bool = True,
                      app: str = "web") -> dict[str, str]:
        """Wait for `replicas` running Pods of `app`; give new ones a namespace, drop gone
        ones (unless `prune` is False: call prune() once the proxy stopped using them)."""
        pods = wait_for(lambda: (p := self.pods(f"app={app}")) and len(p) == replicas and p,
                        timeout, f"{replicas} running {app} Pods")
        want = {p.metadata.name: p.status.pod_ip for p in pods}
        if prune:
            self.prune(want)
        for pod, address in want.items():
            if pod not in self.backends.backends:
                self.backends.add(pod, address)
        self.backends.check_routes()
        return want

    def prune(self, keep: dict[str, str] | set[str]) -> None:
        for pod in list(self.backends.backends):
            if pod not in keep:
                self.backends.remove(pod)

    def scale(self, replicas: int, name: str = "web") -> None:
        client.AppsV1Api(self.kube).patch_namespaced_deployment_scale(
            name, self.namespace, {"spec": {"replicas": replicas}})

    def patch_lb(self, spec: dict[str, Any], name: str = "web") -> None:
        client.CustomObjectsApi(self.kube).patch_namespaced_custom_object(
            "roundhouse.dev", "v1alpha1", self.namespace, "loadbalancers", name,
            {"spec": spec})

    def config_hash(self, name: str = "web-lb") -> str:
        cm = client.CoreV1Api(self.kube).read_namespaced_config_map(name, self.namespace)
        return str(cm.metadata.annotations["roundhouse.dev/config-hash"])

    def start_proxy(self, lb: str = "web", timeout: float = 90.0) -> ProxyStandIn:
        core = client.CoreV1Api(self.kube)
        name = f"{lb}-{self.suffix}"
        wait_for(lambda: core.read_namespaced_config_map(name, self.namespace), timeout,
                 f"ConfigMap {name}")
        pod = wait_for(lambda: (p := running_pods(
            self.kube, self.namespace, f"app.kubernetes.io/instance={name}")) and p[0],
            timeout, f"a running {name} Pod")
        kubeconfig = self.cp.kubeconfig_for_service_account(self.namespace, name)
        self.proxy = ProxyStandIn(namespace=self.namespace, configmap=name,
                                  status_configmap=f"{name}-agents",
                                  pod_name=pod.metadata.name, kubeconfig=kubeconfig,
                                  log_dir=self.log_dir).start()
        return self.proxy

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.backends.close()
        for cleanup in reversed(self.cleanups):
            cleanup()


def make_env(kube: client.ApiClient, cp: Any, log_dir: Path, replicas: int = 3,  # noqa: F811
             backends: Backends | None = None, before: Callable[[Env], None] | None = None,
             **spec: Any) -> Env:
    """`backends`: a Backends variant (e.g. TLS-serving); `before`: runs just before
    the LoadBalancer is created."""
    namespace = new_namespace(kube)
    core = client.CoreV1Api(kube)
    env = Env(kube, cp, namespace, log_dir, backends or Backends(log_dir))
    env.cleanups.append(lambda: core.delete_namespace(namespace))
    try:
        env.backends.guard()
        sample_app(kube, namespace, replicas=replicas)
        env.sync_backends(replicas)
        if before is not None:
            before(env)
        create_lb(kube, namespace, lb_body(**spec))
        env.start_proxy()
    except BaseException:
        env.close()
        raise
    return env


def make_rp_env(kube: client.ApiClient, cp: Any, log_dir: Path,  # noqa: F811
                apps: dict[str, int], body: dict[str, Any], backends: Backends | None = None,
                before: Callable[[Env], None] | None = None) -> Env:
    """A ReverseProxy `body` in its own namespace, with one Deployment + Service per app
    (each kwok Pod's IP owned by a netns backend answering its Pod name)."""
    namespace = new_namespace(kube)
    core = client.CoreV1Api(kube)
    env = Env(kube, cp, namespace, log_dir, backends or Backends(log_dir), suffix="rp")
    env.cleanups.append(lambda: core.delete_namespace(namespace))
    try:
        env.backends.guard()
        for app, replicas in apps.items():
            sample_app(kube, namespace, app, replicas=replicas)
        for app, replicas in apps.items():
            env.sync_backends(replicas, prune=False, app=app)
        if before is not None:
            before(env)
        create_obj(kube, namespace, body)
        env.start_proxy(body["metadata"]["name"])
    except BaseException:
        env.close()
        raise
    return env


@pytest.fixture
def rp_env_factory(operator: OperatorProcess, kube: client.ApiClient,  # noqa: F811
                   control_plane: Any, tmp_path: Path) -> Iterator[Callable[..., Env]]:  # noqa: F811
    made: list[Env] = []

    def factory(apps: dict[str, int], body: dict[str, Any], backends: Backends | None = None,
                before: Callable[[Env], None] | None = None) -> Env:
        env = make_rp_env(kube, control_plane, tmp_path, apps, body, backends, before)
        made.append(env)
        return env

    try:
        yield factory
    finally:
        for env in made:
            if env.proxy is not None:
                print(env.proxy.logs())
            env.close()


@pytest.fixture
def env_factory(operator: OperatorProcess, kube: client.ApiClient,  # noqa: F811
                control_plane: Any, tmp_path: Path) -> Iterator[Callable[..., Env]]:  # noqa: F811
    made: list[Env] = []

    def factory(replicas: int = 3, backends: Backends | None = None,
                before: Callable[[Env], None] | None = None, **spec: Any) -> Env:
        env = make_env(kube, control_plane, tmp_path, replicas, backends, before, **spec)
        made.append(env)
        return env

    try:
        yield factory
    finally:
        for env in made:
            if env.proxy is not None:
                print(env.proxy.logs())
            env.close()


def measure(predicate: Callable[[], Any], timeout: float, what: str,
            interval: float = 0.02) -> float:
    """Seconds until `predicate()` is truthy (bounded)."""
    start = time.monotonic()
    wait_for(predicate, timeout, what, interval)
    return time.monotonic() - start
