"""Shared unit-tier helpers: build LoadBalancers, run the real `haproxy -c`."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from roundhouse.graph import ProxyGraph
from roundhouse.render.haproxy import RenderOptions, render_haproxy
from roundhouse.testing import write_placeholder_certificates

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


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


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.fail("the unit tier needs the real haproxy binary (apt-get install haproxy); "
                    ".ci/run installs it")
    return path


@pytest.fixture
def haproxy_check(haproxy_binary: str, tmp_path: Path) -> HaproxyCheck:
    """Render a graph into tmp_path with throwaway certificates and run `haproxy -c`."""

    def check(graph: ProxyGraph) -> subprocess.CompletedProcess[str]:
        write_placeholder_certificates(tmp_path, [c.file for c in graph.certificates])
        rendered = render_haproxy(graph, RenderOptions(runtime_dir=str(tmp_path),
                                                       cert_dir=str(tmp_path)))
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(rendered.config)
        return subprocess.run([haproxy_binary, "-c", "-f", str(cfg)], capture_output=True,
                              text=True, check=False)

    return check
