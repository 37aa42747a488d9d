"""A real kubelet node (containerd + runc + CNI bridge + kube-proxy) beside the kwok nodes.

    with ControlPlane(controllers=True, nodes=3, real_node=True) as cp:
        node = cp.real_node          # Ready; the kwok nodes are tainted NoSchedule
        node.import_images([Path("operator.tar")])  # docker-archive tars, offline
        # ordinary Pods now run for real on node.name, with IPs from 10.244.200.0/24

Needs root. Everything the node writes lives under `<cluster workdir>/node`,
its cgroups under /roundhouse-node, its links are `rhnode0` (Pod bridge) and
`rhdiscard0/1` (where Service IPs are routed while it runs; see nodenet.py).
One real node per machine. `stop()` tears it all down and records what (if
anything) was left behind in `leftovers` (see nodeclean.py).

Pods reach the API server through the `kubernetes` Service: its EndpointSlice
points at a socat relay on the bridge address, which forwards to the API
server on 127.0.0.1 (the API server never listens beyond loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import nodeclean, nodeimages, nodenet
from .nodeclean import HostSnapshot
from .processes import ManagedProcess, clean_env, spawn

if TYPE_CHECKING:
    from .controlplane import ControlPlane

NODE_NAME = "real-node-0"
NODE_LABELS = {"type": "real", "roundhouse.dev/real-node": "true"}
CGROUP_ROOT = "/roundhouse-node"
CNI_NETWORK = "roundhouse-node"
APISERVER_RELAY_PORT = 6443  # on the bridge address, which only this node owns
KUBELET_PORT = 10250
MAX_PODS = 60  # the kubelet's maxPods unless ControlPlane(real_node_max_pods=...) says otherwise
# Set on the kwok nodes while a real node runs, so ordinary Pods all land on it.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
HERE = Path(__file__).resolve().parent
DEPS_SCRIPT = HERE / "node-deps.sh"
# A closed local port: an image pull that slips through fails here, never leaves.
_DEAD_PROXY = "http://127.0.0.1:9"

Logger = Callable[[str], None]


class RealNodeError(RuntimeError):
    """The real node could not be started."""


def ensure_node_deps(log: Logger) -> None:
    """Install containerd, runc, CNI plugins, conntrack, iptables, buildah, socat if missing."""
    res = subprocess.run([str(DEPS_SCRIPT)], capture_output=True, text=True, check=False)
    for line in (res.stdout + res.stderr).splitlines():
        log(line)
    if res.returncode != 0:
        raise RealNodeError(f"{DEPS_SCRIPT} failed (exit {res.returncode})")


class RealNode:
    """containerd, kubelet, kube-proxy and an API server relay for one real Node."""

    def __init__(
        self, cp: ControlPlane, *, log: Logger | None = None, max_pods: int = MAX_PODS
    ) -> None:
        self.cp = cp
        self.log: Logger = log or cp.log
        self.name = NODE_NAME
        self.max_pods = max_pods
        self.address = nodenet.NODE_ADDRESS
        self.node_dir = cp.workdir_path / "node"
        self.processes: list[ManagedProcess] = []
        self.snapshot = HostSnapshot()
        self.network = nodenet.NodeNetwork()
        self.startup_seconds = 0.0
        self.teardown_seconds = 0.0
        self.leftovers: list[str] = []
        self._started = False

    # ---- paths

    @property
    def containerd_socket(self) -> Path:
        return self.node_dir / "containerd.sock"

    @property
    def logs_dir(self) -> Path:
        return self.cp.logs_dir

    def _path(self, *parts: str) -> Path:
        return self.node_dir.joinpath(*parts)

    # ---- lifecycle

    def start(self) -> RealNode:
        """Bring the node to Ready; on failure tear down what was started and re-raise."""
        if os.geteuid() != 0:
            raise RealNodeError("a real node needs root (links, iptables, mounts, cgroups)")
        ensure_node_deps(self.log)
        self._sweep_killed_node()
        pause = nodeimages.build_image(nodeimages.PAUSE)
        began = time.monotonic()
        self.snapshot = HostSnapshot.take()
        self._started = True
        try:
            self._start(pause)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self.log(f"real node {self.name} Ready in {self.startup_seconds:.1f}s ({self.address})")
        return self

    def _start(self, pause_archive: Path) -> None:
        for binary in ("kubelet", "kube-proxy"):
            if not Path(self.cp.binary(binary)).exists():
                raise RealNodeError(
                    f"{self.cp.binary(binary)} is missing: run e2e/cluster/build-binaries.sh"
                )
        self.node_dir.mkdir(mode=0o700)
        self._path(nodeclean.SNAPSHOT_FILE).write_text(json.dumps(self.snapshot.to_state()))
        for sub in ("pki", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "containerd"):
            self._path(sub).mkdir(parents=True, exist_ok=True)
        self.log(f"real node: bridge {nodenet.BRIDGE} {self.address}/{nodenet.NODE_PREFIX}")
        self.network.setup()
        nodeclean.create_cgroup_root(CGROUP_ROOT)
        self._write_pki()
        self._start_containerd()
        self.import_images([pause_archive])
        self._start_relay()
        self._point_kubernetes_service_at_relay()
        kubelet = self._start_kubelet()
        proxy = self._start_kube_proxy()
        self.cp.wait_for(f"node {self.name} Ready", self._ready, [*self.processes])
        self.cp.wait_for(
            "kube-proxy /healthz",
            lambda: _http_ok(f"http://127.0.0.1:{self._proxy_healthz_port}/healthz"),
            [kubelet, proxy],
        )

    def stop(self) -> None:
        """Stop everything and undo every host change; fills `leftovers`.

        Every step runs even if an earlier one failed: the leftover check then
        names whatever a failed step did not remove.
        """
        if not self._started:
            return
        self._started = False
        began = time.monotonic()
        for proc in reversed(self.processes):
            if proc.name != "containerd":  # containerd goes last: it deletes the containers
                self._step(f"stop {proc.name}", proc.stop)
        self._step("kill Pod processes", lambda: nodeclean.kill_cgroup_processes(CGROUP_ROOT))
        self._step("stop containerd", self._stop_containerd)
        self.processes = []
        self._step("kill shims", self._kill_strays)
        self._step("unmount", lambda: nodeclean.unmount_all(self.node_dir))
        self._step("remove cgroups", lambda: nodeclean.remove_cgroups(CGROUP_ROOT))
        self._step("clean iptables", self._cleanup_iptables)
        self._step("remove links and routes", self.network.teardown)
        self._step("restore sysctls", self._restore_sysctls)
        self._step(
            "remove host paths",
            lambda: nodeclean.remove_host_paths(self.node_dir, CNI_NETWORK, self.snapshot),
        )
        shutil.rmtree(self.node_dir, ignore_errors=True)  # the logs live in cp.logs_dir
        self.teardown_seconds = time.monotonic() - began
        self.leftovers = self.find_leftovers()
        summary = "nothing left behind" if not self.leftovers else f"LEFT: {self.leftovers}"
        self.log(f"real node stopped in {self.teardown_seconds:.1f}s; {summary}")

    def _sweep_killed_node(self) -> None:
        """One real node per machine: refuse if one runs, clean up if a killed one is left."""
        live = nodeclean.live_node_dirs()
        if live:
            raise RealNodeError(f"another real node runs (one per machine): {', '.join(live)}")
        leftover_dirs = nodeclean.stale_node_dirs(self.node_dir.parent.parent)
        if nodenet.link_exists(nodenet.BRIDGE) or leftover_dirs:
            nodeclean.sweep_stale_node(
                self.node_dir.parent.parent, CGROUP_ROOT, CNI_NETWORK, self.log
            )

    def _step(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as err:  # keep tearing down; find_leftovers reports the rest
            self.log(f"real node teardown: {what} failed: {type(err).__name__}: {err}")

    def _stop_containerd(self) -> None:
        for proc in self.processes:
            if proc.name == "containerd" and proc.alive():
                self._delete_containers()  # lets the shims exit and unmount container rootfs
                proc.stop()

    def _restore_sysctls(self) -> None:
        changed = nodenet.restore_sysctls(self.snapshot.sysctls)
        if changed:
            self.log(f"restored sysctls (found, restored): {changed}")

    def find_leftovers(self) -> list[str]:
        return nodeclean.find_leftovers(self.node_dir, CGROUP_ROOT, CNI_NETWORK, self.snapshot)

    # ---- state (detached clusters)

    def to_state(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot.to_state(),
            "processes": [p.to_state() for p in self.processes],
            "proxy_healthz_port": self._proxy_healthz_port,
        }

    @classmethod
    def from_state(cls, cp: ControlPlane, state: Mapping[str, Any]) -> RealNode:
        node = cls(cp)
        node.snapshot = HostSnapshot.from_state(state["snapshot"])
        node.processes = [ManagedProcess.from_state(p) for p in state["processes"]]
        node._proxy_healthz_port = int(state["proxy_healthz_port"])
        node._started = True
        return node

    # ---- images

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        res = subprocess.run(argv, capture_output=True, text=True, check=False, env=clean_env())
        if check and res.returncode != 0:
            raise RealNodeError(f"{' '.join(argv)}: {res.stderr.strip()}")
        return res

    def import_images(self, paths: Sequence[Path]) -> list[str]:
        """Import docker-archive tars into the node's containerd; returns the image names."""
        names = []
        for path in paths:
            out = self.ctr("images", "import", str(path)).stdout
            self.log(f"imported {path.name}: {out.strip()}")
            names += [ln.split()[1] for ln in out.splitlines() if ln.startswith("unpacking ")]
        return names

    def images(self) -> list[str]:
        return self.ctr("images", "list", "--quiet").stdout.split()

    # ---- pieces

    _proxy_healthz_port = 0

    def _write_pki(self) -> None:
        ca = self.cp.ca
        pki = self._path("pki")
        ca.issue(f"system:node:{self.name}", ["system:nodes"], client=True).write(pki, "kubelet")
        ca.issue(self.name, dns_names=[self.name], ip_addresses=[self.address], server=True).write(
            pki, "kubelet-serving"
        )
        ca.issue("system:kube-proxy", client=True).write(pki, "kube-proxy")
        for stem, user in (
            ("kubelet", f"system:node:{self.name}"),
            ("kube-proxy", "system:kube-proxy"),
        ):
            self.cp.write_kubeconfig_for_cert(
                self._path(f"{stem}.kubeconfig"), user, pki / f"{stem}.crt", pki / f"{stem}.key"
            )

    def _spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        self.log(f"starting {name}")
        proc = spawn(
            name,
            argv,
            self.logs_dir / f"{name}.log",
            self.node_dir,
            env if env is not None else clean_env(),
            self.cp.detached,
        )
        self.processes.append(proc)
        return proc

    def _start_containerd(self) -> None:
        config = self._path("containerd", "config.toml")
        config.write_text(containerd_config(self.node_dir))
        env = clean_env()
        env.update(HTTP_PROXY=_DEAD_PROXY, HTTPS_PROXY=_DEAD_PROXY, NO_PROXY="")
        env.update(http_proxy=_DEAD_PROXY, https_proxy=_DEAD_PROXY, no_proxy="")
        (self._path("cni", "net.d") / "10-roundhouse.conflist").write_text(
            json.dumps(cni_config(self._path("cni", "ipam")), indent=2)
        )
        proc = self._spawn("containerd", ["containerd", "--config", str(config)], env)
        self.cp.wait_for(
            "containerd socket",
            lambda: self.ctr("version", check=False).returncode == 0,
            [proc],
        )

    def _start_relay(self) -> None:
        target = f"TCP:127.0.0.1:{self.cp.ports.apiserver}"
        listen = f"TCP-LISTEN:{APISERVER_RELAY_PORT},bind={self.address},reuseaddr,fork"
        self._spawn("apiserver-relay", ["socat", listen, target])

    def _point_kubernetes_service_at_relay(self) -> None:
        """The `kubernetes` Service's endpoint: the relay (the reconciler is off)."""
        port = {"name": "https", "port": APISERVER_RELAY_PORT, "protocol": "TCP"}
        rest = self.cp.rest
        slice_body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "real-node.roundhouse.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.address], "conditions": {"ready": True}}],
            "ports": [port],
        }
        endpoints_body = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                # Mirroring would add a second slice for the same address.
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
            },
            "subsets": [{"addresses": [{"ip": self.address}], "ports": [port]}],
        }
        for path, body in (
            ("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice_body),
            ("/api/v1/namespaces/default/endpoints", endpoints_body),
        ):
            rest.request("DELETE", f"{path}/kubernetes")
            rest.json("POST", path, body)

    def _start_kubelet(self) -> ManagedProcess:
        config = self._path("kubelet-config.json")
        resolv = self._path("resolv.conf")
        resolv.write_text("nameserver 127.0.0.1\n")  # Pods resolve nothing off this machine
        healthz = self.cp.allocate_port()
        config.write_text(
            json.dumps(
                kubelet_config(
                    address=self.address,
                    ca_file=self.cp.ca_file,
                    pki=self._path("pki"),
                    containerd_socket=self.containerd_socket,
                    resolv_conf=resolv,
                    pod_logs=self._path("pod-logs"),
                    healthz_port=healthz,
                    max_pods=self.max_pods,
                ),
                indent=2,
            )
        )
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        return self._spawn(
            "kubelet",
            [
                self.cp.binary("kubelet"),
                f"--config={config}",
                f"--kubeconfig={self._path('kubelet.kubeconfig')}",
                f"--root-dir={self._path('kubelet')}",
                f"--cert-dir={self._path('pki')}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
                f"--node-labels={labels}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> ManagedProcess:
        self._proxy_healthz_port = self.cp.allocate_port()
        metrics = self.cp.allocate_port()
        config = self._path("kube-proxy-config.json")
        config.write_text(
            json.dumps(
                kube_proxy_config(
                    self._path("kube-proxy.kubeconfig"),
                    self.name,
                    self.address,
                    self._proxy_healthz_port,
                    metrics,
                ),
                indent=2,
            )
        )
        return self._spawn(
            "kube-proxy", [self.cp.binary("kube-proxy"), f"--config={config}", "--v=1"]
        )

    def _ready(self) -> bool:
        status, raw = self.cp.rest.request("GET", f"/api/v1/nodes/{self.name}")
        if status != 200:
            return False
        node = json.loads(raw)
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)

    # ---- teardown pieces

    def _delete_containers(self) -> None:
        for task in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", task, check=False)
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("containers", "delete", container, check=False)

    def _kill_strays(self) -> None:
        """Shims (and anything else) still naming the node dir: started by us, so ours to kill."""
        for _ in range(3):
            strays = nodeclean.pids_referencing(str(self.node_dir))
            if not strays:
                return
            for pid in strays:
                nodeclean.kill_pid(pid)
            time.sleep(0.3)

    def _cleanup_iptables(self) -> None:
        binary = self.cp.bin_dir / "kube-proxy" if self.cp.bin_dir else None
        if binary is not None and binary.exists():
            subprocess.run(
                [str(binary), "--cleanup", "--v=0"],
                capture_output=True,
                check=False,
                env=clean_env(),
            )
        for command in ("iptables", "ip6tables"):  # the kubelet's own KUBE-* chains too
            nodeclean.flush_kube_chains(command)


def _http_ok(url: str) -> bool:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- configs


def containerd_config(node_dir: Path) -> str:
    """containerd 1.6 config: private root, state and socket; CRI for the kubelet."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    state = node_dir / "containerd" / "state"
    return f"""version = 2
root = "{node_dir / "containerd" / "root"}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{node_dir / "containerd.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node_dir / "containerd" / "opt"}"

[{cri}]
  sandbox_image = "{nodeimages.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{state / "runc"}"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{node_dir / "cni" / "net.d"}"
  max_conf_num = 1
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """Bridge without gateway or masquerade: the host never forwards Pod traffic."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": nodenet.BRIDGE,
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": nodenet.NODE_SUBNET, "gateway": nodenet.NODE_ADDRESS}]],
                    "routes": [{"dst": "0.0.0.0/0", "gw": nodenet.NODE_ADDRESS}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }


def kubelet_config(
    *,
    address: str,
    ca_file: Path,
    pki: Path,
    containerd_socket: Path,
    resolv_conf: Path,
    pod_logs: Path,
    healthz_port: int,
    max_pods: int = MAX_PODS,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this host has cgroup v1
        "cgroupDriver": "cgroupfs",  # PID 1 is not systemd
        "cgroupRoot": CGROUP_ROOT,  # one subtree to clean up
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "address": address,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(pod_logs),
        "volumePluginDir": str(pod_logs.parent / "volume-plugins"),  # not /usr/libexec
        "maxPods": max_pods,
        "clusterDomain": "cluster.local",
        # Thresholds low enough that a busy test machine never evicts the suite's Pods.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
    }


def kube_proxy_config(
    kubeconfig: Path, node_name: str, address: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "bindAddress": address,
        "clusterCIDR": "10.244.0.0/16",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{address}/32"],  # never eth0
        "oomScoreAdj": 0,
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # Leave the host's conntrack sysctls alone.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
