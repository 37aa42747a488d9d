"""Which route a request takes: the renderer's precedence, replayed in Python. Test-only.

The graph holds each frontend's rules in precedence order (see roundhouse.graph.reverseproxy);
the renderer emits them in that order and HAProxy takes the first that matches.
`select_route` walks the same order with the same match semantics, so the unit tests can
check tests/cases/routing-table.yaml without HAProxy (the e2e tier sends the same table
through a real HAProxy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from roundhouse.graph import Frontend, ProxyGraph, RouteRule, VirtualHost
from roundhouse.model.reverseproxy import HeaderMatch


def request_host(host: str) -> str:
    """The Host header as the rules see it: without a port, lowercased."""
    return host.split(":", 1)[0].lower()


def host_matches(vhost: VirtualHost, host: str) -> bool:
    if not vhost.hostname:  # a Gateway listener's catch-all
        return True
    if vhost.wildcard:
        return host.endswith(vhost.hostname[1:])  # ".example.com": one or more labels
    return host == vhost.hostname


def path_matches(rule: RouteRule, path: str) -> bool:
    if rule.path_type == "Exact":
        return path == rule.path
    if rule.path_type == "Prefix":
        return rule.path == "" or path == rule.path or path.startswith(rule.path + "/")
    return re.fullmatch(rule.path, path) is not None


def header_matches(match: HeaderMatch, headers: Mapping[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get(match.name.lower())
    if value is None:
        return False
    if match.type == "Exact":
        return value == match.value
    return re.fullmatch(match.value, value) is not None


def query_matches(match: HeaderMatch, path: str) -> bool:
    """The first value of the query parameter, as HAProxy's urlp() takes it."""
    query = path.split("?", 1)[1] if "?" in path else ""
    values = [v for k, _, v in (p.partition("=") for p in query.split("&")) if k == match.name]
    if not values:
        return False
    if match.type == "RegularExpression":
        return re.fullmatch(match.value, values[0]) is not None
    return values[0] == match.value


def _frontend(graph: ProxyGraph, name: str | None) -> Frontend:
    if name is not None:
        return next(f for f in graph.frontends if f.name in (name, f"fe_{name}"))
    return next(f for f in graph.frontends if f.routing is not None)


def select_rule(graph: ProxyGraph, host: str, path: str, method: str = "GET",
                headers: Mapping[str, str] | None = None, *,
                frontend: str | None = None) -> RouteRule | None:
    """The rule a request takes on a frontend (default: the first that routes)."""
    fe = _frontend(graph, frontend)
    if fe.routing is None:
        return None
    name = request_host(host)
    path_only = path.split("?", 1)[0]
    vhost = next((v for v in fe.routing.hosts if host_matches(v, name)), None)
    if vhost is None:
        return None
    for rule in fe.routing.rules:
        if (rule.host_id == vhost.id and path_matches(rule, path_only)
                and (rule.method is None or rule.method == method)
                and all(header_matches(h, headers or {}) for h in rule.headers)
                and all(query_matches(q, path) for q in rule.query_params)):
            return rule
    return None


def select_route(graph: ProxyGraph, host: str, path: str, method: str = "GET",
                 headers: Mapping[str, str] | None = None, *,
                 frontend: str | None = None) -> str:
    """The pool name, "redirect:<route id>", or "404" (default pool when there is one)."""
    rule = select_rule(graph, host, path, method, headers, frontend=frontend)
    if rule is not None:
        if rule.status:
            return str(rule.status)
        return f"redirect:{rule.id}" if rule.redirect else str(rule.pool)
    fe = _frontend(graph, frontend)
    return fe.default_pool or "404"


def redirect_location(graph: ProxyGraph, rule: RouteRule, host: str, path: str, *,
                      frontend: str | None = None) -> str:
    """The Location HAProxy answers for a redirect rule (query string kept)."""
    assert rule.redirect is not None
    r = rule.redirect
    if r.hostname:
        authority = r.hostname + (f":{r.port}" if r.port else "")
    elif r.strip_port:
        authority = host.split(":", 1)[0] + (f":{r.port}" if r.port else "")
    else:
        authority = host
    query = path[path.index("?"):] if "?" in path else ""
    target = (r.path + query) if r.path else path
    return f"{r.scheme}://{authority}{target}"
