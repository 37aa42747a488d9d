"""Every list at the largest size the CRD allows renders a config the real HAProxy accepts,
or the CRD refuses it (issue 11, class 1: HAProxy's line holds at most 64 words).

The sizes come from the CRD files themselves (maxItems, maxProperties), not from the
model's idea of what is valid: a bound raised in roundhouse/model/rules.py is tested here at once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse.graph import build_loadbalancer_graph
from roundhouse.graph.reverseproxy import build_reverseproxy_graph
from roundhouse.model import SpecError, parse_loadbalancer, parse_reverseproxy
from roundhouse.model.reverseproxy import CERTIFICATES_MESSAGE
from tests.unit import test_render_property
from tests.unit.conftest import REPO, check_graph
from tests.unit.rp_fixtures import cluster_for
from tests.unit.schema_validator import SchemaValidator

Obj = dict[str, Any]
RP_CRD = REPO / "crds" / "reverseproxies.yaml"
LB_CRD = REPO / "crds" / "loadbalancers.yaml"


def _spec_schema(path: Path) -> Obj:
    crd = yaml.safe_load(path.read_text())
    spec: Obj = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _node(schema: Obj, *path: str) -> Obj:
    """The schema at `path`; "[]" steps into a list's items."""
    for step in path:
        schema = schema["items"] if step == "[]" else schema["properties"][step]
    return schema


RP = _spec_schema(RP_CRD)
LB = _spec_schema(LB_CRD)
MAX_HOSTS = _node(RP, "hosts")["maxItems"]
MAX_HEADER_MATCHES = _node(RP, "hosts", "[]", "routes", "[]", "match", "headers")["maxItems"]
MAX_SOURCE_RANGES = _node(RP, "allowedSourceRanges")["maxItems"]
MAX_HEADER_CHANGES = _node(RP, "hosts", "[]", "routes", "[]", "requestHeaders", "set")[
    "maxProperties"]
MAX_HEADER_REMOVALS = _node(RP, "hosts", "[]", "routes", "[]", "requestHeaders", "remove")[
    "maxItems"]
RETRY_ON = _node(RP, "hosts", "[]", "routes", "[]", "retries", "retryOn", "[]")["enum"]
MAX_LB_LISTENERS = _node(LB, "listeners")["maxItems"]
MAX_LB_BACKENDS = _node(LB, "backends")["maxItems"]
MAX_LB_SOURCE_RANGES = _node(LB, "allowedSourceRanges")["maxItems"]
METHODS = _node(RP, "hosts", "[]", "routes", "[]", "match", "method")["enum"]


def source_ranges(n: int) -> list[str]:
    return [f"10.{i // 256}.{i % 256}.0/24" for i in range(n)]


def busy_route(name: str, header_type: str) -> Obj:
    """A route with every list at its maximum."""
    return {
        "name": name,
        "match": {
            "path": {"type": "Exact", "value": f"/{name}"},
            "method": METHODS[-1],
            "headers": [{"name": f"X-Match-{i}", "type": header_type,
                         "value": f"v{i}" if header_type == "Exact" else f"v{i}.*"}
                        for i in range(MAX_HEADER_MATCHES)],
        },
        "backends": [{"service": "web", "port": 80}],
        "retries": {"retryOn": RETRY_ON},
        "requestHeaders": {
            "set": {f"X-Set-{i}": f"s{i}" for i in range(MAX_HEADER_CHANGES)},
            "add": {f"X-Add-{i}": f"a{i}" for i in range(MAX_HEADER_CHANGES)},
            "remove": [f"X-Rm-{i}" for i in range(MAX_HEADER_REMOVALS)],
        },
        "allowedSourceRanges": source_ranges(MAX_SOURCE_RANGES),
    }


def reverseproxy(secrets: int, issued: bool = False) -> Obj:
    """MAX_HOSTS hosts on HTTP and HTTPS; the first `secrets` hosts each with their own
    Secret, the rest sharing the issued certificate (issued) or the last Secret."""
    hosts = []
    for i in range(MAX_HOSTS):
        tls: Obj = {"secretName": f"tls-{min(i, secrets - 1)}"}
        if i >= secrets and issued:
            tls = {}
        routes = [busy_route("exact", "Exact"), busy_route("regex", "RegularExpression")] \
            if i == 0 else [{"name": "web", "backends": [{"service": "web", "port": 80}]}]
        hosts.append({"hostname": f"h{i}.example.test", "tls": tls, "routes": routes})
    return {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "ReverseProxy",
        "metadata": {"name": "big", "namespace": "default", "uid": "u"},
        "spec": {
            "listeners": [{"name": "http", "port": 80}, {"name": "https", "port": 443,
                                                         "protocol": "HTTPS"}],
            "hosts": hosts,
            "allowedSourceRanges": source_ranges(MAX_SOURCE_RANGES),
        },
    }


RP_SCHEMA = SchemaValidator.from_file(RP_CRD)


def schema_accepts(obj: Obj) -> bool:
    return RP_SCHEMA.validate(obj) == []


@cache
def largest_accepted_secret_count() -> int:
    n = MAX_HOSTS
    while n > 1 and not schema_accepts(reverseproxy(n)):
        n -= 1
    return n


def check_reverseproxy(obj: Obj) -> None:
    graph = build_reverseproxy_graph(parse_reverseproxy(obj), cluster_for(obj))
    assert not graph.problems
    result, config = check_graph(graph)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    assert max(len(line.split()) for line in config.split("\n")) <= 64


def test_the_schema_allows_many_hosts_with_many_certificates() -> None:
    """The bound is HAProxy's, not an arbitrary one: most hosts may still have their own."""
    assert largest_accepted_secret_count() >= 29


def test_the_largest_accepted_reverseproxy_renders() -> None:
    """Every host list, header list, range list and map at the CRD's maximum, with as many
    certificates as the CRD accepts: haproxy -c (2.6 and 3.4) accepts the config. Before,
    16 header matches put 111 words on one line and haproxy -c refused it."""
    check_reverseproxy(reverseproxy(largest_accepted_secret_count()))


@pytest.mark.parametrize("issued", [False, True], ids=["own-secrets", "plus-issued"])
def test_one_certificate_more_is_refused_by_schema_and_model(issued: bool) -> None:
    """One certificate over the limit is refused by the CRD and by the model, in the same
    words; with hosts sharing Secrets, as many hosts as the CRD allows still render."""
    n = largest_accepted_secret_count()
    over = reverseproxy(n + (0 if issued else 1), issued=issued)
    errors = RP_SCHEMA.validate(over)
    assert [(e.path, e.message) for e in errors] == [("spec.hosts",
                                                      f"Invalid value: {CERTIFICATES_MESSAGE}")]
    with pytest.raises(SpecError) as raised:
        parse_reverseproxy(over)
    assert [(e.path, e.message) for e in raised.value.errors] == [("spec.hosts",
                                                                   CERTIFICATES_MESSAGE)]
    if issued:
        check_reverseproxy(reverseproxy(n - 1, issued=True))


def test_the_largest_loadbalancer_renders() -> None:
    obj = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "LoadBalancer",
        "metadata": {"name": "big", "namespace": "default", "uid": "u"},
        "spec": {
            "listeners": [{"name": f"l{i}", "port": 8000 + i, "protocol": "HTTPS",
                           "tls": {"secretName": f"tls-{i}", "minVersion": "1.3"}}
                          for i in range(MAX_LB_LISTENERS)],
            "backends": [{"service": f"svc-{i}", "port": 80}
                         for i in range(MAX_LB_BACKENDS)],
            "allowedSourceRanges": source_ranges(MAX_LB_SOURCE_RANGES),
            "limits": {"maxConnectionsPerClient": 10,
                       "requestRatePerClient": {"requests": 10, "period": "1s"}},
        },
    }
    assert SchemaValidator.from_file(LB_CRD).validate(obj) == []
    graph = build_loadbalancer_graph(parse_loadbalancer(obj),
                                     test_render_property.cluster_for(obj))
    result, config = check_graph(graph)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"
    assert max(len(line.split()) for line in config.split("\n")) <= 64
