"""The chart's Gateway API values (gatewayAPI.*), rendered by helm: the operator flag, the
exact ClusterRole rules it adds, the vendored standard-channel CRDs (unchanged but for
helm.sh/resource-policy: keep) and the GatewayClass; with it off (the default), none of
it. The real API server's view of the same objects is tests/integration/
test_gateway_api_chart.py."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.test_manifests import (
    CHART,
    EXPECTED_CLUSTER_RULES,
    NAMESPACE,
    REPO,
    cluster_role,
    grants,
    helm,
    load_all,
    only,
    operator_deployment,
)
from tests.harness.test_manifests import (
    docs as docs,  # the install.yaml fixture
)

GROUP = "gateway.networking.k8s.io"
CONTROLLER = "roundhouse.dev/gateway-controller"
VENDORED = CHART / "crds-gateway-api"
SCRIPT = REPO / "manifests" / "gateway-api-crds.sh"
KEEP = "helm.sh/resource-policy"
CLASS_API = f"{GROUP}/v1/GatewayClass"

# What gatewayAPI.enabled adds to the ClusterRole, and nothing else.
GATEWAY_RULES: dict[tuple[str, str], set[str]] = {
    (GROUP, "gatewayclasses"): {"get", "list", "watch"},
    (GROUP, "gateways"): {"get", "list", "watch"},
    (GROUP, "httproutes"): {"get", "list", "watch"},
    (GROUP, "referencegrants"): {"get", "list", "watch"},
    (GROUP, "gatewayclasses/status"): {"get", "patch", "update"},
    (GROUP, "gateways/status"): {"get", "patch", "update"},
    (GROUP, "httproutes/status"): {"get", "patch", "update"},
}


@functools.cache
def _render(*args: str) -> tuple[dict[str, Any], ...]:
    result = helm("template", "roundhouse", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return tuple(load_all(result.stdout))


def render(*sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    args += [a for v in api_versions for a in ("--api-versions", v)]
    return copy.deepcopy(list(_render(*args)))


def enabled(*sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return render("gatewayAPI.enabled=true", *sets, api_versions=api_versions)


def rules_of(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    actual: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in grants(cluster_role(docs)["rules"]):
        actual.setdefault((group, resource), set()).add(verb)
    return actual


def of_group(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every object the Gateway API values add: the group's CRDs, its objects, the VAP."""
    return [d for d in docs
            if d["apiVersion"].startswith(f"{GROUP}/")
            or d["apiVersion"].startswith("admissionregistration.k8s.io/")
            or (d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == GROUP)]


def vendored_docs() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(VENDORED.glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            if d:
                found[(d["kind"], d["metadata"]["name"])] = d
    return found


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    args: list[str] = operator_deployment(docs)["spec"]["template"]["spec"]["containers"][0][
        "args"]
    return args


def script_version() -> str:
    match = re.search(r"^GATEWAY_API_VERSION=(v\S+)$", SCRIPT.read_text(), re.M)
    assert match, "manifests/gateway-api-crds.sh no longer sets GATEWAY_API_VERSION"
    return match.group(1)


# --------------------------------------------------------------------------- off (default)


def test_off_by_default_in_install_yaml(docs: list[dict[str, Any]]) -> None:
    assert not of_group(docs)
    assert "--gateway-api" not in operator_args(docs)
    assert not [k for k in rules_of(docs) if k[0] == GROUP]
    assert rules_of(docs) == EXPECTED_CLUSTER_RULES


@pytest.mark.parametrize("sets", [(), ("gatewayAPI.installCRDs=true",
                                       "gatewayAPI.gatewayClass.create=true")],
                         ids=["defaults", "sub-values-on"])
def test_nothing_rendered_while_disabled(sets: tuple[str, ...]) -> None:
    """installCRDs and gatewayClass.create default to true: only `enabled` turns them on."""
    docs = render(*sets)
    assert not of_group(docs)
    assert "--gateway-api" not in operator_args(docs)
    assert rules_of(docs) == EXPECTED_CLUSTER_RULES
    assert docs == render(), "the sub-values changed the disabled rendering"


# --------------------------------------------------------------------------- on


def test_enabled_passes_the_flag_the_cli_accepts() -> None:
    assert operator_args(enabled()) == [*operator_args(render()), "--gateway-api"]
    exe = Path(sys.executable).parent / "roundhouse"
    result = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--gateway-api" in result.stdout


def test_enabled_adds_exactly_the_gateway_rules() -> None:
    """Read the four kinds, write the status of three; no create, delete or spec write
    anywhere in the group. Proxy children in a Gateway's namespace are covered by the
    cluster-wide rules the operator already has (EXPECTED_CLUSTER_RULES)."""
    actual = rules_of(enabled())
    assert actual == {**EXPECTED_CLUSTER_RULES, **GATEWAY_RULES}
    assert not set(EXPECTED_CLUSTER_RULES) & set(GATEWAY_RULES)
    group_verbs = {v for (g, _), verbs in actual.items() if g == GROUP for v in verbs}
    assert not group_verbs & {"create", "delete", "deletecollection", "escalate", "bind"}
    for kind in ("gatewayclasses", "gateways", "httproutes", "referencegrants"):
        assert not actual[(GROUP, kind)] & {"patch", "update"}, f"{kind}: spec writes"
    for rule in cluster_role(enabled())["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in v for v in rule.get(field, [])), rule
        assert "resourceNames" not in rule, rule


def test_enabled_keeps_everything_else_unchanged() -> None:
    on = enabled("gatewayAPI.installCRDs=false", "gatewayAPI.gatewayClass.create=false")
    off = render()
    assert len(on) == len(off)
    for a, b in zip(on, off, strict=True):
        if a["kind"] == "ClusterRole":
            a["rules"] = [r for r in a["rules"] if GROUP not in r["apiGroups"]]
        if a["kind"] == "Deployment":
            container = a["spec"]["template"]["spec"]["containers"][0]
            container["args"].remove("--gateway-api")
            (proxy,) = [e for e in container["env"] if e["name"] == "ROUNDHOUSE_GATEWAY_PROXY"]
            assert json.loads(proxy["value"]) == {
                "replicas": 2, "resources": {}, "serviceType": "LoadBalancer"}
            container["env"].remove(proxy)
        assert a == b, f"{a['kind']} {a['metadata']['name']} changed"


def test_crds_are_the_vendored_files_with_keep() -> None:
    docs = enabled()
    crds = {d["spec"]["names"]["kind"]: d for d in docs
            if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == GROUP}
    assert {"GatewayClass", "Gateway", "HTTPRoute", "ReferenceGrant"} <= set(crds)
    assert len(crds) >= 7, sorted(crds)
    expected = vendored_docs()
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in of_group(docs)
                if d["kind"] != "GatewayClass"}
    assert set(rendered) == set(expected), "rendered objects differ from crds-gateway-api/"
    for key, want in expected.items():
        got = copy.deepcopy(rendered[key])
        assert got["metadata"]["annotations"].pop(KEEP) == "keep", f"{key}: no keep"
        assert got == want, f"{key} differs from crds-gateway-api/ beyond the keep annotation"
        annotations = want["metadata"]["annotations"]
        assert annotations["gateway.networking.k8s.io/channel"] == "standard", key
        assert annotations["gateway.networking.k8s.io/bundle-version"] == script_version(), key
    for kind in ("GatewayClass", "Gateway", "HTTPRoute"):
        v1 = [v for v in crds[kind]["spec"]["versions"] if v["name"] == "v1"]
        assert v1 and v1[0]["served"] and "status" in v1[0]["subresources"], kind
    # Upstream's guard against experimental or older CRDs over these, as standard-install.
    assert ("ValidatingAdmissionPolicy", f"safe-upgrades.{GROUP}") in rendered
    assert ("ValidatingAdmissionPolicyBinding", f"safe-upgrades.{GROUP}") in rendered


def test_vendored_files_are_one_per_crd_as_upstream_names_them() -> None:
    for path in sorted(VENDORED.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert path.name.startswith(f"{GROUP}_"), path.name
        if path.name.endswith("_vap_safeupgrades.yaml"):
            assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy",
                                                 "ValidatingAdmissionPolicyBinding"]
            continue
        [crd] = docs
        assert crd["kind"] == "CustomResourceDefinition"
        assert path.name == f"{GROUP}_{crd['spec']['names']['plural']}.yaml"
    assert sorted(p.name for p in VENDORED.iterdir()) == sorted(
        p.name for p in VENDORED.glob("*.yaml")), "only the vendored YAML files belong there"


def test_install_crds_false_renders_no_crds() -> None:
    docs = enabled("gatewayAPI.installCRDs=false")
    assert [d["kind"] for d in of_group(docs)] == ["GatewayClass"]
    assert rules_of(docs) == {**EXPECTED_CLUSTER_RULES, **GATEWAY_RULES}
    # The CRDs are the cluster's: the class is an ordinary object of the release.
    assert "annotations" not in only(docs, "GatewayClass")["metadata"]


def test_gateway_class_of_this_controller() -> None:
    from roundhouse.model.gatewayapi import CONTROLLER_NAME

    assert CONTROLLER == CONTROLLER_NAME, "the chart and the operator name another controller"
    gc = only(enabled(api_versions=(CLASS_API,)), "GatewayClass")
    assert gc["apiVersion"] == f"{GROUP}/v1"
    assert gc["metadata"]["name"] == "roundhouse"
    assert "namespace" not in gc["metadata"]
    assert gc["spec"]["controllerName"] == CONTROLLER
    assert len(gc["spec"]["description"]) <= 64  # the CRD's maxLength
    assert gc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "annotations" not in gc["metadata"]  # no hook, no keep: an ordinary object
    renamed = enabled("gatewayAPI.gatewayClass.name=edge", api_versions=(CLASS_API,))
    assert only(renamed, "GatewayClass")["metadata"]["name"] == "edge"
    assert not [d for d in enabled("gatewayAPI.gatewayClass.create=false",
                                   api_versions=(CLASS_API,)) if d["kind"] == "GatewayClass"]


def test_gateway_class_waits_while_its_crd_is_not_served() -> None:
    """helm maps every object of a release before creating any, so the class cannot come
    with the install that creates its CRD: it is left out until the API is served (the
    next upgrade). tests/integration/test_gateway_api_chart.py runs both for real."""
    assert not [d for d in enabled() if d["kind"] == "GatewayClass"]
    served = enabled(api_versions=(CLASS_API,))
    assert [d["kind"] for d in of_group(served)].count("GatewayClass") == 1
    # The rest of the rendering does not depend on it.
    assert [d for d in served if d["kind"] != "GatewayClass"] == enabled()
    assert not [d for d in enabled() if "helm.sh/hook" in
                (d["metadata"].get("annotations") or {})], "no hooks in the chart"


@pytest.mark.parametrize("bad", [
    "gatewayAPI.enabled=maybe",
    "gatewayAPI.installCRDs=yes please",
    "gatewayAPI.gatewayClass.name=Not_A_Name",
    "gatewayAPI.gatewayClass.name=",
    "gatewayAPI.gatewayClass.controllerName=x",
    "gatewayAPI.unknown=1",
])
def test_gateway_values_are_validated(bad: str) -> None:
    result = helm("template", "roundhouse", str(CHART), "--set", bad)
    assert result.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in result.stderr, result.stderr


def test_helm_lint_strict_enabled() -> None:
    result = helm("lint", "--strict", str(CHART), "--set", "gatewayAPI.enabled=true")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vendored_crds_are_upstreams() -> None:
    """manifests/gateway-api-crds.sh --check: the files are byte for byte those of
    sigs.k8s.io/gateway-api's config/crd/standard (the module cache, else the proxy)."""
    result = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True,
                            check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
