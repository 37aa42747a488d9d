"""Host networking of the real node: the Pod bridge, the Service discard device, guards.

    bridge rhnode0 (10.244.200.1/24)   Pods' veths plug in here (CNI bridge plugin)
    veth rhdiscard0 <-> rhdiscard1     10.96.128.0/17 routes here while the node runs

Nothing here makes traffic leave the machine: ip_forward stays 0, a FORWARD rule
drops anything routed from the bridge to another interface, and Service IPs are
routed to a veth pair whose far end drops every packet (no address, no
forwarding). An `unreachable` route would fail connect() before kube-proxy's
DNAT runs, so a real-node cluster allocates its Service IPs from 10.96.128.0/17
and only that more specific range goes to the veth: the shared, reference
counted `unreachable 10.96.0.0/16` of netguard.py stays as it is (other clusters
may run at once), and if the veth ever disappears its route goes with it and
the unreachable /16 covers the range again.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import netguard

BRIDGE = "rhnode0"
DISCARD = "rhdiscard0"
DISCARD_PEER = "rhdiscard1"
# Inside netguard's unreachable 10.96.0.0/16; its probe address 10.96.0.1 stays outside.
SERVICE_CIDR = "10.96.128.0/17"
FIRST_SERVICE_IP = "10.96.128.1"
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
    """Write back every value that changed; return {name: (found, restored)} of those."""
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
            raise NodeNetworkError(f"{BRIDGE} exists: another real node runs (one per machine)")
        # The cluster's unreachable routes must be in place: they cover every address
        # this node routes once its links are gone.
        netguard.verify()
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
        _run(["ip", "route", "replace", SERVICE_CIDR, "dev", DISCARD])

    def teardown(self) -> None:
        """Undo `setup`; the Service range falls back to netguard's unreachable /16."""
        _run(["ip", "route", "del", SERVICE_CIDR, "dev", DISCARD], check=False)
        for name in (DISCARD, BRIDGE):
            if link_exists(name):
                _run(["ip", "link", "del", name])
        remove_forward_guard()


def pod_veths() -> Iterator[str]:
    """Host-side veths still plugged into the bridge (there should be none after teardown)."""
    out = _run(["ip", "-o", "link", "show", "master", BRIDGE], check=False).stdout
    for line in out.splitlines():
        yield line.split(":")[1].strip().split("@")[0]
