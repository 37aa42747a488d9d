"""The graph's types: what the builders produce (ProxyGraph and its parts) and what they
read besides the resource (ClusterState). Pure data, no logic beyond small properties."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from roundhouse.model.cluster import EndpointSlice, Service, TLSSecret
from roundhouse.model.loadbalancer import (
    AccessLog,
    HealthCheck,
    Limits,
    SessionPersistence,
    Timeouts,
)
from roundhouse.model.reverseproxy import HeaderChanges, HeaderMatch
from roundhouse.server_state import MAINT


@dataclass(frozen=True, slots=True)
class Problem:
    condition: str  # which status condition it turns False
    reason: str
    message: str
    retry: bool = False  # a dependency may appear later (Secret not yet created)


@dataclass(frozen=True, slots=True)
class Server:
    """One pre-allocated HAProxy server slot; a free slot has no endpoint."""

    slot: str
    endpoint: str | None = None  # stable identity, e.g. "web/web-7d9f-abcde:8080"
    address: str | None = None
    port: int | None = None
    weight: int = 0
    state: str = MAINT


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    """How a pool's servers are reached over TLS (spec.upstreamTLS, both kinds)."""

    verify: bool
    ca_file: str | None = None  # under ca-base; None with verify: the system CAs
    sni: str | None = None


@dataclass(frozen=True, slots=True)
class PathRewrite:
    prefix: str  # the matched prefix, normalized ("" for "/")
    replacement: str
    full: bool = False  # replace the whole path (Gateway API ReplaceFullPath), query kept


@dataclass(frozen=True, slots=True)
class Pool:
    """An HAProxy backend: a set of server slots plus how to balance over them."""

    name: str
    mode: str  # "http" | "tcp"
    algorithm: str
    servers: tuple[Server, ...]
    persistence: SessionPersistence | None = None
    health_check: HealthCheck | None = None
    max_connections_per_server: int = 0
    cookie_key: str = ""
    # ReverseProxy routes: per-route behaviour lives in the route's own backend section.
    retries: int = 2
    retry_on: tuple[str, ...] = ()  # empty: HAProxy's default (connection failures)
    server_timeout_ms: int | None = None
    request_timeout_ms: int | None = None
    request_headers: HeaderChanges | None = None
    response_headers: HeaderChanges | None = None
    rewrite: PathRewrite | None = None
    upstream_tls: UpstreamTLSConfig | None = None


@dataclass(frozen=True, slots=True)
class Certificate:
    """A file the agent writes for HAProxy from a Secret.

    kind "pair": tls.crt + tls.key (a serving certificate, under crt-base);
    kind "ca": ca.crt only (verifies upstream servers, under ca-base).
    """

    file: str
    secret: str
    fingerprint: str
    issued: bool
    kind: str = "pair"


@dataclass(frozen=True, slots=True)
class VirtualHost:
    id: str  # "h<spec index>": the value of txn.rh_vhost
    hostname: str  # exact, or "*.example.com"; "" (Gateway API only): every hostname

    @property
    def wildcard(self) -> bool:
        return self.hostname.startswith("*.")


@dataclass(frozen=True, slots=True)
class RedirectRule:
    """A redirect route's Location: scheme://host[:port]path?query (query kept)."""

    scheme: str
    hostname: str | None  # None: the request's host
    strip_port: bool  # the scheme changes: drop the request's port, use `port`
    port: int | None  # the target listener's port when not the scheme's default
    path: str | None  # None: the request's path
    code: int
    # Gateway API ReplacePrefixMatch: (matched prefix, replacement) of the request's path
    replace_prefix: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One route of one virtual host, in a frontend's precedence order."""

    id: str  # the value of txn.rh_route: the pool name, or "rd_..." for a redirect
    host_id: str
    hostname: str
    route: str  # the route's name in the spec
    path_type: str  # Exact | Prefix | RegularExpression
    path: str  # Prefix: without a trailing "/" ("" matches every path)
    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None
    pool: str | None = None
    redirect: RedirectRule | None = None
    status: int | None = None  # answer with this status (a Gateway API rule without backends)
    query_params: tuple[HeaderMatch, ...] = ()  # Exact | RegularExpression, by name
    services: tuple[str, ...] = ()  # the Services behind the pool, in spec order
    allowed_source_ranges: tuple[str, ...] = ()  # others get 403; empty: every client


@dataclass(frozen=True, slots=True)
class Routing:
    """Host/path/header routing of a ReverseProxy frontend (precedence order)."""

    hosts: tuple[VirtualHost, ...]
    rules: tuple[RouteRule, ...]
    not_found: bool  # no default backend: answer 404 when no rule matches
    forwarded: bool = True  # set the RFC 7239 Forwarded header


@dataclass(frozen=True, slots=True)
class Frontend:
    name: str
    port: int
    mode: str
    protocol: str
    default_pool: str | None
    certificate: str | None = None  # file name under crt-base
    min_tls_version: str = "1.2"
    redirect_https_port: int | None = None
    extra_certificates: tuple[str, ...] = ()  # more crt files: SNI picks by name
    routing: Routing | None = None
    hsts: str | None = None  # Strict-Transport-Security value (HTTPS only)
    # Set while the HTTPS listener this one redirects to is down (no certificate): every
    # request gets 503 with this text, never a redirect to a port that refuses it, nor
    # plain HTTP where the spec asked for HTTPS only.
    unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class ProxyGraph:
    kind: str
    name: str
    namespace: str
    frontends: tuple[Frontend, ...]
    pools: tuple[Pool, ...]
    certificates: tuple[Certificate, ...]
    timeouts: Timeouts
    limits: Limits
    problems: tuple[Problem, ...] = ()
    allowed_source_ranges: tuple[str, ...] = ()  # CIDRs a client must be in; empty: all
    access_log: AccessLog = field(default_factory=AccessLog)
    backends_ready: int = 0
    backends_total: int = 0
    issued_dns_names: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What a reconcile knows about the namespace, gathered by the handler."""

    services: Mapping[str, Service] = field(default_factory=dict)
    slices: Iterable[EndpointSlice] = ()
    secrets: Mapping[str, TLSSecret] = field(default_factory=dict)
    # Previous slot assignment (pool -> slot -> endpoint, "" for a free slot), read
    # back from our own ConfigMap, so endpoints keep their slot and counts only grow.
    previous_slots: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
