"""agent/source.py, cli.py and loop.py against a fake API (no Kubernetes at this tier)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from roundhouse.agent.agent import Agent, AgentStatus, DesiredState
from roundhouse.agent.cli import build_parser, run_agent, run_once
from roundhouse.agent.loop import Latest
from roundhouse.agent.metrics import AgentMetrics
from roundhouse.agent.runtime import ProcessLimits
from roundhouse.agent.source import (
    Gone,
    KubernetesAPI,
    NotFound,
    Source,
    SourceError,
    secret_fingerprint,
)
from roundhouse.model.cluster import parse_tls_secret
from roundhouse.render import payload
from tests.unit.agent_harness import FakeAPI, issue_cert

CERT = issue_cert()


def secret(name: str = "web-tls", crt: str = CERT.crt, key: str = CERT.key) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "data": {"tls.crt": base64.b64encode(crt.encode()).decode(),
                     "tls.key": base64.b64encode(key.encode()).decode()}}


def configmap(version: str = "1", certs: bool = True, **data: str) -> dict[str, Any]:
    servers = {"version": 1, "configHash": "c0ffee", "structureHash": "5ca1ab1e",
               "pools": {"be_http": [{"slot": "srv1", "endpoint": None, "address": None,
                                      "port": None, "weight": 0, "state": "maint"}]},
               "certificates": [{"file": "web-tls.pem", "secret": "web-tls",
                                 "fingerprint": parse_tls_secret(secret()).fingerprint}]
               if certs else []}
    body = {"haproxy.cfg": "global\n", "servers.json": json.dumps(servers)}
    body.update(data)
    return {"metadata": {"name": "web-lb", "resourceVersion": version}, "data": body}


def fake_api() -> FakeAPI:
    api = FakeAPI(configmap())
    api.secrets["web-tls"] = secret()
    return api


def source(api: FakeAPI) -> Source:
    return Source(api, "ns", "web-lb", "web-lb-agents", "pod-1", resync_seconds=60)


def test_desired_state_from_configmap_and_secret() -> None:
    desired = source(fake_api()).desired_from(configmap())
    assert desired.config == "global\n"
    assert desired.config_hash == "c0ffee" and desired.structure_hash == "5ca1ab1e"
    pem = desired.certificates["web-tls.pem"]
    assert pem == CERT.crt.strip() + "\n" + CERT.key.strip() + "\n"
    assert "PRIVATE KEY" not in repr(desired) and "web-tls.pem" in repr(desired)


def test_fingerprint_matches_the_operator() -> None:
    s = secret()
    assert secret_fingerprint(CERT.crt.encode(), CERT.key.encode()) == \
        parse_tls_secret(s).fingerprint


def test_desired_state_from_a_compressed_configmap() -> None:
    """Large configurations arrive gzipped in binaryData: the agent reads them the same."""
    plain = configmap()
    data, binary = payload.encode({k: v + " " * payload.INLINE_LIMIT if k == "haproxy.cfg"
                                   else v for k, v in plain["data"].items()})
    assert not data and set(binary) == {"haproxy.cfg.gz", "servers.json.gz"}
    big = {"metadata": plain["metadata"], "binaryData": binary}
    desired = source(fake_api()).desired_from(big)
    assert desired.config.startswith("global\n") and desired.config_hash == "c0ffee"
    big["binaryData"] = {**binary, "servers.json.gz": base64.b64encode(b"not gzip").decode()}
    with pytest.raises(SourceError, match=r"binaryData servers\.json\.gz does not decode"):
        source(fake_api()).desired_from(big)


@pytest.mark.parametrize(("change", "message"), [
    (lambda api, cm: api.secrets.clear(), "Secret web-tls not found"),
    (lambda api, cm: api.secrets.update(
        {"web-tls": secret(key="nope")}), "no usable tls.crt and tls.key"),
    (lambda api, cm: cm["data"].update({"servers.json": "{"}), "is not JSON"),
    (lambda api, cm: cm["data"].pop("haproxy.cfg"), "has no haproxy.cfg"),
    (lambda api, cm: cm["data"].update({"servers.json": json.dumps(
        {"pools": {}, "certificates": [{"file": "../x.pem", "secret": "web-tls"}]})}),
     "invalid certificate file name"),
])
def test_desired_state_problems(change: Any, message: str) -> None:
    api = fake_api()
    cm = configmap()
    change(api, cm)
    with pytest.raises(SourceError, match=message):
        source(api).desired_from(cm)


def test_changes_lists_watches_and_relists_after_gone() -> None:
    api = fake_api()
    stop = threading.Event()
    seen: list[str] = []
    api.events.put({"type": "MODIFIED", "object": configmap("101")})
    api.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}})
    api.events.put(None)  # the watch times out: the next one resumes from the bookmark
    api.events.put(Gone())
    api.events.put({"type": "DELETED", "object": configmap("160")})
    api.events.put({"type": "MODIFIED", "object": configmap("170")})
    for cm in source(api).changes(stop):
        seen.append(cm["metadata"]["resourceVersion"])
        if len(seen) == 4:
            stop.set()
    # list (1), event 101, bookmark, 410 -> list again (1), deletion ignored, event 170
    assert seen == ["1", "101", "1", "170"]
    assert api.lists == 2
    assert api.watches == ["100", "150", "100"]


def test_status_report_is_a_json_value_under_the_pod_name() -> None:
    api = fake_api()
    src = source(api)
    status = AgentStatus("c0ffee", "5ca1ab1e", None, 2, dt.datetime(2030, 1, 2, 3, 4, 5,
                                                                     tzinfo=dt.UTC))
    assert src.report(status)
    ((name, data),) = api.patches
    assert name == "web-lb-agents"
    assert json.loads(data["pod-1"]) == {"configHash": "c0ffee", "structureHash": "5ca1ab1e",
                                         "error": None, "reloads": 2,
                                         "time": "2030-01-02T03:04:05Z"}
    assert not src.report(status)  # unchanged: not patched again
    assert src.report(status, force=True)
    with_limits = dataclasses.replace(status, limits=ProcessLimits(9986, 20000, 20000))
    assert src.report(with_limits)  # HAProxy answered `show info`: a change worth a patch
    assert json.loads(api.patches[-1][1]["pod-1"])["maxconn"] == 9986
    assert json.loads(api.patches[-1][1]["pod-1"])["ulimitN"] == 20000


def test_latest_mailbox_keeps_only_the_newest() -> None:
    box = Latest()
    box.put({"v": 1})
    box.put({"v": 2})
    assert box.get(0.01) == {"v": 2}
    assert box.get(0.01) is None


def test_cli_arguments() -> None:
    args = build_parser().parse_args(["agent", "--configmap", "web-lb", "--status-configmap",
                                      "web-lb-agents", "--once"])
    assert args.func is run_agent
    assert (args.runtime_dir, args.metrics_port, args.haproxy_bin, args.once) == (
        "/var/run/roundhouse", 9101, "haproxy", True)


def test_cli_needs_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = build_parser().parse_args(["agent", "--configmap", "web-lb"])
    assert run_agent(args) == 2


def test_once_writes_config_and_certificates(tmp_path: Path) -> None:
    api = fake_api()
    agent = Agent(tmp_path, haproxy_bin=None, metrics=AgentMetrics())
    assert run_once(agent, source(api), timeout=1) == 0
    assert (tmp_path / "haproxy.cfg").read_text() == "global\n"
    pem = tmp_path / "certs" / "web-tls.pem"
    assert pem.stat().st_mode & 0o777 == 0o600
    assert json.loads(api.patches[-1][1]["pod-1"])["configHash"] == "c0ffee"
    # A restarted agent adopts what --once wrote: nothing to do, no reload.
    again = Agent(tmp_path, haproxy_bin=None, metrics=AgentMetrics())
    assert again.applied is not None
    desired = source(api).fetch()
    assert again.apply(desired).action == "none"


def test_once_gives_up_and_reports(tmp_path: Path) -> None:
    api = fake_api()
    api.configmap = None
    agent = Agent(tmp_path, haproxy_bin=None, metrics=AgentMetrics())
    assert run_once(agent, source(api), timeout=0.2) == 1
    assert "not found" in json.loads(api.patches[-1][1]["pod-1"])["error"]
    assert not (tmp_path / "haproxy.cfg").exists()


def test_desired_state_key_changes_with_certificates() -> None:
    a = DesiredState("x", {"pools": {}}, {"a.pem": "1"})
    b = DesiredState("x", {"pools": {}}, {"a.pem": "2"})
    assert a.key() != b.key()


class _FakeApiServer(ThreadingHTTPServer):
    """Just enough of the Kubernetes REST API, on loopback, to drive the real client."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.requests: list[tuple[str, str, str, bytes]] = []  # method, path, type, body
        self.watch_lines: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()


class _ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeApiServer

    def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        self.server.requests.append(("GET", self.path, "", b""))
        self.server.authorization.append(self.headers.get("Authorization"))
        if url.path == "/api/v1/namespaces/ns/configmaps":
            assert query["fieldSelector"] == ["metadata.name=web-lb"]
            if query.get("watch") == ["true"] and query["resourceVersion"] == ["expired"]:
                self._send(410, {"kind": "Status", "code": 410, "reason": "Expired"})
                return
            if query.get("watch") == ["true"]:
                lines = b"".join(json.dumps(e).encode() + b"\n"
                                 for e in self.server.watch_lines)
                self._send(200, lines)
                return
            self._send(200, {"kind": "ConfigMapList", "metadata": {"resourceVersion": "100"},
                             "items": [configmap("7")]})
        elif url.path == "/api/v1/namespaces/ns/secrets/web-tls":
            self._send(200, secret())
        else:
            self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(("PATCH", self.path, self.headers["Content-Type"], body))
        if self.path.startswith("/api/v1/namespaces/ns/configmaps/web-lb-agents"):
            self._send(200, {"kind": "ConfigMap", "metadata": {"name": "web-lb-agents"}})
        else:
            self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_kubernetes_api_over_the_real_client() -> None:
    from kubernetes_asyncio import client

    server = _FakeApiServer()
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        api = KubernetesAPI(configuration=config)
        cm, version = api.list_config_map("ns", "web-lb")
        assert cm is not None and cm["metadata"]["resourceVersion"] == "7"
        assert version == "100"
        big = configmap("102", **{"pad": "x" * 300_000})  # one event far above a read chunk
        server.watch_lines = [{"type": "MODIFIED", "object": configmap("101")},
                              {"type": "MODIFIED", "object": big},
                              {"type": "ERROR", "object": {"kind": "Status", "code": 410}}]
        events = api.watch_config_map("ns", "web-lb", "100", 5)
        assert next(events)["object"]["metadata"]["resourceVersion"] == "101"
        assert next(events)["object"] == big
        with pytest.raises(Gone):
            next(events)
        watch_query = urllib.parse.parse_qs(urllib.parse.urlsplit(server.requests[-1][1]).query)
        assert watch_query["resourceVersion"] == ["100"]
        assert watch_query["allowWatchBookmarks"] == ["true"]
        with pytest.raises(Gone):  # refused at once, before any event
            next(api.watch_config_map("ns", "web-lb", "expired", 5))
        assert api.read_secret("ns", "web-tls")["data"]["tls.crt"]
        with pytest.raises(NotFound):
            api.read_secret("ns", "other")
        src = Source(api, "ns", "web-lb", "web-lb-agents", "pod-1")
        assert "web-tls.pem" in src.fetch().certificates
        assert src.report(AgentStatus("a", "b", None, 0, dt.datetime.now(dt.UTC)))
        method, _, content_type, body = server.requests[-1]
        assert (method, content_type) == ("PATCH", "application/merge-patch+json")
        assert json.loads(body)["data"]["pod-1"].startswith("{")
        with pytest.raises(NotFound):
            api.patch_config_map_data("ns", "missing", {"x": "y"})
        api.close()
    finally:
        server.shutdown()
        server.server_close()


def test_in_cluster_credentials_follow_the_rotated_token(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound service account tokens expire: the kubelet rewrites the token file and the
    agent must send the new one (the client re-reads it once its refresh period is over;
    here that period is zero)."""
    from kubernetes_asyncio.config import incluster_config

    server = _FakeApiServer()
    try:
        (tmp_path / "token").write_text("first")
        (tmp_path / "ca.crt").write_text(CERT.crt)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
        monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", dt.timedelta(0))
        api = KubernetesAPI(service_account=str(tmp_path))
        assert api._api.configuration.host == f"https://127.0.0.1:{server.server_address[1]}"
        api._api.configuration.host = f"http://127.0.0.1:{server.server_address[1]}"  # no TLS
        api.read_secret("ns", "web-tls")
        (tmp_path / "token").write_text("second")
        api.read_secret("ns", "web-tls")
        assert server.authorization == ["Bearer first", "Bearer second"]
        api.close()
    finally:
        server.shutdown()
        server.server_close()
