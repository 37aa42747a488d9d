"""A real Kubernetes control plane on 127.0.0.1 for integration and e2e tests.

    with ControlPlane(controllers=True, nodes=3) as cp:
        print(cp.server_version()["gitVersion"])
        api = kubernetes.config.new_client_from_config(str(cp.admin_kubeconfig))

Runs etcd and kube-apiserver (TLS, client-certificate auth, Node+RBAC
authorization, default admission) and, with `controllers=True`, also
kube-controller-manager, kube-scheduler and kwok with N fake Nodes, so that
Deployments turn into Running+Ready Pods with IPs from 10.244.0.0/16 and the
real EndpointSlice controller fills EndpointSlices. Every port is a free
loopback port, so several clusters can run at once; all state lives in a
temporary work dir.

Only the standard library and `cryptography` are needed, so `cli.py` also works
outside the venv's kubernetes client.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import netguard, nodenet
from .pki import CertificateAuthority, CertKey, service_account_keypair
from .processes import ManagedProcess, clean_env, spawn

if TYPE_CHECKING:
    from .node import RealNode

LOG = logging.getLogger("roundhouse.controlplane")

K8S_VERSION = "v1.36.3"
LOOPBACK = "127.0.0.1"
POD_CIDR = netguard.POD_CIDR
SERVICE_CIDR = netguard.SERVICE_CIDR
FIRST_SERVICE_IP = "10.96.0.1"
# Fake Node InternalIPs live in the (unreachable) pod range, above every node's /24:
# routable-looking for EndpointSlice validation (which rejects loopback), never reachable.
NODE_IP_PREFIX = "10.244.255."
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_STATUS_ANNOTATION = "kwok.x-k8s.io/status"  # value "custom": kwok leaves the status alone
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ZONES = ("zone-a", "zone-b", "zone-c")

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-binaries.sh"
KWOK_STAGES = HERE / "kwok-stages.yaml"
REQUIRED_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
APISERVER_SANS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

Logger = Callable[[str], None]


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or used."""


class BinariesError(ControlPlaneError):
    """The Kubernetes binaries could not be located or built."""


class KubectlError(subprocess.CalledProcessError):
    """A failed `ControlPlane.kubectl` call; unlike its base class, str() shows stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


def _default_log(message: str) -> None:
    LOG.info(message)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roundhouse"


# --------------------------------------------------------------------------- binaries


def _check_bin_dir(bin_dir: Path) -> Path:
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise BinariesError(f"{bin_dir} lacks executable(s): {', '.join(missing)}")
    return bin_dir


def locate_binaries(log: Logger = _default_log) -> Path:
    """Return the bin dir: $ROUNDHOUSE_BIN_DIR, else whatever build-binaries.sh prints last.

    The script is a no-op on a warm cache; a flock keeps two test sessions from
    running a cold (tens of minutes, both cores) build at the same time.
    """
    override = os.environ.get("ROUNDHOUSE_BIN_DIR")
    if override:
        return _check_bin_dir(Path(override))
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build-binaries.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            [str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None and proc.stdout is not None
        stderr_lines = []
        for line in proc.stderr:  # stream progress; stdout is one short line
            stderr_lines.append(line.rstrip())
            log(line.rstrip())
        stdout = proc.stdout.read()
        if proc.wait() != 0:
            tail = "\n".join(stderr_lines[-30:])
            raise BinariesError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{tail}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise BinariesError(f"{BUILD_SCRIPT} printed no bin directory")
    return _check_bin_dir(Path(lines[-1].strip()))


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_dict(
    server: str,
    ca_pem: bytes,
    user: str,
    credentials: Mapping[str, str],
    namespace: str | None = None,
) -> dict[str, Any]:
    """A single-context kubeconfig; credentials are kubeconfig `user` fields."""
    context: dict[str, str] = {"cluster": "roundhouse", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "roundhouse",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": dict(credentials)}],
        "contexts": [{"name": "roundhouse", "context": context}],
        "current-context": "roundhouse",
    }


def cert_credentials(cert: CertKey) -> dict[str, str]:
    return {"client-certificate-data": _b64(cert.cert_pem), "client-key-data": _b64(cert.key_pem)}


def _write_private(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)  # JSON is valid YAML, so kubectl and client libraries read it
    return path


class RestClient:
    """Minimal admin HTTPS client for the API server (stdlib only, never proxied)."""

    def __init__(self, server: str, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self.server = server
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(cert_file), str(key_file))
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        status, raw = self.request(method, path, body, **kw)
        if status >= 300:
            raise ControlPlaneError(f"{method} {path} -> {status}: {raw.decode(errors='replace')}")
        result: dict[str, Any] = json.loads(raw)
        return result


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    # Component health endpoints are plain or self-signed; only liveness matters here.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _etcd_call(url: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    with opener.open(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def node_manifest(index: int) -> dict[str, Any]:
    """A kwok-managed fake Node with hostname/zone labels and its own pod /24."""
    name = f"kwok-node-{index}"
    cidr = f"10.244.{index + 1}.0/24"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "topology.kubernetes.io/region": "local",
                "topology.kubernetes.io/zone": ZONES[index % len(ZONES)],
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }


def node_status_patch(index: int) -> dict[str, Any]:
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    return {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": f"{NODE_IP_PREFIX}{index + 1}"},
                {"type": "Hostname", "address": f"kwok-node-{index}"},
            ],
            "capacity": resources,
            "allocatable": resources,
        }
    }


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints", [])
    # TaintNodesByCondition adds not-ready at creation; wait until it is lifted.
    return ready and not any(t["key"].startswith("node.kubernetes.io/") for t in taints)


# --------------------------------------------------------------------------- control plane


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0
    kwok: int = 0

    @classmethod
    def allocate(cls) -> Ports:
        # Hold all sockets until every port is chosen so none is handed out twice.
        socks = []
        try:
            for _ in range(6):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((LOOPBACK, 0))
                socks.append(s)
            return cls(*(int(s.getsockname()[1]) for s in socks))
        finally:
            for s in socks:
                s.close()


class ControlPlane:
    """etcd + kube-apiserver (+ controllers, scheduler, kwok) on 127.0.0.1."""

    def __init__(
        self,
        controllers: bool = False,
        nodes: int = 3,
        *,
        bin_dir: Path | None = None,
        log: Logger = _default_log,
        startup_timeout: float = 120.0,
        keep_workdir: bool | None = None,
        detached: bool = False,
        real_node: bool = False,
        apiserver_flags: Sequence[str] = (),
        real_node_max_pods: int | None = None,
    ) -> None:
        """`detached=True` lets the processes outlive this Python process (cli.py up).

        `real_node=True` (needs `controllers=True` and root) also runs a real kubelet
        node (node.py) and taints the kwok nodes so ordinary Pods run on it for real;
        `real_node_max_pods` replaces its kubelet's maxPods (node.MAX_PODS, 60).
        """
        if real_node and not controllers:
            raise ControlPlaneError("real_node=True needs controllers=True")
        self.detached = detached
        self.with_real_node = real_node
        self.apiserver_flags = list(apiserver_flags)  # e.g. an audit log (bench/scale.py)
        self.real_node: RealNode | None = None
        self.real_node_max_pods = real_node_max_pods
        self.controllers = controllers
        self.node_count = nodes if controllers else 0
        self.bin_dir = bin_dir
        self.log = log
        self.startup_timeout = startup_timeout
        self.keep_workdir = (
            os.environ.get("KEEP_CLUSTER_LOGS") == "1" if keep_workdir is None else keep_workdir
        )
        self.workdir: Path | None = None
        self.ports = Ports()
        self.processes: list[ManagedProcess] = []
        self.routes: list[str] = []
        self.version: dict[str, Any] = {}
        self.startup_seconds: float = 0.0
        self._ca: CertificateAuthority | None = None
        self._rest: RestClient | None = None

    # ---- paths

    def _dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane is not started")
        return self.workdir

    @property
    def service_cidr(self) -> str:
        """10.96.0.0/16, or its upper half with a real node (see nodenet.py for why)."""
        return nodenet.SERVICE_CIDR if self.with_real_node else SERVICE_CIDR

    @property
    def first_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP."""
        return nodenet.FIRST_SERVICE_IP if self.with_real_node else FIRST_SERVICE_IP

    @property
    def workdir_path(self) -> Path:
        """The work dir of a started cluster (raises before start)."""
        return self._dir()

    @property
    def pki_dir(self) -> Path:
        return self._dir() / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self._dir() / "kubeconfigs"

    @property
    def logs_dir(self) -> Path:
        return self._dir() / "logs"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def rest(self) -> RestClient:
        if self._rest is None:
            self._rest = RestClient(
                self.server,
                self.ca_file,
                self.pki_dir / "admin.crt",
                self.pki_dir / "admin.key",
            )
        return self._rest

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority.from_pem(
                self.ca_file.read_bytes(), (self.pki_dir / "ca.key").read_bytes()
            )
        return self._ca

    def binary(self, name: str) -> str:
        if self.bin_dir is None:
            raise ControlPlaneError("binaries not located yet")
        return str(self.bin_dir / name)

    # ---- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start everything; on any failure stop what was started and re-raise."""
        began = time.monotonic()
        if not self.detached:
            atexit.register(self.stop)  # a forgotten stop() must not leak a cluster
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self.log(
            f"control plane ready in {self.startup_seconds:.1f}s: {self.server} "
            f"(kubeconfig {self.admin_kubeconfig})"
        )
        return self

    def _start(self) -> None:
        if self.bin_dir is None:
            self.log("locating binaries (e2e/cluster/build-binaries.sh)")
            self.bin_dir = locate_binaries(self.log)
        self.log(f"binaries: {self.bin_dir}")
        self.workdir = Path(tempfile.mkdtemp(prefix="roundhouse-cp-"))
        for d in (self.pki_dir, self.kubeconfig_dir, self.logs_dir, self._dir() / "etcd"):
            d.mkdir(mode=0o700)
        self._guard_network()
        self.ports = Ports.allocate()
        self.log(f"work dir: {self.workdir}")
        self._write_pki()
        self._start_etcd()
        self._start_apiserver()
        self.version = self.server_version()
        git_version = self.version.get("gitVersion")
        self.log(f"kube-apiserver version: {git_version}")
        if git_version != K8S_VERSION:
            self.log(f"WARNING: expected kube-apiserver {K8S_VERSION}, got {git_version}")
        if self.controllers:
            self._start_controllers()
        if self.with_real_node:
            self._start_real_node()

    def _start_real_node(self) -> None:
        from .node import KWOK_TAINT, MAX_PODS, RealNode  # node.py imports this module

        for i in range(self.node_count):
            self.rest.json(
                "PATCH",
                f"/api/v1/nodes/kwok-node-{i}",
                {"spec": {"taints": [KWOK_TAINT]}},
                content_type="application/merge-patch+json",
            )
        self.real_node = RealNode(self, max_pods=self.real_node_max_pods or MAX_PODS)
        self.real_node.start()

    def _guard_network(self) -> None:
        self.log(f"guarding {', '.join(netguard.GUARDED_CIDRS)} with unreachable routes")
        self.routes = netguard.acquire(str(self._dir()))
        netguard.verify()

    def stop(self) -> None:
        """Stop every process started (reverse order), drop routes, remove the work dir."""
        atexit.unregister(self.stop)
        if self.real_node is not None:  # first: its teardown may still use the API server
            self.real_node.stop()
            self.real_node = None
        for proc in reversed(self.processes):
            if proc.alive():
                self.log(f"stopping {proc.name} (pid {proc.pid})")
            proc.stop()
        self.processes = []
        if self.workdir is not None:
            if self.routes:
                deleted = netguard.release(str(self.workdir), self.routes)
                if deleted:
                    self.log(f"removed unreachable routes: {', '.join(deleted)}")
            self.routes = []
            if self.keep_workdir:
                self.log(f"KEEP_CLUSTER_LOGS=1: keeping {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self._rest = None
        self._ca = None

    # ---- state (detached clusters)

    def to_state(self) -> dict[str, Any]:
        return {
            "workdir": str(self._dir()),
            "bin_dir": str(self.bin_dir),
            "controllers": self.controllers,
            "nodes": self.node_count,
            "ports": vars(self.ports),
            "routes": self.routes,
            "version": self.version,
            "keep_workdir": self.keep_workdir,
            "server": self.server,
            "admin_kubeconfig": str(self.admin_kubeconfig),
            "processes": [p.to_state() for p in self.processes],
            "real_node": self.real_node.to_state() if self.real_node else None,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], log: Logger = _default_log) -> ControlPlane:
        """Re-attach to a cluster started by another process so it can be used or stopped."""
        cp = cls(
            controllers=bool(state["controllers"]),
            nodes=int(state["nodes"]),
            bin_dir=Path(state["bin_dir"]),
            log=log,
            keep_workdir=bool(state["keep_workdir"]),
            detached=True,
        )
        cp.workdir = Path(state["workdir"])
        cp.ports = Ports(**state["ports"])
        cp.routes = list(state["routes"])
        cp.version = dict(state["version"])
        cp.processes = [ManagedProcess.from_state(p) for p in state["processes"]]
        if state.get("real_node"):
            from .node import RealNode

            cp.with_real_node = True
            cp.real_node = RealNode.from_state(cp, state["real_node"])
        return cp

    def running(self) -> list[ManagedProcess]:
        nodes = self.real_node.processes if self.real_node else []
        return [p for p in [*self.processes, *nodes] if p.alive()]


    # ---- PKI and kubeconfigs

    def _write_pki(self) -> None:
        self.log("generating PKI (CA, serving and client certificates, SA key pair)")
        ca = self._ca = CertificateAuthority.generate()
        pki = self.pki_dir
        ca.cert_key.write(pki, "ca")
        # In-cluster clients dial the first Service IP (relayed via the bridge address).
        node_ips = (nodenet.NODE_ADDRESS,) if self.with_real_node else ()
        ca.issue(
            "kube-apiserver",
            dns_names=APISERVER_SANS,
            ip_addresses=(LOOPBACK, self.first_service_ip, *node_ips),
            server=True,
        ).write(pki, "apiserver")
        sa_key, sa_pub = service_account_keypair()
        (pki / "sa.key").touch(mode=0o600)
        (pki / "sa.key").write_bytes(sa_key)
        (pki / "sa.pub").write_bytes(sa_pub)
        identities = {
            "admin": ("kubernetes-admin", ["system:masters"]),
            "kube-controller-manager": ("system:kube-controller-manager", []),
            "kube-scheduler": ("system:kube-scheduler", []),
            "kwok": ("kwok", ["system:masters"]),  # a test fake: no need for tight RBAC
            # The API server's identity at the kubelet (logs, exec, port-forward).
            "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"]),
        }
        for stem, (user, groups) in identities.items():
            cert = ca.issue(user, groups, client=True)
            cert.write(pki, stem)
            self._write_kubeconfig(f"{stem}.kubeconfig", user, cert_credentials(cert))

    def _write_kubeconfig(
        self,
        filename: str,
        user: str,
        credentials: Mapping[str, str],
        namespace: str | None = None,
    ) -> Path:
        config = kubeconfig_dict(
            self.server, self.ca_file.read_bytes(), user, credentials, namespace
        )
        return _write_private(self.kubeconfig_dir / filename, json.dumps(config, indent=2))

    def write_kubeconfig_for_cert(
        self, path: Path, user: str, cert_file: Path, key_file: Path
    ) -> Path:
        """A kubeconfig at `path` for a client certificate already on disk."""
        credentials = {"client-certificate": str(cert_file), "client-key": str(key_file)}
        config = kubeconfig_dict(self.server, self.ca_file.read_bytes(), user, credentials)
        return _write_private(path, json.dumps(config, indent=2))

    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Kubeconfig authenticating as `user` in `groups` with a CA-signed client cert."""
        cert = self.ca.issue(user, groups, client=True)
        safe = user.replace(":", "_").replace("/", "_")
        return self._write_kubeconfig(f"user-{safe}.kubeconfig", user, cert_credentials(cert))

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 24 * 3600
    ) -> str:
        """A bound token for an existing ServiceAccount, via the TokenRequest API."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        token: str = self.rest.json("POST", path, body)["status"]["token"]
        return token

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, expiration_seconds: int = 24 * 3600
    ) -> Path:
        """Kubeconfig acting as ServiceAccount `namespace/name` (default namespace set)."""
        token = self.service_account_token(namespace, name, expiration_seconds)
        user = f"system:serviceaccount:{namespace}:{name}"
        return self._write_kubeconfig(
            f"sa-{namespace}-{name}.kubeconfig", user, {"token": token}, namespace
        )

    # ---- API helpers

    def readyz(self) -> str:
        status, body = self.rest.request("GET", "/readyz")
        text = body.decode(errors="replace")
        if status != 200:
            failing = [line for line in text.splitlines() if line.startswith("[-]")]
            raise ControlPlaneError(f"/readyz -> {status}: {' '.join(failing) or text[:300]}")
        return text

    def server_version(self) -> dict[str, Any]:
        return self.rest.json("GET", "/version")

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl as admin; with `check`, failures raise KubectlError."""
        argv = [
            self.binary("kubectl"),
            "--kubeconfig",
            str(self.admin_kubeconfig),
            # Keep the discovery cache out of ~/.kube (one dir per random port otherwise).
            f"--cache-dir={self._dir() / 'kubectl-cache'}",
            *args,
        ]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=clean_env())
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def log_tail(self, component: str, lines: int = 40) -> str:
        """Last lines of a component's log, e.g. `cp.log_tail("kube-apiserver")`."""
        text = (self.logs_dir / f"{component}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ---- components

    def _spawn(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        self.log(f"starting {name}")
        proc = spawn(
            name, argv, self.logs_dir / f"{name}.log", self._dir(), clean_env(), self.detached
        )
        self.processes.append(proc)
        return proc

    def allocate_port(self) -> int:
        """A free loopback port for another component."""
        return free_port()

    def wait_for(
        self,
        what: str,
        probe: Callable[[], bool],
        procs: Sequence[ManagedProcess],
        timeout: float | None = None,
    ) -> None:
        """Poll `probe` until true; fail fast with log tails if a component dies."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            dead = [p for p in procs if not p.alive()]
            if dead:
                raise ControlPlaneError(
                    f"{dead[0].name} exited (code {dead[0].exit_code()}) while waiting for "
                    f"{what}" + self._tails(dead)
                )
            try:
                if probe():
                    return
            except Exception as err:  # the probe's last failure goes into the timeout message
                last_error = f"{type(err).__name__}: {err}"
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {timeout:.0f}s waiting for {what}"
                    + (f" (last error: {last_error})" if last_error else "")
                    + self._tails(procs)
                )
            time.sleep(0.25)

    @staticmethod
    def _tails(procs: Sequence[ManagedProcess]) -> str:
        return "".join(f"\n--- last lines of {p.log_path} ---\n{p.log_tail()}" for p in procs)

    def _start_etcd(self) -> None:
        client = f"http://{LOOPBACK}:{self.ports.etcd_client}"
        peer = f"http://{LOOPBACK}:{self.ports.etcd_peer}"
        proc = self._spawn(
            "etcd",
            [
                self.binary("etcd"),
                "--name=roundhouse",
                f"--data-dir={self._dir() / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=roundhouse={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # throw-away data; fsync only slows tests down
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self.wait_for("etcd /health", lambda: _http_ok(f"{client}/health"), [proc])

    def _start_apiserver(self) -> None:
        pki = self.pki_dir
        proc = self._spawn(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers=http://{LOOPBACK}:{self.ports.etcd_client}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                # Endpoints validation rejects loopback IPs, so the default lease reconciler
                # would fail every sync writing 127.0.0.1 for Service default/kubernetes.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                *self._real_node_apiserver_flags(),
                *self.apiserver_flags,
            ],
        )
        self.wait_for("kube-apiserver /readyz", lambda: self.readyz() == "ok", [proc])

    def stop_apiserver(self, kill: bool = False) -> None:
        """Stop only kube-apiserver (SIGTERM, or SIGKILL with `kill`): an outage for the
        fault tests. etcd, the controllers and kwok keep running; start_apiserver()
        brings it back on the same port, with the same certificates and data."""
        proc = self._apiserver_process()
        if kill:
            proc.kill()
        else:
            proc.stop()
        self.processes.remove(proc)
        self.log(f"kube-apiserver stopped (pid {proc.pid})")

    def start_apiserver(self) -> float:
        """Start kube-apiserver again after stop_apiserver(); returns the seconds it took
        to answer /readyz. Controllers reconnect on their own: wait explicitly for what
        a test needs (the controller-manager can be slow to catch up)."""
        if any(p.name == "kube-apiserver" for p in self.processes):
            raise ControlPlaneError("kube-apiserver is already running")
        began = time.monotonic()
        self._start_apiserver()
        # _start_apiserver appends it last; keep the start order (etcd, kube-apiserver,
        # ...) for stop(), which stops them in reverse.
        proc = self.processes.pop()
        after = [i for i, p in enumerate(self.processes) if p.name == "etcd"]
        self.processes.insert(after[0] + 1 if after else 0, proc)
        return time.monotonic() - began

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what kube-apiserver does
        every 5 minutes), so a watch resumed from an older resourceVersion gets 410 Gone
        and must list again. Returns the revision. Uses etcd's JSON gateway."""
        url = f"http://{LOOPBACK}:{self.ports.etcd_client}"
        key = base64.b64encode(b"/registry").decode()
        head = _etcd_call(url, "/v3/kv/range", {"key": key, "limit": 1, "keys_only": True})
        revision = int(head["header"]["revision"])
        _etcd_call(url, "/v3/kv/compaction", {"revision": revision, "physical": True})
        self.log(f"etcd compacted at revision {revision}")
        return revision

    def _apiserver_process(self) -> ManagedProcess:
        for proc in self.processes:
            if proc.name == "kube-apiserver":
                return proc
        raise ControlPlaneError("kube-apiserver is not running")

    def _real_node_apiserver_flags(self) -> list[str]:
        if not self.with_real_node:
            return []  # kwok-only clusters keep the defaults
        return [
            # logs/exec dial the kubelet at its InternalIP (the bridge address), verified.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={self.pki_dir / 'ca.crt'}",
        ]

    def _start_controllers(self) -> None:
        self._create_nodes()
        kcm = self._start_controller_manager()
        scheduler = self._start_scheduler()
        kwok = self._start_kwok()
        procs = [kcm, scheduler, kwok]
        self.wait_for(
            "kube-controller-manager /healthz",
            lambda: _http_ok(f"https://{LOOPBACK}:{self.ports.controller_manager}/healthz"),
            procs,
        )
        self.wait_for(
            "kube-scheduler /healthz",
            lambda: _http_ok(f"https://{LOOPBACK}:{self.ports.scheduler}/healthz"),
            procs,
        )
        self.wait_for(
            "kwok /healthz", lambda: _http_ok(f"http://{LOOPBACK}:{self.ports.kwok}/healthz"), procs
        )
        self.log(f"waiting for {self.node_count} fake nodes to become Ready")
        self.wait_for(f"{self.node_count} Ready nodes", self._nodes_ready, procs)
        # Pods need their namespace's ServiceAccount (created by the KCM) to be admitted.
        self.wait_for(
            "ServiceAccount default/default",
            lambda: (
                self.rest.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0]
                == 200
            ),
            procs,
        )

    def _create_nodes(self) -> None:
        self.log(f"creating {self.node_count} fake nodes")
        for i in range(self.node_count):
            node = node_manifest(i)
            self.rest.json("POST", "/api/v1/nodes", node)
            # Status is a subresource: addresses must be set there, before kwok sees the node.
            self.rest.json(
                "PATCH",
                f"/api/v1/nodes/{node['metadata']['name']}/status",
                node_status_patch(i),
                content_type="application/merge-patch+json",
            )

    def _nodes_ready(self) -> bool:
        items = self.rest.json("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
        return len(items) >= self.node_count and all(_node_ready(n) for n in items)

    def _start_controller_manager(self) -> ManagedProcess:
        pki = self.pki_dir
        return self._spawn(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig_dir / 'kube-controller-manager.kubeconfig'}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={self.ports.controller_manager}",
                f"--cert-dir={self._dir() / 'kcm-serving'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--cluster-cidr={POD_CIDR}",
                "--allocate-node-cidrs=false",  # nodes get their pod /24 at creation
                # Default is /usr/libexec/...; keep every file the cluster writes in the work dir.
                f"--flex-volume-plugin-dir={self._dir() / 'flexvolume'}",
                "--profiling=false",
            ],
        )

    def _start_scheduler(self) -> ManagedProcess:
        return self._spawn(
            "kube-scheduler",
            [
                self.binary("kube-scheduler"),
                f"--kubeconfig={self.kubeconfig_dir / 'kube-scheduler.kubeconfig'}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={self.ports.scheduler}",
                f"--cert-dir={self._dir() / 'scheduler-serving'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_kwok(self) -> ManagedProcess:
        config = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokConfiguration",
            "metadata": {"name": "roundhouse"},
            "options": {
                "cidr": POD_CIDR,
                "nodeIP": f"{NODE_IP_PREFIX}254",
                "manageNodesWithAnnotationSelector": f"{KWOK_NODE_ANNOTATION}=fake",
                "serverAddress": f"{LOOPBACK}:{self.ports.kwok}",
                "nodeLeaseDurationSeconds": 40,
                # kwok v0.8.0 does not apply its documented defaults to a --config file.
                "nodeLeaseParallelism": 4,
                "podPlayStageParallelism": 4,
                "nodePlayStageParallelism": 4,
                "podsOnNodeSyncParallelism": 1,
                "enablePodsOnNodeSyncListPager": True,
                "enablePodsOnNodeSyncStreamWatch": False,
            },
        }
        path = self._dir() / "kwok.yaml"
        path.write_text(json.dumps(config) + "\n---\n" + KWOK_STAGES.read_text())
        return self._spawn(
            "kwok",
            [
                self.binary("kwok"),
                f"--kubeconfig={self.kubeconfig_dir / 'kwok.kubeconfig'}",
                f"--config={path}",
            ],
        )
