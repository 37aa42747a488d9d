"""The real node's generated configs (e2e/cluster/node.py) say what the host needs.

Pure checks of the files handed to containerd, the CNI bridge plugin, the
kubelet and kube-proxy; tests/integration/test_real_node.py runs them for real.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from e2e.cluster import nodeimages, nodenet
from e2e.cluster.node import (
    CGROUP_ROOT,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
)

NODE_DIR = Path("/tmp/rh-test/node")


def test_containerd_keeps_everything_in_the_node_dir_and_uses_our_pause_image() -> None:
    config = tomllib.loads(containerd_config(NODE_DIR))
    assert config["root"].startswith(str(NODE_DIR))
    assert config["state"].startswith(str(NODE_DIR))
    assert config["grpc"]["address"] == str(NODE_DIR / "containerd.sock")
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == nodeimages.PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["disable_apparmor"] is True
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert runc["Root"].startswith(str(NODE_DIR))  # not /run/containerd/runc
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"
    assert cri["cni"]["conf_dir"].startswith(str(NODE_DIR))


def test_cni_bridge_never_forwards_or_masquerades() -> None:
    bridge = cni_config(NODE_DIR / "ipam")["plugins"][0]
    assert bridge["bridge"] == nodenet.BRIDGE
    assert bridge["isGateway"] is False  # the plugin would turn ip_forward on
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["ranges"] == [[{"subnet": nodenet.NODE_SUBNET, "gateway": nodenet.NODE_ADDRESS}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0", "gw": nodenet.NODE_ADDRESS}]
    assert ipam["dataDir"].startswith(str(NODE_DIR))


def test_kubelet_listens_on_the_bridge_only_and_authenticates_callers() -> None:
    config = kubelet_config(
        address=nodenet.NODE_ADDRESS,
        ca_file=Path("/ca.crt"),
        pki=NODE_DIR / "pki",
        containerd_socket=NODE_DIR / "containerd.sock",
        resolv_conf=NODE_DIR / "resolv.conf",
        pod_logs=NODE_DIR / "pod-logs",
        healthz_port=12345,
    )
    assert config["address"] == nodenet.NODE_ADDRESS
    assert config["readOnlyPort"] == 0
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == "/ca.crt"
    assert config["authorization"]["mode"] == "Webhook"
    assert (config["cgroupDriver"], config["cgroupRoot"]) == ("cgroupfs", CGROUP_ROOT)
    assert config["failCgroupV1"] is False and config["failSwapOn"] is False
    for key in ("podLogsDir", "volumePluginDir", "resolvConf"):
        assert config[key].startswith(str(NODE_DIR)), key


def test_kube_proxy_serves_node_ports_on_the_bridge_only() -> None:
    config = kube_proxy_config(NODE_DIR / "kp.kubeconfig", "n", nodenet.NODE_ADDRESS, 1, 2)
    assert config["mode"] == "iptables"
    assert config["nodePortAddresses"] == [f"{nodenet.NODE_ADDRESS}/32"]
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
    assert config["metricsBindAddress"].startswith("127.0.0.1:")
    conntrack = config["conntrack"]
    assert conntrack["maxPerCore"] == 0 and conntrack["min"] == 0


def test_node_service_range_stays_inside_the_guarded_range_but_off_its_probe() -> None:
    import ipaddress

    from e2e.cluster import netguard

    node_range = ipaddress.ip_network(nodenet.SERVICE_CIDR)
    assert node_range.subnet_of(ipaddress.ip_network(netguard.SERVICE_CIDR))
    assert ipaddress.ip_address(nodenet.FIRST_SERVICE_IP) in node_range
    for probe in netguard.PROBE_ADDRESSES:  # concurrent clusters' guard check stays valid
        assert ipaddress.ip_address(probe) not in node_range
