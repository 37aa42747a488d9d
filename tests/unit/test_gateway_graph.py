"""Gateway API -> ProxyGraph (graph/gateway.py): attachment, the spec's status reasons,
hostname intersection, precedence (replayed by the routing oracle) and `haproxy -c` of
the rendered config on both HAProxy versions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from roundhouse.graph.gateway import (
    GatewayBuild,
    build_gateway_graph,
    effective_hostnames,
    intersect,
    mirrored_secret_name,
    pool_name,
    service_key,
)
from roundhouse.graph.types import ClusterState
from roundhouse.model import gatewayapi as g
from roundhouse.model.cluster import EndpointSlice, Service, ServicePort, TLSSecret
from tests.unit import routing_oracle as oracle
from tests.unit.conftest import check_graph

INFRA = "infra"


def gateway(listeners: str) -> g.Gateway:
    return g.parse_gateway(yaml.safe_load(f"""
metadata: {{name: gw, namespace: {INFRA}, uid: u1, generation: 3}}
spec:
  gatewayClassName: roundhouse
  listeners: {listeners}
"""))


def route(name: str, spec: str, namespace: str = INFRA,
          created: str = "2026-01-01T00:00:00Z") -> g.HTTPRoute:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace, "generation": 2,
                                        "creationTimestamp": created},
                           "spec": yaml.safe_load(spec)}
    return g.parse_httproute(obj)


def cluster(*services: tuple[str, str], secrets: dict[str, TLSSecret] | None = None
            ) -> ClusterState:
    """Services (namespace, name) on port 8080, one ready endpoint each."""
    svcs = {service_key(ns, n): Service(n, (ServicePort("http", 8080),), "10.96.0.9")
            for ns, n in services}
    slices = [EndpointSlice(f"{n}-x", service_key(ns, n), (("http", 8080),),
                            ((f"{n}-pod", f"10.244.0.{i + 10}", True, True, False, None),))
              for i, (ns, n) in enumerate(services)]
    return ClusterState(svcs, slices, secrets or {})


def secret(name: str) -> TLSSecret:
    return TLSSecret(name, True, True, "f" * 64)


def conditions(build: GatewayBuild, route_key: tuple[str, str]) -> dict[str, tuple[bool, str]]:
    (parent,) = build.routes[route_key]
    return {c.type: (c.status, c.reason) for c in parent.conditions}


def listener(build: GatewayBuild, name: str) -> dict[str, tuple[bool, str]]:
    li = next(x for x in build.listeners if x.name == name)
    return {c.type: (c.status, c.reason) for c in li.conditions}


HTTP = "[{name: http, port: 80, protocol: HTTP}]"


# ------------------------------------------------------------------------- hostnames


@pytest.mark.parametrize(("listener_host", "route_host", "expected"), [
    (None, "a.example.com", "a.example.com"),
    ("a.example.com", "a.example.com", "a.example.com"),
    ("a.example.com", "b.example.com", None),
    ("*.example.com", "a.example.com", "a.example.com"),
    ("*.example.com", "a.b.example.com", "a.b.example.com"),
    ("*.example.com", "example.com", None),
    ("a.example.com", "*.example.com", "a.example.com"),
    ("*.example.com", "*.a.example.com", "*.a.example.com"),
    ("*.a.example.com", "*.example.com", "*.a.example.com"),
    ("*.example.com", "*.example.org", None),
])
def test_hostname_intersection_follows_the_spec(listener_host: str | None, route_host: str,
                                                expected: str | None) -> None:
    assert intersect(listener_host, route_host) == expected


def test_no_hostnames_on_either_side_means_every_hostname() -> None:
    assert effective_hostnames(None, ()) == [""]
    assert effective_hostnames("x.io", ()) == ["x.io"]
    assert effective_hostnames("x.io", ("y.io",)) == []


# ------------------------------------------------------------------------- listeners


def test_unsupported_protocol_and_route_kind_and_conflicts_have_the_specs_reasons() -> None:
    gw = gateway("""[
      {name: tcp, port: 9000, protocol: TCP},
      {name: kinds, port: 81, protocol: HTTP,
       allowedRoutes: {kinds: [{kind: TCPRoute}]}},
      {name: a, port: 82, protocol: HTTP}, {name: b, port: 82, protocol: HTTPS,
       tls: {certificateRefs: [{name: cert}]}},
      {name: ok, port: 80, protocol: HTTP}]""")
    build = build_gateway_graph(gw, [], [], cluster(secrets={"cert": secret("cert")}))
    assert listener(build, "tcp")[g.ACCEPTED] == (False, "UnsupportedProtocol")
    assert listener(build, "kinds")[g.RESOLVED_REFS] == (False, "InvalidRouteKinds")
    assert listener(build, "kinds")[g.PROGRAMMED] == (False, "Invalid")
    assert listener(build, "a")[g.CONFLICTED] == (True, "ProtocolConflict")
    assert listener(build, "b")[g.CONFLICTED] == (True, "ProtocolConflict")
    assert listener(build, "ok") == {g.ACCEPTED: (True, "Accepted"),
                                     g.PROGRAMMED: (True, "Programmed"),
                                     g.RESOLVED_REFS: (True, "ResolvedRefs"),
                                     g.CONFLICTED: (False, "NoConflicts")}
    assert build.conditions[0].reason == "ListenersNotValid" and build.conditions[0].status
    assert [f.port for f in build.graph.frontends] == [80]  # only the valid listener serves


def test_certificate_refs_need_a_secret_and_a_grant_across_namespaces() -> None:
    gw = gateway("""[
      {name: missing, port: 443, hostname: a.io, protocol: HTTPS,
       tls: {certificateRefs: [{name: nope}]}},
      {name: other-ns, port: 443, hostname: b.io, protocol: HTTPS,
       tls: {certificateRefs: [{name: cert, namespace: web}]}},
      {name: not-secret, port: 443, hostname: c.io, protocol: HTTPS,
       tls: {certificateRefs: [{name: cert, group: example.com, kind: Vault}]}},
      {name: good, port: 443, hostname: d.io, protocol: HTTPS,
       tls: {certificateRefs: [{name: cert}]}}]""")
    copy = mirrored_secret_name("gw", "web", "cert")
    secrets = {"cert": secret("cert"), copy: secret(copy)}
    build = build_gateway_graph(gw, [], [], cluster(secrets=secrets))
    assert listener(build, "missing")[g.RESOLVED_REFS] == (False, "InvalidCertificateRef")
    assert listener(build, "other-ns")[g.RESOLVED_REFS] == (False, "RefNotPermitted")
    assert listener(build, "not-secret")[g.RESOLVED_REFS] == (False, "InvalidCertificateRef")
    assert listener(build, "good")[g.PROGRAMMED] == (True, "Programmed")

    grant = g.parse_reference_grant(yaml.safe_load("""
metadata: {name: allow, namespace: web}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret, name: cert}]"""))
    granted = build_gateway_graph(gw, [], [grant], cluster(secrets=secrets))
    assert listener(granted, "other-ns")[g.RESOLVED_REFS] == (True, "ResolvedRefs")
    (frontend,) = granted.graph.frontends
    assert {frontend.certificate, *frontend.extra_certificates} == {
        "cert.pem", f"{copy}.pem"}


# ------------------------------------------------------------------------- attachment


def test_parent_refs_attach_by_section_namespace_and_hostname_with_the_specs_reasons() -> None:
    gw = gateway("""[
      {name: same, port: 80, protocol: HTTP, hostname: "*.example.com"},
      {name: all, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}},
      {name: labelled, port: 8081, protocol: HTTP,
       allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}}]""")
    routes = [
        route("ok", "{parentRefs: [{name: gw, sectionName: same}], hostnames: [a.example.com],"
                    " rules: [{backendRefs: [{name: web, port: 8080}]}]}"),
        route("no-section", "{parentRefs: [{name: gw, sectionName: nope}]}"),
        route("no-host", "{parentRefs: [{name: gw, sectionName: same}], hostnames: [x.org]}"),
        route("other-ns", "{parentRefs: [{name: gw, namespace: infra, sectionName: same}]}",
              namespace="web"),
        route("anywhere", "{parentRefs: [{name: gw, namespace: infra, sectionName: all}]}",
              namespace="web"),
        route("selected", "{parentRefs: [{name: gw, namespace: infra, port: 8081}]}",
              namespace="team-a"),
        route("unselected", "{parentRefs: [{name: gw, namespace: infra, port: 8081}]}",
              namespace="team-b"),
        route("elsewhere", "{parentRefs: [{name: other-gw}]}"),
    ]
    labels = {"team-a": {"team": "a"}, "team-b": {"team": "b"}}
    build = build_gateway_graph(gw, routes, [], cluster((INFRA, "web")), labels)
    assert conditions(build, (INFRA, "ok"))[g.ACCEPTED] == (True, "Accepted")
    assert conditions(build, (INFRA, "no-section"))[g.ACCEPTED] == (False, "NoMatchingParent")
    assert conditions(build, (INFRA, "no-host"))[g.ACCEPTED] == (
        False, "NoMatchingListenerHostname")
    assert conditions(build, ("web", "other-ns"))[g.ACCEPTED] == (
        False, "NotAllowedByListeners")
    assert conditions(build, ("web", "anywhere"))[g.ACCEPTED] == (True, "Accepted")
    assert conditions(build, ("team-a", "selected"))[g.ACCEPTED] == (True, "Accepted")
    assert conditions(build, ("team-b", "unselected"))[g.ACCEPTED] == (
        False, "NotAllowedByListeners")
    assert (INFRA, "elsewhere") not in build.routes  # another Gateway's: no entry of ours
    assert {li.name: li.attached_routes for li in build.listeners} == {
        "same": 1, "all": 1, "labelled": 1}


def test_backend_refs_resolve_with_the_specs_reasons() -> None:
    gw = gateway("[{name: http, port: 80, protocol: HTTP, "
                 "allowedRoutes: {namespaces: {from: All}}}]")
    routes = [
        route("kind", "{parentRefs: [{name: gw}], rules: [{backendRefs: "
                      "[{group: example.com, kind: Bucket, name: web}]}]}"),
        route("missing", "{parentRefs: [{name: gw}], rules: [{backendRefs: "
                         "[{name: gone, port: 8080}]}]}"),
        route("cross", "{parentRefs: [{name: gw}], rules: [{backendRefs: "
                       "[{name: web, namespace: web, port: 8080}]}]}"),
        route("fine", "{parentRefs: [{name: gw}], rules: [{backendRefs: "
                      "[{name: web, port: 8080}]}]}"),
    ]
    state = cluster((INFRA, "web"), ("web", "web"))
    build = build_gateway_graph(gw, routes, [], state)
    assert conditions(build, (INFRA, "kind"))[g.RESOLVED_REFS] == (False, "InvalidKind")
    assert conditions(build, (INFRA, "missing"))[g.RESOLVED_REFS] == (False, "BackendNotFound")
    assert conditions(build, (INFRA, "cross"))[g.RESOLVED_REFS] == (False, "RefNotPermitted")
    assert conditions(build, (INFRA, "fine"))[g.RESOLVED_REFS] == (True, "ResolvedRefs")
    # An invalid reference does not stop the route from being accepted.
    assert conditions(build, (INFRA, "cross"))[g.ACCEPTED] == (True, "Accepted")

    grant = g.parse_reference_grant(yaml.safe_load("""
metadata: {name: allow, namespace: web}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service}]"""))
    granted = build_gateway_graph(gw, routes, [grant], state)
    assert conditions(granted, (INFRA, "cross"))[g.RESOLVED_REFS] == (True, "ResolvedRefs")


def test_unsupported_filter_is_not_accepted() -> None:
    gw = gateway(HTTP)
    r = route("mirror", "{parentRefs: [{name: gw}], rules: [{filters: [{type: RequestMirror,"
                        " requestMirror: {backendRef: {name: web, port: 8080}}}],"
                        " backendRefs: [{name: web, port: 8080}]}]}")
    build = build_gateway_graph(gw, [r], [], cluster((INFRA, "web")))
    assert conditions(build, (INFRA, "mirror"))[g.ACCEPTED] == (False, "UnsupportedValue")
    assert build.listeners[0].attached_routes == 0
    per_backend = route("per-backend", "{parentRefs: [{name: gw}], rules: [{backendRefs: "
                                       "[{name: web, port: 8080, filters: [{type: "
                                       "RequestHeaderModifier, requestHeaderModifier: "
                                       "{set: [{name: a, value: b}]}}]}]}]}")
    build = build_gateway_graph(gw, [per_backend], [], cluster((INFRA, "web")))
    assert conditions(build, (INFRA, "per-backend"))[g.ACCEPTED] == (False, "UnsupportedValue")


# ------------------------------------------------------------------------- routing


def test_precedence_exact_then_longest_prefix_then_headers_then_age() -> None:
    gw = gateway(HTTP)
    routes = [
        route("old", """{parentRefs: [{name: gw}], rules: [
            {matches: [{path: {type: PathPrefix, value: /}}],
             backendRefs: [{name: a, port: 8080}]},
            {matches: [{path: {type: PathPrefix, value: /v2}}],
             backendRefs: [{name: b, port: 8080}]}]}"""),
        route("new", """{parentRefs: [{name: gw}], rules: [
            {matches: [{path: {type: PathPrefix, value: /}}],
             backendRefs: [{name: c, port: 8080}]},
            {matches: [{path: {type: Exact, value: /v2/exact}}],
             backendRefs: [{name: d, port: 8080}]},
            {matches: [{path: {type: PathPrefix, value: /v2},
                        headers: [{name: version, value: two}]}],
             backendRefs: [{name: e, port: 8080}]}]}""", created="2026-02-01T00:00:00Z"),
    ]
    build = build_gateway_graph(gw, routes, [], cluster(*((INFRA, s) for s in "abcde")))
    names = {pool_name(r, i): f"{i}@{r.name}" for r in routes for i in range(len(r.rules))}

    def to(path: str, headers: dict[str, str] | None = None) -> str:
        return names[oracle.select_route(build.graph, "any.host", path, headers=headers)]

    assert to("/") == "0@old"  # same prefix: the older route wins
    assert to("/v2/x") == "1@old"  # longer prefix
    assert to("/v2x") == "0@old"  # prefixes match whole segments
    assert to("/v2/exact") == "1@new"  # Exact before any prefix
    assert to("/v2/x", {"version": "two"}) == "2@new"  # more header matches first


def test_a_specific_hostname_falls_back_to_wildcard_and_catch_all_rules_of_its_listener() -> None:
    gw = gateway("[{name: http, port: 80, protocol: HTTP}]")
    routes = [
        route("exact", "{parentRefs: [{name: gw}], hostnames: [a.example.com], rules: ["
                       "{matches: [{path: {type: PathPrefix, value: /a}}],"
                       " backendRefs: [{name: a, port: 8080}]}]}"),
        route("wild", "{parentRefs: [{name: gw}], hostnames: ['*.example.com'], rules: ["
                      "{matches: [{path: {type: PathPrefix, value: /w}}],"
                      " backendRefs: [{name: w, port: 8080}]}]}"),
        route("any", "{parentRefs: [{name: gw}], rules: [{backendRefs: [{name: z, port: 8080}]}]}"),
    ]
    build = build_gateway_graph(gw, routes, [], cluster((INFRA, "a"), (INFRA, "w"),
                                                        (INFRA, "z")))
    a, w, z = (pool_name(r, 0) for r in routes)
    assert oracle.select_route(build.graph, "a.example.com", "/a/1") == a
    assert oracle.select_route(build.graph, "a.example.com", "/w") == w
    assert oracle.select_route(build.graph, "a.example.com", "/other") == z
    assert oracle.select_route(build.graph, "b.example.com", "/a") == z
    assert oracle.select_route(build.graph, "b.example.com:80", "/w") == w
    assert oracle.select_route(build.graph, "example.org", "/w") == z


def test_listeners_on_one_port_keep_their_routes_apart() -> None:
    gw = gateway("""[{name: bar, port: 80, protocol: HTTP, hostname: bar.com},
                     {name: wild, port: 80, protocol: HTTP, hostname: "*.bar.com"},
                     {name: any, port: 80, protocol: HTTP}]""")
    routes = [route(n, f"{{parentRefs: [{{name: gw, sectionName: {n}}}], rules: "
                       f"[{{backendRefs: [{{name: {n}, port: 8080}}]}}]}}")
              for n in ("bar", "wild")]
    build = build_gateway_graph(gw, routes, [], cluster((INFRA, "bar"), (INFRA, "wild")))
    assert oracle.select_route(build.graph, "bar.com", "/") == pool_name(routes[0], 0)
    assert oracle.select_route(build.graph, "foo.bar.com", "/") == pool_name(routes[1], 0)
    assert oracle.select_route(build.graph, "example.org", "/") == "404"  # nothing on `any`


def test_rules_without_usable_backends_answer_500_and_redirects_follow_the_spec() -> None:
    gw = gateway("[{name: http, port: 8080, protocol: HTTP}]")
    r = route("r", """{parentRefs: [{name: gw}], rules: [
        {matches: [{path: {type: Exact, value: /none}}]},
        {matches: [{path: {type: Exact, value: /gone}}], backendRefs: [{name: gone, port: 80}]},
        {matches: [{path: {type: Exact, value: /host}}], filters: [{type: RequestRedirect,
          requestRedirect: {hostname: example.org, statusCode: 301}}]},
        {matches: [{path: {type: Exact, value: /https}}], filters: [{type: RequestRedirect,
          requestRedirect: {scheme: https}}]},
        {matches: [{path: {type: Exact, value: /port}}], filters: [{type: RequestRedirect,
          requestRedirect: {port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]}]}""")
    build = build_gateway_graph(gw, [r], [], cluster())
    graph = build.graph
    assert oracle.select_route(graph, "h", "/none") == "500"
    assert oracle.select_route(graph, "h", "/gone") == "500"
    assert not graph.pools

    def location(path: str) -> tuple[str, int]:
        rule = oracle.select_rule(graph, "h:8080", path)
        assert rule is not None and rule.redirect is not None
        return oracle.redirect_location(graph, rule, "h:8080", path + "?q=1"), rule.redirect.code

    # No scheme and no port: the listener's port; a scheme: its well-known port (not shown).
    assert location("/host") == ("http://example.org:8080/host?q=1", 301)
    assert location("/https") == ("https://h/https?q=1", 302)
    assert location("/port") == ("http://h:8443/x?q=1", 302)


def test_filters_become_the_pools_header_changes_and_rewrites() -> None:
    gw = gateway(HTTP)
    r = route("r", """{parentRefs: [{name: gw}], rules: [{
        matches: [{path: {type: PathPrefix, value: /api}}],
        filters: [
          {type: RequestHeaderModifier, requestHeaderModifier: {
             set: [{name: X-Set, value: s}], add: [{name: X-Add, value: a}], remove: [X-Del]}},
          {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Out, value: o}]}},
          {type: URLRewrite, urlRewrite: {hostname: internal.io,
             path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}}],
        backendRefs: [{name: web, port: 8080}]}]}""")
    build = build_gateway_graph(gw, [r], [], cluster((INFRA, "web")))
    (pool,) = build.graph.pools
    assert pool.request_headers is not None and pool.response_headers is not None
    assert pool.request_headers.set == (("Host", "internal.io"), ("X-Set", "s"))
    assert pool.request_headers.add == (("X-Add", "a"),)
    assert pool.request_headers.remove == ("X-Del",)
    assert pool.response_headers.set == (("X-Out", "o"),)
    assert pool.rewrite is not None and (pool.rewrite.prefix, pool.rewrite.replacement) == (
        "/api", "/v1")


def test_a_full_gateway_renders_a_config_haproxy_accepts() -> None:
    gw = gateway("""[{name: http, port: 80, protocol: HTTP},
                     {name: bar, port: 80, protocol: HTTP, hostname: "*.bar.com"},
                     {name: https, port: 443, protocol: HTTPS, hostname: secure.io,
                      tls: {certificateRefs: [{name: cert}]}}]""")
    r = route("r", """{parentRefs: [{name: gw}], rules: [
        {matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}, method: POST,
                    queryParams: [{name: q, value: "a b"}, {name: r, type: RegularExpression,
                    value: "x.*"}], headers: [{name: h, value: "-i"}]}],
         filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath,
                    replaceFullPath: /full}}}],
         backendRefs: [{name: web, port: 8080, weight: 3}, {name: web2, port: 8080, weight: 1}]},
        {matches: [{path: {type: PathPrefix, value: /old}}], filters: [{type: RequestRedirect,
          requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new},
          statusCode: 308}}]},
        {matches: [{path: {type: Exact, value: /none}}]}]}""")
    build = build_gateway_graph(gw, [r], [], cluster((INFRA, "web"), (INFRA, "web2"),
                                                     secrets={"cert": secret("cert")}))
    assert [f.port for f in build.graph.frontends] == [80, 443]
    result, config = check_graph(build.graph)
    assert result.returncode == 0, result.stdout + result.stderr + config
    assert "http-request set-path /full" in config
    assert "code 308" in config
