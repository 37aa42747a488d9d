"""ReverseProxy through the one renderer: the real `haproxy -c` on every example and on
generated specs, the routing table, hashes, and the agent's CA files (the golden files
of the whole translation are test_translation_golden.py's)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings

from roundhouse.agent.source import Source, ca_fingerprint
from roundhouse.graph import ClusterState
from roundhouse.graph.reverseproxy import build_reverseproxy_graph
from roundhouse.model import parse_reverseproxy
from roundhouse.render.haproxy import quote, render_haproxy
from tests.unit.agent_harness import FakeAPI, issue_cert
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service
from tests.unit.conftest import REPO, HaproxyCheck, check_graph
from tests.unit.routing_oracle import redirect_location, select_route, select_rule
from tests.unit.rp_fixtures import (
    RP_EXAMPLE_FILES,
    cluster_for,
    example_object,
    offline_cluster,
    rp_object,
)
from tests.unit.strategies import valid_reverseproxies

ROUTING_TABLE = yaml.safe_load((REPO / "tests" / "cases" / "routing-table.yaml").read_text())


def example_graph(path: Path):  # type: ignore[no-untyped-def]
    obj = example_object(path)
    return build_reverseproxy_graph(parse_reverseproxy(obj),
                                    offline_cluster(obj["metadata"]["name"]))


# ------------------------------------------------------------------ examples


def test_there_are_reverseproxy_examples() -> None:
    assert len(RP_EXAMPLE_FILES) >= 2


@pytest.mark.parametrize("path", RP_EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_passes_haproxy_check(path: Path, haproxy_binary: str) -> None:
    graph = example_graph(path)
    assert not graph.problems, graph.problems
    result, config = check_graph(graph)
    assert result.returncode == 0, result.stdout + result.stderr + config


def test_routing_table_spec_passes_haproxy_check(haproxy_binary: str) -> None:
    obj = ROUTING_TABLE["reverseproxy"]
    graph = build_reverseproxy_graph(parse_reverseproxy(obj), cluster_for(obj))
    result, config = check_graph(graph)
    assert result.returncode == 0, result.stdout + result.stderr + config


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_reverseproxies())
# Found by CI: one Secret as a host's certificate and the upstream CA at once.
@example({"apiVersion": "roundhouse.dev/v1alpha1", "kind": "ReverseProxy",
          "metadata": {"name": "0", "namespace": "default"},
          "spec": {"listeners": [{"name": "0", "port": 1},
                                 {"name": "1", "port": 2, "protocol": "HTTPS"}],
                   "hosts": [{"hostname": "0", "tls": {"secretName": "000"},
                              "routes": [{"name": "0", "redirect": {"path": "/"}}]}],
                   "upstreamTLS": {"caSecretName": "000"}}})
def test_generated_specs_pass_haproxy_check(obj: dict[str, Any]) -> None:
    rp = parse_reverseproxy(obj)
    graph = build_reverseproxy_graph(rp, cluster_for(obj))
    assert not [p for p in graph.problems if p.condition == "TLSReady"], graph.problems
    result, config = check_graph(graph)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n---\n{config}"
    # Same input, same bytes.
    assert render_haproxy(build_reverseproxy_graph(rp, cluster_for(obj))).config == \
        render_haproxy(build_reverseproxy_graph(rp, cluster_for(obj))).config


# ------------------------------------------------------------------ routing table


def test_routing_table_has_enough_cases() -> None:
    assert len(ROUTING_TABLE["cases"]) >= 30


def _expected(graph: Any, default_service: str | None, case: dict[str, Any]) -> str:
    rule = select_rule(graph, case["host"], case["path"], case.get("method", "GET"),
                       case.get("headers") or {})
    if rule is None:
        return default_service or "404"
    if rule.redirect:
        return "redirect:" + redirect_location(graph, rule, case["host"], case["path"])
    (service_name,) = rule.services
    return service_name


@pytest.mark.parametrize("case", ROUTING_TABLE["cases"],
                         ids=lambda c: f"{c.get('method', 'GET')} {c['host']}{c['path']}"
                         f"{' ' + json.dumps(c['headers']) if c.get('headers') else ''}")
def test_routing_table(case: dict[str, Any]) -> None:
    obj = ROUTING_TABLE["reverseproxy"]
    rp = parse_reverseproxy(obj)
    graph = build_reverseproxy_graph(rp, cluster_for(obj))
    default = rp.default_backend.service if rp.default_backend else None
    assert _expected(graph, default, case) == str(case["expect"])


def test_select_route_names_pools_redirects_and_404() -> None:
    obj = rp_object(hosts=[{"hostname": "a.test", "routes": [
        {"name": "r", "match": {"path": {"value": "/r"}}, "redirect": {"scheme": "https"}},
        {"name": "w", "match": {"path": {"value": "/w"}},
         "backends": [{"service": "web", "port": 80}]}]}])
    graph = build_reverseproxy_graph(parse_reverseproxy(obj), cluster_for(obj))
    assert select_route(graph, "a.test", "/w/x") == "rt_a.test_w"
    assert select_route(graph, "a.test", "/r") == "redirect:rd_a.test_r"
    assert select_route(graph, "a.test", "/other") == "404"
    assert select_route(graph, "b.test", "/w") == "404"
    cfg = render_haproxy(graph).config
    assert 'http-request return status 404 content-type text/plain string' in cfg


# ------------------------------------------------------------------ rendering details


def rendered(**spec: Any) -> str:
    obj = rp_object(**spec)
    return render_haproxy(build_reverseproxy_graph(parse_reverseproxy(obj),
                                                   cluster_for(obj))).config


def test_https_binds_every_certificate_with_alpn_and_hsts() -> None:
    cfg = rendered(listeners=[{"name": "https", "port": 443, "protocol": "HTTPS"}],
                   hosts=[{"hostname": "a.test", "tls": {}, "routes": [
                       {"name": "r", "backends": [{"service": "web", "port": 80}]}]},
                       {"hostname": "b.test", "tls": {"secretName": "b-tls"}, "routes": [
                           {"name": "r", "backends": [{"service": "web", "port": 80}]}]}],
                   hsts={"maxAge": "1h"})
    assert "bind :443 ssl crt site-rp-tls.pem crt b-tls.pem alpn h2,http/1.1" in cfg
    assert 'http-response set-header Strict-Transport-Security "max-age=3600"' in cfg
    assert "proto=https" in cfg


def test_upstream_tls_verifies_with_ca_and_sni() -> None:
    cfg = rendered(upstreamTLS={"caSecretName": "ca", "sni": "api.internal"},
                   healthCheck={"type": "HTTP"})
    assert "ca-base /var/run/roundhouse/certs" in cfg
    assert ("default-server check inter 2s rise 2 fall 3 ssl verify required ca-file "
            "ca.ca.pem sni str(api.internal) check-ssl check-sni api.internal") in cfg
    system = rendered(upstreamTLS={})
    assert "ssl verify required ca-file @system-ca" in system and "ca-base" not in system
    assert "ssl verify none" in rendered(upstreamTLS={"verify": False})


def test_route_features_are_rendered_in_its_backend() -> None:
    cfg = rendered(hosts=[{"hostname": "a.test", "routes": [{
        "name": "api", "match": {"path": {"value": "/api/"}},
        "backends": [{"service": "web", "port": 80}],
        "timeouts": {"request": "5s", "server": "90s"},
        "retries": {"attempts": 4, "retryOn": ["connect-failure", "503"]},
        "requestHeaders": {"set": {"X-A": "50% 'q'"}, "add": {"X-B": "b c"},
                           "remove": ["X-C"]},
        "responseHeaders": {"set": {"X-D": "d"}},
        "rewrite": {"pathPrefix": "/v2/"}}]}])
    backend = cfg.split("backend rt_a.test_api", 1)[1]
    for line in ("retries 4", "retry-on conn-failure 503", "timeout server 90s",
                 "option http-buffer-request", "timeout http-request 5s",
                 "http-request replace-path '^/api(/.*)$' '/v2\\1'",
                 "http-request replace-path '^/api$' /v2",
                 "http-request del-header X-C",
                 "http-request set-header X-A \"50%% 'q'\"",
                 "http-request add-header X-B 'b c'",
                 "http-response set-header X-D d"):
        assert line in backend, line


def test_route_source_ranges_answer_403_to_other_clients() -> None:
    rp = rp_object(allowedSourceRanges=["192.0.2.0/24"], hosts=[{
        "hostname": "a.test", "routes": [
            {"name": "admin", "match": {"path": {"value": "/admin"}},
             "backends": [{"service": "web", "port": 80}],
             "allowedSourceRanges": ["10.9.8.7/8", "fd00::/8"]},
            {"name": "old", "match": {"path": {"value": "/old"}},
             "redirect": {"path": "/new"}, "allowedSourceRanges": ["10.0.0.0/8"]},
            {"name": "site", "backends": [{"service": "web", "port": 80}]}]}])
    graph = build_reverseproxy_graph(parse_reverseproxy(rp), cluster_for(rp))
    lines = [x.strip() for x in render_haproxy(graph).config.splitlines()]
    # The whole proxy: refused at connect; a route: 403 before its redirect or backend.
    assert "acl rh_allowed_source src 192.0.2.0/24" in lines
    assert "acl rt_a.test_admin_source src 10.0.0.0/8 fd00::/8" in lines
    deny = ("http-request deny deny_status 403 if { var(txn.rh_route) -m str "
            "rt_a.test_admin } !rt_a.test_admin_source")
    redirect_deny = ("http-request deny deny_status 403 if { var(txn.rh_route) -m str "
                     "rd_a.test_old } !rd_a.test_old_source")
    first_redirect = next(i for i, x in enumerate(lines) if x.startswith("http-request redirect"))
    assert lines.index(deny) < first_redirect and lines.index(redirect_deny) < first_redirect
    assert not [x for x in lines if "rt_a.test_site_source" in x]
    result, config = check_graph(graph)
    assert result.returncode == 0, result.stdout + result.stderr + config


def test_quoting_keeps_every_value_one_literal_word() -> None:
    assert quote("plain/value") == "plain/value"
    assert quote("a b#c$d") == "'a b#c$d'"
    assert quote("it's \"$x\" \\") == '"it\'s \\"\\$x\\" \\\\"'


def endpoints_cluster(n: int, ready: bool = True) -> ClusterState:
    eps = [endpoint(f"web-{i}", f"10.244.0.{i}", ready=ready) for i in range(1, n + 1)]
    return ClusterState({"web": service()}, [endpoint_slice("web", eps)])


def test_endpoint_changes_keep_the_structure_hash() -> None:
    rp = parse_reverseproxy(rp_object(defaultBackend={"service": "web", "port": 80}))
    a, b, c = (render_haproxy(build_reverseproxy_graph(rp, cl)) for cl in (
        endpoints_cluster(2), endpoints_cluster(5), endpoints_cluster(2, ready=False)))
    assert a.structure_hash == b.structure_hash == c.structure_hash
    assert len({a.config_hash, b.config_hash, c.config_hash}) == 3


def test_server_state_lists_ca_entries_with_their_kind() -> None:
    graph = example_graph(REPO / "examples" / "reverseproxy-upstream-tls.yaml")
    state = render_haproxy(graph).server_state
    assert state["certificates"] == [{"file": "internal-ca.ca.pem", "secret": "internal-ca",
                                      "fingerprint": graph.certificates[0].fingerprint,
                                      "kind": "ca"}]


# ------------------------------------------------------------------ the agent side


def test_agent_writes_the_ca_crt_of_a_ca_entry() -> None:
    cert = issue_cert()
    servers = {"version": 1, "configHash": "c", "structureHash": "s", "pools": {},
               "certificates": [{"file": "internal-ca.ca.pem", "secret": "internal-ca",
                                 "fingerprint": ca_fingerprint(cert.crt.encode()),
                                 "kind": "ca"}]}
    api = FakeAPI({"metadata": {"name": "x-rp", "resourceVersion": "1"},
                   "data": {"haproxy.cfg": "global\n", "servers.json": json.dumps(servers)}})
    api.secrets["internal-ca"] = {"metadata": {"name": "internal-ca"}, "data": {
        "ca.crt": base64.b64encode(cert.crt.encode()).decode()}}
    desired = Source(api, "ns", "x-rp", None, "pod").fetch()
    assert desired.certificates["internal-ca.ca.pem"] == cert.crt.strip() + "\n"


def test_cli_renders_reverseproxies_and_checks_them(haproxy_check: HaproxyCheck) -> None:
    from roundhouse.cli import main

    for path in RP_EXAMPLE_FILES:
        assert main(["render", "-f", str(path), "--services",
                     str(REPO / "examples" / "offline-cluster.yaml"), "--check",
                     "--haproxy-cfg"]) == 0
