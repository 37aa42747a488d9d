"""Gateway API against a real kube-apiserver: the chart's CRDs and RBAC (gatewayAPI.enabled),
the operator run with --gateway-api as its ServiceAccount, and the statuses, children and
config a GatewayClass, Gateway, HTTPRoutes and a ReferenceGrant give.

The proxy Pods are kwok Pods here (no agent reports), so Programmed stays Pending; the
real-Pods tier's conformance run (`make conformance`) sends the traffic.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from roundhouse import tls as rtls
from roundhouse.render import payload
from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    REPO,
    OperatorProcess,
    install,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import children

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
CLASS = "roundhouse"
CHART = REPO / "manifests" / "roundhouse"


def gateway_api_install(cp: Any) -> None:
    """install.yaml, then the chart rendered with gatewayAPI.enabled (CRDs, RBAC, class)."""
    install(cp)
    rendered = subprocess.run(
        [cp.binary("helm"), "template", "roundhouse", str(CHART), "--namespace",
         OPERATOR_NAMESPACE, "--set", "gatewayAPI.enabled=true",
         # as on a cluster that serves the CRDs: the chart then renders the class too
         "--api-versions", "gateway.networking.k8s.io/v1/GatewayClass"],
        check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
        manifest.write(rendered)
        manifest.flush()
        # As with any CRD and its objects in one file: the GatewayClass is refused until
        # its CRD is established, so apply again once it is.
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", manifest.name,
                   check=False)
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/gatewayclasses.gateway.networking.k8s.io",
                   "crd/gateways.gateway.networking.k8s.io",
                   "crd/httproutes.gateway.networking.k8s.io",
                   "crd/referencegrants.gateway.networking.k8s.io")
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", manifest.name)


@pytest.fixture(scope="module")
def gateway_operator(control_plane: Any, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[OperatorProcess]:
    gateway_api_install(control_plane)
    proc = OperatorProcess(control_plane, tmp_path_factory.mktemp("gw") / "operator.log",
                           "--gateway-api", "--leader-election-namespace",
                           OPERATOR_NAMESPACE).start()
    try:
        yield proc
    finally:
        proc.stop()
        print("---- operator log (tail) ----\n" + "\n".join(proc.log().splitlines()[-60:]))
    assert not proc.forbidden_errors(), "the operator hit RBAC denials:\n" + "\n".join(
        proc.forbidden_errors()[:10])


def api(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


def create(kube: client.ApiClient, namespace: str, plural: str, body: dict[str, Any],
           version: str = VERSION) -> None:
    kind = {"gateways": "Gateway", "httproutes": "HTTPRoute",
            "referencegrants": "ReferenceGrant"}[plural]
    body = {"apiVersion": f"{GROUP}/{version}", "kind": kind, **body}
    api(kube).create_namespaced_custom_object(GROUP, version, namespace, plural, body)


def get(kube: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = api(kube).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                 plural, name)
    return obj


def cond(conditions: list[dict[str, Any]] | None, kind: str) -> tuple[str, str]:
    found = next((c for c in conditions or [] if c["type"] == kind), {})
    return found.get("status", ""), found.get("reason", "")


def parent_conditions(kube: client.ApiClient, namespace: str, route: str
                      ) -> dict[str, tuple[str, str]]:
    status = get(kube, namespace, "httproutes", route).get("status") or {}
    ours = [p for p in status.get("parents") or []
            if p["controllerName"] == "roundhouse.dev/gateway-controller"]
    if len(ours) != 1:
        return {}
    return {c["type"]: (c["status"], c["reason"]) for c in ours[0]["conditions"]}


def tls_secret(kube: client.ApiClient, namespace: str, name: str, host: str) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = rtls.issue_ca("test-ca", now)
    pair = rtls.issue_serving(ca, (host,), now)
    client.CoreV1Api(kube).create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(pair.cert_pem.encode()).decode(),
                 "tls.key": base64.b64encode(pair.key_pem.encode()).decode()}})


def proxy_files(kube: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    cm = client.CoreV1Api(kube).read_namespaced_config_map(f"{name}-gw", namespace)
    return payload.decode(cm.to_dict())


def endpoints_of(files: dict[str, str]) -> set[str]:
    pools = json.loads(files["servers.json"])["pools"]
    return {s["endpoint"] for slots in pools.values() for s in slots if s["endpoint"]}


def test_gateway_and_routes_reconcile_into_a_proxy_with_the_specs_statuses(
        gateway_operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace, "web", replicas=3)
    tls_secret(kube, namespace, "shop-cert", "shop.example.com")
    create(kube, namespace, "gateways", {"metadata": {"name": "shop"}, "spec": {
        "gatewayClassName": CLASS,
        "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
             "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
            {"name": "raw", "port": 9000, "protocol": "TCP"}]}})
    create(kube, namespace, "httproutes", {"metadata": {"name": "web"}, "spec": {
        "parentRefs": [{"name": "shop"}], "hostnames": ["shop.example.com"],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                   "backendRefs": [{"name": "web", "port": 80}]}]}})
    create(kube, namespace, "httproutes", {"metadata": {"name": "later"}, "spec": {
        "parentRefs": [{"name": "shop", "sectionName": "http"}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/later"}}],
                   "backendRefs": [{"name": "later", "port": 80}]}]}})
    create(kube, namespace, "httproutes", {"metadata": {"name": "nowhere"}, "spec": {
        "parentRefs": [{"name": "shop", "sectionName": "nope"}]}})

    klass = wait_for(lambda: cond((api(kube).get_cluster_custom_object(
        GROUP, VERSION, "gatewayclasses", CLASS).get("status") or {}).get("conditions"),
        "Accepted") == ("True", "Accepted"), 60, "GatewayClass Accepted")
    assert klass

    def listeners() -> dict[str, Any]:
        status = get(kube, namespace, "gateways", "shop").get("status") or {}
        return {li["name"]: li for li in status.get("listeners") or []}

    found = wait_for(lambda: (ls := listeners()) and ls.get("http", {}).get(
        "attachedRoutes") == 2 and ls, 90, "listener http with 2 routes")
    assert found["https"]["attachedRoutes"] == 1
    # The certificate comes through the operator's Secret watch, not the routes': a build
    # that has both routes may not have it yet.
    wait_for(lambda: cond(listeners().get("https", {}).get("conditions"), "ResolvedRefs")
             == ("True", "ResolvedRefs"), 30, "listener https ResolvedRefs")
    assert cond(found["raw"]["conditions"], "Accepted") == ("False", "UnsupportedProtocol")
    assert found["http"]["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]
    status = get(kube, namespace, "gateways", "shop")["status"]
    assert cond(status["conditions"], "Accepted") == ("True", "ListenersNotValid")
    service = client.CoreV1Api(kube).read_namespaced_service("shop-gw", namespace)
    assert wait_for(lambda: (get(kube, namespace, "gateways", "shop")["status"].get(
        "addresses") or [{}])[0].get("value") == service.spec.cluster_ip, 30, "address")
    # kwok proxy Pods run no agent: the config is not confirmed as running.
    assert cond(get(kube, namespace, "gateways", "shop")["status"]["conditions"],
                "Programmed")[0] == "False"
    assert sorted(p.port for p in service.spec.ports) == [80, 443]

    assert wait_for(lambda: parent_conditions(kube, namespace, "web").get("Accepted") == (
        "True", "Accepted"), 30, "web accepted")
    # Each route's status is its own write, after the Gateway's, and web's Accepted may
    # come from a build before the other routes (or the Service web) were seen.
    wait_for(lambda: parent_conditions(kube, namespace, "web").get("ResolvedRefs") == (
        "True", "ResolvedRefs"), 30, "web ResolvedRefs")
    wait_for(lambda: parent_conditions(kube, namespace, "later").get("ResolvedRefs") == (
        "False", "BackendNotFound"), 30, "later BackendNotFound")
    wait_for(lambda: parent_conditions(kube, namespace, "nowhere").get("Accepted") == (
        "False", "NoMatchingParent"), 30, "nowhere NoMatchingParent")

    owned = children(kube, namespace, "shop")
    assert {"Deployment/shop-gw", "Service/shop-gw", "ConfigMap/shop-gw",
            "PodDisruptionBudget/shop-gw", "Role/shop-gw"} <= set(owned)
    for obj in owned.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (f"{GROUP}/v1", "Gateway", "shop")
    # web's endpoints come with its kwok Pods, which nothing above waited for.
    files = wait_for(lambda: (f := proxy_files(kube, namespace, "shop")) and len(
        endpoints_of(f)) == 3 and f, 60, "3 endpoints served")
    assert "shop.example.com" in files["haproxy.cfg"]

    # The missing Service appears: the route's reference resolves, its endpoints are served.
    sample_app(kube, namespace, "later", replicas=2)
    assert wait_for(lambda: parent_conditions(kube, namespace, "later").get(
        "ResolvedRefs") == ("True", "ResolvedRefs"), 60, "later resolves")
    assert wait_for(lambda: len(endpoints_of(proxy_files(kube, namespace, "shop"))) == 5, 60,
                    "5 endpoints served")
    # Scaling a backend changes the servers only, not the config's structure.
    structure = json.loads(proxy_files(kube, namespace, "shop")["servers.json"])[
        "structureHash"]
    client.AppsV1Api(kube).patch_namespaced_deployment_scale(
        "web", namespace, {"spec": {"replicas": 4}})
    assert wait_for(lambda: len(endpoints_of(proxy_files(kube, namespace, "shop"))) == 6, 60,
                    "6 endpoints served")
    assert json.loads(proxy_files(kube, namespace, "shop")["servers.json"])[
        "structureHash"] == structure

    # Deleting the Gateway takes its children and our parent entries away.
    api(kube).delete_namespaced_custom_object(GROUP, VERSION, namespace, "gateways", "shop")
    assert wait_for(lambda: not (get(kube, namespace, "httproutes", "web").get("status") or {})
                    .get("parents"), 60, "parent entries removed")
    assert wait_for(lambda: not children(kube, namespace, "shop"), 90, "children collected")


def test_references_across_namespaces_need_a_reference_grant(
        gateway_operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    other = f"{namespace}-b"
    core.create_namespace({"metadata": {"name": other, "labels": {"team": "b"}}})
    try:
        sample_app(kube, other, "api", replicas=2)
        tls_secret(kube, other, "cert", "secure.example.com")
        create(kube, namespace, "gateways", {"metadata": {"name": "edge"}, "spec": {
            "gatewayClassName": CLASS,
            "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP",
                 "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {
                     "matchLabels": {"team": "b"}}}}},
                {"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "cert", "namespace": other}]}}]}})
        create(kube, other, "httproutes", {"metadata": {"name": "api"}, "spec": {
            "parentRefs": [{"name": "edge", "namespace": namespace, "sectionName": "http"}],
            "rules": [{"backendRefs": [{"name": "api", "port": 80}]}]}})
        create(kube, namespace, "httproutes", {"metadata": {"name": "cross"}, "spec": {
            "parentRefs": [{"name": "edge", "sectionName": "http"}],
            "rules": [{"backendRefs": [{"name": "api", "namespace": other, "port": 80}]}]}})

        def https() -> dict[str, Any]:
            status = get(kube, namespace, "gateways", "edge").get("status") or {}
            return next((li for li in status.get("listeners") or [] if li["name"] == "https"),
                        {})

        assert wait_for(lambda: cond(https().get("conditions"), "ResolvedRefs") == (
            "False", "RefNotPermitted"), 90, "certificate not permitted")
        # The route in the selected namespace attaches; the same-namespace route is not
        # selected by the listener, and its cross-namespace backend is not permitted.
        assert wait_for(lambda: parent_conditions(kube, other, "api").get("Accepted") == (
            "True", "Accepted"), 60, "api accepted")
        assert wait_for(lambda: parent_conditions(kube, namespace, "cross").get("Accepted") == (
            "False", "NotAllowedByListeners"), 60, "cross not allowed")
        assert parent_conditions(kube, namespace, "cross")["ResolvedRefs"] == (
            "False", "RefNotPermitted")

        create(kube, other, "referencegrants", {"metadata": {"name": "allow"}, "spec": {
            "from": [{"group": GROUP, "kind": "Gateway", "namespace": namespace},
                     {"group": GROUP, "kind": "HTTPRoute", "namespace": namespace}],
            "to": [{"group": "", "kind": "Secret", "name": "cert"},
                   {"group": "", "kind": "Service"}]}}, version="v1beta1")
        assert wait_for(lambda: cond(https().get("conditions"), "ResolvedRefs") == (
            "True", "ResolvedRefs"), 60, "certificate permitted")
        assert wait_for(lambda: parent_conditions(kube, namespace, "cross").get(
            "ResolvedRefs") == ("True", "ResolvedRefs"), 60, "backend permitted")
        # The certificate is served from a copy in the Gateway's namespace, owned by it.
        copies = [s for s in core.list_namespaced_secret(
            namespace, label_selector="roundhouse.dev/owner-name=edge").items
            if (s.metadata.annotations or {}).get("roundhouse.dev/copy-of") == f"{other}/cert"]
        assert len(copies) == 1
        original = core.read_namespaced_secret("cert", other)
        assert copies[0].data == original.data
        files = proxy_files(kube, namespace, "edge")
        assert json.loads(files["servers.json"])["certificates"][0]["secret"] == (
            copies[0].metadata.name)

        # A second Gateway naming the same Secret gets a copy of its own: each Gateway
        # owns (and deletes) its copies, whatever the other does.
        create(kube, namespace, "gateways", {"metadata": {"name": "edge2"}, "spec": {
            "gatewayClassName": CLASS,
            "listeners": [{"name": "https", "port": 443, "protocol": "HTTPS", "tls": {
                "certificateRefs": [{"name": "cert", "namespace": other}]}}]}})

        def copies_of(gateway: str) -> list[client.V1Secret]:
            return [s for s in core.list_namespaced_secret(
                namespace, label_selector=f"roundhouse.dev/owner-name={gateway}").items
                if (s.metadata.annotations or {}).get("roundhouse.dev/copy-of")]

        (copy2,) = wait_for(lambda: copies_of("edge2"), 60, "edge2's certificate copy")
        assert copy2.metadata.name != copies[0].metadata.name
        assert [o.name for o in copy2.metadata.owner_references] == ["edge2"]
        assert [o.name for o in copies_of("edge")[0].metadata.owner_references] == ["edge"]

        # Revoking the grant takes the copied private key out of the Gateway's namespace,
        # and the listener reports why it has no certificate.
        client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            GROUP, "v1beta1", other, "referencegrants", "allow")
        wait_for(lambda: not copies_of("edge") and not copies_of("edge2"), 60,
                 "the copies deleted once the grant is gone")
        assert wait_for(lambda: cond(https().get("conditions"), "ResolvedRefs") == (
            "False", "RefNotPermitted"), 60, "certificate no longer permitted")
        assert "deleted the certificate copy" in gateway_operator.log()
    finally:
        core.delete_namespace(other)
