"""The spec blocks both kinds share: backends, persistence, health checks, timeouts,
limits and the proxy settings, with their parsers. Their rules and defaults are
roundhouse.model.rules' (the CRD's too), so both kinds, offline and in the cluster,
validate them alike.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from roundhouse import API_GROUP
from roundhouse import API_VERSION as API_VERSION_NAME
from roundhouse.model import rules
from roundhouse.model.errors import FieldError
from roundhouse.model.kubetypes import check_labels, parse_resources, parse_toleration
from roundhouse.model.pod import RESERVED_PORTS, reserved_port_message
from roundhouse.model.reader import Reader, shown, type_error
from roundhouse.model.values import COOKIE_NAME_RE, DNS_LABEL_RE, HOST_NAME_RE, HTTP_PATH_RE


@dataclass(frozen=True)
class Backend:
    service: str
    port: int | str  # a Service port number or name
    weight: int = rules.WEIGHT.default or 0


@dataclass(frozen=True)
class SessionPersistence:
    type: str
    cookie_name: str = rules.DEFAULT_COOKIE_NAME
    max_age_ms: int = rules.PERSISTENCE_MAX_AGE.default_ms


@dataclass(frozen=True)
class HealthCheck:
    type: str
    path: str = rules.DEFAULT_CHECK_PATH
    host: str | None = None
    expect_status: int = rules.DEFAULT_EXPECT_STATUS
    interval_ms: int = rules.CHECK_INTERVAL.default_ms
    timeout_ms: int = rules.CHECK_TIMEOUT.default_ms
    rise: int = rules.RISE.default or 0
    fall: int = rules.FALL.default or 0


@dataclass(frozen=True)
class Timeouts:
    connect_ms: int = rules.TIMEOUT_CONNECT.default_ms
    client_ms: int = rules.TIMEOUT_CLIENT.default_ms
    server_ms: int = rules.TIMEOUT_SERVER.default_ms
    queue_ms: int = rules.TIMEOUT_QUEUE.default_ms
    tunnel_ms: int = rules.TIMEOUT_TUNNEL.default_ms
    request_ms: int = rules.TIMEOUT_REQUEST.default_ms
    drain_ms: int = rules.TIMEOUT_DRAIN.default_ms


@dataclass(frozen=True)
class UpstreamTLS:
    """Re-encryption to the backends (both kinds): verified unless verify is false."""

    ca_secret_name: str | None = None  # None: the system CAs
    sni: str | None = None
    verify: bool = rules.UPSTREAM_VERIFY


@dataclass(frozen=True)
class RequestRate:
    """At most `requests` HTTP requests per client address in any `period` (sliding)."""

    requests: int
    period_ms: int = rules.RATE_PERIOD.default_ms

    @property
    def retry_after_s(self) -> int:
        """Retry-After: the window, rounded up to whole seconds."""
        return -(-self.period_ms // 1000)

    @property
    def table_expire_ms(self) -> int:
        """An idle client's entry outlives the window, so its count survives it."""
        return max(60_000, 2 * self.period_ms)


@dataclass(frozen=True)
class Limits:
    max_connections: int = rules.MAX_CONNECTIONS.default or 0
    max_connections_per_server: int = rules.MAX_CONNECTIONS_PER_SERVER.default or 0
    # 0: unlimited (per server: no queueing; per client: per source address, per replica)
    max_connections_per_client: int = rules.MAX_CONNECTIONS_PER_CLIENT.default or 0
    request_rate_per_client: RequestRate | None = None  # HTTP listeners only

    @property
    def per_client(self) -> bool:
        return bool(self.max_connections_per_client or self.request_rate_per_client)


@dataclass(frozen=True)
class AccessLog:
    """Which requests (TCP: connections) the proxy logs to its stdout."""

    mode: str = rules.ACCESS_LOG_MODE.default or ""  # All | Sampled | Disabled
    sample_one_in: int = rules.DEFAULT_ACCESS_LOG_SAMPLE  # Sampled: 1 in this many


@dataclass(frozen=True)
class ProxySettings:
    replicas: int = rules.REPLICAS.default or 0
    service_type: str = rules.SERVICE_TYPE.default or ""
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()


def required_value(r: Reader, key: str = "port") -> int:
    r.error(key, "Required value")
    return 0


def parse_backend(r: Reader) -> Backend:
    service = r.string("service", required=True)
    if r.has("service") and not DNS_LABEL_RE.match(service):
        r.error("service", f"{service!r} is not a valid Service name")
    port: int | str = 0
    raw = r.raw("port")
    if raw is None:
        r.error("port", "Required value")
    elif isinstance(raw, bool) or not isinstance(raw, int | str):
        r.error("port", "must be a port number or a port name")
    elif isinstance(raw, int) and not rules.PORT.contains(raw):
        r.error("port", f"must be between {rules.PORT.minimum} and {rules.PORT.maximum}, "
                f"got {raw}")
    elif isinstance(raw, str) and not DNS_LABEL_RE.match(raw):
        r.error("port", f"port name {raw!r} must be a lowercase DNS label")
    else:
        port = raw
    return Backend(service, port, r.integer("weight", rules.WEIGHT))


def parse_persistence(r: Reader) -> SessionPersistence:
    kind = r.enum("type", rules.PERSISTENCE_TYPE)
    cookie = r.string("cookieName", rules.DEFAULT_COOKIE_NAME)
    length = rules.COOKIE_NAME_LENGTH
    if not (length.minimum or 0) <= len(cookie) <= (length.maximum or 0) \
            or not COOKIE_NAME_RE.match(cookie):
        r.error("cookieName", f"{cookie!r} must be {length.minimum}-{length.maximum} "
                "characters of A-Z, a-z, 0-9, '_' or '-'")
    if kind != "Cookie" and r.has("cookieName"):
        r.error("cookieName", rules.COOKIE_NAME_ONLY_FOR_COOKIE.message)
    return SessionPersistence(kind, cookie, r.duration_ms("maxAge", rules.PERSISTENCE_MAX_AGE))


def parse_health_check(r: Reader) -> HealthCheck:
    kind = r.enum("type", rules.HEALTH_CHECK_TYPE)
    path = r.string("path", rules.DEFAULT_CHECK_PATH)
    if len(path) > rules.PATH_LENGTH or not HTTP_PATH_RE.match(path):
        r.error("path", f"{path!r} must start with '/' and use only URL path characters "
                "(no spaces, quotes, '#', '\\' or '$')")
    host = r.string("host") or None
    bounded(r, "host", host or "", HOST_NAME_RE, "host name")
    if kind != "HTTP":
        for rule in rules.HTTP_CHECK_ONLY:
            key = (rule.field_path or "").lstrip(".")
            if r.has(key):
                r.error(key, rule.message)
    return HealthCheck(
        type=kind,
        path=path,
        host=host,
        expect_status=r.integer("expectStatus", rules.EXPECT_STATUS,
                                rules.DEFAULT_EXPECT_STATUS),
        interval_ms=r.duration_ms("interval", rules.CHECK_INTERVAL),
        timeout_ms=r.duration_ms("timeout", rules.CHECK_TIMEOUT),
        rise=r.integer("rise", rules.RISE),
        fall=r.integer("fall", rules.FALL),
    )


def parse_timeouts(r: Reader) -> Timeouts:
    return Timeouts(
        connect_ms=r.duration_ms("connect", rules.TIMEOUT_CONNECT),
        client_ms=r.duration_ms("client", rules.TIMEOUT_CLIENT),
        server_ms=r.duration_ms("server", rules.TIMEOUT_SERVER),
        queue_ms=r.duration_ms("queue", rules.TIMEOUT_QUEUE),
        tunnel_ms=r.duration_ms("tunnel", rules.TIMEOUT_TUNNEL),
        request_ms=r.duration_ms("request", rules.TIMEOUT_REQUEST),
        drain_ms=r.duration_ms("drain", rules.TIMEOUT_DRAIN),
    )


def parse_limits(r: Reader) -> Limits:
    rate = None
    if r.has("requestRatePerClient"):
        rr = r.child("requestRatePerClient")
        if not rr.has("requests"):
            rr.error("requests", "Required value")
        rate = RequestRate(rr.integer("requests", rules.RATE_REQUESTS, 1),
                           rr.duration_ms("period", rules.RATE_PERIOD))
    return Limits(
        max_connections=r.integer("maxConnections", rules.MAX_CONNECTIONS),
        max_connections_per_server=r.integer("maxConnectionsPerServer",
                                             rules.MAX_CONNECTIONS_PER_SERVER),
        max_connections_per_client=r.integer("maxConnectionsPerClient",
                                             rules.MAX_CONNECTIONS_PER_CLIENT),
        request_rate_per_client=rate,
    )


def parse_proxy(r: Reader) -> ProxySettings:
    """Validated as the API server validates a Pod: the Deployment must never be refused."""
    return ProxySettings(
        replicas=r.integer("replicas", rules.REPLICAS),
        service_type=r.enum("serviceType", rules.SERVICE_TYPE),
        resources=parse_resources(r.child("resources")),
        node_selector=check_labels(r, "nodeSelector", max_items=rules.NODE_SELECTOR.maximum),
        tolerations=tuple(parse_toleration(t) for t in r.items("tolerations", rules.TOLERATIONS)),
    )


def bounded(r: Reader, key: str, value: str, pattern: re.Pattern[str], what: str,
            max_length: int = rules.SUBDOMAIN_LENGTH) -> None:
    """A present string field must match its pattern within the CRD's maxLength."""
    if r.has(key) and (len(value) > max_length or not pattern.match(value)):
        r.error(key, f"{value!r} is not a valid {what}")


def parse_access_log(r: Reader) -> AccessLog:
    mode = r.enum("mode", rules.ACCESS_LOG_MODE)
    sample = r.integer("sampleOneIn", rules.ACCESS_LOG_SAMPLE, rules.DEFAULT_ACCESS_LOG_SAMPLE)
    if mode != "Sampled" and r.has("sampleOneIn"):
        r.error("sampleOneIn", rules.ACCESS_LOG_SAMPLE_ONLY_SAMPLED.message)
    return AccessLog(mode, sample)


def parse_upstream_tls(r: Reader) -> UpstreamTLS:
    ca = r.string("caSecretName") or None
    bounded(r, "caSecretName", ca or "", HOST_NAME_RE, "Secret name")
    sni = r.string("sni") or None
    bounded(r, "sni", sni or "", HOST_NAME_RE, "server name")
    return UpstreamTLS(ca, sni, r.boolean("verify", True))


T = TypeVar("T")


class Identity(TypedDict):
    namespace: str
    uid: str
    generation: int


class SharedBlocks(TypedDict):
    """The spec blocks both kinds share, as keyword arguments of either dataclass."""

    algorithm: str
    session_persistence: SessionPersistence | None
    health_check: HealthCheck | None
    timeouts: Timeouts
    limits: Limits
    proxy: ProxySettings
    upstream_tls: UpstreamTLS | None
    allowed_source_ranges: tuple[str, ...]
    access_log: AccessLog


def identity(meta: dict[str, Any]) -> Identity:
    generation = meta.get("generation")
    return Identity(namespace=str(meta.get("namespace") or "default"),
                    uid=str(meta.get("uid") or ""),
                    generation=generation if isinstance(generation, int) else 0)


API_VERSION = f"{API_GROUP}/{API_VERSION_NAME}"
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# ObjectMeta's fields: any other key under metadata is an unknown field.
OBJECT_META_FIELDS = (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields")
# etcd stores at most 1.5 MiB per request, and the stored object also carries its
# managedFields (with a client-side `kubectl apply`, a last-applied copy of itself too):
# an object above 1 MiB as JSON is refused, or one edit away from it.
MAX_OBJECT_BYTES = 1 << 20


def object_meta(obj: dict[str, Any], kind: str, errors: list[FieldError]) -> dict[str, Any]:
    """What the API server checks before the schema: apiVersion, the top-level and
    metadata fields, their types, labels. Returns the metadata."""
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != API_VERSION:
        errors.append(FieldError("apiVersion", f"Invalid value: {shown(api_version)}: must "
                                 f"be {API_VERSION}, Kind={kind}"))
    for key in obj:
        if key not in TOP_LEVEL_FIELDS:
            errors.append(FieldError(str(key), f'unknown field "{key}"'))
    meta = obj.get("metadata")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        errors.append(FieldError("metadata", type_error(meta, "object")))
        return {}
    r = Reader(meta, "metadata", errors)
    for key in OBJECT_META_FIELDS:
        r.has(key)  # declared: only the keys below are checked further
    check_labels(r, "labels")
    r.string_map("annotations")
    for key in ("name", "namespace", "uid", "generateName"):
        r.string(key)
    r.integer("generation", rules.GENERATION)
    r.unknown_fields()
    return meta


def size_errors(obj: dict[str, Any]) -> list[FieldError]:
    """An object the API server could not store. Offline only (`roundhouse render`): an
    object the operator reads was stored, so it fits, whatever its managedFields add."""
    size = json_size(obj)
    if size <= MAX_OBJECT_BYTES:
        return []
    return [FieldError("<root>", f"Too long: the object is {size} bytes as JSON; the API "
                       f"server can store at most about {MAX_OBJECT_BYTES} (etcd's 1.5 MiB "
                       "request limit, with managedFields)")]


def json_size(obj: Any) -> int:
    """Bytes of obj as compact JSON (what kubectl sends); 0 when it is no JSON value (a
    hand-made object: its fields are refused one by one)."""
    try:
        return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        return 0


def parse_shared_blocks(spec: Reader) -> SharedBlocks:
    def optional(key: str, parse: Callable[[Reader], T]) -> T | None:
        return parse(spec.child(key)) if spec.has(key) else None

    return SharedBlocks(
        algorithm=spec.enum("algorithm", rules.ALGORITHM),
        session_persistence=optional("sessionPersistence", parse_persistence),
        health_check=optional("healthCheck", parse_health_check),
        timeouts=parse_timeouts(spec.child("timeouts")),
        limits=parse_limits(spec.child("limits")),
        proxy=parse_proxy(spec.child("proxy")),
        upstream_tls=optional("upstreamTLS", parse_upstream_tls),
        allowed_source_ranges=parse_source_ranges(spec, "allowedSourceRanges"),
        access_log=parse_access_log(spec.child("accessLog")),
    )


MAX_SOURCE_RANGES = rules.SOURCE_RANGES.maximum
_CIDR_SHAPE = re.compile(r"^[0-9A-Fa-f.:]+/(0|[1-9][0-9]{0,2})\Z")  # \Z: no "\n" after


def parse_source_ranges(r: Reader, key: str) -> tuple[str, ...]:
    """CIDRs a client address must fall in (empty: every client), normalized to their
    network (10.1.2.3/8 -> 10.0.0.0/8) and deduplicated, in the order given.

    Accepts what the CRD's isCIDR() accepts: an IPv4 or IPv6 prefix, no zone, no
    IPv4-mapped IPv6 address."""
    out: list[str] = []
    values = r.string_list(key)
    if len(values) > MAX_SOURCE_RANGES:
        r.error(key, f"must have at most {MAX_SOURCE_RANGES} items, got {len(values)}")
    for i, text in enumerate(values):
        network = cidr(text)
        if network is None:
            r.error(f"{key}[{i}]", f"{text!r}: {rules.CIDR.message}")
        elif network not in out:
            out.append(network)
    return tuple(out)


def cidr(text: str) -> str | None:
    """The network of CIDR `text` ("10.0.0.0/8"), None when it is not one."""
    if not _CIDR_SHAPE.match(text):  # also refuses a netmask (10.0.0.0/255.0.0.0) and "/08"
        return None
    try:
        address = ipaddress.ip_address(text.split("/")[0])
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None  # as written, like Go's netip.Prefix.Addr().Is4In6()
    return str(network)


def check_name(meta: dict[str, Any], suffix: str, errors: list[FieldError]) -> str:
    """metadata.name: children are named <name>-<suffix>, so it must leave room.

    metadata.namespace too: the API server only stores DNS labels there, but offline
    anything can be written, and it reaches haproxy.cfg (a comment, the cookie key)."""
    namespace = meta.get("namespace")  # not a string: object_meta() reported its type
    if isinstance(namespace, str) and namespace and not DNS_LABEL_RE.fullmatch(namespace):
        errors.append(FieldError("metadata.namespace", "must be a DNS label (a-z, 0-9, '-', "
                                 "at most 63 characters), as Kubernetes names namespaces"))
    name = meta.get("name")
    if not isinstance(name, str) or not DNS_LABEL_RE.match(name) \
            or len(name) > rules.MAX_NAME_LENGTH:
        errors.append(FieldError("metadata.name", rules.name_message(suffix)))
        return str(name or "")
    return name


def limits_rules(algorithm: str, limits: Limits, errors: list[FieldError]) -> None:
    """The CEL rules on algorithm and limits, in the CRD's words."""
    if algorithm == "first" and limits.max_connections_per_server == 0:
        errors.append(spec_error(rules.ALGORITHM_FIRST))
    if limits.max_connections_per_server > limits.max_connections:
        errors.append(spec_error(rules.PER_SERVER_AT_MOST_MAX, "spec.limits"))
    if limits.max_connections_per_client > limits.max_connections:
        errors.append(spec_error(rules.PER_CLIENT_AT_MOST_MAX, "spec.limits"))


def spec_error(rule: rules.Rule, node: str = "spec") -> FieldError:
    """A failed cross-field rule as the API server reports it: at the rule's node plus
    its fieldPath, with its message."""
    return FieldError(node + (rule.field_path or ""), rule.message)


def reserved_port_rules(ports: list[int], errors: list[FieldError]) -> None:
    """A listener may not take a port the proxy Pod itself uses (CRD: the same rule)."""
    for i, port in enumerate(ports):
        if port in RESERVED_PORTS:
            errors.append(FieldError(f"spec.listeners[{i}].port", reserved_port_message(port)))
