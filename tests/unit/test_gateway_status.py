"""The Gateway API controller's pure parts: the Gateway status it writes (gateways.py) and
`roundhouse render` of Gateway API objects offline."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from roundhouse import gateways, status
from roundhouse.cli import main
from roundhouse.graph.gateway import build_gateway_graph
from roundhouse.graph.types import ClusterState
from roundhouse.model import gatewayapi as g

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
