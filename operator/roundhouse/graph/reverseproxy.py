"""ReverseProxy + cluster -> ProxyGraph. Pure: no I/O. Same graph, same renderer as a
LoadBalancer ("one pipeline, not two"): a LoadBalancer is one catch-all route.

Routing precedence (what the renderer emits, in this order, and what
the routing oracle of the unit tests, tests/unit/routing_oracle.py, replays):

1. Host. The Host header, without its port, lowercased. Exact hostnames first; then
   wildcards, longest suffix first (`*.a.example.com` before `*.example.com`). A
   wildcard `*.example.com` matches one or more labels in front of `example.com`, never
   `example.com` itself. Once a host is chosen, only its routes are considered: a
   request for an exact host never falls through to a wildcard's routes.
2. Route, within the host: an Exact path before any Prefix; Prefixes longest first
   (whole segments: `/api` matches `/api` and `/api/x`, not `/apix`; a trailing `/` is
   ignored); RegularExpression paths (full match) last. Ties: more header matches
   first, then a route with a method before one without, then spec order.
3. No route matches: the default backend if there is one, else 404 with a short
   plain-text body.

Hosts with tls are served on every listener; hosts without tls on the HTTP listeners
only. A listener with redirectToHTTPS answers every request with a 301.

A route with backends gets its own pool (HAProxy backend); a Service or port that
cannot be resolved leaves the pool without servers (503 for that route, never a fall
through to a less specific route) and records a Problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from roundhouse.graph.endpoints import (
    WeightedEndpoint,
    assign_slots,
    cookie_key_for,
    resolve_backends,
)
from roundhouse.graph.listeners import https_down
from roundhouse.graph.names import issued_dns_names, issued_secret_name
from roundhouse.graph.routes import DEFAULT_PORTS, PATH_RANK, normalized_prefix
from roundhouse.graph.secrets import pair_certificate, refuse_unverifiable, resolve_upstream_tls
from roundhouse.graph.types import (
    Certificate,
    ClusterState,
    Frontend,
    PathRewrite,
    Pool,
    Problem,
    ProxyGraph,
    RedirectRule,
    RouteRule,
    Routing,
    Server,
    UpstreamTLSConfig,
    VirtualHost,
)
from roundhouse.model.common import Backend
from roundhouse.model.loadbalancer import Listener
from roundhouse.model.reverseproxy import Host, Redirect, ReverseProxy, Route

DEFAULT_POOL = "be_default"
MAX_POOL_NAME = 32


def route_pool_name(hostname: str, route: str, prefix: str = "rt") -> str:
    """A stable HAProxy identifier for a route: readable when short, hashed when long.

    Hostnames hold no '_' and route names neither, so "rt_<host>_<route>" is unique;
    '*' (not allowed in an identifier) becomes '_', which no hostname can hold either.
    """
    full = f"{prefix}_{hostname.replace('*', '_')}_{route}"
    if len(full) <= MAX_POOL_NAME:
        return full
    digest = hashlib.sha256(f"{hostname}/{route}".encode()).hexdigest()[:8]
    return f"{prefix}_{digest}_{route}"[:MAX_POOL_NAME]


def host_order(hosts: list[tuple[int, Host]]) -> list[tuple[int, Host]]:
    """Exact hostnames first (by name), then wildcards, longest suffix first."""
    return sorted(hosts, key=lambda ih: (ih[1].wildcard, -len(ih[1].hostname), ih[1].hostname))


def route_order(routes: tuple[Route, ...]) -> list[tuple[int, Route]]:
    def key(ir: tuple[int, Route]) -> tuple[int, int, int, int, int]:
        index, r = ir
        path = r.match.path
        length = len(normalized_prefix(path.value)) if path.type == "Prefix" else 0
        return (PATH_RANK[path.type], -length, -len(r.match.headers),
                0 if r.match.method else 1, index)
    return sorted(enumerate(routes), key=key)


def build_reverseproxy_graph(rp: ReverseProxy, cluster: ClusterState, *,
                             conflicts: Mapping[str, str] | None = None) -> ProxyGraph:
    """`conflicts`: hostname -> message, for hostnames another ReverseProxy claims first.

    Those hosts are dropped (with an Accepted=False problem); the rest keeps serving.
    """
    problems: list[Problem] = []
    conflicts = conflicts or {}
    hosts: list[tuple[int, Host]] = []
    for i, h in enumerate(rp.hosts):
        if h.hostname in conflicts:
            problems.append(Problem("Accepted", "HostnameConflict",
                                    f"spec.hosts[{i}].hostname: {conflicts[h.hostname]}"))
        else:
            hosts.append((i, h))

    upstream = resolve_upstream_tls(rp.upstream_tls, rp.namespace, cluster, problems)
    certificates: dict[str, Certificate] = {}
    if upstream and upstream.ca:
        certificates[upstream.ca.file] = upstream.ca

    pools: list[Pool] = []
    seen: dict[str, WeightedEndpoint] = {}
    cookie_key = cookie_key_for(rp.namespace, rp.uid)

    def pool(name: str, backends: list[tuple[str, Backend]], route: Route | None) -> None:
        endpoints = resolve_backends(backends, rp.namespace, cluster, problems)
        seen.update({e.key: e for e in endpoints})
        servers = assign_slots(endpoints, cluster.previous_slots.get(name, {}))
        pools.append(_pool(rp, name, refuse_unverifiable(servers, upstream), route,
                           upstream.config if upstream else None, cookie_key))

    for i, h in hosts:
        for j, r in enumerate(h.routes):
            if r.backends:
                pool(route_pool_name(h.hostname, r.name),
                     [(f"spec.hosts[{i}].routes[{j}].backends[{k}]", be)
                      for k, be in enumerate(r.backends)], r)
    if rp.default_backend:
        pool(DEFAULT_POOL, [("spec.defaultBackend", rp.default_backend)], None)

    cert_for_host = _host_certificates(rp, hosts, cluster, problems)
    certificates.update({c.file: c for c in cert_for_host.values()})
    frontends = _frontends(rp, hosts, cert_for_host, problems)
    ready = sum(1 for e in seen.values() if e.ready)
    return ProxyGraph(
        kind="ReverseProxy",
        name=rp.name,
        namespace=rp.namespace,
        frontends=tuple(frontends),
        pools=tuple(sorted(pools, key=lambda p: p.name)),
        certificates=tuple(sorted(certificates.values(), key=lambda c: c.file)),
        timeouts=rp.timeouts,
        limits=rp.limits,
        allowed_source_ranges=rp.allowed_source_ranges,
        access_log=rp.access_log,
        problems=tuple(problems),
        backends_ready=ready,
        backends_total=len(seen),
        issued_dns_names=issued_dns_names(rp),
    )


def _pool(rp: ReverseProxy, name: str, servers: tuple[Server, ...], route: Route | None,
          upstream: UpstreamTLSConfig | None, cookie_key: str) -> Pool:
    rewrite = None
    if route and route.rewrite_path_prefix:
        rewrite = PathRewrite(normalized_prefix(route.match.path.value),
                              route.rewrite_path_prefix)
    return Pool(
        name=name,
        mode="http",
        algorithm=rp.algorithm,
        servers=servers,
        persistence=rp.session_persistence,
        health_check=rp.health_check,
        max_connections_per_server=rp.limits.max_connections_per_server,
        cookie_key=cookie_key,
        retries=route.retries.attempts if route and route.retries else 2,
        retry_on=route.retries.retry_on if route and route.retries else (),
        server_timeout_ms=route.timeouts.server_ms if route else None,
        request_timeout_ms=route.timeouts.request_ms if route else None,
        request_headers=route.request_headers if route and route.request_headers else None,
        response_headers=route.response_headers if route and route.response_headers
        else None,
        rewrite=rewrite,
        upstream_tls=upstream,
    )


def _host_certificates(rp: ReverseProxy, hosts: list[tuple[int, Host]],
                       cluster: ClusterState,
                       problems: list[Problem]) -> dict[str, Certificate]:
    """hostname -> its certificate, for the tls hosts whose Secret is usable."""
    by_secret: dict[str, Certificate | None] = {}
    out: dict[str, Certificate] = {}
    for i, h in hosts:
        if h.tls is None:
            continue
        name = h.tls.secret_name or issued_secret_name("ReverseProxy", rp.name)
        if name not in by_secret:  # one problem per Secret, not one per host
            by_secret[name] = pair_certificate(name, h.tls.issued, f"spec.hosts[{i}].tls",
                                               rp.namespace, cluster, problems)
        cert = by_secret[name]
        if cert is not None:
            out[h.hostname] = cert
    return out


def _frontends(rp: ReverseProxy, hosts: list[tuple[int, Host]],
               cert_for_host: dict[str, Certificate],
               problems: list[Problem]) -> list[Frontend]:
    https = next((li for li in rp.listeners if li.protocol == "HTTPS"), None)
    default_pool = DEFAULT_POOL if rp.default_backend else None
    files = list(dict.fromkeys(cert_for_host[h.hostname].file for _, h in hosts
                               if h.hostname in cert_for_host))
    out = []
    for li in sorted(rp.listeners, key=lambda x: x.port):
        tls = li.protocol == "HTTPS"
        if tls and not files:
            continue  # no usable certificate: drop the listener, keep the rest serving
        if li.redirect_to_https and https:
            down = https_down(rp.listeners, li, https, bool(files), problems)
            out.append(Frontend(name=f"fe_{li.name}", port=li.port, mode="http",
                                protocol=li.protocol, default_pool=default_pool,
                                redirect_https_port=None if down else https.port,
                                unavailable=down))
            continue
        served = [(i, h) for i, h in hosts if not tls or h.hostname in cert_for_host]
        out.append(Frontend(
            name=f"fe_{li.name}",
            port=li.port,
            mode="http",
            protocol=li.protocol,
            default_pool=default_pool,
            certificate=files[0] if tls else None,
            extra_certificates=tuple(files[1:]) if tls else (),
            routing=_routing(rp, li, served, default_pool is None),
            hsts=rp.hsts.header() if tls and rp.hsts else None,
        ))
    return out


def _routing(rp: ReverseProxy, listener: Listener, hosts: list[tuple[int, Host]],
             not_found: bool) -> Routing:
    vhosts = []
    rules = []
    for i, h in host_order(hosts):
        vhost = VirtualHost(f"h{i}", h.hostname)
        vhosts.append(vhost)
        for _, r in route_order(h.routes):
            path = r.match.path
            value = normalized_prefix(path.value) if path.type == "Prefix" else path.value
            redirect = _redirect(rp, listener, r.redirect) if r.redirect else None
            rules.append(RouteRule(
                id=route_pool_name(h.hostname, r.name, "rd" if redirect else "rt"),
                host_id=vhost.id,
                hostname=h.hostname,
                route=r.name,
                path_type=path.type,
                path=value,
                headers=r.match.headers,
                method=r.match.method,
                pool=None if redirect else route_pool_name(h.hostname, r.name),
                redirect=redirect,
                services=tuple(dict.fromkeys(be.service for be in r.backends)),
                allowed_source_ranges=r.allowed_source_ranges,
            ))
    return Routing(tuple(vhosts), tuple(rules), not_found)


def _redirect(rp: ReverseProxy, listener: Listener, r: Redirect) -> RedirectRule:
    current = "https" if listener.protocol == "HTTPS" else "http"
    scheme = r.scheme or current
    if r.hostname:
        return RedirectRule(scheme, r.hostname, False, None, r.path, r.status_code)
    if scheme == current:
        return RedirectRule(scheme, None, False, None, r.path, r.status_code)
    # Another scheme on the same host: the port of this proxy's listener for it.
    target = next((li for li in rp.listeners if li.protocol == scheme.upper()), None)
    port = target.port if target and target.port != DEFAULT_PORTS[scheme] else None
    return RedirectRule(scheme, None, True, port, r.path, r.status_code)
