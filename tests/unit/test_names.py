"""roundhouse.graph.names: every name derived from a resource comes from one helper, and
every part that names something (children, issued Secrets, DNS names, owner) agrees."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse import certificates, resources
from roundhouse.graph import ClusterState, names
from roundhouse.pipeline import desired_for_loadbalancer, desired_for_reverseproxy
from roundhouse.render import objects
from tests.unit.conftest import lb_object
from tests.unit.rp_fixtures import rp_object

ISSUED_LB = {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                            "tls": {"dnsNames": ["shop.example.test"]}}]}
ISSUED_RP = {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}],
             "hosts": [{"hostname": h, "tls": tls, "routes": [
                 {"name": "web", "backends": [{"service": "web", "port": 80}]}]}
                 for h, tls in (("a.example.test", {}), ("b.example.test",
                                                         {"secretName": "b-tls"}))]}


@pytest.mark.parametrize(("kind", "child"), [("LoadBalancer", "web-lb"),
                                             ("ReverseProxy", "web-rp")])
def test_names_of_each_kind(kind: str, child: str) -> None:
    assert names.child_name(kind, "web") == child
    assert names.agent_status_name(kind, "web") == f"{child}-agents"
    assert names.issued_secret_name(kind, "web") == f"{child}-tls"
    assert names.issued_ca_name(kind, "web") == f"{child}-ca"
    owner = objects.Owner(kind, "web", "default", "u")
    assert objects.agent_status_name(owner) == f"{child}-agents"
    assert certificates.issued_name(owner) == f"{child}-tls"
    assert certificates.ca_name(owner) == f"{child}-ca"


def test_a_gateways_children_are_named_gw() -> None:
    assert names.child_name("Gateway", "web") == "web-gw"
    assert names.agent_status_name("Gateway", "web") == "web-gw-agents"


def test_an_unknown_kind_has_no_child_name_rather_than_a_borrowed_one() -> None:
    with pytest.raises(KeyError):
        names.child_name("HTTPRoute", "web")


def _model_and_desired(kind: str) -> tuple[Any, Any]:
    if kind == "LoadBalancer":
        model = resources.parse(kind, lb_object(**ISSUED_LB))
        return model, desired_for_loadbalancer(model, ClusterState())
    model = resources.parse(kind, rp_object(**ISSUED_RP))
    return model, desired_for_reverseproxy(model, ClusterState())


@pytest.mark.parametrize("kind", ["LoadBalancer", "ReverseProxy"])
def test_children_owner_and_issued_names_agree_for_either_kind(kind: str) -> None:
    model, desired = _model_and_desired(kind)
    child = names.child_name(kind, model.name)
    owner = objects.owner_of(model)
    assert owner == objects.Owner(kind, model.name, "default", model.uid)
    assert names.kind_of(model) == kind
    by_kind = {c["kind"]: c["metadata"]["name"] for c in desired.children
               if c["kind"] != "ConfigMap"}
    assert set(by_kind.values()) == {child}
    assert sorted(c["metadata"]["name"] for c in desired.children
                  if c["kind"] == "ConfigMap") == [child, f"{child}-agents"]
    for c in desired.children:
        assert c["metadata"]["ownerReferences"] == [owner.reference()]
    # The graph, the certificate issuer and the Secret the graph waits for: one set of
    # names. The spec's names (not a host with its own Secret), and the proxy Service's.
    spec_names = {"shop.example.test"} if kind == "LoadBalancer" else {"a.example.test"}
    issued = desired.graph.issued_dns_names
    assert issued == names.issued_dns_names(model)
    assert set(issued) == spec_names | {child, f"{child}.default", f"{child}.default.svc",
                                        f"{child}.default.svc.cluster.local"}
    pending = [p for p in desired.graph.problems if p.reason == "CertificatePending"]
    assert len(pending) == 1 and repr(names.issued_secret_name(kind, model.name)) in \
        pending[0].message
