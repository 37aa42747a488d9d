"""A real kubelet node beside the kwok nodes: real containers, real Service traffic.

Runs alone with `pytest tests/integration/test_real_node.py` (root only; set
ROUNDHOUSE_REAL_NODE=0 to skip). One cluster for the module; the tests run in
file order and the last one tears the node down and checks nothing is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from e2e.cluster import nodeclean, nodeimages, nodenet
from e2e.cluster.controlplane import ControlPlane
from e2e.cluster.node import KWOK_TAINT, NODE_NAME, RealNode

from tests.integration.test_control_plane import wait_until

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a real kubelet node needs root"),
    pytest.mark.skipif(
        os.environ.get("ROUNDHOUSE_REAL_NODE") == "0", reason="ROUNDHOUSE_REAL_NODE=0"
    ),
]

NAMESPACE = "real-node-test"
NODE_NETWORK = ipaddress.ip_network(nodenet.NODE_SUBNET)


# A real node starts containers more slowly than kwok fakes them.
REAL_NODE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    echo = nodeimages.build_image(nodeimages.ECHO)  # before the clock of the cluster starts
    cp = ControlPlane(
        controllers=True, nodes=2, real_node=True, log=lambda m: print(f"[real-node] {m}")
    )
    cp.start()
    try:
        assert cp.real_node is not None
        cp.real_node.import_images([echo])
        cp.rest.json("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        wait_until(
            "ServiceAccount default",
            lambda: (
                cp.rest.request("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")[0]
                == 200
            ),
            timeout=REAL_NODE_TIMEOUT,
        )
        yield cp
    finally:
        cp.stop()


def node_of(cp: ControlPlane) -> RealNode:
    assert cp.real_node is not None, "the real node is already torn down"
    return cp.real_node


def route_device(address: str) -> str:
    out = subprocess.run(
        ["ip", "route", "get", address], capture_output=True, text=True, check=False
    ).stdout
    words = out.split()
    assert "via" not in words, f"{address} would be routed through a gateway: {out!r}"
    assert "dev" in words, f"no device for {address}: {out!r}"
    return words[words.index("dev") + 1]


def echo_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "echo",
                    "image": nodeimages.ECHO_IMAGE,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": 8080},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def create(cp: ControlPlane, kind: str, body: dict[str, Any]) -> None:
    cp.rest.json("POST", f"/api/v1/namespaces/{NAMESPACE}/{kind}", body)


def get_pod(cp: ControlPlane, name: str) -> dict[str, Any]:
    return cp.rest.json("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")


def pod_ready(cp: ControlPlane, name: str) -> dict[str, Any] | None:
    pod = get_pod(cp, name)
    conditions = pod.get("status", {}).get("conditions", [])
    if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
        return pod
    return None


def http_get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=3) as resp:
        return str(resp.read().decode())


# --------------------------------------------------------------------------- tests


def test_real_node_is_ready_and_kwok_nodes_are_tainted(cluster: ControlPlane) -> None:
    node = node_of(cluster)
    got = cluster.rest.json("GET", f"/api/v1/nodes/{NODE_NAME}")
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert got["metadata"]["labels"]["type"] == "real"
    assert {"type": "InternalIP", "address": node.address} in got["status"]["addresses"]
    assert got["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert got["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    kwok = cluster.rest.json("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]
    assert len(kwok) == 2
    for item in kwok:
        assert KWOK_TAINT in item["spec"]["taints"]
    # Service IPs go to the discard veth, the node range to the bridge: never eth0.
    assert route_device(nodenet.FIRST_SERVICE_IP) == nodenet.DISCARD
    # The shared guard of other clusters' Service IPs is untouched.
    assert (
        "unreachable 10.96.0.0/16"
        in subprocess.run(
            ["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True
        ).stdout
    )
    assert route_device("10.244.200.77") == nodenet.BRIDGE
    assert set(node.images()) >= {nodeimages.PAUSE_IMAGE, nodeimages.ECHO_IMAGE}
    print(f"real node Ready in {node.startup_seconds:.1f}s (containerd+kubelet+kube-proxy)")


def test_pause_pod_runs_on_the_real_node(cluster: ControlPlane) -> None:
    create(
        cluster,
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pause"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "pause",
                        "image": nodeimages.PAUSE_IMAGE,
                        "imagePullPolicy": "Never",
                    }
                ],
            },
        },
    )

    def running() -> dict[str, Any] | None:
        pod = get_pod(cluster, "pause")
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    pod = wait_until("pause Pod Running", running, timeout=REAL_NODE_TIMEOUT)
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert ipaddress.ip_address(pod["status"]["podIP"]) in NODE_NETWORK
    # A real container: containerd runs a task for it.
    tasks = node_of(cluster).ctr("tasks", "list").stdout
    assert "RUNNING" in tasks


def test_echo_pods_serve_log_and_exec(cluster: ControlPlane) -> None:
    for name in ("echo-0", "echo-1"):
        create(cluster, "pods", echo_pod(name, {"app": "echo"}))
    pods = [wait_until(f"{n} Ready", partial(pod_ready, cluster, n), timeout=REAL_NODE_TIMEOUT)
            for n in ("echo-0", "echo-1")]
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 2
    for ip in ips:
        assert ipaddress.ip_address(ip) in NODE_NETWORK
        assert route_device(ip) == nodenet.BRIDGE  # checked before any traffic
    assert http_get(f"http://{ips[0]}:8080/hello").split() == ["echo-0", "GET", "/hello"]

    logs = cluster.kubectl("logs", "-n", NAMESPACE, "echo-0").stdout
    assert "echo echo-0 listening on :8080" in logs
    out = cluster.kubectl("exec", "-n", NAMESPACE, "echo-1", "--", "/echo", "version").stdout
    assert out.strip() == "roundhouse-node-echo v1"


def test_cluster_ip_spreads_over_both_pods(cluster: ControlPlane) -> None:
    create(
        cluster,
        "services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    cluster_ip = cluster.rest.json("GET", f"/api/v1/namespaces/{NAMESPACE}/services/echo")["spec"][
        "clusterIP"
    ]
    assert route_device(cluster_ip) == nodenet.DISCARD  # before any traffic

    def answer() -> str | None:
        try:
            return http_get(f"http://{cluster_ip}/")
        except OSError:
            return None  # kube-proxy has not synced the Service yet

    wait_until(f"{cluster_ip} to answer through kube-proxy", answer, timeout=60)
    seen = Counter(http_get(f"http://{cluster_ip}/").split()[0] for _ in range(30))
    assert set(seen) == {"echo-0", "echo-1"}, seen
    print(f"30 requests to {cluster_ip}: {dict(seen)}")


def test_pod_reaches_the_api_server_through_the_kubernetes_service(
    cluster: ControlPlane,
) -> None:
    # /echo probe-apiserver: in-cluster config (10.96.128.1:443, SA token, CA verified).
    out = cluster.kubectl(
        "exec", "-n", NAMESPACE, "echo-0", "--", "/echo", "probe-apiserver"
    ).stdout
    assert json.loads(out)["gitVersion"] == "v1.36.3"


def test_teardown_leaves_nothing_behind(cluster: ControlPlane) -> None:
    node = node_of(cluster)
    node_dir = node.node_dir
    began = time.monotonic()
    node.stop()
    cluster.real_node = None  # the fixture's cp.stop() then stops only the control plane
    print(f"real node teardown in {time.monotonic() - began:.1f}s")
    assert node.leftovers == []
    # The check really looks: a fresh scan agrees, and the guard route is back.
    assert (
        nodeclean.find_leftovers(node_dir, "/roundhouse-node", "roundhouse-node", node.snapshot)
        == []
    )
    assert not nodenet.link_exists(nodenet.BRIDGE)
    out = subprocess.run(
        ["ip", "route", "get", nodenet.FIRST_SERVICE_IP], capture_output=True, text=True
    )
    assert "unreachable" in out.stdout + out.stderr or "No route to host" in out.stderr


def test_leftover_check_sees_what_a_teardown_would_miss(tmp_path: Any) -> None:
    """The check itself: a mount, a link and a KUBE-* chain made after the snapshot show up."""
    node_dir = tmp_path / "node"
    (node_dir / "mnt").mkdir(parents=True)
    chain = "KUBE-RH-LEFTOVER-TEST"
    # A run cut short (a missing binary, a kill) may have left its link and chain behind.
    subprocess.run(["ip", "link", "del", "vethrhleft0"], check=False, capture_output=True)
    subprocess.run(["iptables", "-w", "-X", chain], check=False, capture_output=True)
    before = nodeclean.HostSnapshot.take()
    try:
        # Made inside the try: whatever was made is undone even if a later step fails.
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(node_dir / "mnt")], check=True)
        subprocess.run(["ip", "link", "add", "vethrhleft0", "type", "veth", "peer", "name",
                        "vethrhleft1"], check=True)
        subprocess.run(["iptables", "-w", "-N", chain], check=True)
        found = "\n".join(
            nodeclean.find_leftovers(node_dir, "/roundhouse-node", "roundhouse-node", before)
        )
        assert f"mount {node_dir / 'mnt'}" in found
        assert "link vethrhleft0" in found and "link vethrhleft1" in found
        assert chain in found
        assert f"directory {node_dir}" in found
    finally:
        subprocess.run(["umount", str(node_dir / "mnt")], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", "vethrhleft0"], check=False, capture_output=True)
        subprocess.run(["iptables", "-w", "-X", chain], check=False, capture_output=True)
    node_dir.joinpath("mnt").rmdir()
    node_dir.rmdir()
    assert nodeclean.find_leftovers(node_dir, "/roundhouse-node", "roundhouse-node", before) == []
