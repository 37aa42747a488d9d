"""A real HAProxy, real HTTP backends and real renders for the agent tests. Loopback only."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509

from roundhouse import tls
from roundhouse.agent.agent import Agent, DesiredState
from roundhouse.agent.files import pem_bundle
from roundhouse.agent.metrics import AgentMetrics
from roundhouse.agent.runtime import RuntimeClient
from roundhouse.agent.source import NotFound
from roundhouse.graph import ClusterState, build_loadbalancer_graph
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import TLSSecret, parse_tls_secret
from roundhouse.render.haproxy import STATUS_PORT, RenderOptions, render_haproxy
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service
from tests.unit.conftest import lb_object

SECRET = "web-tls"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- backends -------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: Backend = self.server  # type: ignore[assignment]
        server.hits += 1
        body = server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.hits = 0
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# -- rendering ------------------------------------------------------------------------------


@dataclass
class Cert:
    crt: str
    key: str

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.crt.encode()).serial_number

    def secret(self) -> dict[str, Any]:
        return {"metadata": {"name": SECRET},
                "data": {"tls.crt": base64.b64encode(self.crt.encode()).decode(),
                         "tls.key": base64.b64encode(self.key.encode()).decode()}}


def issue_cert() -> Cert:
    now = dt.datetime.now(dt.UTC)
    ca = tls.issue_ca("agent-test", now)
    pair = tls.issue_serving(ca, ("localhost", "127.0.0.1"), now, dt.timedelta(days=1))
    return Cert(pair.cert_pem, pair.key_pem)


@dataclass
class Scenario:
    """Everything a LoadBalancer render depends on; `desired()` renders it for the agent."""

    runtime_dir: Path
    port: int  # the listener
    status_port: int
    backends: dict[str, Backend] = field(default_factory=dict)
    not_ready: set[str] = field(default_factory=set)
    https: bool = False
    cert: Cert | None = None
    timeouts: dict[str, str] = field(default_factory=dict)
    previous: dict[str, dict[str, str]] = field(default_factory=dict)
    max_connections: int = 1000
    spec: dict[str, Any] = field(default_factory=dict)  # more LoadBalancer spec fields

    def desired(self) -> DesiredState:
        protocol = "HTTPS" if self.https else "HTTP"
        listener: dict[str, Any] = {"name": protocol.lower(), "port": self.port,
                                    "protocol": protocol}
        if self.https:
            listener["tls"] = {"secretName": SECRET}
        spec: dict[str, Any] = {"listeners": [listener],
                                "limits": {"maxConnections": self.max_connections}}
        if self.timeouts:
            spec["timeouts"] = self.timeouts
        spec |= self.spec
        lb = parse_loadbalancer(lb_object(**spec))
        slices = [endpoint_slice("web", [endpoint(name, "127.0.0.1",
                                                  ready=name not in self.not_ready)],
                                 port=b.port, name=f"web-{name}")
                  for name, b in sorted(self.backends.items())]
        secrets: dict[str, TLSSecret] = {}
        certs: dict[str, str] = {}
        if self.https:
            assert self.cert is not None
            secrets[SECRET] = parse_tls_secret(self.cert.secret())
            certs[f"{SECRET}.pem"] = pem_bundle(self.cert.crt, self.cert.key)
        cluster = ClusterState({"web": service()}, slices, secrets, self.previous)
        rendered = render_haproxy(build_loadbalancer_graph(lb, cluster), RenderOptions(
            runtime_dir=str(self.runtime_dir), cert_dir=str(self.runtime_dir / "certs"),
            bind_address="127.0.0.1"))
        # Tests run side by side: move the status frontend off the fixed 8404.
        config = rendered.config.replace(f"127.0.0.1:{STATUS_PORT}\n",
                                         f"127.0.0.1:{self.status_port}\n")
        servers = rendered.server_state
        self.previous = {pool: {s["slot"]: s["endpoint"] or "" for s in slots}
                         for pool, slots in servers["pools"].items()}
        return DesiredState(config, servers, certs)

    def slot_of(self, name: str) -> str:
        for slots in self.previous.values():
            for slot, ep in slots.items():
                if ep.startswith(f"web/{name}:"):
                    return slot
        raise KeyError(name)


# -- Kubernetes, faked --------------------------------------------------------------------


class FakeAPI:
    """KubeAPI in memory: one ConfigMap (namespace "ns"), Secrets, recorded status patches."""

    def __init__(self, configmap: dict[str, Any] | None = None) -> None:
        self.configmap = configmap
        self.secrets: dict[str, dict[str, Any]] = {}
        # An event, an exception to raise, or None: this watch call ends (its timeout).
        self.events: queue.Queue[dict[str, Any] | Exception | None] = queue.Queue()
        self.patches: list[tuple[str, dict[str, str]]] = []
        self.lists = 0
        self.watches: list[str] = []

    def list_config_map(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, str]:
        self.lists += 1
        return self.configmap, "100"

    def watch_config_map(self, namespace: str, name: str, resource_version: str,
                         timeout_seconds: int) -> Iterator[dict[str, Any]]:
        self.watches.append(resource_version)
        while True:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                return
            if event is None:
                return
            if isinstance(event, Exception):
                raise event
            yield event

    def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        if name not in self.secrets:
            raise NotFound(name)
        return self.secrets[name]

    def patch_config_map_data(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.patches.append((name, data))

    def status(self, pod: str = "pod-1") -> dict[str, Any] | None:
        for _, data in reversed(self.patches):
            if pod in data:
                value: dict[str, Any] = json.loads(data[pod])
                return value
        return None


def configmap_for(desired: DesiredState, version: str, name: str = "web-lb") -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version},
            "data": {"haproxy.cfg": desired.config, "servers.json": json.dumps(desired.servers)}}


# -- HAProxy ----------------------------------------------------------------------------------


class HAProxy:
    def __init__(self, binary: str, runtime_dir: Path, nofile: int | None = None) -> None:
        self.runtime_dir = runtime_dir
        self.log = open(runtime_dir / "haproxy.log", "wb")  # noqa: SIM115
        # nofile: start under that open-files limit (soft and hard), as on a node with it.
        limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        self.proc = subprocess.Popen(
            [*limit, binary, "-W", "-db", "-S", str(runtime_dir / "master.sock"),
             "-f", str(runtime_dir / "haproxy.cfg")],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: the teardown kills it whole
        self.client = RuntimeClient(runtime_dir)

    def wait_up(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: {self.logs()}")
        self.client.wait_until_up(timeout)

    def worker(self) -> int:
        """The worker serving new connections (after a failed reload on 3.x: an old one)."""
        workers = self.client.show_proc().serving
        assert len(workers) == 1, workers
        return workers[0]

    def logs(self) -> str:
        self.log.flush()
        return (self.runtime_dir / "haproxy.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.log.closed:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()


@dataclass
class Rig:
    scenario: Scenario
    agent: Agent
    haproxy: HAProxy

    @property
    def metrics(self) -> AgentMetrics:
        return self.agent.metrics

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def get(self, timeout: float = 3.0) -> str:
        return fetch(self.scenario.port, https=self.scenario.https, timeout=timeout)

    def spread(self, n: int) -> Counter[str]:
        return Counter(self.get() for _ in range(n))


@contextlib.contextmanager
def rig(binary: str, backends: int = 3, *, https: bool = False,
        agent_binary: str | None = None, max_connections: int = 1000,
        nofile: int | None = None, spec: dict[str, Any] | None = None) -> Iterator[Rig]:
    """Backends + a rendered config installed by the agent + a running HAProxy; all cleaned up.

    A test may replace `rig.haproxy` (restart it): whichever is current is stopped.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rh-agent-"))  # short: unix socket paths are limited
    scenario = Scenario(tmp, free_port(), free_port(), https=https,
                        cert=issue_cert() if https else None,
                        max_connections=max_connections, spec=spec or {})
    started: list[HAProxy] = []
    try:
        for name in "abcdefgh"[:backends]:
            scenario.backends[name] = Backend(name)
        agent = Agent(tmp, haproxy_bin=agent_binary or binary, metrics=AgentMetrics())
        result = agent.install(scenario.desired())
        assert result.action != "rejected", result.error
        started.append(HAProxy(binary, tmp, nofile))
        started[0].wait_up()
        wait_serving(scenario.port, https)
        r = Rig(scenario, agent, started[0])
        try:
            yield r
        finally:
            started.append(r.haproxy)
    finally:
        for h in started:
            h.stop()
        for b in scenario.backends.values():
            b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(port: int, *, https: bool = False, timeout: float = 3.0) -> str:
    """One request on a fresh connection; returns the backend's name."""
    conn: http.client.HTTPConnection
    if https:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                           context=_insecure_context())
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:100]}")
        return body
    finally:
        conn.close()


def wait_serving(port: int, https: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fetch(port, https=https, timeout=1.0)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_serial(port: int) -> int:
    """The serial of the certificate a real TLS handshake on `port` presents."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
            _insecure_context().wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class ClientLoop:
    """Requests in a thread, each on a fresh connection, counting failures."""

    def __init__(self, port: int, https: bool = False) -> None:
        self.port, self.https = port, https
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fetch(self.port, https=self.https, timeout=5.0)
                self.ok += 1
            except Exception as err:
                self.failures.append(f"{type(err).__name__}: {err}")

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target and time.monotonic() < deadline:
            time.sleep(0.01)
