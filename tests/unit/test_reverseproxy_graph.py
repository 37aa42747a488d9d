"""roundhouse.graph.reverseproxy: pools per route, conflicts, missing Services, weights, slots,
TLS."""

from __future__ import annotations

from typing import Any

from roundhouse.graph import MAINT, READY, ClusterState, issued_secret_name
from roundhouse.graph.reverseproxy import build_reverseproxy_graph, route_pool_name
from roundhouse.model import parse_reverseproxy
from roundhouse.model.cluster import TLSSecret
from roundhouse.pipeline import desired_for_reverseproxy
from roundhouse.render import objects
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, pods, service
from tests.unit.rp_fixtures import rp_object


def cluster(**extra: Any) -> ClusterState:
    services = {"web": service(), "api": service("api"), "canary": service("canary")}
    slices = [endpoint_slice("web", pods(3)),
              endpoint_slice("api", [endpoint(f"api-{i}", f"10.244.1.{i}") for i in (1, 2, 3)]),
              endpoint_slice("canary", [endpoint("canary-1", "10.244.2.1")])]
    return ClusterState(services, slices, extra.get("secrets", {}), extra.get("previous", {}))


TWO_HOSTS = [
    {"hostname": "a.test", "routes": [{"name": "web", "backends": [{"service": "web",
                                                                    "port": 80}]}]},
    {"hostname": "b.test", "routes": [{"name": "api", "backends": [
        {"service": "api", "port": "http", "weight": 9},
        {"service": "canary", "port": 80, "weight": 1}]}]},
]


def build(c: ClusterState, conflicts: dict[str, str] | None = None, **spec: Any):  # type: ignore[no-untyped-def]
    return build_reverseproxy_graph(parse_reverseproxy(rp_object(**spec)), c,
                                    conflicts=conflicts)


def pool(g: Any, name: str) -> Any:
    return next(p for p in g.pools if p.name == name)


def test_each_route_and_the_default_backend_get_a_pool() -> None:
    g = build(cluster(), hosts=TWO_HOSTS, defaultBackend={"service": "web", "port": 80})
    assert [p.name for p in g.pools] == ["be_default", "rt_a.test_web", "rt_b.test_api"]
    assert g.kind == "ReverseProxy" and not g.problems
    assert (g.backends_ready, g.backends_total) == (7, 7)  # web (3) counted once
    (fe,) = g.frontends
    assert fe.default_pool == "be_default" and fe.routing is not None
    assert [r.pool for r in fe.routing.rules] == ["rt_a.test_web", "rt_b.test_api"]
    assert fe.routing.rules[1].services == ("api", "canary")


def test_canary_weights_split_by_service_share() -> None:
    g = build(cluster(), hosts=TWO_HOSTS)
    servers = [s for s in pool(g, "rt_b.test_api").servers if s.endpoint]
    by_service: dict[str, int] = {}
    for s in servers:
        service_name = s.endpoint.split("/")[0]
        by_service[service_name] = by_service.get(service_name, 0) + s.weight
    # 9:1 between api (3 endpoints) and canary (1 endpoint), up to rounding.
    assert abs(by_service["api"] / by_service["canary"] - 9) < 0.2


def test_hostname_conflicts_are_dropped_with_a_problem() -> None:
    g = build(cluster(), conflicts={"a.test": "already served by ReverseProxy 'other'"},
              hosts=TWO_HOSTS)
    assert [p.name for p in g.pools] == ["rt_b.test_api"]
    (problem,) = g.problems
    assert (problem.condition, problem.reason) == ("Accepted", "HostnameConflict")
    assert problem.message == "spec.hosts[0].hostname: already served by ReverseProxy 'other'"
    assert [h.hostname for h in g.frontends[0].routing.hosts] == ["b.test"]


def test_missing_service_keeps_an_empty_pool_and_records_a_problem() -> None:
    hosts = [{"hostname": "a.test", "routes": [
        {"name": "gone", "match": {"path": {"value": "/gone"}},
         "backends": [{"service": "nope", "port": 80}]},
        {"name": "badport", "match": {"path": {"value": "/bad"}},
         "backends": [{"service": "web", "port": "grpc"}]},
        {"name": "web", "backends": [{"service": "web", "port": 80}]}]}]
    g = build(cluster(), hosts=hosts)
    assert not any(s.endpoint for s in pool(g, "rt_a.test_gone").servers)
    assert not any(s.endpoint for s in pool(g, "rt_a.test_badport").servers)
    missing, port = g.problems
    assert (missing.condition, missing.reason, missing.retry) == (
        "BackendsHealthy", "BackendNotFound", True)
    assert missing.message.startswith("spec.hosts[0].routes[0].backends[0]: Service 'nope'")
    assert (port.reason, port.message.split(":")[0]) == (
        "PortNotFound", "spec.hosts[0].routes[1].backends[0]")
    # The rules still route /gone to its (empty) pool: 503, never the catch-all.
    assert [r.pool for r in g.frontends[0].routing.rules] == [
        "rt_a.test_gone", "rt_a.test_badport", "rt_a.test_web"]  # longest prefix first


def test_slots_are_sticky_per_route_pool() -> None:
    first = pool(build(cluster(), hosts=TWO_HOSTS), "rt_b.test_api")
    previous = {"rt_b.test_api": {s.slot: s.endpoint or "" for s in first.servers}}
    slot_of = {s.endpoint: s.slot for s in first.servers if s.endpoint}
    services = {"api": service("api"), "canary": service("canary"), "web": service()}
    slices = [endpoint_slice("api", [endpoint("api-3", "10.244.1.3"),
                                     endpoint("api-9", "10.244.1.9")]),
              endpoint_slice("canary", [endpoint("canary-1", "10.244.2.1")]),
              endpoint_slice("web", pods(1))]
    second = pool(build(ClusterState(services, slices, {}, previous), hosts=TWO_HOSTS),
                  "rt_b.test_api")
    now = {s.endpoint: s.slot for s in second.servers if s.endpoint}
    assert now["api/api-3:8080"] == slot_of["api/api-3:8080"]
    assert now["canary/canary-1:8080"] == slot_of["canary/canary-1:8080"]
    assert len(second.servers) == len(first.servers)


def test_pool_names_are_short_stable_identifiers() -> None:
    assert route_pool_name("www.example.test", "api") == "rt_www.example.test_api"
    assert route_pool_name("*.example.test", "api") == "rt__.example.test_api"
    long = route_pool_name("a-very-long-hostname.example.test", "route-name")
    assert len(long) <= 32 and long == route_pool_name("a-very-long-hostname.example.test",
                                                        "route-name")
    assert long != route_pool_name("another-long-hostname.example.test", "route-name")


HTTPS = [{"name": "https", "port": 443, "protocol": "HTTPS"},
         {"name": "http", "port": 80, "redirectToHTTPS": True}]


def test_https_certificates_one_issued_secret_for_all_issued_hosts() -> None:
    hosts = [{"hostname": h, "tls": tls, "routes": [{"name": "r", "backends": [
        {"service": "web", "port": 80}]}]}
        for h, tls in (("a.test", {}), ("b.test", {}), ("c.test", {"secretName": "c-tls"}),
                       ("plain.test", None))]
    for h in hosts:
        if h["tls"] is None:
            del h["tls"]
    issued = issued_secret_name("ReverseProxy", "site")
    g = build(cluster(secrets={issued: TLSSecret(issued, True, True, "i"),
                               "c-tls": TLSSecret("c-tls", True, True, "c")}),
              listeners=HTTPS, hosts=hosts, hsts={"includeSubdomains": True})
    # The issued hosts (not c.test: it brings its own Secret), plus the proxy Service's
    # names: the same names the certificate issuer asks for, as for a LoadBalancer.
    assert g.issued_dns_names == ("a.test", "b.test", "site-rp", "site-rp.default",
                                  "site-rp.default.svc", "site-rp.default.svc.cluster.local")
    assert [(c.file, c.kind) for c in g.certificates] == [("c-tls.pem", "pair"),
                                                          ("site-rp-tls.pem", "pair")]
    http, https = g.frontends
    assert http.redirect_https_port == 443 and http.routing is None
    assert (https.certificate, https.extra_certificates) == ("site-rp-tls.pem", ("c-tls.pem",))
    assert https.hsts == "max-age=31536000; includeSubDomains"
    # plain.test has no tls: it is not served on the HTTPS listener.
    assert [h.hostname for h in https.routing.hosts] == ["a.test", "b.test", "c.test"]


def test_missing_host_secret_drops_only_that_host_from_https() -> None:
    hosts = [{"hostname": "a.test", "tls": {}, "routes": [{"name": "r", "backends": [
        {"service": "web", "port": 80}]}]},
        {"hostname": "c.test", "tls": {"secretName": "c-tls"}, "routes": [
            {"name": "r", "backends": [{"service": "web", "port": 80}]}]}]
    issued = issued_secret_name("ReverseProxy", "site")
    g = build(cluster(secrets={issued: TLSSecret(issued, True, True, "i")}),
              listeners=[HTTPS[0]], hosts=hosts)
    (problem,) = g.problems
    assert (problem.condition, problem.reason, problem.retry) == ("TLSReady", "SecretNotFound",
                                                                  True)
    assert problem.message.startswith("spec.hosts[1].tls: Secret 'c-tls' not found")
    assert [h.hostname for h in g.frontends[0].routing.hosts] == ["a.test"]


def test_upstream_ca_becomes_a_ca_certificate_entry() -> None:
    ca = TLSSecret("internal-ca", False, False, "", has_ca=True, ca_fingerprint="cafp")
    g = build(cluster(secrets={"internal-ca": ca}), hosts=TWO_HOSTS,
              upstreamTLS={"caSecretName": "internal-ca", "sni": "api.internal"})
    (cert,) = g.certificates
    assert (cert.file, cert.secret, cert.fingerprint, cert.kind) == (
        "internal-ca.ca.pem", "internal-ca", "cafp", "ca")
    p = pool(g, "rt_b.test_api")
    assert p.upstream_tls is not None
    assert (p.upstream_tls.verify, p.upstream_tls.ca_file, p.upstream_tls.sni) == (
        True, "internal-ca.ca.pem", "api.internal")
    role = objects.agent_role(objects.Owner("ReverseProxy", "site", "default", "u"), g)
    assert role["rules"][-1]["resourceNames"] == ["internal-ca"]


def test_missing_ca_never_connects_unverified() -> None:
    g = build(cluster(), hosts=TWO_HOSTS, upstreamTLS={"caSecretName": "internal-ca"})
    (problem,) = g.problems
    assert (problem.condition, problem.reason, problem.retry) == ("TLSReady", "SecretNotFound",
                                                                  True)
    assert all(s.state == MAINT for p in g.pools for s in p.servers)
    assert not g.certificates


def test_verify_false_needs_no_ca() -> None:
    g = build(cluster(), hosts=TWO_HOSTS,
              upstreamTLS={"caSecretName": "internal-ca", "verify": False})
    assert not g.problems and not g.certificates
    assert any(s.state == READY for s in pool(g, "rt_a.test_web").servers)


def test_desired_children_are_named_and_labelled_for_the_kind() -> None:
    rp = parse_reverseproxy(rp_object())
    desired = desired_for_reverseproxy(rp, cluster())
    names = {(c["kind"], c["metadata"]["name"]) for c in desired.children}
    assert ("Deployment", "site-rp") in names and ("ConfigMap", "site-rp-agents") in names
    for child in desired.children:
        assert child["metadata"]["labels"]["roundhouse.dev/owner-kind"] == "ReverseProxy"
        assert child["metadata"]["ownerReferences"][0]["kind"] == "ReverseProxy"
