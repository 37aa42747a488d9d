"""The offline parts of e2e/harness/kube_backends.py (kubeconfig mode, e.g. kind).

No cluster here: the manifest builders are checked as data, KubeBackends against a
fake CoreV1Api, PortForward against a fake `kubectl` that really listens, and LoadLoop
against the real echo server on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any, cast

import pytest
from e2e.harness import kube_backends as kb
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
ECHO_SERVER = REPO / "e2e" / "kind" / "echo" / "server.py"
ECHO_DOCKERFILE = REPO / "e2e" / "kind" / "echo" / "Dockerfile"
NO_API = cast(client.ApiClient, None)  # the fake CoreV1Api below ignores it


# --------------------------------------------------------------------------- manifests


def _container_ports(spec: dict[str, Any]) -> set[str]:
    return {p["name"] for c in spec["containers"] for p in c["ports"]}


def test_pod_is_selected_by_the_service() -> None:
    pod = kb.echo_pod("web-0", "web", image="echo:1")
    svc = kb.echo_service("web")
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert labels[kb.ECHO_NAME_LABEL] == kb.ECHO_NAME  # run.sh collects their logs
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] in _container_ports(pod["spec"])


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    spec = kb.echo_pod("web-0", image="echo:1")["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False


def test_pod_uid_matches_the_echo_image() -> None:
    user = next(line.split()[1] for line in ECHO_DOCKERFILE.read_text().splitlines()
                if line.startswith("USER "))
    assert user == f"{kb.ECHO_UID}:{kb.ECHO_UID}"


def test_probes_and_env_match_the_echo_server() -> None:
    (c,) = kb.echo_pod("web-0", image="echo:1")["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": kb.ECHO_PORT, "control": kb.CONTROL_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "control"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "control"}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["ECHO_PORT"]["value"] == str(kb.ECHO_PORT)
    assert env["ECHO_CONTROL_PORT"]["value"] == str(kb.CONTROL_PORT)
    # The names server.py reads.
    source = ECHO_SERVER.read_text()
    for name in ("POD_NAME", "ECHO_PORT", "ECHO_CONTROL_PORT", "ECHO_TLS_CERT", "ECHO_TLS_KEY",
                 '"/ready"', '"/healthz"'):
        assert name in source


def test_tls_secret_is_mounted_and_named_in_the_environment() -> None:
    spec = kb.echo_pod("web-0", image="echo:1", tls_secret="web-tls")["spec"]
    assert spec["volumes"] == [{"name": "tls", "secret": {"secretName": "web-tls"}}]
    (c,) = spec["containers"]
    assert c["volumeMounts"][0]["mountPath"] == kb.TLS_MOUNT
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ECHO_TLS_CERT"] == f"{kb.TLS_MOUNT}/tls.crt"
    assert env["ECHO_TLS_KEY"] == f"{kb.TLS_MOUNT}/tls.key"
    assert "volumes" not in kb.echo_pod("web-0", image="echo:1")["spec"]


def test_deployment_selects_its_template() -> None:
    d = kb.echo_deployment("web", replicas=2, image="echo:1")
    selector = d["spec"]["selector"]["matchLabels"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "echo:1"


def test_image_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kb.ECHO_IMAGE_ENV, raising=False)
    assert kb.echo_image() == kb.DEFAULT_ECHO_IMAGE
    monkeypatch.setenv(kb.ECHO_IMAGE_ENV, "roundhouse-echo:abc")
    assert kb.echo_pod("p")["spec"]["containers"][0]["image"] == "roundhouse-echo:abc"


def test_builders_are_valid_client_models() -> None:
    """The client deserializes every builder's output into its V1 models."""
    api = client.ApiClient()
    for kind, body in (("V1Pod", kb.echo_pod("p", image="i", tls_secret="s")),
                       ("V1Service", kb.echo_service()),
                       ("V1Deployment", kb.echo_deployment(image="i"))):
        model = api._ApiClient__deserialize(body, kind)  # type: ignore[attr-defined]
        assert model.metadata.labels == body["metadata"]["labels"]


@pytest.mark.parametrize("raw", [
    '{"ready": true, "serving": false}',
    b'{"ready": true, "serving": false}',
    "{'ready': True, 'serving': False}",  # the generated client's str() of a dict
    {"ready": True, "serving": False},
])
def test_parse_control_reply(raw: Any) -> None:
    assert kb.parse_control_reply(raw) == {"ready": True, "serving": False}


# --------------------------------------------------------------------------- KubeBackends


class FakeCore:
    """Just enough CoreV1Api: Pods become Ready at once; the pod proxy is recorded."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.services: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []
        self.ready: dict[str, bool] = {}

    def _404(self) -> client.ApiException:
        return client.ApiException(status=404, reason="Not Found")

    def read_namespaced_service(self, name: str, namespace: str) -> Any:
        if name not in self.services:
            raise self._404()
        return self.services[name]

    def create_namespaced_service(self, namespace: str, body: dict[str, Any]) -> None:
        self.services[body["metadata"]["name"]] = body

    def delete_namespaced_service(self, name: str, namespace: str) -> None:
        self.services.pop(name)

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        self.pods[body["metadata"]["name"]] = body
        self.ready[body["metadata"]["name"]] = True

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        if name not in self.pods:
            raise self._404()
        n = list(self.pods).index(name)
        ready = "True" if self.ready[name] else "False"
        return NS(status=NS(pod_ip=f"10.244.1.{n + 10}",
                            conditions=[NS(type="Ready", status=ready)]),
                  spec=NS(node_name=f"worker{n % 3 + 1}"))

    def delete_namespaced_pod(self, name: str, namespace: str,
                              grace_period_seconds: int | None = None) -> None:
        if self.pods.pop(name, None) is None:
            raise self._404()

    def connect_post_namespaced_pod_proxy_with_path(self, name: str, namespace: str,
                                                    path: str) -> str:
        self.calls.append((name, path))
        pod = name.split(":")[0]
        if path.startswith("readiness/"):
            self.ready[pod] = path.endswith("pass")
        return str({"serving": path != "serving/stop", "ready": self.ready[pod]})

    def list_namespaced_endpoint_slice(self, namespace: str) -> Any:
        """One EndpointSlice listing every Pod with its readiness, as the controller would."""
        return NS(items=[NS(endpoints=[
            NS(conditions=NS(ready=self.ready[pod]), target_ref=NS(name=pod))
            for pod in self.pods])])


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch) -> FakeCore:
    core = FakeCore()
    monkeypatch.setattr(kb, "core_api", lambda api: core)
    monkeypatch.setattr(kb, "discovery_api", lambda api: core)
    return core


def test_kube_backends_mirror_netns_backends(fake_core: FakeCore) -> None:
    with kb.KubeBackends(api=NO_API, namespace="e2e-x", image="echo:1") as backends:
        assert "web" in fake_core.services
        backends.add_all(["web-a", "web-b"])
        assert set(backends.backends) == {"web-a", "web-b"}
        assert backends.backends["web-a"].address == "10.244.1.10"
        assert set(backends.by_address()) == {"10.244.1.10", "10.244.1.11"}
        with pytest.raises(ValueError, match="exists"):
            backends.add("web-a")
        backends.stop_server("web-a")
        backends.start_server("web-a")
        backends.set_ready("web-b", False)
        assert fake_core.calls == [("web-a:8081", "serving/stop"),
                                   ("web-a:8081", "serving/start"),
                                   ("web-b:8081", "readiness/fail")]
        backends.remove("web-b")
        assert set(fake_core.pods) == {"web-a"}
    assert fake_core.pods == {} and fake_core.services == {}


# --------------------------------------------------------------------------- PortForward


FAKE_KUBECTL = textwrap.dedent('''\
    #!{python}
    """A stand-in for `kubectl port-forward`: listens on the local port it is given."""
    import socket, sys, time
    args = sys.argv[1:]
    if "--fail" in open({argfile!r}).read():
        print("error: services \\"web-lb\\" not found", flush=True)
        sys.exit(1)
    open({argfile!r}, "a").write(" ".join(args) + "\\n")
    local = int(args[-1].split(":")[0])
    time.sleep(0.3)  # not at once: the context manager has to wait
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", local))
    s.listen(8)
    print(f"Forwarding from 127.0.0.1:{{local}} -> {{args[-1].split(':')[1]}}", flush=True)
    while True:
        conn, _ = s.accept()
        conn.close()
''')


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    argfile = tmp_path / "args"
    argfile.write_text("")
    exe = tmp_path / "kubectl"
    exe.write_text(FAKE_KUBECTL.format(python=sys.executable, argfile=str(argfile)))
    exe.chmod(0o755)
    return exe, argfile


def test_port_forward_command() -> None:
    pf = kb.PortForward.for_lb("e2e-x", "web", 8080, local_port=31000, kubectl="/bin/kubectl",
                               kubeconfig="/tmp/kc")
    assert pf.command() == ["/bin/kubectl", "--kubeconfig", "/tmp/kc", "port-forward",
                            "--namespace", "e2e-x", "--address", "127.0.0.1", "svc/web-lb",
                            "31000:8080"]


def test_port_forward_waits_until_the_port_accepts(fake_kubectl: tuple[Path, Path]) -> None:
    exe, argfile = fake_kubectl
    pf = kb.PortForward.for_lb("e2e-x", "web", 8080, kubectl=str(exe), timeout=20)
    with pf as port:
        assert port == pf.local_port and port > 0
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert f"svc/web-lb {port}:8080" in argfile.read_text()
        proc = pf.proc
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None, "the forward is stopped on exit"


def test_port_forward_reports_kubectl_failing(fake_kubectl: tuple[Path, Path]) -> None:
    exe, argfile = fake_kubectl
    argfile.write_text("--fail")
    with pytest.raises(RuntimeError, match='services "web-lb" not found'), \
            kb.PortForward.for_lb("e2e-x", "web", 8080, kubectl=str(exe), timeout=20):
        pass


def test_find_kubectl_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECTL", "/opt/k/kubectl")
    assert kb.find_kubectl() == "/opt/k/kubectl"


# --------------------------------------------------------------------------- node_endpoint


def test_node_endpoint_picks_an_untainted_nodes_internal_ip(fake_core: FakeCore) -> None:
    def node(name: str, ip: str, taints: list[Any] | None = None) -> Any:
        return NS(metadata=NS(name=name), spec=NS(taints=taints),
                  status=NS(addresses=[NS(type="Hostname", address=name),
                                       NS(type="InternalIP", address=ip)]))

    fake_core.services["web-lb"] = NS(spec=NS(type="NodePort", ports=[
        NS(name="admin", node_port=30001), NS(name="http", node_port=30080)]))
    fake_core.list_node = lambda: NS(items=[  # type: ignore[attr-defined]
        node("cp", "172.18.0.2", [NS(key="node-role.kubernetes.io/control-plane")]),
        node("worker", "172.18.0.3")])
    assert kb.node_endpoint(NO_API, "e2e-x", "web-lb") == ("172.18.0.3", 30080)
    assert kb.node_endpoint(NO_API, "e2e-x", "web-lb", node="cp") == ("172.18.0.2", 30080)
    with pytest.raises(ValueError, match="no nodePort"):
        kb.node_endpoint(NO_API, "e2e-x", "web-lb", port_name="https")


# --------------------------------------------------------------------------- untranslated flows


def test_the_untranslated_flows_of_a_local_node_port_are_deleted_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "route_of", lambda address: {"type": "local", "dev": "lo"})
    monkeypatch.setattr(kb.shutil, "which", lambda name: f"/usr/sbin/{name}")
    calls: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> Any:
        calls.append(argv)
        return NS(returncode=0, stderr="conntrack v1.4.7 (conntrack-tools): "
                                       "29 flow entries have been deleted.\n")

    assert kb.forget_untranslated_flows("10.244.200.1", 30406, run=run) == 29
    # Only entries whose reply comes from the node itself (no DNAT to a Pod).
    assert calls == [["conntrack", "-D", "-p", "tcp", "--orig-dst", "10.244.200.1",
                      "--dport", "30406", "--reply-src", "10.244.200.1"]]
    assert kb.deleted_flow_count(
        "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.") == 0
    assert kb.deleted_flow_count("") == 0


def test_a_node_port_on_another_machine_or_container_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "route_of", lambda address: {"dev": "br-kind", "prefsrc": "x"})

    def run(argv: list[str], **kw: Any) -> Any:
        raise AssertionError(f"ran {argv} for a node that is not this machine")

    assert kb.forget_untranslated_flows("172.18.0.3", 30080, run=run) == 0


def test_a_local_node_port_without_conntrack_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "route_of", lambda address: {"type": "local"})
    monkeypatch.setattr(kb.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="conntrack is not installed"):
        kb.forget_untranslated_flows("10.244.200.1", 30080)


# --------------------------------------------------------------------------- LoadLoop


@pytest.fixture
def echo_on_loopback() -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(ECHO_SERVER), "--bind", "127.0.0.1", "--port", "0",
         "--control-port", "0", "--name", "pod-load"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"PATH": os.environ.get("PATH", "")})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    assert ready, "echo server did not start"
    ports = json.loads(proc.stdout.readline())
    try:
        yield int(ports["port"]), int(ports["control_port"])
    finally:
        proc.terminate()
        proc.wait(10)


def test_load_loop_counts_answers_failures_and_in_flight(
        echo_on_loopback: tuple[int, int]) -> None:
    port, control = echo_on_loopback
    with kb.running_load("127.0.0.1", port, concurrency=4, timeout=2.0) as load:
        deadline = time.monotonic() + 10
        while load.ok < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0 <= load.in_flight() <= 4
        # Stop the server's port: new requests are refused and counted as failures.
        conn = http.client.HTTPConnection("127.0.0.1", control, timeout=5)
        conn.request("POST", "/serving/stop")
        assert conn.getresponse().status == 200
        conn.close()
        while not load.failures and time.monotonic() < deadline:
            time.sleep(0.05)
    summary = load.summary()
    assert summary["ok"] >= 50 and summary["by_backend"].keys() == {"pod-load"}
    assert summary["failed"] > 0
    # Refused, or reset for connections queued in the closed listener's backlog.
    assert all(("ConnectionRefusedError" in e or "ConnectionResetError" in e)
               for e, _ in summary["errors"]), summary["errors"]
    assert 1 <= summary["max_in_flight"] <= 4
    assert load.in_flight() == 0
