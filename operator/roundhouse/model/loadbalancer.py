"""The LoadBalancer spec: typed, defaulted, validated by roundhouse.model.rules, the rules
crds/loadbalancers.yaml is generated from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roundhouse.model.common import (
    AccessLog,
    Backend,
    HealthCheck,
    Limits,
    ProxySettings,
    SessionPersistence,
    Timeouts,
    UpstreamTLS,
    bounded,
    check_name,
    identity,
    limits_rules,
    object_meta,
    parse_backend,
    parse_shared_blocks,
    required_value,
    reserved_port_rules,
    spec_error,
)
from roundhouse.model.errors import FieldError, SpecError
from roundhouse.model.reader import Reader
from roundhouse.model.rules import (
    COOKIE_NEEDS_HTTP,
    DNS_NAMES,
    HTTP_PROTOCOLS,
    LB_BACKENDS,
    LB_SUFFIX,
    LISTENERS,
    PORT,
    PROTOCOL,
    RATE_NEEDS_HTTP,
    REDIRECT_NEEDS_HTTPS,
    REDIRECT_ONLY_ON_HTTP,
    REDIRECT_TO_HTTPS,
    SPEC_BACKEND_WEIGHT,
    SUBDOMAIN_LENGTH,
    TLS_ONLY_ON_HTTPS,
    TLS_VERSION,
    UPSTREAM_TLS_NOT_PASSTHROUGH,
)
from roundhouse.model.values import DNS_LABEL_RE, DNS_NAME_RE, HOST_NAME_RE

__all__ = [
    "AccessLog",
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
    min_version: str = TLS_VERSION.default or ""

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
    access_log: AccessLog = field(default_factory=AccessLog)

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
    name = check_name(meta, LB_SUFFIX, errors)
    spec = Reader(obj.get("spec"), "spec", errors)
    listeners = tuple(_listener(r) for r in spec.items("listeners", LISTENERS))
    backends = tuple(parse_backend(r) for r in spec.items("backends", LB_BACKENDS))
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
    protocol = r.enum("protocol", PROTOCOL)
    tls = None
    if r.has("tls"):
        t = r.child("tls")
        secret = t.string("secretName") or None
        bounded(t, "secretName", secret or "", HOST_NAME_RE, "Secret name")
        dns_names = t.string_list("dnsNames")
        if len(dns_names) > DNS_NAMES.maximum:
            t.error("dnsNames", f"must have at most {DNS_NAMES.maximum} items")
        for i, dns in enumerate(dns_names):
            if len(dns) > SUBDOMAIN_LENGTH or not DNS_NAME_RE.match(dns):
                t.error(f"dnsNames[{i}]", f"{dns!r} is not a valid DNS name")
        tls = ListenerTLS(secret, tuple(dns_names), t.enum("minVersion", TLS_VERSION))
    elif protocol == "HTTPS":
        tls = ListenerTLS(None)
    return Listener(
        name=name,
        port=r.integer("port", PORT) if r.has("port") else required_value(r),
        protocol=protocol,
        redirect_to_https=r.boolean("redirectToHTTPS", REDIRECT_TO_HTTPS),
        tls=tls,
    )


def _cross_field_rules(lb: LoadBalancer, errors: list[FieldError]) -> None:
    """The rules the CRD states in CEL (roundhouse.model.rules), in their words.

    Unique listener names and ports and unique backends are reported at the repeated
    item, naming the value (the CRD: list-map keys, and a rule on spec.listeners)."""
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
            errors.append(spec_error(REDIRECT_ONLY_ON_HTTP, path))
        if li.redirect_to_https and lb.https_listener is None:
            errors.append(FieldError(f"{path}.redirectToHTTPS", REDIRECT_NEEDS_HTTPS.message))
        if li.tls is not None and li.protocol != "HTTPS":
            errors.append(spec_error(TLS_ONLY_ON_HTTPS, path))
    seen_backends: set[tuple[str, int | str]] = set()
    for i, be in enumerate(lb.backends):
        if (be.service, be.port) in seen_backends:
            errors.append(FieldError(f"spec.backends[{i}]",
                                     f"service {be.service!r} port {be.port!r} is listed twice"))
        seen_backends.add((be.service, be.port))
    if lb.backends and all(be.weight == 0 for be in lb.backends):
        errors.append(spec_error(SPEC_BACKEND_WEIGHT))
    sp = lb.session_persistence
    if sp and sp.type == "Cookie" and not any(li.is_http for li in lb.listeners):
        errors.append(spec_error(COOKIE_NEEDS_HTTP))
    if lb.limits.request_rate_per_client and not any(li.is_http for li in lb.listeners):
        errors.append(spec_error(RATE_NEEDS_HTTP))
    if lb.upstream_tls and any(li.protocol == "TLSPassthrough" for li in lb.listeners):
        errors.append(spec_error(UPSTREAM_TLS_NOT_PASSTHROUGH))
    limits_rules(lb.algorithm, lb.limits, errors)
    reserved_port_rules([li.port for li in lb.listeners], errors)
