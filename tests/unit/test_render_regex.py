"""Regular expressions in HAProxy's dialect (issue 11, class 2).

The CRD accepts any string as a RegularExpression match; HAProxy compiles it with PCRE2,
whose dialect is not Python's. Each pattern below passes the CRD (the API server stores
it) and Python's `re`, but not PCRE2 as HAProxy calls it: the model must refuse it with
an error at the field (so the operator sets Accepted=False and the offline CLI fails the
same way), never render a config `haproxy -c` refuses. And the patterns the model accepts
must pass the real `haproxy -c`, on 2.6 and 3.4, in both places a regex is rendered.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from roundhouse.graph.reverseproxy import build_reverseproxy_graph
from roundhouse.model import SpecError, parse_reverseproxy
from roundhouse.model.pcre2 import match_error
from tests.unit.conftest import REPO, check_graph
from tests.unit.rp_fixtures import cluster_for, rp_object
from tests.unit.schema_validator import SchemaValidator

RP_SCHEMA = SchemaValidator.from_file(REPO / "crds" / "reverseproxies.yaml")

# Python's re compiles each of these; HAProxy's PCRE2 refuses each.
REFUSED = [
    pytest.param(r"/a\u0041", id="python-unicode-escape"),
    pytest.param(r"(?x)/a # a comment", id="extended-comment-swallows-the-anchor"),
    pytest.param("(?P<" + "g" * 33 + ">/a)", id="group-name-over-32"),
    pytest.param("(" * 251 + "/a" + ")" * 251, id="nesting-over-250"),
    pytest.param("/a{65536}", id="quantifier-over-65535"),
    pytest.param(r"/(a)\1", id="backreference-without-captures"),
    pytest.param(r"/\N{LATIN SMALL LETTER A}", id="python-named-character"),
]

# Both dialects compile these, and HAProxy must accept the rendered config.
ACCEPTED = [
    pytest.param(r"/static/.+\.(css|js)", id="alternation"),
    pytest.param(r"(?i)/API/v[0-9]+", id="inline-caseless-stays-in-its-group"),
    pytest.param(r"(?x) /a   b", id="extended-without-comment"),
    pytest.param(r"/it's", id="single-quote"),
    pytest.param(r"/\$x\\y\"", id="backslashes-and-quotes"),
    pytest.param("/é+", id="non-ascii"),
    pytest.param("(?P<" + "g" * 32 + ">/a)", id="group-name-of-32"),
    pytest.param("/a{65535}", id="quantifier-of-65535"),
    pytest.param("/a|/b", id="top-level-alternation-is-anchored"),
]


def path_regex(pattern: str) -> dict[str, Any]:
    return rp_object(hosts=[{"hostname": "www.example.test", "routes": [
        {"name": "re", "match": {"path": {"type": "RegularExpression", "value": pattern}},
         "backends": [{"service": "web", "port": 80}]}]}])


def header_regex(pattern: str) -> dict[str, Any]:
    return rp_object(hosts=[{"hostname": "www.example.test", "routes": [
        {"name": "re", "match": {"headers": [{"name": "X-A", "type": "RegularExpression",
                                              "value": pattern}]},
         "backends": [{"service": "web", "port": 80}]}]}])


PLACES = [
    pytest.param(path_regex, "spec.hosts[0].routes[0].match.path.value", id="path"),
    pytest.param(header_regex, "spec.hosts[0].routes[0].match.headers[0].value", id="header"),
]


@pytest.mark.parametrize(("build", "field"), PLACES)
@pytest.mark.parametrize("pattern", REFUSED)
def test_pcre2_refusals_are_field_errors(pattern: str, build: Any, field: str) -> None:
    re.compile(pattern)  # the old check let each of them through
    obj = build(pattern)
    assert RP_SCHEMA.validate(obj) == []  # the API server stores it
    with pytest.raises(SpecError) as raised:
        parse_reverseproxy(obj)
    assert [e.path for e in raised.value.errors] == [field]
    assert "HAProxy (PCRE2) refuses it" in raised.value.errors[0].message


@pytest.mark.parametrize(("build", "field"), PLACES)
@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted_patterns_pass_haproxy_check(pattern: str, build: Any, field: str) -> None:
    obj = build(pattern)
    assert RP_SCHEMA.validate(obj) == []
    graph = build_reverseproxy_graph(parse_reverseproxy(obj), cluster_for(obj))
    result, config = check_graph(graph)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n---\n{config}"


def test_the_check_is_pcre2_not_python() -> None:
    """Patterns only PCRE2 reads are HAProxy's business; the model still refuses them,
    because the offline route replay (tests/unit/routing_oracle.py) runs Python's re."""
    assert match_error(r"/\Qa.b\E") is None
    with pytest.raises(SpecError):
        parse_reverseproxy(path_regex(r"/\Qa.b\E"))
