"""Shared unit-tier helpers: build LoadBalancers, run the real `haproxy -c`."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from roundhouse.graph import ProxyGraph
from roundhouse.placeholder_certificates import write_placeholder_certificates
from roundhouse.render.haproxy import RenderOptions, render_haproxy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/unit/golden from the translation "
                          "(test_translation_golden.py); review the diff")


def lb_object(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "LoadBalancer",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1", "generation": 1},
        "spec": {
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            "backends": [{"service": "web", "port": 80}],
        },
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


HaproxyCheck = Callable[[ProxyGraph], subprocess.CompletedProcess[str]]


@functools.cache
def haproxy_binaries() -> tuple[str, ...]:
    """Debian's haproxy (2.6) and one of the LTS branch the manifests run (3.4, from
    e2e/cluster/fetch-haproxy-lts.sh, or $ROUNDHOUSE_HAPROXY_LTS): every rendered config
    must pass both, and the agent is tested against both. ROUNDHOUSE_HAPROXY_LTS=none:
    only the system's (a machine with no Debian mirror; the kind job runs the LTS image)."""
    system = shutil.which("haproxy")
    if system is None:
        pytest.fail("the unit tier needs the real haproxy binary (apt-get install haproxy); "
                    ".ci/run installs it")
    lts = os.environ.get("ROUNDHOUSE_HAPROXY_LTS")
    if lts == "none":
        return (system,)
    if not lts:
        done = subprocess.run([str(REPO / "e2e" / "cluster" / "fetch-haproxy-lts.sh")],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(f"cannot get the LTS haproxy: {done.stderr.strip()}")
        lts = done.stdout.strip().splitlines()[-1]
    return system, lts


def haproxy_version(binary: str) -> str:
    """'2.6.12-1+deb12u4', '3.2.26-1': the first line of `haproxy -v`, third word."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=True).stdout
    return out.split()[2]


@pytest.fixture(scope="session", params=[0, 1], ids=["haproxy-debian", "haproxy-lts"])
def haproxy_binary(request: pytest.FixtureRequest) -> str:
    """Each test that runs HAProxy itself runs once per binary of haproxy_binaries()."""
    binaries = haproxy_binaries()
    if request.param >= len(binaries):
        pytest.skip("no LTS haproxy on this machine (ROUNDHOUSE_HAPROXY_LTS=none)")
    return binaries[request.param]


def check_graph(graph: ProxyGraph) -> tuple[subprocess.CompletedProcess[str], str]:
    """Render `graph` with throwaway certificates and run `haproxy -c` on it with every
    binary of haproxy_binaries(): (the first failure, else the last result; the config)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_placeholder_certificates(
            Path(tmp), [c.file for c in graph.certificates if c.kind == "pair"],
            [c.file for c in graph.certificates if c.kind == "ca"])
        config = render_haproxy(graph, RenderOptions(runtime_dir=tmp, cert_dir=tmp)).config
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config)
        for binary in haproxy_binaries():
            result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True,
                                    text=True, check=False)
            if result.returncode != 0:
                result.stdout = f"[haproxy {haproxy_version(binary)}]\n{result.stdout}"
                break
    return result, config


@pytest.fixture
def haproxy_check() -> HaproxyCheck:
    """check_graph, returning only the haproxy result."""
    return lambda graph: check_graph(graph)[0]
