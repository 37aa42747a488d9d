"""The CRDs on the real API server: every invalid case rejected as the unit tier predicts,
every example accepted, install.yaml applies cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from roundhouse.graph import ClusterState
from roundhouse.model import SpecError, parse_loadbalancer
from roundhouse.pipeline import desired_for_loadbalancer
from tests.integration.operator_process import install
from tests.unit.schema_validator import merge_patch

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "cases"
PLURALS = {"LoadBalancer": "loadbalancers", "ReverseProxy": "reverseproxies"}


def load_cases(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    doc = yaml.safe_load((CASES / name).read_text())
    return doc["base"], doc["cases"]


LB_BASE, LB_CASES = load_cases("invalid-loadbalancers.yaml")
RP_BASE, RP_CASES = load_cases("invalid-reverseproxies.yaml")


@pytest.fixture(scope="module")
def crds_installed(control_plane: Any) -> None:
    install(control_plane)


def dry_run_create(kube: client.ApiClient, namespace: str, obj: dict[str, Any]) -> None:
    body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        "roundhouse.dev", "v1alpha1", namespace, PLURALS[obj["kind"]], body, dry_run="All")


def assert_rejected(kube: client.ApiClient, namespace: str, base: dict[str, Any],
                    case: dict[str, Any]) -> None:
    obj = merge_patch(base, case["patch"])
    with pytest.raises(client.ApiException) as err:
        dry_run_create(kube, namespace, obj)
    status = json.loads(err.value.body or "{}")
    assert err.value.status == 422, status
    causes = (status.get("details") or {}).get("causes") or []
    fields = [c.get("field", "") for c in causes]
    assert any(f.startswith(case["field"]) for f in fields) or case["field"] in status[
        "message"], f"the API server did not name {case['field']}: {status['message']}"
    assert case["message"] in status["message"], \
        f"expected {case['message']!r} in: {status['message']}"


@pytest.mark.parametrize("case", LB_CASES, ids=[c["name"] for c in LB_CASES])
def test_invalid_loadbalancer_rejected_by_the_api_server(
        crds_installed: None, kube: client.ApiClient, case: dict[str, Any]) -> None:
    assert_rejected(kube, "default", LB_BASE, case)


@pytest.mark.parametrize("case", RP_CASES, ids=[c["name"] for c in RP_CASES])
def test_invalid_reverseproxy_rejected_by_the_api_server(
        crds_installed: None, kube: client.ApiClient, case: dict[str, Any]) -> None:
    assert_rejected(kube, "default", RP_BASE, case)


def test_bases_and_examples_are_accepted(crds_installed: None, kube: client.ApiClient) -> None:
    docs = [LB_BASE, RP_BASE] + [
        d for p in sorted((REPO / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") in PLURALS]
    assert len(docs) >= 6
    for doc in docs:
        dry_run_create(kube, "default", doc)


def test_install_yaml_applies_and_reapplies_cleanly(control_plane: Any) -> None:
    install(control_plane)
    again = control_plane.kubectl("apply", "--server-side", "-f",
                                  str(REPO / "manifests" / "install.yaml"))
    assert "serverside-applied" in again.stdout
    crd = control_plane.kubectl("get", "crd", "loadbalancers.roundhouse.dev", "-o",
                                "jsonpath={.status.conditions[?(@.type=='Established')].status}")
    assert crd.stdout == "True"


@pytest.mark.parametrize("patch,field", [
    ({"spec": {"proxy": {"replica": 3}}}, "spec.proxy.replica"),
    ({"spec": {"listeners": [{"name": "http", "port": 80, "tls": {"secretname": "x"}}]}},
     "spec.listeners[0].tls.secretname"),
])
def test_unknown_fields_are_refused_as_offline(crds_installed: None, kube: client.ApiClient,
                                               patch: dict[str, Any], field: str) -> None:
    """kubectl's strict field validation and the offline parser refuse the same field."""
    obj = merge_patch(LB_BASE, patch)
    body = {**obj, "metadata": {**obj["metadata"], "namespace": "default"}}
    with pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            "roundhouse.dev", "v1alpha1", "default", "loadbalancers", body, dry_run="All",
            field_validation="Strict")
    message = json.loads(err.value.body or "{}").get("message", "")
    assert f'unknown field "{field}"' in message, message
    with pytest.raises(SpecError) as offline:
        parse_loadbalancer(obj)
    assert f'unknown field "{field}"' in str(offline.value)


@pytest.mark.parametrize("proxy", [
    LB_BASE["spec"]["proxy"],
    {"nodeSelector": {"example.com/pool": "edge_1", "kubernetes.io/os": ""},
     "tolerations": [{"operator": "Exists"},
                     {"key": "example.com/dedicated", "value": "proxy", "effect": "NoExecute",
                      "tolerationSeconds": 30}],
     "resources": {"requests": {"cpu": "0.25", "memory": "1Gi"},
                   "limits": {"cpu": 1, "memory": "1Gi"}}},
])
def test_what_the_crd_accepts_renders_a_deployment_the_api_server_accepts(
        crds_installed: None, kube: client.ApiClient, control_plane: Any, tmp_path: Path,
        proxy: dict[str, Any]) -> None:
    obj = merge_patch(LB_BASE, {"spec": {"proxy": proxy},
                                "metadata": {"uid": "0b7c1e4e-52a4-4c1b-9d0e-6f1d2a3b4c5d"}})
    dry_run_create(kube, "default", obj)  # the CRD accepts it
    desired = desired_for_loadbalancer(parse_loadbalancer(obj), ClusterState())
    [deployment] = [c for c in desired.children if c["kind"] == "Deployment"]
    # kubectl, not the Python client: its models refuse `cpu: 1`, which a Pod takes.
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(deployment))
    done = control_plane.kubectl("create", "--dry-run=server", "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
