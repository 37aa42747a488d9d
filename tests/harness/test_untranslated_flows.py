"""kb.forget_untranslated_flows against the kernel's real conntrack, in a throwaway
network namespace: the mechanism behind the refused connections of the proxy-HA test.

A client on a node connecting to that node's own nodePort while kube-proxy still
rejects it (no endpoints yet) leaves a conntrack entry without DNAT; a later connection
from the same source port, once the Service has endpoints, matches it and is refused.
The scenario reproduces that with kube-proxy's two kinds of rule (a REJECT on NEW
connections in INPUT, a DNAT in nat OUTPUT), then checks that the helper removes the
stale entry and that the source port works again. Loopback only, in its own netns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SECOND_PORT, FRESH_PORT = 45002, 45100  # the scenario's SECOND and FIRST + 100
NEEDS = ("ip", "iptables", "conntrack")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in NEEDS),
    reason="needs root, ip, iptables and conntrack (make test-harness installs conntrack)")

SCENARIO = r"""
import errno, json, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from e2e.harness import kube_backends as kb

NODE, POD = "127.0.0.1", "127.0.0.2"
NODE_PORT, POD_PORT, FIRST, SECOND = 30406, 18080, 45000, 45002

def ipt(*args):
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)

pod = socket.socket()
pod.bind((POD, POD_PORT))
pod.listen(64)

def connect(sport):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind((NODE, sport))
    c.settimeout(3)
    try:
        c.connect((NODE, NODE_PORT))
        pod.accept()[0].close()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        c.close()

# NAT in use, as on every node: conntrack follows every flow.
ipt("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "1", "-j", "DNAT",
    "--to-destination", f"{POD}:1")
reject = ["INPUT", "-m", "conntrack", "--ctstate", "NEW", "-p", "tcp", "-d", NODE,
          "--dport", str(NODE_PORT), "-j", "REJECT"]
ipt("-A", *reject)  # the Service has no endpoints yet
out = {"rejected": [connect(FIRST), connect(SECOND)]}
ipt("-D", *reject)  # endpoints programmed
ipt("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", NODE, "--dport", str(NODE_PORT),
    "-j", "DNAT", "--to-destination", f"{POD}:{POD_PORT}")
out["first_port_reused"] = connect(FIRST)
out["fresh_port"] = connect(FIRST + 100)  # 45100
out["removed"] = kb.forget_untranslated_flows(NODE, NODE_PORT)
out["left"] = subprocess.run(["conntrack", "-L", "-p", "tcp", "--dport", str(NODE_PORT)],
                             capture_output=True, text=True, check=False).stdout
out["second_port_reused_after_removal"] = connect(SECOND)
out["removed_again"] = kb.forget_untranslated_flows(NODE, NODE_PORT)
print(json.dumps(out))
"""


def run_in_netns() -> dict[str, Any]:
    ns = f"rhct-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCENARIO,
                               str(REPO)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_rejected_flow_refuses_its_source_port_until_it_is_forgotten() -> None:
    out = run_in_netns()
    assert out["rejected"] == ["ECONNREFUSED", "ECONNREFUSED"], out
    # The flake: endpoints are there, yet a reused source port is refused by the node,
    # while a fresh one goes through the DNAT.
    assert out["first_port_reused"] == "ECONNREFUSED", out
    assert out["fresh_port"] == "ok", out
    # The second rejected flow is still waiting; the helper removes it (and only
    # untranslated ones: the translated flows above stay), and the port works again.
    assert out["removed"] == 1, out
    assert f"sport={FRESH_PORT}" in out["left"] and "src=127.0.0.2" in out["left"], out
    assert f"sport={SECOND_PORT} " not in out["left"], out
    assert out["second_port_reused_after_removal"] == "ok", out
    assert out["removed_again"] == 0, out
