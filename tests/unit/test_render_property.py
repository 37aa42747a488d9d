"""Property: every valid LoadBalancer renders to a config the real HAProxy accepts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from roundhouse.graph import ClusterState, build_loadbalancer_graph, issued_secret_name
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import TLSSecret
from roundhouse.render.haproxy import render_haproxy
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service
from tests.unit.conftest import check_graph
from tests.unit.strategies import valid_loadbalancers

EXAMPLES_CHECKED = 200


def cluster_for(obj: dict[str, Any]) -> ClusterState:
    """Every referenced Service exists with ready, draining and unready endpoints."""
    spec = obj["spec"]
    services = {}
    slices = []
    for i, be in enumerate(spec["backends"]):
        port = be["port"]
        name = port if isinstance(port, str) else "p"
        number = port if isinstance(port, int) else 80
        services[be["service"]] = service(be["service"], ((name, number),))
        slices.append(endpoint_slice(be["service"], [
            endpoint(f"{be['service']}-a", f"10.244.{i}.1"),
            endpoint(f"{be['service']}-b", f"10.244.{i}.2", ready=False, serving=True,
                     terminating=True),
            endpoint(f"{be['service']}-c", f"10.244.{i}.3", ready=False),
        ], port_name=name, name=f"{be['service']}-s"))
    secrets = {issued_secret_name("LoadBalancer", obj["metadata"]["name"]): None}
    for li in spec["listeners"]:
        if (li.get("tls") or {}).get("secretName"):
            secrets[li["tls"]["secretName"]] = None
    ca = (spec.get("upstreamTLS") or {}).get("caSecretName")
    pairs = {n: TLSSecret(n, True, True, "x") for n in secrets}
    if ca:  # a Secret may be both a serving pair and the upstream CA
        pairs[ca] = TLSSecret(ca, ca in secrets, ca in secrets, "x", has_ca=True,
                              ca_fingerprint="c")
    return ClusterState(services, slices, pairs)


@settings(max_examples=EXAMPLES_CHECKED, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_loadbalancers())
def test_generated_specs_pass_haproxy_check(obj: dict[str, Any]) -> None:
    lb = parse_loadbalancer(obj)
    graph = build_loadbalancer_graph(lb, cluster_for(obj))
    assert not [p for p in graph.problems if p.condition == "TLSReady"]
    result, config = check_graph(graph)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n---\n{config}"
    # Same input, same bytes.
    assert render_haproxy(build_loadbalancer_graph(lb, cluster_for(obj))).config == \
        render_haproxy(graph).config
