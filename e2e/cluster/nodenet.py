"""Host networking of the real node: the Pod bridge, the Service discard device, guards.

    bridge rhnode0 (10.244.200.1/24)   Pods' veths plug in here (CNI bridge plugin)
    veth rhdiscard0 <-> rhdiscard1     10.96.0.0/16 routes here while the node runs

Nothing here makes traffic leave the machine: ip_forward stays 0, a FORWARD rule
drops anything routed from the bridge to another interface, and Service IPs are
routed to a veth pair whose far end drops every packet (no address, no
forwarding). The veth replaces the `unreachable` route of the Service range
because an unreachable route fails connect() before kube-proxy's DNAT runs.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import netguard

BRIDGE = "rhnode0"
DISCARD = netguard.DISCARD_DEVICE
DISCARD_PEER = netguard.DISCARD_PEER
NODE_SUBNET = "10.244.200.0/24"  # far above kwok's 10.244.(i+1).0/24 node ranges
NODE_ADDRESS = "10.244.200.1"
NODE_PREFIX = 24
# The kubelet sets the first three at start; kube-proxy may touch the others.
WATCHED_SYSCTLS = (
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
)


class NodeNetworkError(RuntimeError):
    """Host networking for the real node could not be set up."""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise NodeNetworkError(f"{' '.join(argv)}: {(res.stderr or res.stdout).strip()}")
    return res


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


# --------------------------------------------------------------------------- sysctls


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in WATCHED_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def restore_sysctls(saved: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Write back every value that changed; return {name: (was, now)} of those."""
    changed = {}
    current = read_sysctls()
    for name, value in saved.items():
        if current.get(name) != value:
            changed[name] = (current.get(name, "?"), value)
            _sysctl_path(name).write_text(value + "\n")
    return changed


# --------------------------------------------------------------------------- iptables


def _forward_guard_rule() -> list[str]:
    # Bridged Pod-to-Pod frames also pass FORWARD (br_netfilter) with in=out=bridge;
    # only what would be routed from the bridge to another interface is dropped.
    return ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"]


def add_forward_guard() -> None:
    if _run(["iptables", "-w", "-C", *_forward_guard_rule()], check=False).returncode != 0:
        _run(["iptables", "-w", "-I", *_forward_guard_rule()])


def remove_forward_guard() -> None:
    while _run(["iptables", "-w", "-D", *_forward_guard_rule()], check=False).returncode == 0:
        pass


# --------------------------------------------------------------------------- links


@dataclass
class NodeNetwork:
    """Creates and removes the bridge, the discard veth and the forward guard."""

    def setup(self) -> None:
        if link_exists(BRIDGE):
            raise NodeNetworkError(
                f"{BRIDGE} exists: another real node runs (one per machine) or a killed one "
                "left it behind (`python e2e/cluster/cli.py down` or `ip link del "
                f"{BRIDGE}`)"
            )
        if _run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() != "0":
            raise NodeNetworkError("net.ipv4.ip_forward is on; the real node needs it off")
        add_forward_guard()  # before any Pod exists
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{NODE_ADDRESS}/{NODE_PREFIX}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        if not link_exists(DISCARD):
            _run(["ip", "link", "add", DISCARD, "type", "veth", "peer", "name", DISCARD_PEER])
            _run(["ip", "link", "set", DISCARD, "up"])
            _run(["ip", "link", "set", DISCARD_PEER, "up"])
        netguard.route_services_to_discard()

    def teardown(self) -> None:
        """Undo `setup`, in an order that never leaves the Service range without a route."""
        netguard.route_services_unreachable()
        for name in (DISCARD, BRIDGE):
            if link_exists(name):
                _run(["ip", "link", "del", name])
        remove_forward_guard()


def pod_veths() -> Iterator[str]:
    """Host-side veths still plugged into the bridge (there should be none after teardown)."""
    out = _run(["ip", "-o", "link", "show", "master", BRIDGE], check=False).stdout
    for line in out.splitlines():
        yield line.split(":")[1].strip().split("@")[0]
