"""kube.py, the operator's API transport, against a loopback HTTP server: the request it
sends, the error it raises, and the bound on requests in flight."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse import kube, metrics


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.seen: list[tuple[str, str, str, Any]] = []  # method, path, type, body
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_PATCH(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight,
                                             self.server.in_flight)
            self.server.seen.append((self.command, self.path,
                                     self.headers["Content-Type"], json.loads(raw)))
        time.sleep(0.05)  # long enough for the others to pile up
        with self.server.lock:
            self.server.in_flight -= 1
        if "/missing" in self.path:
            self._send(404, {"kind": "Status", "code": 404, "message": "not found"})
        else:
            self._send(200, {"kind": "ConfigMap", "metadata": {"name": "x"}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    srv = _Server()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
              "clusters": [{"name": "test", "cluster": {
                  "server": f"http://127.0.0.1:{srv.server_address[1]}"}}],
              "users": [{"name": "test", "user": {"token": "abc"}}],
              "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_apply_request_and_error_status(server: _Server) -> None:
    async def scenario() -> None:
        try:
            obj = {"kind": "ConfigMap", "metadata": {"name": "x"}}
            path = kube.object_path("ConfigMap", "ns", "x")
            answer = await kube.request(
                "PATCH", path, body=json.dumps(obj),
                content_type="application/apply-patch+yaml",
                query=[("fieldManager", kube.FIELD_MANAGER), ("force", "true")])
            assert answer["metadata"]["name"] == "x"
            with pytest.raises(Exception) as caught:
                await kube.request("PATCH", kube.object_path("ConfigMap", "ns", "missing"),
                                   body={"data": {"k": None}},
                                   content_type="application/merge-patch+json")
            assert kube.status_code(caught.value) == 404
            assert "not found" in str(getattr(caught.value, "body", ""))
            assert kube.status_code(ValueError()) is None
        finally:
            await kube.close()

    asyncio.run(scenario())
    (method, path, ctype, body), (_, _, ctype2, body2) = server.seen
    assert (method, ctype) == ("PATCH", "application/apply-patch+yaml")
    assert path == "/api/v1/namespaces/ns/configmaps/x?fieldManager=roundhouse&force=true"
    assert body == {"kind": "ConfigMap", "metadata": {"name": "x"}}  # JSON once, not twice
    assert (ctype2, body2) == ("application/merge-patch+json", {"data": {"k": None}})


def test_requests_in_flight_are_bounded(server: _Server,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUNDHOUSE_API_CONCURRENCY", "3")

    async def scenario() -> None:
        try:
            await asyncio.gather(*(
                kube.request("PATCH", kube.object_path("ConfigMap", "ns", f"cm-{i}"),
                             body={"data": {}}, content_type="application/merge-patch+json")
                for i in range(12)))
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert len(server.seen) == 12
    assert server.most_in_flight == 3


def test_requests_are_counted_by_verb_resource_and_result(server: _Server) -> None:
    """Every request through the semaphore is counted (by verb, resource and status class)
    and timed, and nothing is left in flight or waiting afterwards."""
    def requests(verb: str, result: str) -> float:
        return metrics.sample("roundhouse_operator_api_requests_total",
                              {"verb": verb, "resource": "configmaps", "result": result})

    before = (requests("apply", "2xx"), requests("patch", "4xx"), requests("patch", "2xx"),
              metrics.sample("roundhouse_operator_api_request_duration_seconds_count",
                             {"verb": "apply"}))

    async def scenario() -> None:
        try:
            await asyncio.gather(*(
                kube.request("PATCH", kube.object_path("ConfigMap", "ns", f"cm-{i}"),
                             body={"kind": "ConfigMap"},
                             content_type="application/apply-patch+yaml")
                for i in range(20)))  # more than the gate lets through at once
            with pytest.raises(Exception) as caught:
                await kube.request("PATCH", kube.object_path("ConfigMap", "ns", "missing"),
                                   body={"data": {}},
                                   content_type="application/merge-patch+json")
            assert kube.status_code(caught.value) == 404
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert requests("apply", "2xx") == before[0] + 20
    assert requests("patch", "4xx") == before[1] + 1
    assert requests("patch", "2xx") == before[2]
    assert metrics.sample("roundhouse_operator_api_request_duration_seconds_count",
                          {"verb": "apply"}) == before[3] + 20
    assert metrics.sample("roundhouse_operator_api_requests_in_flight") == 0
    assert metrics.sample("roundhouse_operator_api_requests_waiting") == 0


def test_a_request_with_no_answer_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """Connection refused: counted as `error`, not as a status class."""
    import socket
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
              "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
              "users": [{"name": "test", "user": {"token": "abc"}}],
              "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    labels = {"verb": "get", "resource": "secrets", "result": "error"}
    before = metrics.sample("roundhouse_operator_api_requests_total", labels)

    async def scenario() -> None:
        try:
            with pytest.raises(Exception) as caught:
                await kube.request("GET", kube.object_path("Secret", "ns", "ca"))
            assert kube.status_code(caught.value) is None
        finally:
            await kube.close()

    asyncio.run(scenario())
    assert metrics.sample("roundhouse_operator_api_requests_total", labels) == before + 1
    assert metrics.sample("roundhouse_operator_api_requests_in_flight") == 0


def test_the_product_imports_without_the_synchronous_client() -> None:
    """The image installs only the runtime dependencies: `kubernetes` (the tests' client)
    is not among them, so no product module may import it."""
    code = ("import sys\n"
            "sys.modules['kubernetes'] = None  # importing it now raises ImportError\n"
            "import roundhouse.cli, roundhouse.main, roundhouse.handlers, roundhouse.kube\n"
            "import roundhouse.leader, roundhouse.certificates, roundhouse.agent.cli\n"
            "import roundhouse.agent.source\n"
            "import kubernetes_asyncio.client\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr


def test_proxy_configs_queued_behind_status_writes_are_sent_first(
        server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-out: status writes of early reconciles queue before the ConfigMaps of later
    ones; the ConfigMaps (apply.apply_object, urgent) reach the API server first."""
    from roundhouse import apply

    monkeypatch.setenv("ROUNDHOUSE_API_CONCURRENCY", "1")

    async def scenario() -> None:
        try:
            first = asyncio.create_task(kube.request(
                "PATCH", kube.object_path("LoadBalancer", "ns", "busy", "status"),
                body={}, content_type="application/merge-patch+json"))
            await asyncio.sleep(0.01)  # `first` holds the only slot
            statuses = [asyncio.create_task(kube.request(
                "PATCH", kube.object_path("LoadBalancer", "ns", f"lb{i}", "status"),
                body={}, content_type="application/merge-patch+json")) for i in range(3)]
            await asyncio.sleep(0)
            configs = [asyncio.create_task(apply.apply_object(
                {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"lb{i}-lb", "namespace": "ns"}})) for i in range(3)]
            await asyncio.gather(first, *statuses, *configs)
        finally:
            await kube.close()

    asyncio.run(scenario())
    sent = [path.split("?")[0].rsplit("/", 2)[-2:] for _, path, _, _ in server.seen]
    assert sent == [["busy", "status"], ["configmaps", "lb0-lb"], ["configmaps", "lb1-lb"],
                    ["configmaps", "lb2-lb"], ["lb0", "status"], ["lb1", "status"],
                    ["lb2", "status"]]
