"""The LoadBalancer spec: typed, defaulted, validated. Mirrors crds/loadbalancers.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roundhouse.model.errors import FieldError, SpecError
from roundhouse.model.reader import Reader
from roundhouse.model.values import DNS_LABEL_RE, DNS_NAME_RE, HOST_NAME_RE, HTTP_PATH_RE

PROTOCOLS = ("TCP", "HTTP", "HTTPS", "TLSPassthrough")
HTTP_PROTOCOLS = ("HTTP", "HTTPS")
ALGORITHMS = ("roundrobin", "leastconn", "source", "random", "first")
PERSISTENCE_TYPES = ("Cookie", "SourceIP")
HEALTH_CHECK_TYPES = ("TCP", "HTTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TLS_VERSIONS = ("1.2", "1.3")
COOKIE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


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
class Backend:
    service: str
    port: int | str  # a Service port number or name
    weight: int = 1


@dataclass(frozen=True)
class SessionPersistence:
    type: str
    cookie_name: str = "RH_SESSION"
    max_age_ms: int = 3_600_000


@dataclass(frozen=True)
class HealthCheck:
    type: str
    path: str = "/"
    host: str | None = None
    expect_status: int = 200
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class Timeouts:
    connect_ms: int = 5000
    client_ms: int = 50_000
    server_ms: int = 50_000
    queue_ms: int = 30_000
    tunnel_ms: int = 3_600_000


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10_000
    max_connections_per_server: int = 0  # 0: unlimited, no queueing


@dataclass(frozen=True)
class ProxySettings:
    replicas: int = 2
    service_type: str = "LoadBalancer"
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


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
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    proxy: ProxySettings = ProxySettings()

    @property
    def https_listener(self) -> Listener | None:
        return next((li for li in self.listeners if li.protocol == "HTTPS"), None)


def parse_loadbalancer(obj: dict[str, Any]) -> LoadBalancer:
    """Parse a LoadBalancer object (as the API returns it, or as a user wrote it).

    Raises SpecError listing every problem, each naming its field.
    """
    errors: list[FieldError] = []
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    if not DNS_LABEL_RE.match(name) or len(name) > 50:
        errors.append(FieldError("metadata.name", "must be a DNS label of at most 50 characters "
                                 "(children are named <name>-lb)"))
    spec = Reader(obj.get("spec"), "spec", errors)
    listeners = tuple(_listener(r) for r in spec.items("listeners", min_items=1, max_items=16))
    backends = tuple(_backend(r) for r in spec.items("backends", min_items=1, max_items=32))
    algorithm = spec.enum("algorithm", ALGORITHMS, "roundrobin")
    persistence = _persistence(spec.child("sessionPersistence")) if spec.has(
        "sessionPersistence") else None
    health = _health_check(spec.child("healthCheck")) if spec.has("healthCheck") else None
    lb = LoadBalancer(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        listeners=listeners,
        backends=backends,
        algorithm=algorithm,
        session_persistence=persistence,
        health_check=health,
        timeouts=_timeouts(spec.child("timeouts")),
        limits=_limits(spec.child("limits")),
        proxy=_proxy(spec.child("proxy")),
    )
    _cross_field_rules(lb, errors)
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
        port=r.integer("port", 0, minimum=1, maximum=65535) if r.has("port") else _required(r),
        protocol=protocol,
        redirect_to_https=r.boolean("redirectToHTTPS"),
        tls=tls,
    )


def _required(r: Reader, key: str = "port") -> int:
    r.error(key, "Required value")
    return 0


def _backend(r: Reader) -> Backend:
    service = r.string("service", required=True)
    if r.has("service") and not DNS_LABEL_RE.match(service):
        r.error("service", f"{service!r} is not a valid Service name")
    port: int | str = 0
    raw = r.raw("port")
    if raw is None:
        r.error("port", "Required value")
    elif isinstance(raw, bool) or not isinstance(raw, int | str):
        r.error("port", "must be a port number or a port name")
    elif isinstance(raw, int) and not 1 <= raw <= 65535:
        r.error("port", f"must be between 1 and 65535, got {raw}")
    elif isinstance(raw, str) and not DNS_LABEL_RE.match(raw):
        r.error("port", f"port name {raw!r} must be a lowercase DNS label")
    else:
        port = raw
    return Backend(service, port, r.integer("weight", 1, minimum=0, maximum=256))


def _persistence(r: Reader) -> SessionPersistence:
    kind = r.enum("type", PERSISTENCE_TYPES, "Cookie")
    cookie = r.string("cookieName", "RH_SESSION")
    if not cookie or len(cookie) > 64 or not set(cookie) <= COOKIE_NAME_CHARS:
        r.error("cookieName", f"{cookie!r} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    if kind != "Cookie" and r.has("cookieName"):
        r.error("cookieName", "is only allowed when type is Cookie")
    return SessionPersistence(kind, cookie, r.duration_ms("maxAge", "1h",
                                                          maximum_ms=30 * 86_400_000))


def _health_check(r: Reader) -> HealthCheck:
    kind = r.enum("type", HEALTH_CHECK_TYPES, "TCP")
    path = r.string("path", "/")
    if not HTTP_PATH_RE.match(path):
        r.error("path", f"{path!r} must start with '/' and use only URL path characters "
                "(no spaces, quotes, '#', '\\' or '$')")
    host = r.string("host") or None
    if r.has("host") and not HOST_NAME_RE.match(host or ""):
        r.error("host", f"{host!r} is not a valid host name")
    if kind == "TCP":
        for key in ("path", "host", "expectStatus"):
            if r.has(key):
                r.error(key, "is only allowed when type is HTTP")
    return HealthCheck(
        type=kind,
        path=path,
        host=host,
        expect_status=r.integer("expectStatus", 200, minimum=100, maximum=599),
        interval_ms=r.duration_ms("interval", "2s"),
        timeout_ms=r.duration_ms("timeout", "1s"),
        rise=r.integer("rise", 2, minimum=1, maximum=100),
        fall=r.integer("fall", 3, minimum=1, maximum=100),
    )


def _timeouts(r: Reader) -> Timeouts:
    return Timeouts(
        connect_ms=r.duration_ms("connect", "5s"),
        client_ms=r.duration_ms("client", "50s"),
        server_ms=r.duration_ms("server", "50s"),
        queue_ms=r.duration_ms("queue", "30s"),
        tunnel_ms=r.duration_ms("tunnel", "1h"),
    )


def _limits(r: Reader) -> Limits:
    return Limits(
        max_connections=r.integer("maxConnections", 10_000, minimum=1, maximum=1_000_000),
        max_connections_per_server=r.integer("maxConnectionsPerServer", 0, minimum=0,
                                             maximum=100_000),
    )


def _proxy(r: Reader) -> ProxySettings:
    resources = r.raw("resources") or {}
    if not isinstance(resources, dict):
        r.error("resources", "must be an object with requests/limits")
        resources = {}
    tolerations = r.raw("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        r.error("tolerations", "must be a list of tolerations")
        tolerations = []
    return ProxySettings(
        replicas=r.integer("replicas", 2, minimum=1, maximum=50),
        service_type=r.enum("serviceType", SERVICE_TYPES, "LoadBalancer"),
        resources=resources,
        node_selector=r.string_map("nodeSelector"),
        tolerations=tuple(tolerations),
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
    if lb.algorithm == "first" and lb.limits.max_connections_per_server == 0:
        errors.append(FieldError("spec.limits.maxConnectionsPerServer",
                                 "must be set above 0 when algorithm is 'first' "
                                 "(it fills each server up to this limit)"))
    if lb.limits.max_connections_per_server > lb.limits.max_connections:
        errors.append(FieldError("spec.limits.maxConnectionsPerServer",
                                 "must not exceed spec.limits.maxConnections"))
