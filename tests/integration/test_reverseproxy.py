"""ReverseProxy against a real kube-apiserver: reconcile, status, conflicts, recovery.

The operator runs as a real process with the RBAC from manifests/install.yaml.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from tests.integration.operator_process import (
    OperatorProcess,
    condition,
    create_obj,
    custom,
    get_rp,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import children


def route(name: str, service: str, path: str = "/", **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": {"type": "Prefix", "value": path}},
            "backends": [{"service": service, "port": "http"}], **extra}


def rp_body(name: str, hosts: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "ReverseProxy",
        "metadata": {"name": name},
        "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                 "hosts": hosts},
    }
    body["spec"].update(spec)
    return body


def haproxy_cfg(kube: client.ApiClient, namespace: str, name: str) -> str:
    cm = client.CoreV1Api(kube).read_namespaced_config_map(f"{name}-rp", namespace)
    return str(cm.data["haproxy.cfg"])


def test_reverseproxy_with_tls_hosts_reconciles_and_reports(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace, "web")
    sample_app(kube, namespace, "api", replicas=2)
    create_obj(kube, namespace, rp_body("shop", [
        {"hostname": "shop.example.com", "tls": {},
         "routes": [route("api", "api", "/api"), route("web", "web")]},
        {"hostname": "*.shop.example.com", "routes": [route("all", "web")]},
    ], listeners=[{"name": "http", "port": 80, "protocol": "HTTP"},
                  {"name": "https", "port": 443, "protocol": "HTTPS"}]))
    rp = wait_for(lambda: (o := get_rp(kube, namespace, "shop")).get("status", {}).get(
        "backends") == {"ready": 5, "total": 5} and o, 90, "backends 5/5")
    assert condition(rp, "Accepted")["status"] == "True"
    assert condition(rp, "BackendsHealthy")["reason"] == "AllReady"
    tls_ready = wait_for(lambda: (c := condition(get_rp(kube, namespace, "shop"), "TLSReady"))
                         .get("status") == "True" and c, 30, "TLSReady=True")
    assert "shop-rp-tls" in tls_ready["message"]
    found = children(kube, namespace, "shop")
    assert {"Deployment/shop-rp", "Service/shop-rp", "ConfigMap/shop-rp",
            "PodDisruptionBudget/shop-rp", "Secret/shop-rp-tls", "Secret/shop-rp-ca"} <= set(
        found)
    for obj in found.values():
        assert obj["metadata"]["labels"]["roundhouse.dev/owner-kind"] == "ReverseProxy"
    cfg = haproxy_cfg(kube, namespace, "shop")
    assert "shop.example.com" in cfg and ".shop.example.com" in cfg
    # The issued certificate covers the host that asked for one.
    secret = client.CoreV1Api(kube).read_namespaced_secret("shop-rp-tls", namespace)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret.data["tls.crt"]))
    names = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "shop.example.com" in names
    service = client.CoreV1Api(kube).read_namespaced_service("shop-rp", namespace)
    assert sorted(p.port for p in service.spec.ports) == [80, 443]


def test_hostname_conflict_loser_is_told_and_takes_over_when_the_winner_goes(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace, "web")
    create_obj(kube, namespace, rp_body("first", [
        {"hostname": "x.example.com", "routes": [route("all", "web")]}]))
    wait_for(lambda: condition(get_rp(kube, namespace, "first"), "Accepted").get("status")
             == "True", 60, "first Accepted")
    create_obj(kube, namespace, rp_body("second", [
        {"hostname": "x.example.com", "routes": [route("all", "web")]},
        {"hostname": "y.example.com", "routes": [route("all", "web")]}]))
    lost = wait_for(lambda: (c := condition(get_rp(kube, namespace, "second"), "Accepted"))
                    .get("status") == "False" and c, 60, "second Accepted=False")
    assert lost["reason"] == "HostnameConflict", lost
    assert "'x.example.com'" in lost["message"] and "'first'" in lost["message"], lost
    ready = condition(get_rp(kube, namespace, "second"), "Ready")
    assert ready["status"] == "False" and "Accepted" in ready["message"]
    # The loser still serves what is its own; the winner is untouched.
    second = wait_for(lambda: (c := haproxy_cfg(kube, namespace, "second")) and
                      "y.example.com" in c and c, 30, "second's config")
    assert "x.example.com" not in second
    assert "x.example.com" in haproxy_cfg(kube, namespace, "first")
    assert condition(get_rp(kube, namespace, "first"), "Accepted")["status"] == "True"
    wait_for(lambda: any(e.reason == "HostnameConflict" for e in client.CoreV1Api(
        kube).list_namespaced_event(namespace,
                                    field_selector="involvedObject.name=second").items),
             30, "a HostnameConflict Event", interval=0.5)
    # The winner goes: the loser takes the hostname over, on its own.
    custom(kube).delete_namespaced_custom_object("roundhouse.dev", "v1alpha1", namespace,
                                                 "reverseproxies", "first")
    wait_for(lambda: condition(get_rp(kube, namespace, "second"), "Accepted").get("status")
             == "True", 60, "second Accepted=True after first was deleted")
    wait_for(lambda: "x.example.com" in haproxy_cfg(kube, namespace, "second"), 30,
             "x.example.com in second's config")


def test_route_to_a_missing_service_is_reported_and_recovers(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace, "web")
    create_obj(kube, namespace, rp_body("site", [
        {"hostname": "site.example.com",
         "routes": [route("ghost", "ghost", "/ghost"), route("web", "web")]}]))
    bad = wait_for(lambda: (c := condition(get_rp(kube, namespace, "site"), "BackendsHealthy"))
                   .get("status") == "False" and c, 60, "BackendsHealthy=False")
    assert bad["reason"] == "BackendNotFound", bad
    assert "spec.hosts[0].routes[0].backends[0]" in bad["message"], bad
    assert "'ghost'" in bad["message"], bad
    # The rest is served: the config holds the other route's backend.
    assert condition(get_rp(kube, namespace, "site"), "Accepted")["status"] == "True"
    sample_app(kube, namespace, "ghost", replicas=1)
    # The Service first (ghost has no endpoints yet), then its EndpointSlice: 4/4.
    good = wait_for(lambda: (c := condition(get_rp(kube, namespace, "site"), "BackendsHealthy"))
                    .get("message") == "4/4 endpoints are ready" and c, 60,
                    "BackendsHealthy=True with 4/4")
    assert good["status"] == "True" and good["reason"] == "AllReady", good


def test_a_regex_haproxy_refuses_is_not_accepted_and_nothing_is_rendered(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """The API server stores any string as a regular expression; HAProxy compiles it with
    PCRE2. A pattern Python reads but PCRE2 refuses (\\u escapes) is Accepted=False,
    InvalidSpec, naming the field, as `roundhouse render` says offline; no config that
    `haproxy -c` would refuse is written."""
    sample_app(kube, namespace, "web")
    bad = route("re", "web")
    bad["match"] = {"path": {"type": "RegularExpression", "value": r"/a\u0041"}}
    create_obj(kube, namespace, rp_body("regex", [
        {"hostname": "re.example.com", "routes": [bad]}]))
    refused = wait_for(lambda: (c := condition(get_rp(kube, namespace, "regex"), "Accepted"))
                       .get("status") == "False" and c, 60, "Accepted=False")
    assert refused["reason"] == "InvalidSpec"
    assert "spec.hosts[0].routes[0].match.path.value" in refused["message"]
    assert "HAProxy (PCRE2) refuses it" in refused["message"]
    with pytest.raises(client.ApiException) as missing:
        client.CoreV1Api(kube).read_namespaced_config_map("regex-rp", namespace)
    assert missing.value.status == 404
