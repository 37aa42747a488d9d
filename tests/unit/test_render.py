"""render/haproxy.py: the real `haproxy -c`, hashes and determinism (the golden files of
the whole translation are test_translation_golden.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from roundhouse.graph import ClusterState, build_loadbalancer_graph, issued_secret_name
from roundhouse.model import SpecError, parse_loadbalancer
from roundhouse.model.cluster import (
    TLSSecret,
    parse_endpoint_slice,
    parse_service,
    parse_tls_secret,
)
from roundhouse.render.haproxy import render_haproxy, server_line, status_port
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service, state
from tests.unit.conftest import EXAMPLES, HaproxyCheck, lb_object

EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml")
                       if any(d and d.get("kind") == "LoadBalancer"
                              for d in yaml.safe_load_all(p.read_text())))


def offline_cluster(lb_name: str) -> ClusterState:
    docs = list(yaml.safe_load_all((EXAMPLES / "offline-cluster.yaml").read_text()))
    services = {s.name: s for s in (parse_service(d) for d in docs if d["kind"] == "Service")}
    slices = [s for s in (parse_endpoint_slice(d) for d in docs
                          if d["kind"] == "EndpointSlice") if s]
    secrets = {s.name: s for s in (parse_tls_secret(d) for d in docs if d["kind"] == "Secret")}
    name = issued_secret_name("LoadBalancer", lb_name)
    return ClusterState(services, slices,
                        {**secrets, name: TLSSecret(name, True, True, "golden")})


def example_graph(path: Path):  # type: ignore[no-untyped-def]
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "LoadBalancer"]
    doc["metadata"]["uid"] = "golden-uid"
    lb = parse_loadbalancer(doc)
    return build_loadbalancer_graph(lb, offline_cluster(lb.name))


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 4


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_passes_haproxy_check(path: Path, haproxy_check: HaproxyCheck) -> None:
    result = haproxy_check(example_graph(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("spec", [
    {"algorithm": a} for a in ("roundrobin", "leastconn", "source", "random")
] + [
    {"algorithm": "first", "limits": {"maxConnectionsPerServer": 10}},
    {"sessionPersistence": {"type": "Cookie", "cookieName": "X", "maxAge": "10m"}},
    {"sessionPersistence": {"type": "SourceIP"}},
    {"healthCheck": {"type": "HTTP", "path": "/ready", "host": "svc.local", "expectStatus": 204}},
    {"healthCheck": {"type": "TCP", "interval": "500ms", "rise": 1, "fall": 1}},
    {"listeners": [{"name": "tls", "port": 443, "protocol": "TLSPassthrough"}],
     "healthCheck": {"type": "HTTP", "path": "/"}},
    {"listeners": [{"name": "pg", "port": 8405, "protocol": "TCP"}]},
    {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                    "tls": {"minVersion": "1.3"}},
                   {"name": "http", "port": 80, "protocol": "HTTP", "redirectToHTTPS": True}]},
    {"listeners": [{"name": "https", "port": 8443, "protocol": "HTTPS"},
                   {"name": "http", "port": 8080, "protocol": "HTTP", "redirectToHTTPS": True}]},
    {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}],
     "upstreamTLS": {"caSecretName": "internal-ca", "sni": "web.internal"},
     "healthCheck": {"type": "HTTP", "path": "/healthz"},
     "sessionPersistence": {"type": "Cookie"}},
    {"listeners": [{"name": "pg", "port": 5432, "protocol": "TCP"},
                   {"name": "http", "port": 80, "protocol": "HTTP"}],
     "upstreamTLS": {"verify": False}, "healthCheck": {"type": "TCP"}},
    {"upstreamTLS": {}},  # the system CAs
    {"limits": {"maxConnectionsPerClient": 5,
                "requestRatePerClient": {"requests": 50, "period": "10s"}}},
    {"listeners": [{"name": "pg", "port": 5432, "protocol": "TCP"},
                   {"name": "tls", "port": 443, "protocol": "TLSPassthrough"}],
     "limits": {"maxConnectionsPerClient": 2}},
    {"limits": {"requestRatePerClient": {"requests": 1, "period": "1h"}}},
    # timeouts.request and timeouts.drain at their bounds, on HTTP, HTTPS and TCP listeners.
    {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"},
                   {"name": "pg", "port": 5432, "protocol": "TCP"}],
     "timeouts": {"request": "1s", "drain": "24h"}},
    {"timeouts": {"request": "1h", "drain": "1s"}},
    # The most source ranges allowed, both families: more than one haproxy.cfg line holds.
    {"listeners": [{"name": "pg", "port": 5432, "protocol": "TCP"},
                   {"name": "tls", "port": 443, "protocol": "TLSPassthrough"},
                   {"name": "http", "port": 80, "protocol": "HTTP"}],
     "allowedSourceRanges": [f"10.{i}.0.0/16" for i in range(50)]
     + [f"2001:db8:{i:x}::/48" for i in range(50)],
     "limits": {"maxConnectionsPerClient": 3}},
])
def test_feature_table_passes_haproxy_check(spec: dict[str, object],
                                            haproxy_check: HaproxyCheck) -> None:
    name = issued_secret_name("LoadBalancer", "web")
    cluster = state(3, extra=[endpoint("t", "10.244.0.9", ready=False, serving=True,
                                       terminating=True)],
                    secrets={name: TLSSecret(name, True, True, "f"),
                             "internal-ca": TLSSecret("internal-ca", False, False, "",
                                                      has_ca=True, ca_fingerprint="c")})
    graph = build_loadbalancer_graph(parse_loadbalancer(lb_object(**spec)), cluster)
    result = haproxy_check(graph)
    assert result.returncode == 0, result.stdout + result.stderr


def render_for(n: int, ready: bool = True, weight_spec: int = 1) -> tuple[str, str]:
    eps = [endpoint(f"web-{i}", f"10.244.0.{i}", ready=ready) for i in range(1, n + 1)]
    graph = build_loadbalancer_graph(
        parse_loadbalancer(lb_object(backends=[{"service": "web", "port": 80,
                                                "weight": weight_spec}])),
        ClusterState({"web": service()}, [endpoint_slice("web", eps)]))
    r = render_haproxy(graph)
    return r.config_hash, r.structure_hash


def test_endpoint_changes_keep_the_structure_hash() -> None:
    """Scaling 3 -> 5 and readiness flips are runtime changes: no reload."""
    three, five, unready = render_for(3), render_for(5), render_for(3, ready=False)
    assert three[1] == five[1] == unready[1]
    assert len({three[0], five[0], unready[0]}) == 3


def test_structural_change_changes_the_structure_hash() -> None:
    a = render_haproxy(build_loadbalancer_graph(parse_loadbalancer(lb_object()), state(3)))
    b = render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object(timeouts={"server": "10s"})), state(3)))
    assert a.structure_hash != b.structure_hash


def test_rendering_is_deterministic() -> None:
    def once() -> str:
        return render_haproxy(build_loadbalancer_graph(
            parse_loadbalancer(lb_object()), state(5))).config
    assert once() == once()


def test_endpoint_order_in_slices_does_not_matter() -> None:
    eps = [endpoint(f"web-{i}", f"10.244.0.{i}") for i in range(1, 6)]
    lb = parse_loadbalancer(lb_object())
    a = build_loadbalancer_graph(lb, ClusterState({"web": service()}, [endpoint_slice("web", eps)]))
    b = build_loadbalancer_graph(lb, ClusterState({"web": service()},
                                                  [endpoint_slice("web", eps[::-1])]))
    assert render_haproxy(a).config == render_haproxy(b).config


@pytest.mark.parametrize(("state_name", "expected"), [
    ("ready", "server srv1 10.0.0.1:80 weight 7"),
    ("drain", "server srv1 10.0.0.1:80 weight 0"),
    ("maint", "server srv1 10.0.0.1:80 weight 7 disabled"),
])
def test_server_line_states(state_name: str, expected: str) -> None:
    from roundhouse.graph import Server

    assert server_line(Server("srv1", "web/p:80", "10.0.0.1", 80, 7, state_name)) == expected


def test_ipv6_server_addresses_are_bracketed() -> None:
    from roundhouse.graph import Server

    line = server_line(Server("srv1", "web/p:80", "fd00::1", 80, 1, "ready"))
    assert line == "server srv1 [fd00::1]:80 weight 1"


def test_status_port_stays_put_whatever_the_listeners() -> None:
    """A listener next to it does not move it (that would roll every proxy Pod)."""
    graph = build_loadbalancer_graph(parse_loadbalancer(lb_object(listeners=[
        {"name": "a", "port": 8405, "protocol": "HTTP"},
        {"name": "b", "port": 8403, "protocol": "HTTP"}])), state(1))
    assert status_port(graph) == 8404
    assert "bind :8404" in render_haproxy(graph).config


@pytest.mark.parametrize("port,what", [(8404, "status port"), (9101, "agent's metrics")])
def test_a_listener_on_a_port_the_pod_reserves_is_refused(port: int, what: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_loadbalancer(lb_object(listeners=[{"name": "a", "port": port}]))
    [error] = err.value.errors
    assert error.path == "spec.listeners[0].port"
    assert f"port {port} is reserved by the proxy Pod" in error.message and what in error.message


def test_server_state_document_lists_every_slot() -> None:
    r = render_haproxy(build_loadbalancer_graph(parse_loadbalancer(lb_object()), state(3)))
    pool = r.server_state["pools"]["be_http"]
    assert len(pool) == 8
    assert sum(1 for s in pool if s["endpoint"]) == 3
    assert r.server_state["configHash"] == r.config_hash


def test_security_defaults_in_the_config() -> None:
    cfg = render_haproxy(build_loadbalancer_graph(parse_loadbalancer(lb_object()), state(1))).config
    assert "ssl-min-ver TLSv1.2" in cfg and "no-tls-tickets" in cfg
    # Master-worker mode comes from the container's -W (test_objects), not the keyword
    # that HAProxy 3.3+ warns about on every start.
    assert "expose-fd listeners" in cfg and "master-worker" not in cfg
    ciphers = next(line.split()[1] for line in cfg.splitlines()
                   if line.strip().startswith("ssl-default-bind-ciphers "))
    # Only forward-secret AEAD suites (Mozilla "intermediate").
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c)
               for c in ciphers.split(":"))


def test_source_ip_stickiness_is_capped_at_haproxys_timer_limit() -> None:
    lb = parse_loadbalancer(lb_object(sessionPersistence={"type": "SourceIP", "maxAge": "720h"}))
    cfg = render_haproxy(build_loadbalancer_graph(lb, state(1))).config
    assert "stick-table type ip size 1m expire 576h" in cfg


@pytest.mark.parametrize(("spec", "host"), [
    ({"healthCheck": {"type": "HTTP", "host": "web.example.com"}}, "web.example.com"),
    ({"healthCheck": {"type": "HTTP"}, "upstreamTLS": {"sni": "web.internal", "verify": False}},
     "web.internal"),
    ({"healthCheck": {"type": "HTTP"}}, "localhost"),
])
def test_http_checks_always_send_a_host_header(spec: dict[str, object], host: str) -> None:
    """HTTP/1.1 without Host gets a 400 from Go, nginx and Tomcat: every server would be down."""
    graph = build_loadbalancer_graph(parse_loadbalancer(lb_object(**spec)), state(3))
    config = render_haproxy(graph).config
    (line,) = [x.strip() for x in config.splitlines() if x.strip().startswith("http-check send")]
    assert line == f"http-check send meth GET uri / ver HTTP/1.1 hdr Host {host}"


def test_per_client_limits_track_every_listener_and_limit_requests_on_http_only() -> None:
    spec = {"listeners": [{"name": "http", "port": 80}, {"name": "pg", "port": 5432,
                                                          "protocol": "TCP"}],
            "limits": {"maxConnectionsPerClient": 7,
                       "requestRatePerClient": {"requests": 30, "period": "1500ms"}}}
    config = render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object(**spec)), state(3))).config
    sections = {b.strip().split("\n", 1)[0]: b for b in config.split("\n\n") if b.strip()}
    http, tcp = sections["frontend fe_http"], sections["frontend fe_pg"]
    for fe in (http, tcp):
        assert "tcp-request connection track-sc0 src table rh_clients" in fe
        assert "tcp-request connection reject if { sc0_conn_cur gt 7 }" in fe
    assert ("http-request return status 429 content-type text/plain string "
            '"429 Too Many Requests" hdr Retry-After 2 if { sc0_http_req_rate gt 30 }') in http
    assert "429" not in tcp
    table = sections["# The per-client table: current connections and the request rate over "
                     "the window."]
    assert "stick-table type ipv6 size 1m expire 1m store conn_cur,http_req_rate(1500ms)" in table


def test_no_per_client_table_without_per_client_limits() -> None:
    config = render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object()), state(3))).config
    assert "rh_clients" not in config and "track-sc0" not in config


def test_source_ranges_refuse_other_clients_first_on_every_listener() -> None:
    spec = {"listeners": [{"name": "http", "port": 80}, {"name": "pg", "port": 5432,
                                                          "protocol": "TCP"}],
            "allowedSourceRanges": ["10.1.2.3/8", "2001:db8::/32", "10.0.0.0/8"],
            "limits": {"maxConnectionsPerClient": 7}}
    config = render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object(**spec)), state(3))).config
    sections = {b.strip().split("\n", 1)[0]: b for b in config.split("\n\n") if b.strip()}
    for name in ("frontend fe_http", "frontend fe_pg"):
        rules = [x.strip() for x in sections[name].splitlines()
                 if x.strip().startswith(("acl rh_allowed", "tcp-request"))]
        # Normalized and deduplicated; refused before the client is counted anywhere.
        assert rules[:3] == ["acl rh_allowed_source src 10.0.0.0/8 2001:db8::/32",
                             "tcp-request connection reject unless rh_allowed_source",
                             "tcp-request connection track-sc0 src table rh_clients"], rules
    status = sections["# Health and metrics for the kubelet probes and Prometheus."]
    assert "rh_allowed_source" not in status  # the kubelet's probes come from the node


def test_no_source_rule_without_source_ranges() -> None:
    config = render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object()), state(3))).config
    assert "rh_allowed_source" not in config


def test_request_and_drain_timeouts_reach_every_http_frontend_and_the_global_section() -> None:
    """timeouts.request bounds headers (timeout http-request) and the body's first 8 KiB
    (wait-for-body) on each HTTP/HTTPS frontend, never on a TCP one; timeouts.drain is
    the old workers' hard-stop-after."""
    name = issued_secret_name("LoadBalancer", "web")
    spec = lb_object(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"},
                                {"name": "https", "port": 443, "protocol": "HTTPS"},
                                {"name": "pg", "port": 5432, "protocol": "TCP"}],
                     timeouts={"request": "30s", "drain": "2h"})
    graph = build_loadbalancer_graph(parse_loadbalancer(spec),
                                     state(2, secrets={name: TLSSecret(name, True, True, "f")}))
    config = render_haproxy(graph).config
    frontends = {block.split("\n", 1)[0]: block for block in config.split("\nfrontend ")[1:]}
    wait = ("http-request wait-for-body time 30s at-least 8192 unless "
            "{ req.hdr(upgrade) -m found } || { method CONNECT } || "
            "{ req.hdr(content-type) -m beg application/grpc }")
    assert {n: wait in b for n, b in frontends.items()} == {
        "roundhouse_status": False, "fe_http": True, "fe_https": True, "fe_pg": False}
    assert "    timeout http-request 30s\n" in config
    assert "    hard-stop-after 2h\n" in config
    defaults = render_haproxy(build_loadbalancer_graph(parse_loadbalancer(lb_object()),
                                                       state(2))).config
    assert "    hard-stop-after 10m\n" in defaults and "    timeout http-request 10s\n" in defaults
