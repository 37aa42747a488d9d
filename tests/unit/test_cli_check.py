"""`roundhouse render --check` never runs code from its input (issue 11, class 7).

Each case puts a `lua-load` of a Lua file that writes a marker file into a field the
offline CLI reads. Before the fix, metadata.namespace reached the config's first comment
unvalidated, its newline started a new line, and `haproxy -c` ran the Lua file while
checking. Now every such field is validated, the CLI refuses a config holding a
directive that loads or runs code before any check, and the check runs in an empty
directory with no environment.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse.cli import _haproxy_check, main
from roundhouse.graph import ClusterState, build_loadbalancer_graph
from roundhouse.model import SpecError, parse_loadbalancer
from roundhouse.render.guard import forbidden_lines
from tests.unit.conftest import REPO, lb_object

OFFLINE = REPO / "examples" / "offline-cluster.yaml"
Obj = dict[str, Any]


@pytest.fixture
def lua(tmp_path: Path) -> tuple[Path, Path]:
    """(a Lua file that writes a marker when loaded, the marker)."""
    marker = tmp_path / "ran"
    script = tmp_path / "evil.lua"
    script.write_text(f'local f = io.open("{marker}", "w") f:write("ran") f:close()\n')
    return script, marker


def injected(script: Path) -> str:
    return f"x\nglobal\n    lua-load {script}\n#"


def lb_in_namespace(namespace: Any) -> Obj:
    """lb_object() in `namespace`; None: with no namespace (the CLI's -n decides)."""
    obj = lb_object()
    obj["metadata"]["namespace"] = namespace
    if namespace is None:
        del obj["metadata"]["namespace"]
    return obj


def lb_with_endpoint_address(address: str) -> tuple[Obj, list[Obj]]:
    """A LoadBalancer for the Service `web` and a --services file whose only endpoint
    has `address`."""
    docs = [d for d in yaml.safe_load_all(OFFLINE.read_text()) if d]
    service = next(d for d in docs if d["kind"] == "Service")
    name = service["metadata"]["name"]
    port = service["spec"]["ports"][0]
    obj = lb_object(backends=[{"service": name, "port": port["port"]}])
    obj["metadata"]["namespace"] = service["metadata"].get("namespace", "default")
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{name}-x", "namespace": obj["metadata"]["namespace"],
                     "labels": {"kubernetes.io/service-name": name}},
        "ports": [{"name": port.get("name"), "port": port.get("targetPort", 8080),
                   "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }
    return obj, [copy.deepcopy(service), slice_]


def run_render(tmp_path: Path, docs: list[Obj], services: list[Obj] | None = None,
               *extra: str) -> int:
    spec = tmp_path / "in.yaml"
    spec.write_text(yaml.safe_dump_all(docs))
    argv = ["render", "-f", str(spec), "--check", "--haproxy-cfg", *extra]
    if services is not None:
        cluster = tmp_path / "cluster.yaml"
        cluster.write_text(yaml.safe_dump_all(services))
        argv += ["--services", str(cluster)]
    return main(argv)


Case = Callable[[Path], tuple[list[Obj], list[Obj] | None, tuple[str, ...]]]

CASES: list[Any] = [
    pytest.param(lambda s: ([lb_in_namespace(injected(s))], None, ()),
                 "metadata.namespace", id="metadata.namespace"),
    pytest.param(lambda s: ([lb_in_namespace(None)], None, ("-n", injected(s))),
                 "metadata.namespace", id="namespace-option"),
    pytest.param(lambda s: ([lb_with_endpoint_address(f"10.0.0.1:80{injected(s)}")[0]],
                            lb_with_endpoint_address(f"10.0.0.1:80{injected(s)}")[1], ()),
                 None, id="endpoint-address"),
]


@pytest.mark.parametrize(("case", "field"), CASES)
def test_render_check_runs_no_code_from_its_input(
        case: Case, field: str | None, lua: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    script, marker = lua
    docs, services, extra = case(script)
    status = run_render(tmp_path, docs, services, *extra)
    out = capsys.readouterr()
    assert not marker.exists(), "haproxy -c ran the Lua file"
    assert "lua-load" not in out.out
    if field:  # refused with the field named, before anything renders
        assert status == 2
        assert f"{field}: must be a DNS label" in out.err
    else:  # an endpoint the API server would never store is left out
        assert status == 0, out.err


@pytest.mark.parametrize("namespace", ["Default", "a" * 64, "a.b", "a/b", "-a", "", 5])
def test_namespaces_kubernetes_refuses_are_refused(namespace: Any) -> None:
    obj = lb_in_namespace(namespace)
    if namespace == "":  # empty: the model's default namespace, as before
        assert parse_loadbalancer(obj).namespace == "default"
        return
    with pytest.raises(SpecError) as raised:
        parse_loadbalancer(obj)
    assert [e.path for e in raised.value.errors] == ["metadata.namespace"]


def test_a_config_that_loads_code_is_never_checked(
        lua: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The second wall: even a config that got such a line is refused before haproxy -c."""
    script, marker = lua
    graph = build_loadbalancer_graph(parse_loadbalancer(lb_object()),
                                     ClusterState({}, [], {}))
    config = f"global\n    lua-load {script}\n"
    assert _haproxy_check(config, graph) is False
    assert not marker.exists()
    assert "lua-load" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "found"), [
    ("global\n    lua-load /x.lua\n", ["lua-load /x.lua"]),
    ("global\n\tlua-load-per-thread /x.lua\n", ["lua-load-per-thread /x.lua"]),
    ("program p\n    command /bin/sh\n", ["program p", "command /bin/sh"]),
    ("backend b\n    option external-check\n    external-check command /x\n",
     ["external-check command /x"]),
    ("global\n    ssl-provider legacy\n", ["ssl-provider legacy"]),
    (".if defined(X)\n.endif\n", [".if defined(X)", ".endif"]),
    ("backend b\n    http-request set-header X 'lua-load \u2028lua-load /x'\n", []),
    ("global\n    # lua-load /x.lua\n", []),
])
def test_forbidden_lines(config: str, found: list[str]) -> None:
    assert forbidden_lines(config) == found


def test_every_example_renders_without_forbidden_lines() -> None:
    for path in sorted((REPO / "examples").glob("*.yaml")):
        if path.name in ("sample-app.yaml", "offline-cluster.yaml"):
            continue
        assert main(["render", "-f", str(path), "--services", str(OFFLINE),
                     "--check", "--haproxy-cfg"]) == 0, path
