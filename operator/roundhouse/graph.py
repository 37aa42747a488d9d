"""Resources + Services/EndpointSlices/Secrets -> ProxyGraph. Pure: no I/O.

Like Contour's DAG builder: every reference is resolved here; a part that cannot
be resolved is dropped with a recorded Problem (which becomes a status
condition), so one broken reference never breaks the config for the rest.
Output is sorted and stable, so the same inputs give byte-identical configs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from roundhouse.model.cluster import Endpoint, EndpointSlice, Service, TLSSecret
from roundhouse.model.loadbalancer import (
    Backend,
    HealthCheck,
    Limits,
    Listener,
    LoadBalancer,
    SessionPersistence,
    Timeouts,
    UpstreamTLS,
)
from roundhouse.model.reverseproxy import HeaderChanges, HeaderMatch

MAX_WEIGHT = 256
MIN_SLOTS = 8
READY, DRAIN, MAINT = "ready", "drain", "maint"


@dataclass(frozen=True)
class Problem:
    condition: str  # which status condition it turns False
    reason: str
    message: str
    retry: bool = False  # a dependency may appear later (Secret not yet created)


@dataclass(frozen=True)
class Server:
    """One pre-allocated HAProxy server slot; a free slot has no endpoint."""

    slot: str
    endpoint: str | None = None  # stable identity, e.g. "web/web-7d9f-abcde:8080"
    address: str | None = None
    port: int | None = None
    weight: int = 0
    state: str = MAINT


@dataclass(frozen=True)
class UpstreamTLSConfig:
    """How a pool's servers are reached over TLS (spec.upstreamTLS, both kinds)."""

    verify: bool
    ca_file: str | None = None  # under ca-base; None with verify: the system CAs
    sni: str | None = None


@dataclass(frozen=True)
class PathRewrite:
    prefix: str  # the matched prefix, normalized ("" for "/")
    replacement: str


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class VirtualHost:
    id: str  # "h<spec index>": the value of txn.rh_vhost
    hostname: str  # exact, or "*.example.com"

    @property
    def wildcard(self) -> bool:
        return self.hostname.startswith("*.")


@dataclass(frozen=True)
class RedirectRule:
    """A redirect route's Location: scheme://host[:port]path?query (query kept)."""

    scheme: str
    hostname: str | None  # None: the request's host
    strip_port: bool  # the scheme changes: drop the request's port, use `port`
    port: int | None  # the target listener's port when not the scheme's default
    path: str | None  # None: the request's path
    code: int


@dataclass(frozen=True)
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
    services: tuple[str, ...] = ()  # the Services behind the pool, in spec order
    allowed_source_ranges: tuple[str, ...] = ()  # others get 403; empty: every client


@dataclass(frozen=True)
class Routing:
    """Host/path/header routing of a ReverseProxy frontend (precedence order)."""

    hosts: tuple[VirtualHost, ...]
    rules: tuple[RouteRule, ...]
    not_found: bool  # no default backend: answer 404 when no rule matches
    forwarded: bool = True  # set the RFC 7239 Forwarded header


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    backends_ready: int = 0
    backends_total: int = 0
    issued_dns_names: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ClusterState:
    """What a reconcile knows about the namespace, gathered by the handler."""

    services: Mapping[str, Service] = field(default_factory=dict)
    slices: Iterable[EndpointSlice] = ()
    secrets: Mapping[str, TLSSecret] = field(default_factory=dict)
    # Previous slot assignment (pool -> slot -> endpoint, "" for a free slot), read
    # back from our own ConfigMap, so endpoints keep their slot and counts only grow.
    previous_slots: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def child_name(kind: str, name: str) -> str:
    return f"{name}-{'lb' if kind == 'LoadBalancer' else 'rp'}"


def issued_secret_name(kind: str, name: str) -> str:
    return f"{child_name(kind, name)}-tls"


def build_loadbalancer_graph(lb: LoadBalancer, cluster: ClusterState) -> ProxyGraph:
    problems: list[Problem] = []
    endpoints = resolve_backends(
        [(f"spec.backends[{i}]", be) for i, be in enumerate(lb.backends)], lb.namespace,
        cluster, problems)
    cookie_key = cookie_key_for(lb.namespace, lb.uid)
    upstream = resolve_upstream_tls(lb.upstream_tls, lb.namespace, cluster, problems)
    modes = sorted({"http" if li.is_http else "tcp" for li in lb.listeners})
    pools = tuple(
        Pool(
            name=f"be_{mode}",
            mode=mode,
            algorithm=lb.algorithm,
            servers=refuse_unverifiable(
                assign_slots(endpoints, cluster.previous_slots.get(f"be_{mode}", {})),
                upstream),
            # Cookies only exist in HTTP; SourceIP stickiness works in both modes.
            persistence=lb.session_persistence
            if lb.session_persistence and (mode == "http" or
                                           lb.session_persistence.type == "SourceIP")
            else None,
            health_check=lb.health_check,
            max_connections_per_server=lb.limits.max_connections_per_server,
            cookie_key=cookie_key,
            upstream_tls=upstream.config if upstream else None,
        )
        for mode in modes
    )
    certificates, cert_for = _resolve_certificates(lb, cluster, problems)
    if upstream and upstream.ca:
        certificates = tuple(sorted((*certificates, upstream.ca), key=lambda c: c.file))
    https = lb.https_listener
    frontends = []
    for li in sorted(lb.listeners, key=lambda x: x.port):
        if li.protocol == "HTTPS" and li.name not in cert_for:
            continue  # its certificate is missing: drop the listener, keep the rest serving
        down = https_down(lb.listeners, li, https, https is not None and https.name in cert_for,
                          problems)
        frontends.append(Frontend(
            name=f"fe_{li.name}",
            port=li.port,
            mode="http" if li.is_http else "tcp",
            protocol=li.protocol,
            default_pool=f"be_{'http' if li.is_http else 'tcp'}",
            certificate=cert_for.get(li.name),
            min_tls_version=li.tls.min_version if li.tls else "1.2",
            redirect_https_port=https.port if li.redirect_to_https and https and not down
            else None,
            unavailable=down,
        ))
    ready = sum(1 for e in endpoints if e.ready)
    return ProxyGraph(
        kind="LoadBalancer",
        name=lb.name,
        namespace=lb.namespace,
        frontends=tuple(frontends),
        pools=pools,
        certificates=certificates,
        timeouts=lb.timeouts,
        limits=lb.limits,
        allowed_source_ranges=lb.allowed_source_ranges,
        problems=tuple(problems),
        backends_ready=ready,
        backends_total=len(endpoints),
        issued_dns_names=issued_dns_names(lb),
    )


def https_down(listeners: tuple[Listener, ...], listener: Listener, https: Listener | None,
               https_up: bool, problems: list[Problem]) -> str | None:
    """The 503 text for a listener that redirects to an HTTPS listener that is down (its
    certificate is missing), with a problem that says so; None otherwise."""
    if not listener.redirect_to_https or https is None or https_up:
        return None
    index = listeners.index(listener)
    problems.append(Problem(
        "TLSReady", "RedirectTargetDown",
        f"spec.listeners[{index}].redirectToHTTPS: HTTPS listener {https.name!r} is down "
        f"(no usable certificate), so listener {listener.name!r} answers 503 instead of "
        "redirecting to it"))
    return (f"503 Service Unavailable: HTTPS listener {https.name} is down (no usable "
            f"certificate); listener {listener.name} only redirects to it")


@dataclass(frozen=True)
class WeightedEndpoint:
    endpoint: Endpoint
    key: str  # "<service>/<identity>:<port>"
    weight: int

    @property
    def ready(self) -> bool:
        return self.endpoint.ready


def cookie_key_for(namespace: str, uid: str) -> str:
    """The dynamic-cookie key: per resource, so cookies mean nothing elsewhere."""
    return hashlib.sha256(f"roundhouse/{namespace}/{uid}".encode()).hexdigest()[:24]


def resolve_backends(backends: list[tuple[str, Backend]], namespace: str,
                     cluster: ClusterState,
                     problems: list[Problem]) -> list[WeightedEndpoint]:
    """(field path, backend) pairs -> weighted endpoints; unresolvable ones -> Problems."""
    slices_by_service: dict[str, list[EndpointSlice]] = {}
    for s in cluster.slices:
        slices_by_service.setdefault(s.service, []).append(s)
    resolved: list[tuple[int, str, list[Endpoint]]] = []
    for where, be in backends:
        svc = cluster.services.get(be.service)
        if svc is None:
            problems.append(Problem("BackendsHealthy", "BackendNotFound",
                                    f"{where}: Service {be.service!r} not found in "
                                    f"namespace {namespace!r}", retry=True))
            continue
        sp = svc.find_port(be.port)
        if sp is None:
            known = ", ".join(f"{p.name or '<unnamed>'}={p.port}" for p in svc.ports) or "none"
            problems.append(Problem("BackendsHealthy", "PortNotFound",
                                    f"{where}: Service {be.service!r} has no port "
                                    f"{be.port!r} (ports: {known})"))
            continue
        eps: dict[tuple[str, int], Endpoint] = {}
        for sl in sorted(slices_by_service.get(be.service, []), key=lambda s: s.name):
            for ep in sl.endpoints_for(sp.name):
                eps.setdefault((ep.address, ep.port), ep)  # slices may overlap briefly
        resolved.append((be.weight, be.service, list(eps.values())))
    return _weigh(resolved)


def _weigh(resolved: list[tuple[int, str, list[Endpoint]]]) -> list[WeightedEndpoint]:
    """Give each endpoint a weight so each Service gets its spec weight's share.

    Per-endpoint weight is service weight / ready endpoints, scaled so the
    largest is 256 (HAProxy's maximum). Weights change at run time with no reload.
    """
    shares = [w / max(1, sum(1 for e in eps if e.ready)) for w, _, eps in resolved]
    top = max(shares, default=0.0) or 1.0
    out: list[WeightedEndpoint] = []
    for (w, service, eps), share in zip(resolved, shares, strict=True):
        weight = max(1, round(MAX_WEIGHT * share / top)) if w > 0 else 0
        for ep in eps:
            out.append(WeightedEndpoint(ep, f"{service}/{ep.identity}:{ep.port}", weight))
    return sorted(out, key=lambda e: e.key)


def _slot_count(needed: int, previous: int) -> int:
    """Power of two with headroom; never shrinks, so scaling back and forth needs no reload."""
    slots = MIN_SLOTS
    while slots < needed + max(2, needed // 4):
        slots *= 2
    return max(slots, previous)


def assign_slots(endpoints: list[WeightedEndpoint],
                  previous: Mapping[str, str]) -> tuple[Server, ...]:
    """Sticky slot assignment: an endpoint keeps its slot for as long as it exists."""
    count = _slot_count(len(endpoints), len(previous))
    slot_names = [f"srv{i}" for i in range(1, count + 1)]
    by_key = {e.key: e for e in endpoints}
    taken: dict[str, WeightedEndpoint] = {}
    for slot, key in previous.items():
        if key and key in by_key and slot in slot_names:
            taken[slot] = by_key.pop(key)
    free = [s for s in slot_names if s not in taken]
    for e in sorted(by_key.values(), key=lambda x: x.key):
        taken[free.pop(0)] = e
    servers = []
    for slot in slot_names:
        occupant = taken.get(slot)
        if occupant is None:
            servers.append(Server(slot))
            continue
        e = occupant
        ep = e.endpoint
        state = READY if ep.ready else DRAIN if ep.serving and ep.terminating else MAINT
        servers.append(Server(slot, e.key, ep.address, ep.port, e.weight, state))
    return tuple(servers)


def _resolve_certificates(
    lb: LoadBalancer, cluster: ClusterState, problems: list[Problem]
) -> tuple[tuple[Certificate, ...], dict[str, str]]:
    certs: dict[str, Certificate] = {}
    cert_for: dict[str, str] = {}
    for i, li in enumerate(lb.listeners):
        if li.tls is None:
            continue
        secret_name = li.tls.secret_name or issued_secret_name("LoadBalancer", lb.name)
        cert = pair_certificate(secret_name, li.tls.issued, f"spec.listeners[{i}].tls",
                                lb.namespace, cluster, problems)
        if cert is not None:
            certs[cert.file] = cert
            cert_for[li.name] = cert.file
    return tuple(sorted(certs.values(), key=lambda c: c.file)), cert_for


def pair_certificate(secret_name: str, issued: bool, where: str, namespace: str,
                     cluster: ClusterState, problems: list[Problem]) -> Certificate | None:
    """The serving certificate in a Secret, or None with the Problem that explains why."""
    secret = cluster.secrets.get(secret_name)
    if secret is None:
        problems.append(Problem(
            "TLSReady", "CertificatePending" if issued else "SecretNotFound",
            f"{where}: issuing certificate into {secret_name!r}" if issued
            else f"{where}: Secret {secret_name!r} not found in namespace {namespace!r}",
            retry=True))
        return None
    if not secret.usable:
        missing = [k for k, ok in (("tls.crt", secret.has_cert), ("tls.key", secret.has_key))
                   if not ok]
        why = f"has no valid {' or '.join(missing)}" if missing else secret.problem
        problems.append(Problem("TLSReady", "InvalidSecret",
                                f"{where}: Secret {secret_name!r}: {why}" if not missing
                                else f"{where}: Secret {secret_name!r} {why}"))
        # No timed retry: the Secret exists, so its next edit re-reconciles through the
        # Secret watch; retrying every 15 s would only repeat the same verdict in the log.
        return None
    return Certificate(f"{secret_name}.pem", secret_name, secret.fingerprint, issued)


@dataclass(frozen=True)
class ResolvedUpstreamTLS:
    config: UpstreamTLSConfig
    ca: Certificate | None  # the CA file the agent writes from the Secret's ca.crt
    refuse: bool  # verify is on but the CA is unusable: never connect unverified


def resolve_upstream_tls(u: UpstreamTLS | None, namespace: str, cluster: ClusterState,
                         problems: list[Problem]) -> ResolvedUpstreamTLS | None:
    """spec.upstreamTLS -> how the pools reach their servers, with the CA it needs."""
    if u is None:
        return None
    if not u.verify or u.ca_secret_name is None:
        return ResolvedUpstreamTLS(UpstreamTLSConfig(u.verify, None, u.sni), None, False)
    where = "spec.upstreamTLS.caSecretName"
    secret = cluster.secrets.get(u.ca_secret_name)
    if secret is None or not secret.has_ca:
        problems.append(
            Problem("TLSReady", "SecretNotFound",
                    f"{where}: Secret {u.ca_secret_name!r} not found in namespace "
                    f"{namespace!r}", retry=True) if secret is None
            else Problem("TLSReady", "InvalidSecret",
                         f"{where}: Secret {u.ca_secret_name!r} has no valid ca.crt"))
        return ResolvedUpstreamTLS(UpstreamTLSConfig(True, None, u.sni), None, True)
    ca = Certificate(f"{u.ca_secret_name}.ca.pem", secret.name, secret.ca_fingerprint, False,
                     kind="ca")
    return ResolvedUpstreamTLS(UpstreamTLSConfig(True, ca.file, u.sni), ca, False)


def refuse_unverifiable(servers: tuple[Server, ...],
                        upstream: ResolvedUpstreamTLS | None) -> tuple[Server, ...]:
    """With a CA that must verify but is missing, every server is in maintenance (503)."""
    if upstream is None or not upstream.refuse:
        return servers
    return tuple(dataclasses.replace(s, state=MAINT) for s in servers)


def issued_dns_names(lb: LoadBalancer) -> tuple[str, ...]:
    """The names an operator-issued certificate covers: the proxy Service's, plus extras."""
    base = child_name("LoadBalancer", lb.name)
    if not any(li.tls and li.tls.issued for li in lb.listeners):
        return ()
    names = {base, f"{base}.{lb.namespace}", f"{base}.{lb.namespace}.svc",
             f"{base}.{lb.namespace}.svc.cluster.local"}
    for li in lb.listeners:
        if li.tls and li.tls.issued:
            names.update(li.tls.dns_names)
    return tuple(sorted(names))
