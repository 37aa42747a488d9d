"""Resources + Services/EndpointSlices/Secrets -> ProxyGraph. Pure: no I/O.

Like Contour's DAG builder: every reference is resolved here; a part that cannot
be resolved is dropped with a recorded Problem (which becomes a status
condition), so one broken reference never breaks the config for the rest.
Output is sorted and stable, so the same inputs give byte-identical configs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from roundhouse.model.cluster import Endpoint, EndpointSlice, Service, TLSSecret
from roundhouse.model.loadbalancer import (
    HealthCheck,
    Limits,
    LoadBalancer,
    SessionPersistence,
    Timeouts,
)

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


@dataclass(frozen=True)
class Certificate:
    """A PEM bundle the agent writes for HAProxy from a Secret."""

    file: str
    secret: str
    fingerprint: str
    issued: bool


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
    endpoints = _resolve_backends(lb, cluster, problems)
    cookie_key = hashlib.sha256(f"roundhouse/{lb.namespace}/{lb.uid}".encode()).hexdigest()[:24]
    modes = sorted({"http" if li.is_http else "tcp" for li in lb.listeners})
    pools = tuple(
        Pool(
            name=f"be_{mode}",
            mode=mode,
            algorithm=lb.algorithm,
            servers=_assign_slots(endpoints, cluster.previous_slots.get(f"be_{mode}", {})),
            # Cookies only exist in HTTP; SourceIP stickiness works in both modes.
            persistence=lb.session_persistence
            if lb.session_persistence and (mode == "http" or
                                           lb.session_persistence.type == "SourceIP")
            else None,
            health_check=lb.health_check,
            max_connections_per_server=lb.limits.max_connections_per_server,
            cookie_key=cookie_key,
        )
        for mode in modes
    )
    certificates, cert_for = _resolve_certificates(lb, cluster, problems)
    https = lb.https_listener
    frontends = []
    for li in sorted(lb.listeners, key=lambda x: x.port):
        if li.protocol == "HTTPS" and li.name not in cert_for:
            continue  # its certificate is missing: drop the listener, keep the rest serving
        frontends.append(Frontend(
            name=f"fe_{li.name}",
            port=li.port,
            mode="http" if li.is_http else "tcp",
            protocol=li.protocol,
            default_pool=f"be_{'http' if li.is_http else 'tcp'}",
            certificate=cert_for.get(li.name),
            min_tls_version=li.tls.min_version if li.tls else "1.2",
            redirect_https_port=https.port if li.redirect_to_https and https else None,
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
        problems=tuple(problems),
        backends_ready=ready,
        backends_total=len(endpoints),
        issued_dns_names=issued_dns_names(lb),
    )


@dataclass(frozen=True)
class _WeightedEndpoint:
    endpoint: Endpoint
    key: str  # "<service>/<identity>:<port>"
    weight: int

    @property
    def ready(self) -> bool:
        return self.endpoint.ready


def _resolve_backends(lb: LoadBalancer, cluster: ClusterState,
                      problems: list[Problem]) -> list[_WeightedEndpoint]:
    slices_by_service: dict[str, list[EndpointSlice]] = {}
    for s in cluster.slices:
        slices_by_service.setdefault(s.service, []).append(s)
    resolved: list[tuple[int, str, list[Endpoint]]] = []
    for i, be in enumerate(lb.backends):
        svc = cluster.services.get(be.service)
        if svc is None:
            problems.append(Problem("BackendsHealthy", "BackendNotFound",
                                    f"spec.backends[{i}]: Service {be.service!r} not found in "
                                    f"namespace {lb.namespace!r}", retry=True))
            continue
        sp = svc.find_port(be.port)
        if sp is None:
            known = ", ".join(f"{p.name or '<unnamed>'}={p.port}" for p in svc.ports) or "none"
            problems.append(Problem("BackendsHealthy", "PortNotFound",
                                    f"spec.backends[{i}]: Service {be.service!r} has no port "
                                    f"{be.port!r} (ports: {known})"))
            continue
        eps: dict[tuple[str, int], Endpoint] = {}
        for sl in sorted(slices_by_service.get(be.service, []), key=lambda s: s.name):
            for ep in sl.endpoints_for(sp.name):
                eps.setdefault((ep.address, ep.port), ep)  # slices may overlap briefly
        resolved.append((be.weight, be.service, list(eps.values())))
    return _weigh(resolved)


def _weigh(resolved: list[tuple[int, str, list[Endpoint]]]) -> list[_WeightedEndpoint]:
    """Give each endpoint a weight so each Service gets its spec weight's share.

    Per-endpoint weight is service weight / ready endpoints, scaled so the
    largest is 256 (HAProxy's maximum). Weights change at run time with no reload.
    """
    shares = [w / max(1, sum(1 for e in eps if e.ready)) for w, _, eps in resolved]
    top = max(shares, default=0.0) or 1.0
    out: list[_WeightedEndpoint] = []
    for (w, service, eps), share in zip(resolved, shares, strict=True):
        weight = max(1, round(MAX_WEIGHT * share / top)) if w > 0 else 0
        for ep in eps:
            out.append(_WeightedEndpoint(ep, f"{service}/{ep.identity}:{ep.port}", weight))
    return sorted(out, key=lambda e: e.key)


def _slot_count(needed: int, previous: int) -> int:
    """Power of two with headroom; never shrinks, so scaling back and forth needs no reload."""
    slots = MIN_SLOTS
    while slots < needed + max(2, needed // 4):
        slots *= 2
    return max(slots, previous)


def _assign_slots(endpoints: list[_WeightedEndpoint],
                  previous: Mapping[str, str]) -> tuple[Server, ...]:
    """Sticky slot assignment: an endpoint keeps its slot for as long as it exists."""
    count = _slot_count(len(endpoints), len(previous))
    slot_names = [f"srv{i}" for i in range(1, count + 1)]
    by_key = {e.key: e for e in endpoints}
    taken: dict[str, _WeightedEndpoint] = {}
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
        secret = cluster.secrets.get(secret_name)
        where = f"spec.listeners[{i}].tls"
        if secret is None:
            problems.append(Problem(
                "TLSReady", "SecretNotFound" if li.tls.secret_name else "CertificatePending",
                f"{where}: Secret {secret_name!r} not found in namespace {lb.namespace!r}"
                if li.tls.secret_name else f"{where}: issuing certificate into {secret_name!r}",
                retry=True))
            continue
        if not secret.usable:
            missing = [k for k, ok in (("tls.crt", secret.has_cert), ("tls.key", secret.has_key))
                       if not ok]
            problems.append(Problem("TLSReady", "InvalidSecret",
                                    f"{where}: Secret {secret_name!r} has no valid "
                                    f"{' or '.join(missing)}", retry=True))
            continue
        file = f"{secret_name}.pem"
        certs[file] = Certificate(file, secret_name, secret.fingerprint, li.tls.issued)
        cert_for[li.name] = file
    return tuple(sorted(certs.values(), key=lambda c: c.file)), cert_for


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
