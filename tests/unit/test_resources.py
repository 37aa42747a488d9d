"""resources.py: what the reconciler asks of either kind, and hostname conflicts."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse import resources
from roundhouse.graph import names as graph_names
from roundhouse.render import objects
from roundhouse.resources import Claim, claim_of, hostname_conflicts


def rp_body(name: str, created: str, hosts: list[str], ports: tuple[int, ...] = (80,)
            ) -> dict[str, Any]:
    return {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "ReverseProxy",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                     "creationTimestamp": created},
        "spec": {
            "listeners": [{"name": f"l{p}", "port": p, "protocol": "HTTP"} for p in ports],
            "hosts": [{"hostname": h, "routes": [
                {"name": "all", "backends": [{"service": "web", "port": 80}]}]}
                for h in hosts],
        },
    }


def test_claim_pairs_every_hostname_with_every_listener_port() -> None:
    claim = claim_of(rp_body("a", "2026-01-01T00:00:00Z", ["a.example.com", "B.example.com"],
                             (80, 8080)))
    assert claim.pairs == {("a.example.com", 80), ("a.example.com", 8080),
                           ("b.example.com", 80), ("b.example.com", 8080)}


def test_claim_of_a_broken_spec_claims_only_what_it_can_read() -> None:
    body = {"metadata": {"name": "x"}, "spec": {"listeners": [{"port": "80"}, "junk"],
                                                 "hosts": [{"hostname": "h"}, 7]}}
    assert claim_of(body).pairs == frozenset()


@pytest.mark.parametrize(("mine", "others", "expected"), [
    # The older ReverseProxy keeps the hostname; the younger one is told why.
    (("b", "2026-01-02T00:00:00Z", ["x.example.com", "y.example.com"]),
     [("a", "2026-01-01T00:00:00Z", ["x.example.com"])], {"x.example.com"}),
    # The older one never loses, whatever was created after it.
    (("a", "2026-01-01T00:00:00Z", ["x.example.com"]),
     [("b", "2026-01-02T00:00:00Z", ["x.example.com"])], set()),
    # Same second: the smaller name wins.
    (("b", "2026-01-01T00:00:00Z", ["x.example.com"]),
     [("a", "2026-01-01T00:00:00Z", ["x.example.com"])], {"x.example.com"}),
    # Different hostnames: no conflict.
    (("b", "2026-01-02T00:00:00Z", ["y.example.com"]),
     [("a", "2026-01-01T00:00:00Z", ["x.example.com"])], set()),
    # Itself in the index: not a conflict.
    (("a", "2026-01-01T00:00:00Z", ["x.example.com"]),
     [("a", "2026-01-01T00:00:00Z", ["x.example.com"])], set()),
])
def test_the_oldest_claim_wins(mine: tuple[str, str, list[str]],
                               others: list[tuple[str, str, list[str]]],
                               expected: set[str]) -> None:
    claims = [claim_of(rp_body(*o)) for o in others]
    conflicts = hostname_conflicts(claim_of(rp_body(*mine)), claims)
    assert set(conflicts) == expected
    for host, message in conflicts.items():
        assert host in message and "already served by ReverseProxy 'a'" in message


def test_a_host_without_tls_claims_only_the_http_listeners() -> None:
    body = rp_body("a", "2026-01-01T00:00:00Z", ["plain.example.com", "tls.example.com"],
                   (80, 443))
    body["spec"]["listeners"][1]["protocol"] = "HTTPS"
    body["spec"]["hosts"][1]["tls"] = {}
    assert claim_of(body).pairs == {("plain.example.com", 80), ("tls.example.com", 80),
                                    ("tls.example.com", 443)}


def test_same_hostname_on_another_port_is_no_conflict() -> None:
    mine = claim_of(rp_body("b", "2026-01-02T00:00:00Z", ["x.example.com"], (8080,)))
    other = claim_of(rp_body("a", "2026-01-01T00:00:00Z", ["x.example.com"], (80,)))
    assert hostname_conflicts(mine, [other]) == {}


def test_conflict_message_names_the_port() -> None:
    mine = claim_of(rp_body("b", "2026-01-02T00:00:00Z", ["x.example.com"], (80, 443)))
    other = Claim("a", "2026-01-01T00:00:00Z", frozenset({("x.example.com", 443)}))
    assert hostname_conflicts(mine, [other]) == {
        "x.example.com": "hostname 'x.example.com' on port 443 is already served by "
                         "ReverseProxy 'a', created earlier"}


def test_issued_names_of_a_reverseproxy_cover_its_hosts_and_its_service() -> None:
    body = rp_body("shop", "2026-01-01T00:00:00Z", ["a.example.com", "*.example.org"],
                   (80, 443))
    body["spec"]["listeners"][1]["protocol"] = "HTTPS"
    body["spec"]["hosts"][0]["tls"] = {}
    body["spec"]["hosts"][1]["tls"] = {"secretName": "mine"}
    model = resources.parse("ReverseProxy", body)
    names = graph_names.issued_dns_names(model)
    assert "a.example.com" in names and "*.example.org" not in names
    assert "shop-rp.shop.svc" in names
    assert model.secret_refs() == {"mine"}
    assert model.service_refs() == {"web"}
    assert objects.owner_of(model).kind == "ReverseProxy"


def test_a_reverseproxy_without_issued_hosts_needs_no_certificate() -> None:
    model = resources.parse("ReverseProxy", rp_body("shop", "2026-01-01T00:00:00Z",
                                                    ["a.example.com"]))
    assert graph_names.issued_dns_names(model) == ()
