"""The ReverseProxy model: defaults, every field, references, and validation."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse.model import (
    HSTS,
    Backend,
    HeaderChanges,
    HeaderMatch,
    PathMatch,
    Redirect,
    Retries,
    RouteTimeouts,
    SpecError,
    UpstreamTLS,
    parse_reverseproxy,
)
from tests.unit.rp_fixtures import rp_object


def route(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "backends": [{"service": "web", "port": 80}], **fields}


def hosts(*routes: dict[str, Any], tls: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    host: dict[str, Any] = {"hostname": "www.example.test", "routes": list(routes)}
    if tls is not None:
        host["tls"] = tls
    return [host]


def test_defaults_of_a_minimal_spec() -> None:
    rp = parse_reverseproxy(rp_object())
    assert (rp.name, rp.namespace, rp.uid, rp.generation) == ("site", "default", "uid-rp", 1)
    (li,) = rp.listeners
    assert (li.name, li.port, li.protocol, li.redirect_to_https) == ("http", 80, "HTTP", False)
    (host,) = rp.hosts
    assert host.tls is None and not host.wildcard
    (r,) = host.routes
    assert r.match.path == PathMatch("Prefix", "/")
    assert r.match.headers == () and r.match.method is None
    assert r.backends == (Backend("web", 80, 1),) and r.redirect is None
    assert r.timeouts == RouteTimeouts() and r.retries is None
    assert not r.request_headers and not r.response_headers and r.rewrite_path_prefix is None
    assert rp.default_backend is None and rp.upstream_tls is None and rp.hsts is None
    assert rp.algorithm == "roundrobin" and rp.session_persistence is None
    assert rp.health_check is None and rp.proxy.replicas == 2
    assert rp.timeouts.server_ms == 50_000 and rp.limits.max_connections == 10_000


@pytest.mark.parametrize(("spec", "check"), [
    ({"hosts": hosts(route(match={"path": {"type": "Exact", "value": "/a"}}))},
     lambda rp: rp.hosts[0].routes[0].match.path == PathMatch("Exact", "/a")),
    ({"hosts": hosts(route(match={"path": {"type": "RegularExpression", "value": "/v[0-9]+"}}))},
     lambda rp: rp.hosts[0].routes[0].match.path.type == "RegularExpression"),
    ({"hosts": hosts(route(match={"headers": [{"name": "X-A", "value": "b"},
                                              {"name": "X-B", "type": "RegularExpression",
                                               "value": "c.*"}], "method": "PUT"}))},
     lambda rp: (rp.hosts[0].routes[0].match.headers, rp.hosts[0].routes[0].match.method)
     == ((HeaderMatch("X-A", "b"), HeaderMatch("X-B", "c.*", "RegularExpression")), "PUT")),
    ({"hosts": hosts(route(backends=[{"service": "a", "port": "http", "weight": 9},
                                     {"service": "b", "port": 8080}]))},
     lambda rp: rp.hosts[0].routes[0].backends == (Backend("a", "http", 9), Backend("b", 8080))),
    ({"hosts": hosts(route(timeouts={"request": "10s", "server": "2m"}))},
     lambda rp: rp.hosts[0].routes[0].timeouts == RouteTimeouts(10_000, 120_000)),
    ({"hosts": hosts(route(retries={}))},
     lambda rp: rp.hosts[0].routes[0].retries == Retries(3, ("connect-failure",))),
    ({"hosts": hosts(route(retries={"attempts": 5, "retryOn": ["503", "empty-response"]}))},
     lambda rp: rp.hosts[0].routes[0].retries == Retries(5, ("503", "empty-response"))),
    ({"hosts": hosts(route(requestHeaders={"set": {"B": "2", "A": "1"}, "add": {"C": "3"},
                                           "remove": ["D"]}))},
     lambda rp: rp.hosts[0].routes[0].request_headers
     == HeaderChanges((("A", "1"), ("B", "2")), (("C", "3"),), ("D",))),
    ({"hosts": hosts(route(responseHeaders={"add": {"Cache-Control": "no-store"}}))},
     lambda rp: rp.hosts[0].routes[0].response_headers.add == (("Cache-Control", "no-store"),)),
    ({"hosts": hosts(route(match={"path": {"value": "/api"}}, rewrite={"pathPrefix": "/"}))},
     lambda rp: rp.hosts[0].routes[0].rewrite_path_prefix == "/"),
    ({"hosts": hosts({"name": "r", "redirect": {"scheme": "https"}})},
     lambda rp: rp.hosts[0].routes[0].redirect == Redirect("https", None, None, 302)),
    ({"hosts": hosts({"name": "r", "redirect": {"hostname": "b.test", "path": "/x",
                                                "statusCode": 308}})},
     lambda rp: rp.hosts[0].routes[0].redirect == Redirect(None, "b.test", "/x", 308)),
    ({"defaultBackend": {"service": "web", "port": "http"}},
     lambda rp: rp.default_backend == Backend("web", "http")),
    ({"upstreamTLS": {}}, lambda rp: rp.upstream_tls == UpstreamTLS(None, None, True)),
    ({"upstreamTLS": {"caSecretName": "ca", "sni": "api.internal", "verify": False}},
     lambda rp: rp.upstream_tls == UpstreamTLS("ca", "api.internal", False)),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"},
                    {"name": "http", "port": 80, "redirectToHTTPS": True}],
      "hosts": hosts(route(), tls={}), "hsts": {}},
     lambda rp: rp.hsts == HSTS() and rp.hsts.header() == "max-age=31536000"
     and rp.listeners[1].redirect_to_https),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}],
      "hosts": hosts(route(), tls={"secretName": "mine"}),
      "hsts": {"maxAge": "1h", "includeSubdomains": True, "preload": True}},
     lambda rp: rp.hsts.header() == "max-age=3600; includeSubDomains; preload"
     and rp.hosts[0].tls.secret_name == "mine"),
    ({"algorithm": "leastconn", "sessionPersistence": {"type": "SourceIP"},
      "healthCheck": {"type": "HTTP", "path": "/h"}, "timeouts": {"tunnel": "2h"},
      "limits": {"maxConnections": 5}, "proxy": {"replicas": 3, "serviceType": "ClusterIP"}},
     lambda rp: (rp.algorithm, rp.session_persistence.type, rp.health_check.path,
                 rp.timeouts.tunnel_ms, rp.limits.max_connections, rp.proxy.replicas,
                 rp.proxy.service_type)
     == ("leastconn", "SourceIP", "/h", 7_200_000, 5, 3, "ClusterIP")),
])
def test_parsed_values(spec: dict[str, Any], check: Any) -> None:
    assert check(parse_reverseproxy(rp_object(**spec)))


def test_references_and_issued_hostnames() -> None:
    rp = parse_reverseproxy(rp_object(
        listeners=[{"name": "https", "port": 443, "protocol": "HTTPS"}],
        hosts=[
            {"hostname": "b.test", "tls": {}, "routes": [route(name="x")]},
            {"hostname": "*.a.test", "tls": {}, "routes": [
                {"name": "y", "backends": [{"service": "api", "port": 1},
                                           {"service": "api-2", "port": 2}]}]},
            {"hostname": "c.test", "tls": {"secretName": "c-tls"},
             "routes": [{"name": "z", "redirect": {"scheme": "https"}}]},
        ],
        defaultBackend={"service": "fallback", "port": 80},
        upstreamTLS={"caSecretName": "ca"}))
    assert rp.service_refs() == {"web", "api", "api-2", "fallback"}
    assert rp.secret_refs() == {"c-tls", "ca"}
    assert rp.issued_hostnames() == ("*.a.test", "b.test")
    assert rp.hosts[1].wildcard


def test_every_problem_is_reported_at_once() -> None:
    obj = rp_object(algorithm="fastest", hosts=[{"hostname": "A..b", "routes": [
        {"name": "r", "match": {"path": {"type": "RegularExpression", "value": "("}},
         "backends": [{"service": "web", "port": 0}]}]}])
    with pytest.raises(SpecError) as err:
        parse_reverseproxy(obj)
    paths = {e.path for e in err.value.errors}
    assert {"spec.algorithm", "spec.hosts[0].hostname",
            "spec.hosts[0].routes[0].match.path.value",
            "spec.hosts[0].routes[0].backends[0].port"} <= paths


def test_name_leaves_room_for_the_rp_suffix() -> None:
    obj = rp_object()
    obj["metadata"]["name"] = "a" * 51
    with pytest.raises(SpecError, match="children are named <name>-rp"):
        parse_reverseproxy(obj)


def test_cross_field_messages_are_the_crds() -> None:
    """A failed cross-field rule, in the words of the CRD's CEL rule and at the field it
    names (roundhouse.model.rules states both once)."""
    from roundhouse.model import rules

    redirect = {"name": "r", "redirect": {"scheme": "https"}}
    cases = [
        (rp_object(hosts=hosts(route(redirect={"scheme": "https"}))),
         "spec.hosts[0].routes[0]", rules.ROUTE_BACKENDS_OR_REDIRECT),
        (rp_object(hosts=hosts({**redirect, "retries": {}})),
         "spec.hosts[0].routes[0].retries", rules.BACKEND_ONLY[1]),
        (rp_object(hosts=hosts({"name": "r", "redirect": {}})),
         "spec.hosts[0].routes[0].redirect", rules.REDIRECT_NEEDS_TARGET),
        (rp_object(hosts=hosts(route(match={"path": {"type": "Exact", "value": "a"}}))),
         "spec.hosts[0].routes[0].match.path.value", rules.PATH_VALUE),
        (rp_object(hosts=hosts(route(), tls={})), "spec.hosts", rules.HOST_TLS_NEEDS_HTTPS),
        (rp_object(hsts={"preload": True}), "spec.hsts.preload",
         rules.PRELOAD_NEEDS_SUBDOMAINS),
        (rp_object(listeners=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
         "spec.listeners", rules.LISTENER_PORTS_UNIQUE),
    ]
    for obj, field, rule in cases:
        with pytest.raises(SpecError) as err:
            parse_reverseproxy(obj)
        assert (field, rule.message) in [(e.path, e.message) for e in err.value.errors], \
            (field, err.value.errors)
