"""roundhouse.graph (LoadBalancer builder, endpoints, slots, Secrets): references resolved,
endpoints into sticky slots, weights, health states."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from typing import Any

import pytest

from roundhouse import tls as rtls
from roundhouse.graph import (
    DRAIN,
    MAINT,
    READY,
    ClusterState,
    build_loadbalancer_graph,
    issued_secret_name,
)
from roundhouse.handlers import indexes
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import TLSSecret, parse_tls_secret
from roundhouse.render import objects
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, pods, service, state
from tests.unit.conftest import lb_object


def graph(cluster: ClusterState, **spec: object):  # type: ignore[no-untyped-def]
    return build_loadbalancer_graph(parse_loadbalancer(lb_object(**spec)), cluster)


def used(pool):  # type: ignore[no-untyped-def]
    return {s.slot: s for s in pool.servers if s.endpoint}


def test_ready_endpoints_fill_slots_with_stable_identities() -> None:
    g = graph(state(3))
    (pool,) = g.pools
    assert pool.name == "be_http" and pool.mode == "http"
    assert len(pool.servers) == 8  # pre-allocated headroom
    servers = used(pool)
    assert sorted(s.endpoint for s in servers.values()) == [
        "web/web-1:8080", "web/web-2:8080", "web/web-3:8080"]
    assert all(s.state == READY and s.weight == 256 for s in servers.values())
    assert (g.backends_ready, g.backends_total) == (3, 3)


@pytest.mark.parametrize(("cond", "expected"), [
    ({"ready": True}, READY),
    ({"ready": False}, MAINT),
    ({"ready": False, "serving": True, "terminating": True}, DRAIN),
    ({"ready": False, "serving": False, "terminating": True}, MAINT),
])
def test_endpoint_conditions_map_to_server_states(cond: dict[str, bool], expected: str) -> None:
    ep = endpoint("web-9", "10.244.0.9", **cond)
    g = graph(ClusterState({"web": service()}, [endpoint_slice("web", [ep])]))
    (server,) = used(g.pools[0]).values()
    assert server.state == expected


def test_slots_are_sticky_across_scaling() -> None:
    first = graph(state(3)).pools[0]
    previous = {"be_http": {s.slot: s.endpoint or "" for s in first.servers}}
    # web-2 leaves, web-4 and web-5 arrive: web-1 and web-3 keep their slots.
    cluster = ClusterState({"web": service()}, [endpoint_slice(
        "web", [endpoint("web-1", "10.244.0.1"), endpoint("web-3", "10.244.0.3"),
                endpoint("web-4", "10.244.0.4"), endpoint("web-5", "10.244.0.5")])],
        {}, previous)
    after = graph(cluster).pools[0]
    before_slots = {s.endpoint: s.slot for s in first.servers if s.endpoint}
    after_slots = {s.endpoint: s.slot for s in after.servers if s.endpoint}
    assert after_slots["web/web-1:8080"] == before_slots["web/web-1:8080"]
    assert after_slots["web/web-3:8080"] == before_slots["web/web-3:8080"]
    assert after_slots["web/web-4:8080"] == before_slots["web/web-2:8080"]  # reuses the free slot


def test_slot_count_grows_with_headroom_and_never_shrinks() -> None:
    big = graph(state(30)).pools[0]
    assert len(big.servers) == 64
    previous = {"be_http": {s.slot: s.endpoint or "" for s in big.servers}}
    small = graph(state(2, previous=previous)).pools[0]
    assert len(small.servers) == 64


def test_weights_give_each_service_its_share() -> None:
    cluster = ClusterState(
        {"a": service("a"), "b": service("b")},
        [endpoint_slice("a", [endpoint("a-1", "10.244.0.1"), endpoint("a-2", "10.244.0.2")]),
         endpoint_slice("b", [endpoint("b-1", "10.244.0.3")])])
    g = graph(cluster, backends=[{"service": "a", "port": "http", "weight": 80},
                                 {"service": "b", "port": "http", "weight": 20}])
    weights = {s.endpoint.split("/")[0]: s.weight for s in used(g.pools[0]).values()}
    per_service = {"a": 2 * weights["a"], "b": weights["b"]}
    assert per_service["a"] / (per_service["a"] + per_service["b"]) == pytest.approx(0.8, abs=0.01)


def test_zero_weight_service_gets_no_share() -> None:
    cluster = ClusterState({"a": service("a"), "b": service("b")},
                           [endpoint_slice("a", pods(1)), endpoint_slice("b", pods(1, 5))])
    g = graph(cluster, backends=[{"service": "a", "port": 80, "weight": 0},
                                 {"service": "b", "port": 80}])
    weights = {s.endpoint.split("/")[0]: s.weight for s in used(g.pools[0]).values()}
    assert weights == {"a": 0, "b": 256}


def test_missing_service_is_a_retryable_problem_not_a_crash() -> None:
    g = graph(ClusterState(), backends=[{"service": "nope", "port": 80}])
    (problem,) = g.problems
    assert (problem.condition, problem.reason, problem.retry) == (
        "BackendsHealthy", "BackendNotFound", True)
    assert "spec.backends[0]" in problem.message and "'nope'" in problem.message
    assert all(s.endpoint is None for s in g.pools[0].servers)


def test_unresolvable_port_name_names_the_known_ports() -> None:
    g = graph(state(1), backends=[{"service": "web", "port": "grpc"}])
    (problem,) = g.problems
    assert problem.reason == "PortNotFound"
    assert "http=80" in problem.message and "'grpc'" in problem.message


def test_port_by_number_or_name_resolves_to_the_slice_port() -> None:
    for port in (80, "http"):
        g = graph(state(2), backends=[{"service": "web", "port": port}])
        assert {s.port for s in used(g.pools[0]).values()} == {8080}


def test_overlapping_slices_do_not_duplicate_endpoints() -> None:
    cluster = ClusterState({"web": service()}, [
        endpoint_slice("web", pods(2), name="web-a"), endpoint_slice("web", pods(2), name="web-b")])
    assert graph(cluster).backends_total == 2


def test_https_listener_without_its_secret_is_dropped_and_reported() -> None:
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"},
                 {"name": "https", "port": 443, "protocol": "HTTPS",
                  "tls": {"secretName": "missing"}}]
    g = graph(state(1), listeners=listeners)
    assert [f.name for f in g.frontends] == ["fe_http"]
    (problem,) = g.problems
    assert (problem.condition, problem.reason) == ("TLSReady", "SecretNotFound")


def test_secret_without_key_is_invalid() -> None:
    listeners = [{"name": "https", "port": 443, "protocol": "HTTPS",
                  "tls": {"secretName": "half"}}]
    g = graph(state(1, secrets={"half": TLSSecret("half", True, False, "x")}), listeners=listeners)
    assert g.problems[0].reason == "InvalidSecret" and "tls.key" in g.problems[0].message


def _secret(name: str, cert_pem: str, key_pem: str) -> dict[str, object]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()
    return {"metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)}}


def test_a_key_that_does_not_match_its_certificate_is_caught_before_the_proxy() -> None:
    now = dt.datetime.now(dt.UTC)
    ca = rtls.issue_ca("test CA", now)
    one, two = (rtls.issue_serving(ca, ("a.test",), now) for _ in range(2))
    assert parse_tls_secret(_secret("good", one.cert_pem, one.key_pem)).usable
    bad = parse_tls_secret(_secret("bad", one.cert_pem, two.key_pem))
    assert not bad.usable
    assert bad.problem == "tls.key does not match the certificate in tls.crt"
    assert one.key_pem not in bad.problem and two.key_pem not in bad.problem
    garbage = parse_tls_secret(_secret("junk", "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                       "-----END CERTIFICATE-----\n", one.key_pem))
    assert garbage.problem == "tls.crt is not a valid PEM certificate"
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"},
                 {"name": "https", "port": 443, "protocol": "HTTPS",
                  "tls": {"secretName": "bad"}}]
    g = graph(state(1, secrets={"bad": bad}), listeners=listeners)
    assert [f.name for f in g.frontends] == ["fe_http"]  # the rest keeps serving
    (problem,) = g.problems
    assert (problem.condition, problem.reason, problem.retry) == ("TLSReady", "InvalidSecret",
                                                                  False)
    assert problem.message == ("spec.listeners[1].tls: Secret 'bad': tls.key does not match "
                               "the certificate in tls.crt")


def test_issued_certificate_covers_the_service_names() -> None:
    listeners = [{"name": "https", "port": 443, "protocol": "HTTPS",
                  "tls": {"dnsNames": ["shop.example.test"]}}]
    name = issued_secret_name("LoadBalancer", "web")
    g = graph(state(1, secrets={name: TLSSecret(name, True, True, "f")}), listeners=listeners)
    assert g.certificates[0].issued and g.certificates[0].secret == "web-lb-tls"
    assert "web-lb.default.svc.cluster.local" in g.issued_dns_names
    assert "shop.example.test" in g.issued_dns_names


def test_mixed_listeners_get_one_pool_per_mode_and_cookie_only_in_http() -> None:
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"},
                 {"name": "pg", "port": 5432, "protocol": "TCP"}]
    g = graph(state(1), listeners=listeners, sessionPersistence={"type": "Cookie"})
    pools = {p.name: p for p in g.pools}
    assert set(pools) == {"be_http", "be_tcp"}
    assert pools["be_http"].persistence is not None and pools["be_tcp"].persistence is None


def test_redirect_points_at_the_https_listener_port() -> None:
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP", "redirectToHTTPS": True},
                 {"name": "https", "port": 8443, "protocol": "HTTPS"}]
    name = issued_secret_name("LoadBalancer", "web")
    g = graph(state(1, secrets={name: TLSSecret(name, True, True, "f")}), listeners=listeners)
    http = next(f for f in g.frontends if f.name == "fe_http")
    assert http.redirect_https_port == 8443


CA = TLSSecret("internal-ca", False, False, "", has_ca=True, ca_fingerprint="cafp")


@pytest.mark.parametrize("listeners", [
    [{"name": "https", "port": 443, "protocol": "HTTPS"}],
    [{"name": "pg", "port": 5432, "protocol": "TCP"}, {"name": "http", "port": 80}],
])
def test_upstream_tls_reaches_every_pool_with_the_ca(listeners: list[dict[str, object]]) -> None:
    name = issued_secret_name("LoadBalancer", "web")
    g = graph(state(3, secrets={"internal-ca": CA, name: TLSSecret(name, True, True, "f")}),
              listeners=listeners, upstreamTLS={"caSecretName": "internal-ca", "sni": "w.in"})
    assert not g.problems
    assert g.pools and all(
        p.upstream_tls is not None and (p.upstream_tls.verify, p.upstream_tls.ca_file,
                                        p.upstream_tls.sni) == (True, "internal-ca.ca.pem", "w.in")
        for p in g.pools)
    ca = [c for c in g.certificates if c.kind == "ca"]
    assert [(c.file, c.secret, c.fingerprint) for c in ca] == [
        ("internal-ca.ca.pem", "internal-ca", "cafp")]
    role = objects.agent_role(objects.Owner("LoadBalancer", "web", "default", "u"), g)
    assert "internal-ca" in role["rules"][-1]["resourceNames"]


@pytest.mark.parametrize(("secrets", "reason"), [
    ({}, "SecretNotFound"),
    ({"internal-ca": TLSSecret("internal-ca", True, True, "f")}, "InvalidSecret"),  # no ca.crt
])
def test_unusable_upstream_ca_never_connects_unverified(secrets: dict[str, TLSSecret],
                                                        reason: str) -> None:
    g = graph(state(3, secrets=secrets), upstreamTLS={"caSecretName": "internal-ca"})
    (problem,) = g.problems
    assert (problem.condition, problem.reason) == ("TLSReady", reason)
    assert "spec.upstreamTLS.caSecretName" in problem.message
    assert all(s.state == MAINT for p in g.pools for s in p.servers)
    assert not any(c.kind == "ca" for c in g.certificates)


def test_upstream_tls_without_verify_needs_no_ca() -> None:
    g = graph(state(3), upstreamTLS={"caSecretName": "internal-ca", "verify": False})
    assert not g.problems and not g.certificates
    (pool,) = g.pools
    assert pool.upstream_tls is not None and not pool.upstream_tls.verify
    assert sum(1 for s in pool.servers if s.state == READY) == 3


def test_upstream_ca_secret_is_a_reference_that_re_reconciles() -> None:
    lb = parse_loadbalancer(lb_object(upstreamTLS={"caSecretName": "internal-ca"}))
    assert "internal-ca" in lb.secret_refs()
    refs = asyncio.run(indexes.rh_lb_refs(
        namespace="default", name="web",
        spec=lb_object(upstreamTLS={"caSecretName": "internal-ca"})["spec"]))
    assert refs[("Secret", "default", "internal-ca")] == ("LoadBalancer", "web")


def test_resources_sharing_a_service_share_its_endpoints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """200 LoadBalancers behind one Service: its endpoints are computed once per change of
    its slices, not once per LoadBalancer; a changed slice is never answered from before."""
    from roundhouse.graph.endpoints import service_endpoints

    cluster = state(3)
    slices = tuple(cluster.slices)
    first = service_endpoints("default", "web", "http", slices)
    assert [e.address for e in first] == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    assert service_endpoints("default", "web", "http", slices) is first
    other_slices = tuple(state(4).slices)  # fresh objects: not computed yet
    reads: list[str] = []
    real = type(other_slices[0]).endpoints_for

    def counting(self: Any, port_name: str) -> Any:
        reads.append(port_name)
        return real(self, port_name)
    monkeypatch.setattr(type(other_slices[0]), "endpoints_for", counting)
    shared = ClusterState(cluster.services, list(other_slices))
    graphs = [build_loadbalancer_graph(parse_loadbalancer(lb_object()), shared)
              for _ in range(3)]
    assert all(g.backends_ready == 4 for g in graphs)
    assert reads == ["http"]  # one slice read once for the three
    # An equal slice that is another object (the index's new version): computed again.
    flipped = tuple(state(2, extra=[endpoint("web-3", "10.244.0.3", ready=False)]).slices)
    again = service_endpoints("default", "web", "http", flipped)
    assert again is not first and [e.ready for e in again] == [True, True, False]
    # Another namespace or port is another entry.
    assert service_endpoints("other", "web", "http", slices) is not first
    assert service_endpoints("default", "web", "none", slices) == ()
