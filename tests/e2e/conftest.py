"""Fixtures for e2e tests, on either cluster `E2E_CLUSTER` names (e2e/harness/modes.py).

local (default): real operator + real agent + real HAProxy + netns backends. The control
plane fixtures come from tests/integration/conftest.py. The proxy Pods are kwok Pods; one
of them gets a local stand-in (e2e/harness/proxy.py) that runs the agent under that Pod's
name, so the operator's Programmed condition comes from a real agent report. Every
backend Pod's IP is owned by a network namespace (e2e/harness/netns.py). Needs root.

kubeconfig: the cluster $KUBECONFIG names, with the operator installed (e2e/kind/run.sh:
Helm release `roundhouse` in roundhouse-system). Backends are echo Pods
(e2e/harness/kube_backends.py), the proxy is the real proxy Pod (e2e/harness/proxy_pod.py)
and every listener port is reached through `kubectl port-forward` (Env.local_port).

The tests are the same in both modes; they go through Env, set_ready and the fixtures
here, never to a mode's harness directly. `@local_only("why")` marks the few that only
make sense locally.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import kube_backends as kb
from e2e.harness import modes
from e2e.harness.modes import local_only  # noqa: F401  (re-exported for the tests)
from e2e.harness.netns import Backends
from e2e.harness.proxy import ProxyStandIn
from e2e.harness.proxy_pod import PodProxy, wait_pod_proxy
from e2e.harness.service_relay import SERVICE, ServiceRelay, proxy_access, route_of
from kubernetes import client
from kubernetes import config as kube_config
from tests.integration.conftest import control_plane as local_control_plane  # noqa: F401
from tests.integration.operator_process import (
    OperatorProcess,
    create_lb,
    create_obj,
    many_endpoints,
    running_operator,
    service_without_selector,
    wait_for,
)
from tests.integration.operator_process import sample_app as kwok_sample_app

from roundhouse import tls as rtls

HERE = Path(__file__).resolve().parent
LISTENER_PORT = 28080  # HAProxy binds it on the host: keep clear of well-known ports
HTTPS_PORT = LISTENER_PORT + 363  # 28443: the suite's (and the demo's) second listener
BACKEND_SNI = "web.backend.internal"  # the name TLS-serving backends' certificate is for
TLS_BACKENDS_ONLY_LOCAL = (
    "the backends serve TLS on a second port (netns.Backends.enable_tls) and report the "
    "TLS and SNI they saw (X-Seen-TLS/SNI); the echo image does neither")
BULK_BACKENDS = [{"service": "web", "port": "http"}, {"service": "bulk", "port": "http"}]


def bulk_endpoints(n: int) -> Callable[[Env], None]:
    """A `before` hook (env_factory, local_stack): Service bulk with n NotReady endpoints
    (hand-made EndpointSlices), which with backends=BULK_BACKENDS give the LoadBalancer
    the server slots of a large one while only the real web backends take traffic."""
    def hook(env: Env) -> None:
        service_without_selector(env.kube, env.namespace, "bulk")
        many_endpoints(env.kube, env.namespace, "bulk", n, not_ready=range(n))
    return hook


CLIENT_ADDRESS_ONLY_LOCAL = (
    "tells clients apart by their loopback source address (127.0.0.1, 127.0.0.2); "
    "through kubectl port-forward HAProxy sees every client as 127.0.0.1")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.path).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config: pytest.Config) -> None:
    """A bad E2E_CLUSTER, or kubeconfig mode without a usable kubeconfig: one clear
    line and exit status 4 (usage error) before anything is collected or started."""
    try:
        modes.validate()
    except modes.ModeError as err:
        raise pytest.UsageError(str(err)) from None


# -- the cluster ---------------------------------------------------------------------------

OPERATOR_NAMESPACE_ENV = "E2E_OPERATOR_NAMESPACE"  # e2e/kind/run.sh sets both
OPERATOR_RELEASE_ENV = "E2E_OPERATOR_RELEASE"
DEFAULT_OPERATOR_NAMESPACE = "roundhouse-system"  # run.sh's OPERATOR_NAMESPACE
DEFAULT_OPERATOR_RELEASE = "roundhouse"  # run.sh's RELEASE (`helm install roundhouse`)


@dataclass
class KubeconfigCluster:
    """kubeconfig mode's `control_plane`: the cluster $KUBECONFIG names."""

    kubeconfig: str  # os.pathsep-separated, as $KUBECONFIG

    @property
    def admin_kubeconfig(self) -> str:
        return self.kubeconfig


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[Any]:
    """local: the local control plane (tests/integration/conftest.py); kubeconfig: the
    cluster $KUBECONFIG names (nothing started)."""
    if modes.is_local():
        yield request.getfixturevalue("local_control_plane")
    else:
        yield KubeconfigCluster(os.pathsep.join(map(str, modes.check_kubeconfig())))


@pytest.fixture(scope="session")
def kube(control_plane: Any) -> Iterator[client.ApiClient]:
    """Admin ApiClient for the session's cluster."""
    api = kube_config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig),
                                             persist_config=False)
    try:
        if not modes.is_local():
            problem = None
            try:
                client.VersionApi(api).get_code(_request_timeout=15)
            except Exception as err:  # unreachable, bad credentials, TLS: say which
                problem = f"{type(err).__name__}: {str(err).strip()[:300]}"
            if problem:  # outside the except: no chained traceback in the report
                pytest.fail(f"E2E_CLUSTER=kubeconfig: the API server of "
                            f"{control_plane.kubeconfig} does not answer: {problem}",
                            pytrace=False)
        yield api
    finally:
        api.close()


class InClusterOperator:
    """kubeconfig mode's `operator`: the operator Deployment of the Helm release; its
    log comes from the API (the local mode's OperatorProcess has a log file)."""

    def __init__(self, api: client.ApiClient, namespace: str, release: str) -> None:
        self.api = api
        self.namespace = namespace
        self.selector = f"app.kubernetes.io/instance={release}"
        self.name = ""

    def check(self, timeout: float = 120.0) -> InClusterOperator:
        apps = client.AppsV1Api(self.api)
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = apps.list_namespaced_deployment(
                    self.namespace, label_selector=self.selector).items
            except client.ApiException as err:
                found, problem = [], f"cannot list Deployments: {err.status} {err.reason}"
            else:
                problem = (f"no Deployment labelled {self.selector} in {self.namespace}"
                           if not found else "")
            for d in found:
                self.name = d.metadata.name
                available = [c for c in (d.status.conditions or []) if c.type == "Available"]
                if available and available[0].status == "True":
                    return self
                problem = (f"Deployment {self.namespace}/{self.name} is not Available: "
                           f"{available[0].message if available else 'no status yet'}")
            if time.monotonic() > deadline:
                pytest.fail(f"E2E_CLUSTER=kubeconfig needs the operator installed and running "
                            f"(e2e/kind/run.sh: helm install roundhouse manifests/roundhouse "
                            f"-n {self.namespace}); {problem}", pytrace=False)
            time.sleep(2.0)

    def log(self) -> str:
        core = client.CoreV1Api(self.api)
        out = []
        for pod in core.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
            try:
                text = core.read_namespaced_pod_log(pod.metadata.name, self.namespace,
                                                    timestamps=True)
            except client.ApiException as err:
                text = f"(no log: {err.status} {err.reason})"
            out.append(f"---- {pod.metadata.name} ----\n{text}")
        return "\n".join(out)

    def forbidden_errors(self) -> list[str]:
        """RBAC denials only, as OperatorProcess.forbidden_errors()."""
        return [line for line in self.log().splitlines()
                if "is forbidden: User" in line and "cannot" in line]


@pytest.fixture(scope="session")
def operator(control_plane: Any, kube: client.ApiClient,
             tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess | InClusterOperator]:
    """local: `roundhouse run` as a local process (needs root for the rest of the
    harness); kubeconfig: the installed operator, checked Available."""
    if not modes.is_local():
        yield InClusterOperator(
            kube, os.environ.get(OPERATOR_NAMESPACE_ENV) or DEFAULT_OPERATOR_NAMESPACE,
            os.environ.get(OPERATOR_RELEASE_ENV) or DEFAULT_OPERATOR_RELEASE).check()
        return
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, mount namespaces)", pytrace=False)
    with running_operator(control_plane, tmp_path_factory.mktemp("op") / "operator.log",
                          tail=40) as proc:
        yield proc


def new_namespace(kube: client.ApiClient, prefix: str = "e2e") -> str:
    core = client.CoreV1Api(kube)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name,
                                        "labels": {"roundhouse.dev/test": "e2e"}}})
    # Generous: after an API server restart (test_api_outage.py) the controller-manager
    # takes its own time to catch up.
    wait_for(lambda: core.read_namespaced_service_account("default", name), 120,
             "default ServiceAccount")
    return name


def sample_app(kube: client.ApiClient, namespace: str, name: str = "web",
               replicas: int = 3) -> None:
    """Deployment `name` and its Service (port 80 `http` -> the Pods' `http`, 8080).
    local: kwok Pods (netns backends own their IPs); kubeconfig: echo Pods."""
    if not modes.is_local():
        kb.core_api(kube).create_namespaced_service(namespace, kb.echo_service(name))
        client.AppsV1Api(kube).create_namespaced_deployment(
            namespace, kb.echo_deployment(name, replicas))
        return
    kwok_sample_app(kube, namespace, name, replicas)


def lb_body(name: str = "web", port: int = LISTENER_PORT, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": name},
        "spec": {"listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
                 "backends": [{"service": "web", "port": "http"}],
                 "proxy": {"replicas": 1},
                 # This sandbox caps RLIMIT_NOFILE at 20000 (no CAP_SYS_RESOURCE to raise
                 # it): under the default (10000) HAProxy derives a maxconn just below and
                 # the status says ConnectionLimitReduced (a test of its own checks that).
                 "limits": {"maxConnections": 4000}},
    }
    body["spec"].update(spec)
    return body


@dataclass(frozen=True)
class TLSServingBackends:
    servers: Backends  # serve TLS on 8443 too, with a certificate for BACKEND_SNI
    ca: rtls.KeyPair  # signed that certificate
    other_ca: rtls.KeyPair  # did not: verification against it must fail


def tls_serving_backends(log_dir: Path) -> TLSServingBackends:
    """Local backends that also speak TLS, for re-encryption (upstreamTLS) tests."""
    now = dt.datetime.now(dt.UTC)
    ca, other = rtls.issue_ca("e2e backend CA", now), rtls.issue_ca("e2e other CA", now)
    serving = rtls.issue_serving(ca, (BACKEND_SNI,), now)
    servers = Backends(log_dir)
    servers.enable_tls(serving.cert_pem, serving.key_pem)
    return TLSServingBackends(servers, ca, other)


def add_https_port(kube: client.ApiClient, namespace: str) -> None:
    """The sample app's Service gains port `https` (443 -> the backends' TLS port 8443)."""
    client.CoreV1Api(kube).patch_namespaced_service("web", namespace, {"spec": {"ports": [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "https", "port": 443, "targetPort": 8443}]}})


def ca_secret(core: client.CoreV1Api, namespace: str, name: str, ca_pem: str,
              create: bool = True) -> None:
    """An Opaque Secret holding only ca.crt: what upstreamTLS.caSecretName names."""
    body = {"metadata": {"name": name}, "type": "Opaque",
            "data": {"ca.crt": base64.b64encode(ca_pem.encode()).decode()}}
    if create:
        core.create_namespaced_secret(namespace, body)
    else:
        core.replace_namespaced_secret(name, namespace, body)


def running_pods(kube: client.ApiClient, namespace: str, selector: str
                 ) -> list[client.V1Pod]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.status.pod_ip and p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None]


def set_ready(kube: client.ApiClient, namespace: str, pod: str, ready: bool
              ) -> None:
    """Set the backend Pod's Ready condition, so its EndpointSlice entry follows.

    local: take the Pod's status from kwok (annotation) and patch the condition.
    kubeconfig: make the echo Pod's readiness probe fail / pass (its control port); returns
    once the kubelet reported the Pod's Ready condition."""
    if not modes.is_local():
        kb.KubeBackends(kube, namespace).set_ready(pod, ready)
        return
    core = client.CoreV1Api(kube)
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": {
        "kwok.x-k8s.io/status": "custom"}}})
    value = "True" if ready else "False"
    core.patch_namespaced_pod_status(pod, namespace, {"status": {"conditions": [
        {"type": "Ready", "status": value}, {"type": "ContainersReady", "status": value}]}})


def new_backends(kube: client.ApiClient, namespace: str, log_dir: Path
                 ) -> Backends | kb.DeploymentBackends:
    """The mode's backend registry: netns servers (local) or the echo Pods (kubeconfig)."""
    if modes.is_local():
        return Backends(log_dir)
    return kb.DeploymentBackends(kube, namespace)


@dataclass
class Env:
    """One LoadBalancer `web` (or ReverseProxy) in its own namespace, its backends and
    its proxy (the local stand-in, or the real proxy Pod)."""

    kube: client.ApiClient
    cp: Any
    namespace: str
    log_dir: Path
    backends: Any  # netns.Backends (local) | kube_backends.DeploymentBackends
    listener_port: int = LISTENER_PORT
    proxy: Any = None  # ProxyStandIn (local) | PodProxy (kubeconfig), once started
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    suffix: str = "lb"  # the children's suffix: "lb" (LoadBalancer) or "rp" (ReverseProxy)
    name: str = "web"  # the LoadBalancer / ReverseProxy
    forwards: dict[int, kb.PortForward | ServiceRelay] = field(default_factory=dict)

    @property
    def port(self) -> int:
        """Where the client connects for the main listener (LISTENER_PORT)."""
        return self.local_port(self.listener_port)

    def local_port(self, listener_port: int) -> int:
        """Where the client connects (127.0.0.1) for the proxy's `listener_port`.

        local: HAProxy listens on the host, so the port itself. kubeconfig: a
        `kubectl port-forward svc/<name>-<suffix>` to it, started on first use and kept
        running on the same local port (kubectl exits when a forwarded connection is
        refused); e2e resources use one proxy replica, so it reaches the same Pod as
        `proxy`.
        """
        if modes.is_local():
            return listener_port
        forward = self.forwards.get(listener_port)
        if isinstance(forward, ServiceRelay):
            return forward.local_port
        if forward is None and proxy_access() == SERVICE:
            relay = ServiceRelay(self.cluster_ip(), listener_port)
            self.forwards[listener_port] = relay
            return relay.start()
        if forward is None:
            forward = self.forwards[listener_port] = kb.PortForward(
                self.namespace, f"svc/{self.name}-{self.suffix}", listener_port, timeout=60.0,
                restart=True)
        return forward.ensure()

    def cluster_ip(self) -> str:
        """The proxy Service's ClusterIP (E2E_PROXY_ACCESS=service)."""
        svc = client.CoreV1Api(self.kube).read_namespaced_service(
            f"{self.name}-{self.suffix}", self.namespace)
        return str(svc.spec.cluster_ip)

    @property
    def client_address(self) -> str:
        """The address the proxy sees clients connect from: 127.0.0.1 locally and through
        kubectl port-forward; through the Service, the host's address towards the Pods
        (kube-proxy masquerades traffic from outside the cluster CIDR)."""
        if modes.is_local() or proxy_access() != SERVICE:
            return "127.0.0.1"
        pod = self.proxy.pod_name if self.proxy is not None else None
        ip = (client.CoreV1Api(self.kube).read_namespaced_pod(pod, self.namespace)
              .status.pod_ip if pod else self.cluster_ip())
        return route_of(str(ip)).get("prefsrc", "")

    def pods(self, selector: str = "app=web") -> list[client.V1Pod]:
        if modes.is_local():
            return running_pods(self.kube, self.namespace, selector)
        return kb.ready_pods(self.kube, self.namespace, selector)

    def set_ready(self, pod: str, ready: bool) -> float:
        """set_ready(); returns time.monotonic() at the moment the change counts from:
        local, just before the status patch; kubeconfig, once the kubelet reported it and the
        EndpointSlices (what the operator reads) show it."""
        t = time.monotonic()
        set_ready(self.kube, self.namespace, pod, ready)
        return t if modes.is_local() else time.monotonic()

    def sync_backends(self, replicas: int, timeout: float = 90.0, prune: bool = True,
                      app: str = "web") -> dict[str, str]:
        """Wait for `replicas` running (kubeconfig: and Ready) Pods of `app`; register new
        ones (local: give each a network namespace), drop gone ones (unless `prune` is
        False: call prune() once the proxy stopped using them)."""
        if not modes.is_local():
            timeout = max(timeout, 180.0)  # real Pods start in seconds, not milliseconds
        pods = wait_for(lambda: (p := self.pods(f"app={app}")) and len(p) == replicas and p,
                        timeout, f"{replicas} running {app} Pods")
        want = {p.metadata.name: p.status.pod_ip for p in pods}
        if prune:
            self.prune(want)
        for pod in pods:
            name, address = pod.metadata.name, pod.status.pod_ip
            if name in self.backends.backends:
                continue
            if modes.is_local():
                self.backends.add(name, address)
            else:
                self.backends.register(name, address, pod.spec.node_name or "")
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

    def start_proxy(self, lb: str = "web", timeout: float = 90.0) -> ProxyStandIn | PodProxy:
        core = client.CoreV1Api(self.kube)
        name = f"{lb}-{self.suffix}"
        self.name = lb
        if not modes.is_local():
            self.proxy = wait_pod_proxy(self.kube, self.namespace, name,
                                        timeout=max(timeout, 180.0))
            return self.proxy
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
        for forward in self.forwards.values():
            forward.stop()
        if self.proxy is not None:
            self.proxy.stop()
        self.backends.close()
        for cleanup in reversed(self.cleanups):
            cleanup()


def make_env(kube: client.ApiClient, cp: Any, log_dir: Path, replicas: int = 3,
             servers: Backends | None = None, before: Callable[[Env], None] | None = None,
             **spec: Any) -> Env:
    """`servers`: a Backends variant (e.g. TLS-serving); `before`: runs just before
    the LoadBalancer is created; `spec`: LoadBalancer spec fields (incl. `backends`)."""
    namespace = new_namespace(kube)
    core = client.CoreV1Api(kube)
    env = Env(kube, cp, namespace, log_dir, servers or new_backends(kube, namespace, log_dir))
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


def make_rp_env(kube: client.ApiClient, cp: Any, log_dir: Path,
                apps: dict[str, int], body: dict[str, Any], backends: Backends | None = None,
                before: Callable[[Env], None] | None = None) -> Env:
    """A ReverseProxy `body` in its own namespace, with one Deployment + Service per app
    (local: each kwok Pod's IP owned by a netns backend answering its Pod name;
    kubeconfig: echo Pods, which answer their Pod name too)."""
    namespace = new_namespace(kube)
    core = client.CoreV1Api(kube)
    env = Env(kube, cp, namespace, log_dir, backends or new_backends(kube, namespace, log_dir),
              suffix="rp", name=body["metadata"]["name"])
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


def close_all(made: list[Env]) -> None:
    """Close every Env a test made, printing its proxy's logs first (shown on failure)."""
    for env in made:
        if env.proxy is not None:
            print(env.proxy.logs())
        env.close()


@pytest.fixture
def rp_env_factory(operator: Any, kube: client.ApiClient,
                   control_plane: Any, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def factory(apps: dict[str, int], body: dict[str, Any], backends: Backends | None = None,
                before: Callable[[Env], None] | None = None) -> Env:
        env = make_rp_env(kube, control_plane, tmp_path, apps, body, backends, before)
        made.append(env)
        return env

    try:
        yield factory
    finally:
        close_all(made)


@pytest.fixture
def env_factory(operator: Any, kube: client.ApiClient,
                control_plane: Any, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def factory(replicas: int = 3, servers: Backends | None = None,
                before: Callable[[Env], None] | None = None, **spec: Any) -> Env:
        env = make_env(kube, control_plane, tmp_path, replicas, servers, before, **spec)
        made.append(env)
        return env

    try:
        yield factory
    finally:
        close_all(made)


def measure(predicate: Callable[[], Any], timeout: float, what: str,
            interval: float = 0.02) -> float:
    """Seconds until `predicate()` is truthy (bounded)."""
    start = time.monotonic()
    wait_for(predicate, timeout, what, interval)
    return time.monotonic() - start
