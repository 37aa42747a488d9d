"""The LoadBalancer spec: typed, defaulted, validated. Mirrors crds/loadbalancers.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roundhouse.model.common import (
    Backend,
    HealthCheck,
    Limits,
    ProxySettings,
    SessionPersistence,
    Timeouts,
    UpstreamTLS,
    check_name,
    identity,
    limits_rules,
    object_meta,
    parse_backend,
    parse_shared_blocks,
    required_value,
    reserved_port_rules,
)
from roundhouse.model.errors import FieldError, SpecError
from roundhouse.model.reader import Reader
from roundhouse.model.values import DNS_LABEL_RE, DNS_NAME_RE, HOST_NAME_RE

PROTOCOLS = ("TCP", "HTTP", "HTTPS", "TLSPassthrough")
HTTP_PROTOCOLS = ("HTTP", "HTTPS")
TLS_VERSIONS = ("1.2", "1.3")

__all__ = [
    "Backend",
    "HealthCheck",
    "Limits",
    "Listener",
    "ListenerTLS",
    "LoadBalancer",
    "ProxySettings",
    "SessionPersistence",
    "Timeouts",
    "UpstreamTLS",
    "parse_loadbalancer",
]


@dataclass(frozen=True)
class ListenerTLS:
    secret_name: str | None  # None: the operator issues and rotates a certificate
    dns_names: tuple[str, ...] = ()
    min_version: str = "1.2"

    @property
    def issued(self) -> bool:
        return self.secret_name is None


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: str
    redirect_to_https: bool = False
    tls: ListenerTLS | None = None

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    namespace: str
    uid: str
    generation: int
    listeners: tuple[Listener, ...]
    backends: tuple[Backend, ...]
    algorithm: str = "roundrobin"
    session_persistence: SessionPersistence | None = None
    health_check: HealthCheck | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    upstream_tls: UpstreamTLS | None = None
    allowed_source_ranges: tuple[str, ...] = ()  # CIDRs; empty: every client

    def service_refs(self) -> set[str]:
        return {be.service for be in self.backends}

    def secret_refs(self) -> set[str]:
        """User Secrets: listener certificates and the upstream CA (not the issued one)."""
        refs = {li.tls.secret_name for li in self.listeners if li.tls and li.tls.secret_name}
        if self.upstream_tls and self.upstream_tls.ca_secret_name:
            refs.add(self.upstream_tls.ca_secret_name)
        return refs

    @property
    def https_listener(self) -> Listener | None:
        return next((li for li in self.listeners if li.protocol == "HTTPS"), None)


def parse_loadbalancer(obj: dict[str, Any]) -> LoadBalancer:
    """Parse a LoadBalancer object (as the API returns it, or as a user wrote it).

    Raises SpecError listing every problem, each naming its field.
    """
    errors: list[FieldError] = []
    meta = object_meta(obj, "LoadBalancer", errors)
    name = check_name(meta, "lb", errors)
    spec = Reader(obj.get("spec"), "spec", errors)
    listeners = tuple(_listener(r) for r in spec.items("listeners", min_items=1, max_items=16))
    backends = tuple(parse_backend(r) for r in spec.items("backends", min_items=1, max_items=32))
    lb = LoadBalancer(name=name, **identity(meta), listeners=listeners, backends=backends,
                      **parse_shared_blocks(spec))
    _cross_field_rules(lb, errors)
    spec.unknown_fields()
    if errors:
        raise SpecError(errors)
    return lb


def _listener(r: Reader) -> Listener:
    name = r.string("name", required=True)
    if r.has("name") and not DNS_LABEL_RE.match(name):
        r.error("name", f"{name!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    protocol = r.enum("protocol", PROTOCOLS, "HTTP")
    tls = None
    if r.has("tls"):
        t = r.child("tls")
        secret = t.string("secretName") or None
        if t.has("secretName") and not HOST_NAME_RE.match(secret or ""):
            t.error("secretName", f"{secret!r} is not a valid Secret name")
        dns_names = t.string_list("dnsNames")
        for i, dns in enumerate(dns_names):
            if not DNS_NAME_RE.match(dns):
                t.error(f"dnsNames[{i}]", f"{dns!r} is not a valid DNS name")
        tls = ListenerTLS(secret, tuple(dns_names), t.enum("minVersion", TLS_VERSIONS, "1.2"))
    elif protocol == "HTTPS":
        tls = ListenerTLS(None)
    return Listener(
        name=name,
        port=r.integer("port", 0, minimum=1, maximum=65535) if r.has("port") else required_value(r),
        protocol=protocol,
        redirect_to_https=r.boolean("redirectToHTTPS"),
        tls=tls,
    )


def _cross_field_rules(lb: LoadBalancer, errors: list[FieldError]) -> None:
    """The rules the CRD expresses in CEL, kept here in the same words."""
    seen_names: set[str] = set()
    seen_ports: set[int] = set()
    for i, li in enumerate(lb.listeners):
        path = f"spec.listeners[{i}]"
        if li.name in seen_names:
            errors.append(FieldError(f"{path}.name", f"listener name {li.name!r} is used twice"))
        if li.port in seen_ports:
            errors.append(FieldError(f"{path}.port", f"listener port {li.port} is used twice"))
        seen_names.add(li.name)
        seen_ports.add(li.port)
        if li.redirect_to_https and li.protocol != "HTTP":
            errors.append(FieldError(f"{path}.redirectToHTTPS",
                                     "is only allowed on an HTTP listener"))
        if li.redirect_to_https and lb.https_listener is None:
            errors.append(FieldError(f"{path}.redirectToHTTPS",
                                     "needs an HTTPS listener to redirect to"))
        if li.tls is not None and li.protocol != "HTTPS":
            errors.append(FieldError(f"{path}.tls", "is only allowed on an HTTPS listener"))
    seen_backends: set[tuple[str, int | str]] = set()
    for i, be in enumerate(lb.backends):
        if (be.service, be.port) in seen_backends:
            errors.append(FieldError(f"spec.backends[{i}]",
                                     f"service {be.service!r} port {be.port!r} is listed twice"))
        seen_backends.add((be.service, be.port))
    if lb.backends and all(be.weight == 0 for be in lb.backends):
        errors.append(FieldError("spec.backends", "at least one backend needs a weight above 0"))
    sp = lb.session_persistence
    if sp and sp.type == "Cookie" and not any(li.is_http for li in lb.listeners):
        errors.append(FieldError("spec.sessionPersistence.type",
                                 "Cookie persistence needs an HTTP or HTTPS listener; "
                                 "use SourceIP for TCP"))
    if lb.limits.request_rate_per_client and not any(li.is_http for li in lb.listeners):
        errors.append(FieldError("spec.limits.requestRatePerClient",
                                 "needs an HTTP or HTTPS listener; use "
                                 "maxConnectionsPerClient for TCP"))
    if lb.upstream_tls and any(li.protocol == "TLSPassthrough" for li in lb.listeners):
        errors.append(FieldError("spec.upstreamTLS",
                                 "cannot be used with a TLSPassthrough listener, whose "
                                 "stream is already the client's TLS"))
    limits_rules(lb.algorithm, lb.limits, errors)
    reserved_port_rules([li.port for li in lb.listeners], errors)
