"""Backends and proxy access on a real cluster (E2E_CLUSTER=kubeconfig, e.g. kind).

The kubeconfig-mode counterpart of netns.py: there, every kwok Pod's IP is owned by a
network namespace running an HTTP server; here the backends are real Pods running the
echo image (e2e/kind/echo), and the proxy is the operator's real proxy Deployment.

- KubeBackends: bare echo Pods named by the test, selected by the Service `web`
  (port `http`), with netns.Backends' methods where they make sense: add(pod),
  remove(pod), stop_server(pod) / start_server(pod) (the echo server closes / reopens
  its port, the Pod and its IP stay, as when netns kills the server), set_ready(pod,
  ready) (the readiness probe fails / passes, as conftest.set_ready patches kwok Pods).
  The echo Pod's control port is reached through the API server's pod proxy, so the
  test process needs no route to Pod IPs.
- PortForward: `kubectl port-forward svc/<name>-lb` to a local port, as a context
  manager that returns once the local port accepts. It follows one Pod: good for
  functional tests, not for HA tests that delete proxy Pods (use node_endpoint()).
- node_endpoint(): a node's InternalIP and the Service's nodePort. On kind the nodes
  are containers on the local docker bridge, so this stays on the machine and goes
  through kube-proxy to every ready proxy Pod.
- LoadLoop: concurrent fresh-connection GETs, counting failures and the requests in
  flight, for the HA measurement.

Nothing here runs without a cluster; the manifest builders, PortForward's command line
and LoadLoop are unit-tested offline (tests/harness/test_kind_backends.py).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness.service_relay import route_of
from kubernetes import client

ECHO_IMAGE_ENV = "E2E_ECHO_IMAGE"
DEFAULT_ECHO_IMAGE = "roundhouse-echo:e2e-kind"
ECHO_PORT = 8080
CONTROL_PORT = 8081
ECHO_UID = 10002  # the echo Dockerfile's USER
ECHO_NAME_LABEL = "app.kubernetes.io/name"
ECHO_NAME = "roundhouse-echo"  # e2e/kind/run.sh collects these Pods' logs on failure
TLS_MOUNT = "/etc/echo-tls"
ECHO_DRAIN_SECONDS = 8  # a scaled-down echo Pod serves this long after its deletion


def echo_image() -> str:
    return os.environ.get(ECHO_IMAGE_ENV) or DEFAULT_ECHO_IMAGE


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.5) -> Any:
    """The first truthy `predicate()` within `timeout` seconds (404s count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except client.ApiException as err:
            if err.status != 404:
                raise
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------- manifests


def echo_labels(app: str) -> dict[str, str]:
    return {"app": app, ECHO_NAME_LABEL: ECHO_NAME}


def echo_container(image: str, tls_secret: str | None = None) -> dict[str, Any]:
    """The echo container: restricted-PSS compliant, probes on the control port."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "ECHO_PORT", "value": str(ECHO_PORT)},
        {"name": "ECHO_CONTROL_PORT", "value": str(CONTROL_PORT)},
    ]
    container: dict[str, Any] = {
        "name": "echo",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [{"name": "http", "containerPort": ECHO_PORT, "protocol": "TCP"},
                  {"name": "control", "containerPort": CONTROL_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "control"},
                           "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "control"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"memory": "64Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if tls_secret:
        env += [{"name": "ECHO_TLS_CERT", "value": f"{TLS_MOUNT}/tls.crt"},
                {"name": "ECHO_TLS_KEY", "value": f"{TLS_MOUNT}/tls.key"}]
        container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_MOUNT,
                                      "readOnly": True}]
    return container


def echo_pod_spec(image: str, tls_secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": ECHO_UID,
                            "runAsGroup": ECHO_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [echo_container(image, tls_secret)],
    }
    if tls_secret:
        spec["volumes"] = [{"name": "tls", "secret": {"secretName": tls_secret}}]
    return spec


def echo_pod(name: str, app: str = "web", image: str | None = None,
             tls_secret: str | None = None) -> dict[str, Any]:
    """A bare echo Pod named `name`, selected by the Service of `app`."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": echo_labels(app)},
            "spec": echo_pod_spec(image or echo_image(), tls_secret)}


def echo_deployment(app: str = "web", replicas: int = 3, image: str | None = None,
                    tls_secret: str | None = None) -> dict[str, Any]:
    """The kubeconfig-mode sample_app(): a Deployment of echo Pods (scale it as usual)."""
    labels = echo_labels(app)
    spec = echo_pod_spec(image or echo_image(), tls_secret)
    # As a well-behaved backend does: keep serving while the endpoint removal of a
    # scale-down reaches the proxies (the echo server itself stops at SIGTERM).
    spec["terminationGracePeriodSeconds"] = 15
    for container in spec["containers"]:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": ECHO_DRAIN_SECONDS}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def echo_service(app: str = "web", port: int = 80) -> dict[str, Any]:
    """Port `http` -> the Pods' named port `http`, as conftest.sample_app()'s Service."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": app, "labels": echo_labels(app)},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": "http", "port": port, "targetPort": "http",
                                "protocol": "TCP"}]}}


def core_api(api: client.ApiClient) -> Any:
    """CoreV1Api, typed loosely: bodies here are plain dicts (which the client accepts),
    not the V1* models its annotations name."""
    return client.CoreV1Api(api)


def discovery_api(api: client.ApiClient) -> Any:
    """DiscoveryV1Api (EndpointSlices), typed loosely like core_api."""
    return client.DiscoveryV1Api(api)


def pod_ready(pod: Any) -> bool:
    conditions = (pod.status.conditions or []) if pod.status else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


# --------------------------------------------------------------------------- backends


@dataclass
class KubeBackend:
    pod: str
    address: str
    node: str
    port: int = ECHO_PORT


@dataclass
class KubeBackends:
    """Echo Pods behind the Service `app`; netns.Backends' interface, on a real cluster.

    Use as a context manager: the Service is created on entry, and every Pod and the
    Service are deleted on exit.
    """

    api: client.ApiClient
    namespace: str
    app: str = "web"
    image: str = field(default_factory=echo_image)
    tls_secret: str | None = None
    timeout: float = 120.0
    backends: dict[str, KubeBackend] = field(default_factory=dict)  # by pod name
    _service_created: bool = False

    @property
    def core(self) -> Any:
        return core_api(self.api)

    def __enter__(self) -> KubeBackends:
        self.ensure_service()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_service(self) -> None:
        try:
            self.core.read_namespaced_service(self.app, self.namespace)
        except client.ApiException as err:
            if err.status != 404:
                raise
            self.core.create_namespaced_service(self.namespace, echo_service(self.app))
            self._service_created = True

    def add(self, pod: str) -> KubeBackend:
        """Create the echo Pod `pod`; returns once it runs and is Ready."""
        return self.add_all([pod])[0]

    def add_all(self, pods: Iterable[str]) -> list[KubeBackend]:
        """Create the Pods (they start in parallel), then wait for each to be Ready."""
        names = list(pods)
        for pod in names:
            if pod in self.backends:
                raise ValueError(f"backend {pod} exists")
        created: list[str] = []
        try:
            for pod in names:
                self.core.create_namespaced_pod(
                    self.namespace, echo_pod(pod, self.app, self.image, self.tls_secret))
                created.append(pod)
            for pod in names:
                ready = wait_for(self._ready_pod(pod), self.timeout, f"echo Pod {pod} Ready")
                self.backends[pod] = KubeBackend(pod, ready.status.pod_ip,
                                                 ready.spec.node_name or "")
        except BaseException:
            for pod in created:
                self.backends.pop(pod, None)
                self._delete(pod)
            raise
        return [self.backends[pod] for pod in names]

    def _ready_pod(self, pod: str) -> Callable[[], Any]:
        def check() -> Any:
            p = self.core.read_namespaced_pod(pod, self.namespace)
            return p if p.status.pod_ip and pod_ready(p) else None
        return check

    def remove(self, pod: str, wait: bool = True) -> None:
        """Delete the Pod (no grace period); with `wait`, until it is gone."""
        self.backends.pop(pod, None)
        self._delete(pod)
        if wait:
            wait_for(lambda: not self._exists(pod), self.timeout, f"Pod {pod} gone")

    def _delete(self, pod: str) -> None:
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(pod, self.namespace, grace_period_seconds=0)

    def _exists(self, pod: str) -> bool:
        try:
            self.core.read_namespaced_pod(pod, self.namespace)
        except client.ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def control(self, pod: str, action: str) -> dict[str, Any]:
        """POST /<action> on the Pod's control port, through the API server's pod proxy."""
        raw = self.core.connect_post_namespaced_pod_proxy_with_path(
            f"{pod}:{CONTROL_PORT}", self.namespace, action.lstrip("/"))
        return parse_control_reply(raw)

    def state(self, pod: str) -> dict[str, Any]:
        raw = self.core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod}:{CONTROL_PORT}", self.namespace, "state")
        return parse_control_reply(raw)

    def stop_server(self, pod: str) -> None:
        """Close the echo port: connections are refused; the Pod, its IP and its
        readiness stay (the control port answers the probes)."""
        reply = self.control(pod, "serving/stop")
        if reply.get("serving") is not False:
            raise RuntimeError(f"{pod} still serving: {reply}")

    def start_server(self, pod: str) -> None:
        """Listen again on the echo port; returns once it does."""
        reply = self.control(pod, "serving/start")
        if reply.get("serving") is not True:
            raise RuntimeError(f"{pod} not serving: {reply}")

    def set_ready(self, pod: str, ready: bool, timeout: float = 30.0) -> None:
        """Fail or pass the readiness probe; returns once the Pod's Ready condition shows
        it and every EndpointSlice that lists the Pod does too: the EndpointSlice is what
        the operator reads, and the EndpointSlice controller's own delay (seconds, on a
        loaded machine while namespaces are being deleted) is the cluster's, not ours."""
        self.control(pod, "readiness/pass" if ready else "readiness/fail")
        wait_for(lambda: pod_ready(self.core.read_namespaced_pod(pod, self.namespace)) == ready
                 or None, timeout, f"{pod} Ready={ready}")
        wait_for(lambda: self._sliced_ready(pod) == ready or None, timeout,
                 f"the EndpointSlices of {pod} showing ready={ready}", interval=0.02)

    def _sliced_ready(self, pod: str) -> bool | None:
        """True/False when every EndpointSlice endpoint of `pod` agrees; None otherwise."""
        slices = discovery_api(self.api).list_namespaced_endpoint_slice(self.namespace)
        states = {bool(ep.conditions and ep.conditions.ready)
                  for sl in slices.items for ep in (sl.endpoints or [])
                  if ep.target_ref is not None and ep.target_ref.name == pod}
        return states.pop() if len(states) == 1 else None

    def by_address(self) -> dict[str, KubeBackend]:
        return {b.address: b for b in self.backends.values()}

    def close(self) -> None:
        for pod in list(self.backends):
            self.remove(pod, wait=False)
        if self._service_created:
            with contextlib.suppress(client.ApiException):
                self.core.delete_namespaced_service(self.app, self.namespace)
            self._service_created = False


@dataclass
class DeploymentBackends(KubeBackends):
    """The echo Pods of Deployments (conftest.sample_app in kubeconfig mode), with
    netns.Backends' interface for what tests use: `backends` (by Pod name), stop_server,
    start_server, set_ready, by_address. The Deployments own the Pods: register()
    records a ready Pod, remove() and close() only forget (the namespace goes with
    the test), guard() and check_routes() have nothing to check."""

    def register(self, pod: str, address: str, node: str = "") -> KubeBackend:
        backend = self.backends[pod] = KubeBackend(pod, address, node)
        return backend

    def remove(self, pod: str, wait: bool = True) -> None:
        self.backends.pop(pod, None)

    def close(self) -> None:
        self.backends.clear()

    def guard(self) -> None:
        pass

    def check_routes(self) -> None:
        pass


def ready_pods(api: client.ApiClient, namespace: str, selector: str) -> list[Any]:
    """Running, Ready, not terminating Pods matching `selector`."""
    pods = core_api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if p.status.pod_ip and p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None and pod_ready(p)]


def parse_control_reply(raw: Any) -> dict[str, Any]:
    """The echo control port's JSON, however the client handed it over (str, bytes,
    or the `str(dict)` the generated client makes of a JSON object)."""
    if isinstance(raw, dict):
        return raw
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        value = json.loads(text)
    except ValueError:  # the client's str() of a dict: {'ready': True, ...}
        value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {text[:200]!r}")
    return value


# --------------------------------------------------------------------------- reaching the proxy


def find_kubectl() -> str:
    """$KUBECTL, else kubectl on PATH, else the newest one e2e/cluster/build-binaries.sh
    cached."""
    explicit = os.environ.get("KUBECTL")
    if explicit:
        return explicit
    found = shutil.which("kubectl")
    if found:
        return found
    cache = Path(os.environ.get("ROUNDHOUSE_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "roundhouse")
    cached = sorted(cache.glob("bin/*/kubectl"))
    if cached:
        return str(cached[-1])
    raise FileNotFoundError("kubectl not found: set KUBECTL, put it on PATH or run "
                            "make binaries")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class PortForward:
    """`kubectl port-forward <target> <local>:<remote>` on 127.0.0.1, as a context
    manager that yields the local port once it accepts connections.

    target: e.g. `svc/web-lb` (see for_lb()). kubectl forwards to one Pod behind it.
    restart: keep kubectl running: a watcher thread starts it again on the same local
    port whenever it exits (kubectl port-forward exits when a forwarded connection is
    refused, e.g. by a listener HAProxy does not serve yet, or when its Pod goes).
    """

    namespace: str
    target: str
    remote_port: int
    local_port: int = 0  # 0: a free one
    kubeconfig: str | None = None
    kubectl: str | None = None
    timeout: float = 30.0
    restart: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _output: list[bytes] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _watcher: threading.Thread | None = None

    @classmethod
    def for_lb(cls, namespace: str, lb: str, port: int, **kw: Any) -> PortForward:
        return cls(namespace, f"svc/{lb}-lb", port, **kw)

    def command(self) -> list[str]:
        cmd = [self.kubectl or find_kubectl()]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        return [*cmd, "port-forward", "--namespace", self.namespace, "--address", "127.0.0.1",
                self.target, f"{self.local_port}:{self.remote_port}"]

    def _spawn(self) -> tuple[subprocess.Popen[bytes], threading.Thread]:
        proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        reader.start()
        self.proc = proc
        return proc, reader

    def __enter__(self) -> int:
        if self.local_port == 0:
            self.local_port = free_port()
        self._stopping.clear()
        with self._lock:
            proc, reader = self._spawn()
        deadline = time.monotonic() + self.timeout
        while True:
            if proc.poll() is not None:
                reader.join(2)
                raise RuntimeError(f"{' '.join(self.command())} exited "
                                   f"({proc.returncode}): {self.output()[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), timeout=1.0):
                    if self.restart and (self._watcher is None
                                         or not self._watcher.is_alive()):
                        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                         name=f"port-forward-{self.local_port}")
                        self._watcher.start()
                    return self.local_port
            except OSError as err:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"port-forward to {self.target} never accepted on "
                                       f"127.0.0.1:{self.local_port}: {err}; "
                                       f"{self.output()[-800:]}") from err
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> int:
        """The local port, (re)starting kubectl on the same port when it is not running
        (kubectl port-forward exits when its Pod goes or the stream breaks)."""
        if self.alive() or (self._watcher is not None and self._watcher.is_alive()):
            return self.local_port  # running, or the watcher is restarting it
        return self.__enter__()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            try:
                proc.wait(0.5)
            except subprocess.TimeoutExpired:
                continue
            if self._stopping.wait(0.2):  # a moment, so a crash loop cannot spin
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._spawn()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._output.append(line)

    def output(self) -> str:
        return b"".join(self._output).decode(errors="replace")

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def node_endpoint(api: client.ApiClient, namespace: str, service: str,
                  port_name: str = "http", node: str | None = None) -> tuple[str, int]:
    """(InternalIP of `node`, or of the first schedulable worker; the Service's
    nodePort for `port_name`). The Service must be NodePort or LoadBalancer."""
    core = core_api(api)
    svc = core.read_namespaced_service(service, namespace)
    node_port = next((p.node_port for p in svc.spec.ports if p.name == port_name), None)
    if not node_port:
        raise ValueError(f"Service {namespace}/{service} has no nodePort for {port_name!r} "
                         f"(type {svc.spec.type})")
    nodes = core.list_node().items
    if node is not None:
        nodes = [n for n in nodes if n.metadata.name == node]
    workers = [n for n in nodes if not (n.spec.taints or [])] or nodes
    for n in workers:
        for address in n.status.addresses or []:
            if address.type == "InternalIP":
                return str(address.address), int(node_port)
    raise ValueError(f"no node with an InternalIP among {[n.metadata.name for n in nodes]}")


def untranslated_flows_command(host: str, port: int) -> list[str]:
    """The `conntrack -D` deleting TCP entries to host:port that kube-proxy did not
    translate: their reply comes from `host` itself, not from a Pod."""
    return ["conntrack", "-D", "-p", "tcp", "--orig-dst", host, "--dport", str(port),
            "--reply-src", host]


def deleted_flow_count(stderr: str) -> int:
    """N from conntrack's "N flow entries have been deleted." (0 when it says none)."""
    for line in stderr.splitlines():
        words = line.split()
        if "deleted." in words and "flow" in words:
            return int(words[words.index("flow") - 1])
    return 0


def forget_untranslated_flows(host: str, port: int,
                              run: Callable[..., Any] = subprocess.run) -> int:
    """Delete this machine's conntrack entries for host:port (a local node address and a
    nodePort) that kube-proxy did not translate; return how many.

    Why: a client on the node connecting to its own nodePort before kube-proxy has the
    Service's endpoints is answered by kube-proxy's REJECT in the INPUT chain. On that
    path (OUTPUT, loopback, INPUT) conntrack confirms the SYN's entry before INPUT, so the
    rejected flow stays for 120 s with no DNAT. A later connection reusing that source
    port matches the stale entry, skips kube-proxy's rules and is refused by the node
    itself. A client off the node never leaves such an entry (its SYN is rejected before
    confirmation). Measured here: every refused connection of a failing HA run had the
    source port of an earlier rejected SYN. Not local (kind's nodes are containers): 0."""
    if route_of(host).get("type") != "local":
        return 0
    if shutil.which("conntrack") is None:
        raise RuntimeError("conntrack is not installed: stale untranslated flows to the "
                           f"local nodePort {host}:{port} cannot be removed")
    done = run(untranslated_flows_command(host, port), capture_output=True, text=True,
               check=False, timeout=30)
    return deleted_flow_count(done.stderr or "")


# --------------------------------------------------------------------------- load


@dataclass
class LoadLoop:
    """`concurrency` threads, each sending GETs back to back on fresh connections to
    host:port, until stop() (or `max_seconds`). Counts answers by backend (the
    X-Backend header), failures with their time, and the requests in flight."""

    host: str
    port: int
    concurrency: int = 8
    timeout: float = 5.0
    max_seconds: float = 300.0
    path: str = "/"
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    by_backend: collections.Counter[str] = field(default_factory=collections.Counter)
    max_in_flight: int = 0
    _in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LoadLoop:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            backend, error = self.request_once()
            with self._lock:
                self._in_flight -= 1
                if error is None:
                    self.ok += 1
                    self.by_backend[backend or "?"] += 1
                else:
                    self.failures.append((time.monotonic(), error))

    def request_once(self) -> tuple[str | None, str | None]:
        """One GET on a fresh connection: (X-Backend, None) or (None, error)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                return None, f"HTTP {resp.status}"
            return resp.getheader("X-Backend"), None
        except (OSError, http.client.HTTPException) as err:
            return None, f"{type(err).__name__}: {err}"
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"ok": self.ok, "failed": len(self.failures),
                    "max_in_flight": self.max_in_flight,
                    "by_backend": dict(self.by_backend),
                    "errors": collections.Counter(e for _, e in self.failures).most_common(5)}


@contextlib.contextmanager
def running_load(host: str, port: int, **kw: Any) -> Iterator[LoadLoop]:
    load = LoadLoop(host, port, **kw).start()
    try:
        yield load
    finally:
        load.stop()
