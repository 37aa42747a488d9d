"""The LoadBalancer model: defaults, parsing and the offline validation messages."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse.model import SpecError, parse_loadbalancer
from roundhouse.model.values import format_duration_ms, parse_duration_ms
from tests.unit.conftest import lb_object


def test_defaults_of_a_minimal_spec() -> None:
    lb = parse_loadbalancer(lb_object())
    assert lb.algorithm == "roundrobin"
    assert lb.proxy.replicas == 2
    assert lb.proxy.service_type == "LoadBalancer"
    assert lb.timeouts.connect_ms == 5000 and lb.timeouts.server_ms == 50_000
    assert lb.limits.max_connections == 10_000
    assert lb.limits.max_connections_per_server == 0
    assert lb.session_persistence is None and lb.health_check is None
    assert lb.backends[0].weight == 1


@pytest.mark.parametrize(("spec", "check"), [
    ({"algorithm": "leastconn"}, lambda lb: lb.algorithm == "leastconn"),
    ({"sessionPersistence": {"type": "Cookie"}},
     lambda lb: lb.session_persistence.cookie_name == "RH_SESSION"
     and lb.session_persistence.max_age_ms == 3_600_000),
    ({"sessionPersistence": {"type": "SourceIP", "maxAge": "30m"}},
     lambda lb: lb.session_persistence.max_age_ms == 1_800_000),
    ({"healthCheck": {"type": "HTTP"}},
     lambda lb: (lb.health_check.path, lb.health_check.expect_status, lb.health_check.rise,
                 lb.health_check.fall, lb.health_check.interval_ms) == ("/", 200, 2, 3, 2000)),
    ({"healthCheck": {"type": "TCP", "interval": "500ms"}},
     lambda lb: lb.health_check.interval_ms == 500),
    ({"timeouts": {"connect": "1s", "queue": "2m"}},
     lambda lb: (lb.timeouts.connect_ms, lb.timeouts.queue_ms, lb.timeouts.client_ms)
     == (1000, 120_000, 50_000)),
    ({"limits": {"maxConnections": 50, "maxConnectionsPerServer": 5}},
     lambda lb: (lb.limits.max_connections, lb.limits.max_connections_per_server) == (50, 5)),
    ({"proxy": {"replicas": 3, "serviceType": "NodePort", "nodeSelector": {"a": "b"}}},
     lambda lb: (lb.proxy.replicas, lb.proxy.service_type, lb.proxy.node_selector)
     == (3, "NodePort", {"a": "b"})),
    ({"backends": [{"service": "web", "port": "http", "weight": 7}]},
     lambda lb: (lb.backends[0].port, lb.backends[0].weight) == ("http", 7)),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}]},
     lambda lb: lb.listeners[0].tls is not None and lb.listeners[0].tls.issued),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"secretName": "mine", "minVersion": "1.3"}}]},
     lambda lb: (lb.listeners[0].tls.secret_name, lb.listeners[0].tls.min_version)
     == ("mine", "1.3")),
    ({"listeners": [{"name": "pg", "port": 5432, "protocol": "TCP"}]},
     lambda lb: not lb.listeners[0].is_http),
    ({"listeners": [{"name": "tls", "port": 443, "protocol": "TLSPassthrough"}]},
     lambda lb: lb.listeners[0].tls is None),
])
def test_parsed_values(spec: dict[str, Any], check: Any) -> None:
    assert check(parse_loadbalancer(lb_object(**spec)))


def test_every_problem_is_reported_at_once() -> None:
    obj = lb_object(algorithm="fastest", listeners=[{"name": "x", "port": 0, "protocol": "UDP"}])
    with pytest.raises(SpecError) as err:
        parse_loadbalancer(obj)
    paths = {e.path for e in err.value.errors}
    assert {"spec.algorithm", "spec.listeners[0].port", "spec.listeners[0].protocol"} <= paths


@pytest.mark.parametrize(("text", "ms"), [
    ("500ms", 500), ("5s", 5000), ("2m", 120_000), ("1h", 3_600_000), ("0s", 0),
    ("5", None), ("1.5s", None), ("-1s", None), ("5 s", None), ("", None), ("1d", None),
])
def test_parse_duration(text: str, ms: int | None) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(("ms", "text"), [
    (500, "500ms"), (1000, "1s"), (1500, "1500ms"), (60_000, "1m"), (90_000, "90s"),
    (3_600_000, "1h"), (5_400_000, "90m"),
])
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


# The parser once accepted these, which the CRD refuses (its maxLength and maxItems):
# `roundhouse render` passed a spec that `kubectl apply` then refused. The bounds now
# come from roundhouse.model.rules for both (test_crd_schema.py checks every bound).
LONG_NAME = ".".join(["a" * 63] * 4) + ".com"  # 260 characters, each label valid


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"dnsNames": [f"h{i}.example.com" for i in range(33)]}}]},
     "spec.listeners[0].tls.dnsNames", "at most 32 items"),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"dnsNames": [LONG_NAME]}}]},
     "spec.listeners[0].tls.dnsNames[0]", "not a valid DNS name"),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"secretName": LONG_NAME}}]},
     "spec.listeners[0].tls.secretName", "not a valid Secret name"),
    ({"healthCheck": {"type": "HTTP", "host": LONG_NAME}},
     "spec.healthCheck.host", "not a valid host name"),
    ({"healthCheck": {"type": "HTTP", "path": "/" + "a" * 1024}},
     "spec.healthCheck.path", "must start with '/'"),
])
def test_bounds_the_parser_once_missed(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_loadbalancer(lb_object(**spec))
    assert [e.path for e in err.value.errors] == [field]
    assert words in err.value.errors[0].message


def test_cross_field_messages_are_the_crds() -> None:
    """The parser prints a failed cross-field rule in the words of the CRD's CEL rule,
    at the field the rule names (roundhouse.model.rules states both once)."""
    from roundhouse.model import rules

    cases = [
        (lb_object(listeners=[{"name": "a", "port": 80, "protocol": "HTTPS",
                               "redirectToHTTPS": True}]),
         "spec.listeners[0].redirectToHTTPS", rules.REDIRECT_ONLY_ON_HTTP),
        (lb_object(listeners=[{"name": "a", "port": 80, "tls": {}}]),
         "spec.listeners[0].tls", rules.TLS_ONLY_ON_HTTPS),
        (lb_object(backends=[{"service": "web", "port": 80, "weight": 0}]),
         "spec.backends", rules.SPEC_BACKEND_WEIGHT),
        (lb_object(algorithm="first"), "spec.limits.maxConnectionsPerServer",
         rules.ALGORITHM_FIRST),
        (lb_object(limits={"maxConnections": 5, "maxConnectionsPerClient": 6}),
         "spec.limits.maxConnectionsPerClient", rules.PER_CLIENT_AT_MOST_MAX),
        (lb_object(listeners=[{"name": "a", "port": 5432, "protocol": "TCP"}],
                   sessionPersistence={"type": "Cookie"}),
         "spec.sessionPersistence.type", rules.COOKIE_NEEDS_HTTP),
        (lb_object(healthCheck={"type": "TCP", "host": "example.com"}),
         "spec.healthCheck.host", rules.HTTP_CHECK_ONLY[1]),
    ]
    for obj, field, rule in cases:
        with pytest.raises(SpecError) as err:
            parse_loadbalancer(obj)
        assert (field, rule.message) in [(e.path, e.message) for e in err.value.errors], \
            (field, err.value.errors)
