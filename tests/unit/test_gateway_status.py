"""The Gateway API controller's pure parts: the Gateway status it writes (gateways.py) and
`roundhouse render` of Gateway API objects offline."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse import apply, gateways, kube, status
from roundhouse.cli import main
from roundhouse.graph.gateway import build_gateway_graph, mirrored_secret_name
from roundhouse.graph.types import ClusterState
from roundhouse.model import gatewayapi as g
from roundhouse.model.cluster import TLSSecret
from roundhouse.pipeline import desired_for_gateway
from roundhouse.reconciler import Indexes, Reconciler
from roundhouse.render import objects

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
BODY = yaml.safe_load("""
metadata: {name: gw, namespace: infra, uid: u, generation: 4}
spec:
  gatewayClassName: roundhouse
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: udp, port: 53, protocol: UDP}
""")


def listener_conditions(out: dict[str, object], name: str) -> dict[str, tuple[str, str]]:
    listeners = out["listeners"]
    assert isinstance(listeners, list)
    li = next(x for x in listeners if x["name"] == name)
    return {c["type"]: (c["status"], c["reason"]) for c in li["conditions"]}


def test_listeners_are_programmed_only_once_the_proxies_run_the_config() -> None:
    build = build_gateway_graph(g.parse_gateway(BODY), [], [], ClusterState())
    pending = status.Condition("Programmed", False, "Pending", "1/2 run config abc")
    out = gateways.gateway_status(BODY, build, pending, "10.96.0.7", None, NOW)
    assert out["addresses"] == [{"type": "IPAddress", "value": "10.96.0.7"}]
    conditions = {c["type"]: (c["status"], c["reason"], c["observedGeneration"])
                  for c in out["conditions"]}
    assert conditions == {"Accepted": ("True", "ListenersNotValid", 4),
                          "Programmed": ("False", "Pending", 4)}
    assert listener_conditions(out, "http")["Programmed"] == ("False", "Pending")
    assert listener_conditions(out, "udp")["Accepted"] == ("False", "UnsupportedProtocol")

    running = status.Condition("Programmed", True, "Programmed", "2 run config abc")
    out = gateways.gateway_status(BODY, build, running, "10.96.0.7", None, NOW)
    assert listener_conditions(out, "http")["Programmed"] == ("True", "Programmed")
    assert listener_conditions(out, "udp")["Programmed"] == ("False", "Invalid")

    no_address = gateways.gateway_status(BODY, build, running, None, None, NOW)
    assert "addresses" not in no_address
    assert {c["type"]: c["reason"] for c in no_address["conditions"]}["Programmed"] == (
        "AddressNotAssigned")
    refused = gateways.gateway_status(BODY, build, running, "10.96.0.7", "quota exceeded", NOW)
    programmed = next(c for c in refused["conditions"] if c["type"] == "Programmed")
    assert (programmed["status"], programmed["reason"], programmed["message"]) == (
        "False", "Invalid", "quota exceeded")


def test_a_rewritten_status_keeps_its_transition_times() -> None:
    build = build_gateway_graph(g.parse_gateway(BODY), [], [], ClusterState())
    running = status.Condition("Programmed", True, "Programmed", "2 run config abc")
    first = gateways.gateway_status(BODY, build, running, "10.96.0.7", None, NOW)
    later = gateways.gateway_status({**BODY, "status": first}, build, running, "10.96.0.7",
                                    None, NOW + dt.timedelta(minutes=5))
    assert later == first  # nothing to write


def test_render_takes_gateway_api_objects_offline(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["render", "-f", str(REPO / "examples" / "gateway-api.yaml"), "--services",
                 str(REPO / "examples" / "offline-cluster.yaml")])
    out = capsys.readouterr()
    assert code == 0, out.err
    kinds = [d["kind"] for d in yaml.safe_load_all(out.out)]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap",
                     "Deployment", "PodDisruptionBudget", "Service"]
    deployment = next(d for d in yaml.safe_load_all(out.out) if d["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == "shop-gw"
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "Gateway"


def test_render_warns_about_routes_that_do_not_attach(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: roundhouse
  listeners: [{name: http, port: 80, protocol: HTTP, hostname: a.example.com}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere}
spec:
  parentRefs: [{name: gw}]
  hostnames: [b.example.com]
  rules: [{backendRefs: [{name: nothere, port: 80}]}]
""")
    assert main(["render", "-f", str(path), "--haproxy-cfg"]) == 0
    err = capsys.readouterr().err
    assert ("HTTPRoute default/elsewhere: Accepted=False NoMatchingListenerHostname" in err)
    assert "ResolvedRefs=False BackendNotFound" in err


def test_the_charts_proxy_settings_reach_every_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUNDHOUSE_GATEWAY_PROXY", '{"replicas": 1, "serviceType": "ClusterIP",'
                       ' "resources": {"requests": {"cpu": "10m"}}}')
    proxy = gateways.proxy_defaults()
    assert (proxy.replicas, proxy.service_type, proxy.resources) == (
        1, "ClusterIP", {"requests": {"cpu": "10m"}})
    monkeypatch.setenv("ROUNDHOUSE_GATEWAY_PROXY", "not json")
    assert gateways.proxy_defaults().replicas == 2  # the defaults, with a warning


def test_a_gateway_whose_listeners_are_all_dropped_still_has_a_valid_service() -> None:
    """The API server refuses a Service with no ports, and that refusal stopped every
    other write of the Gateway (a revoked ReferenceGrant left its copy behind). A dropped
    listener keeps its port; a listener of an unsupported protocol gets none."""
    body = yaml.safe_load("""
metadata: {name: gw, namespace: infra, uid: u, generation: 1}
spec:
  gatewayClassName: roundhouse
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: gone}]}}
  - {name: udp, port: 53, protocol: UDP}
""")
    gw = g.parse_gateway(body)
    build = build_gateway_graph(gw, [], [], ClusterState())
    assert build.graph.frontends == ()
    (service,) = [c for c in desired_for_gateway(build.graph, gw).children
                  if c["kind"] == "Service"]
    assert service["spec"]["ports"] == [
        {"name": "port-443", "port": 443, "targetPort": 443, "protocol": "TCP"}]

    body["spec"]["listeners"].append({"name": "http", "port": 80, "protocol": "HTTP"})
    gw = g.parse_gateway(body)
    build = build_gateway_graph(gw, [], [], ClusterState())
    (service,) = [c for c in desired_for_gateway(build.graph, gw).children
                  if c["kind"] == "Service"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("80", 80), ("port-443", 443)]


def test_a_dropped_listeners_port_name_never_repeats_a_served_one() -> None:
    graph = build_gateway_graph(g.parse_gateway(BODY), [], [], ClusterState()).graph
    served = dataclasses.replace(graph.frontends[0], name="fe_port-8443")
    service = objects.service(objects.Owner("Gateway", "gw", "infra", "u"),
                              dataclasses.replace(graph, frontends=(served,)),
                              objects.ProxySpec(2, "ClusterIP", {}, {}, ()), [80, 8443])
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("port-8443", 80), ("port-8443x", 8443)]


GRANTED = yaml.safe_load("""
metadata: {name: gw, namespace: infra, uid: u, generation: 1}
spec:
  gatewayClassName: roundhouse
  listeners:
  - {name: https, port: 443, protocol: HTTPS,
     tls: {certificateRefs: [{name: cert, namespace: web}]}}
""")


def test_a_certificate_copy_is_fetched_once_per_rotation_and_only_the_newest_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gw = g.parse_gateway(GRANTED)
    grant = g.parse_reference_grant(yaml.safe_load("""
metadata: {name: allow, namespace: web}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret, name: cert}]"""))
    copy = mirrored_secret_name("gw", "web", "cert")
    reads: list[tuple[str, str, str]] = []

    async def read_object(kind: str, namespace: str, name: str) -> dict[str, Any]:
        reads.append((kind, namespace, name))
        return {"data": {"tls.crt": f"crt{len(reads)}", "tls.key": "k", "other": "x"}}

    monkeypatch.setattr(apply, "read_object", read_object)
    monkeypatch.setattr(gateways, "_MIRRORED", {})

    def copies(fingerprint: str) -> list[dict[str, Any]]:
        tls = TLSSecret("cert", True, True, fingerprint)
        build = build_gateway_graph(gw, [], [grant], ClusterState(
            secrets={copy: dataclasses.replace(tls, name=copy)}))
        idx = Indexes({}, {}, {("web", "cert"): [(tls, {})]}, {}, {})
        return asyncio.run(gateways.mirrored_secrets(gw, build, idx))

    (first,) = copies("a" * 64)
    assert first["metadata"]["name"] == copy
    assert first["metadata"]["annotations"] == {"roundhouse.dev/copy-of": "web/cert"}
    assert first["data"] == {"tls.crt": "crt1", "tls.key": "k"}  # the pair, nothing else
    assert copies("a" * 64)[0]["data"] == first["data"] and len(reads) == 1
    assert copies("b" * 64)[0]["data"]["tls.crt"] == "crt2"  # rotated: read again
    assert reads == [("Secret", "web", "cert")] * 2
    assert list(gateways._MIRRORED) == [("web", "cert")]  # one entry, the newest rotation
    assert gateways._MIRRORED[("web", "cert")][0] == "b" * 64


def test_copies_a_gateway_no_longer_serves_are_stale() -> None:
    copy = mirrored_secret_name("gw", "web", "cert")
    revoked = mirrored_secret_name("gw", "web", "old")
    applied = {("Secret", copy): "d1", ("Secret", revoked): "d2",
               ("Secret", "user-cert"): "d3", ("ConfigMap", "gw-gw"): "d4"}
    kept = [{"metadata": {"name": copy}}]
    # Only copies: a Secret the user named in the Gateway's own namespace is never touched.
    assert gateways.stale_copies(applied, kept) == [revoked]
    assert gateways.stale_copies(applied, []) == sorted([copy, revoked])


def test_copies_made_in_an_earlier_term_are_recalled_and_so_deleted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new leader learns the copies an earlier one applied (from their labels and
    fingerprints, with the other children: Reconciler.recall_applied), so it deletes them
    too once they are no longer served. Issued Secrets carry no fingerprint: left out."""
    copy = mirrored_secret_name("gw", "web", "cert")
    gw_labels = objects.labels(objects.owner_of(g.parse_gateway(GRANTED)))
    asked: list[str] = []

    async def list_metadata(kind: str, namespace: str | None, selector: str,
                            page: int = 500) -> list[dict[str, Any]]:
        asked.append(kind)
        if kind != "Secret":
            return []
        return [{"metadata": {"name": copy, "namespace": "infra", "labels": gw_labels,
                              "annotations": {apply.FINGERPRINT: "d1"}}},
                {"metadata": {"name": "web-lb-tls", "namespace": "infra", "labels": {
                    **gw_labels, "roundhouse.dev/owner-kind": "LoadBalancer"}}}]

    monkeypatch.setattr(kube, "list_metadata", list_metadata)
    reconciler = Reconciler()
    assert asyncio.run(reconciler.recall_applied([])) == 1
    assert asked.count("Secret") == 1
    applied = reconciler.last_applied[("Gateway", "infra", "gw")]
    assert applied == {("Secret", copy): "d1"}
    assert gateways.stale_copies(applied, []) == [copy]
