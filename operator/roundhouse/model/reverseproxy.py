"""The ReverseProxy spec: typed, defaulted, validated by roundhouse.model.rules, the rules
crds/reverseproxies.yaml is generated from.

Every rule of the CRD (OpenAPI schema, list-map keys and CEL rules) is checked here with
the field path the API server names, so `roundhouse render` refuses the same objects.
One rule is stricter than the CRD, which cannot compile a regular expression: a
RegularExpression path or header match that HAProxy's PCRE2 (model/pcre2.py) or Python's
`re` (the offline route replay) cannot compile is refused here
(spec.hosts[i].routes[j].match...value), rather than breaking the HAProxy config.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from roundhouse.model import pcre2
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
    parse_source_ranges,
    required_value,
    reserved_port_rules,
    spec_error,
)
from roundhouse.model.errors import FieldError, SpecError
from roundhouse.model.loadbalancer import Listener
from roundhouse.model.reader import Reader
from roundhouse.model.rules import (
    BACKEND_ONLY,
    BACKEND_WEIGHT,
    CERTIFICATES,
    DEFAULT_PATH,
    DEFAULT_RETRY_ON,
    HEADER_CHANGES,
    HEADER_MAP_KEYS,
    HEADER_MATCH_TYPE,
    HEADER_MATCHES,
    HEADER_NAME_LENGTH,
    HEADER_VALUE,
    HEADER_VALUE_LENGTH,
    HOST_TLS_NEEDS_HTTPS,
    HOSTS,
    HSTS_INCLUDE_SUBDOMAINS,
    HSTS_MAX_AGE,
    HSTS_NEEDS_HTTPS,
    HSTS_PRELOAD,
    HTTPS_NEEDS_HOST_TLS,
    LISTENER_PORTS_UNIQUE,
    LISTENERS,
    MAX_CERTIFICATES,
    METHOD,
    PATH_LENGTH,
    PATH_MATCH_LENGTH,
    PATH_TYPE,
    PATH_VALUE,
    PORT,
    PRELOAD_NEEDS_SUBDOMAINS,
    REDIRECT_CODE,
    REDIRECT_CODES,
    REDIRECT_NEEDS_HTTPS,
    REDIRECT_NEEDS_TARGET,
    REDIRECT_ONLY_ON_HTTP,
    REDIRECT_SCHEME,
    REDIRECT_TO_HTTPS,
    RETRY_ATTEMPTS,
    RETRY_ON,
    REWRITE_NEEDS_BACKENDS,
    REWRITE_NEEDS_PREFIX,
    ROUTE_BACKENDS,
    ROUTE_BACKENDS_OR_REDIRECT,
    ROUTE_REQUEST_TIMEOUT,
    ROUTE_SERVER_TIMEOUT,
    ROUTES,
    RP_PROTOCOL,
    RP_SUFFIX,
    Duration,
)
from roundhouse.model.values import (
    DNS_LABEL_RE,
    DNS_NAME_RE,
    HEADER_NAME_RE,
    HEADER_VALUE_RE,
    HOST_NAME_RE,
    HTTP_PATH_RE,
)


@dataclass(frozen=True)
class PathMatch:
    type: str = PATH_TYPE.default or ""  # Exact | Prefix (whole segments) | RegularExpression
    value: str = DEFAULT_PATH


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    value: str
    type: str = HEADER_MATCH_TYPE.default or ""  # Exact | RegularExpression (full match)


@dataclass(frozen=True)
class RouteMatch:
    path: PathMatch = field(default_factory=PathMatch)
    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True)
class RouteTimeouts:
    request_ms: int | None = None
    server_ms: int | None = None  # None: spec.timeouts.server


@dataclass(frozen=True)
class Retries:
    attempts: int = RETRY_ATTEMPTS.default or 0
    retry_on: tuple[str, ...] = (DEFAULT_RETRY_ON,)


@dataclass(frozen=True)
class HeaderChanges:
    set: tuple[tuple[str, str], ...] = ()  # (name, value), sorted by name
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    path: str | None = None
    status_code: int = REDIRECT_CODE.default or 0


@dataclass(frozen=True)
class Route:
    name: str
    match: RouteMatch = field(default_factory=RouteMatch)
    backends: tuple[Backend, ...] = ()
    redirect: Redirect | None = None
    timeouts: RouteTimeouts = field(default_factory=RouteTimeouts)
    retries: Retries | None = None
    request_headers: HeaderChanges = field(default_factory=HeaderChanges)
    response_headers: HeaderChanges = field(default_factory=HeaderChanges)
    rewrite_path_prefix: str | None = None
    allowed_source_ranges: tuple[str, ...] = ()  # CIDRs; others get 403; empty: all


@dataclass(frozen=True)
class HostTLS:
    secret_name: str | None = None  # None: covered by the operator-issued certificate

    @property
    def issued(self) -> bool:
        return self.secret_name is None


@dataclass(frozen=True)
class Host:
    hostname: str  # exact, or a wildcard "*.example.com" (one or more labels in front)
    routes: tuple[Route, ...]
    tls: HostTLS | None = None

    @property
    def wildcard(self) -> bool:
        return self.hostname.startswith("*.")


@dataclass(frozen=True)
class HSTS:
    max_age_ms: int = HSTS_MAX_AGE.default_ms
    include_subdomains: bool = HSTS_INCLUDE_SUBDOMAINS
    preload: bool = HSTS_PRELOAD

    def header(self) -> str:
        value = f"max-age={self.max_age_ms // 1000}"
        if self.include_subdomains:
            value += "; includeSubDomains"
        if self.preload:
            value += "; preload"
        return value


@dataclass(frozen=True)
class ReverseProxy:
    name: str
    namespace: str
    uid: str
    generation: int
    listeners: tuple[Listener, ...]
    hosts: tuple[Host, ...]
    default_backend: Backend | None = None
    upstream_tls: UpstreamTLS | None = None
    hsts: HSTS | None = None
    algorithm: str = "roundrobin"
    session_persistence: SessionPersistence | None = None
    health_check: HealthCheck | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    allowed_source_ranges: tuple[str, ...] = ()  # CIDRs; empty: every client
    access_log: AccessLog = field(default_factory=AccessLog)

    def service_refs(self) -> set[str]:
        """Every Service a route or the default backend names."""
        refs = {be.service for h in self.hosts for r in h.routes for be in r.backends}
        if self.default_backend:
            refs.add(self.default_backend.service)
        return refs

    def secret_refs(self) -> set[str]:
        """User Secrets: host certificates and the upstream CA (not the issued one)."""
        refs = {h.tls.secret_name for h in self.hosts if h.tls and h.tls.secret_name}
        if self.upstream_tls and self.upstream_tls.ca_secret_name:
            refs.add(self.upstream_tls.ca_secret_name)
        return refs

    def issued_hostnames(self) -> tuple[str, ...]:
        """Hostnames the one operator-issued certificate (<name>-rp-tls) must cover."""
        return tuple(sorted(h.hostname for h in self.hosts if h.tls and h.tls.issued))


def parse_reverseproxy(obj: dict[str, Any]) -> ReverseProxy:
    """Parse a ReverseProxy object (as the API returns it, or as a user wrote it).

    Raises SpecError listing every problem, each naming its field.
    """
    errors: list[FieldError] = []
    meta = object_meta(obj, "ReverseProxy", errors)
    name = check_name(meta, RP_SUFFIX, errors)
    spec = Reader(obj.get("spec"), "spec", errors)
    if not spec.has("listeners"):
        spec.error("listeners", "Required value")
    if not spec.has("hosts"):
        spec.error("hosts", "Required value")
    listener_readers = list(spec.items("listeners", LISTENERS,
                                       check_minimum=spec.has("listeners")))
    listeners = tuple(_listener(r) for r in listener_readers)
    _unique(listener_readers, ("name",), errors)
    host_readers = list(spec.items("hosts", HOSTS, check_minimum=spec.has("hosts")))
    hosts = tuple(_host(r) for r in host_readers)
    _unique(host_readers, ("hostname",), errors)
    rp = ReverseProxy(
        name=name,
        **identity(meta),
        listeners=listeners,
        hosts=hosts,
        default_backend=_default_backend(spec.child("defaultBackend"))
        if spec.has("defaultBackend") else None,
        hsts=_hsts(spec.child("hsts")) if spec.has("hsts") else None,
        **parse_shared_blocks(spec),
    )
    _cross_field_rules(rp, errors)
    spec.unknown_fields()
    if errors:
        raise SpecError(errors)
    return rp


# ------------------------------------------------------------------------ helpers


def _unique(items: list[Reader], keys: tuple[str, ...], errors: list[FieldError]) -> None:
    """A list-map's keys, reported as the API server does: at the repeated item."""
    seen: set[str] = set()
    for r in items:
        if not all(r.has(k) for k in keys):
            continue
        key = json.dumps({k: r.raw(k) for k in keys}, separators=(",", ":"))
        if key in seen:
            errors.append(FieldError(r.path, f"Duplicate value: {key}"))
        seen.add(key)


def _optional_duration(r: Reader, key: str, rule: Duration) -> int | None:
    return r.duration_ms(key, rule) if r.has(key) else None


def _regex(r: Reader, key: str, value: str) -> None:
    """HAProxy compiles the pattern (PCRE2); the offline route replay (routing.py) runs it
    in Python: both must accept it. PCRE2 first: it bounds nesting and repeats."""
    problem = pcre2.match_error(value)
    if problem:
        r.error(key, f"invalid regular expression {value!r}: HAProxy (PCRE2) refuses it: "
                f"{problem}")
        return
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as err:
        r.error(key, f"invalid regular expression {value!r}: {err}")


# ------------------------------------------------------------------------ blocks


def _listener(r: Reader) -> Listener:
    name = r.string("name", required=True)
    if r.has("name") and not DNS_LABEL_RE.match(name):
        r.error("name", f"{name!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    protocol = r.enum("protocol", RP_PROTOCOL)
    redirect = r.boolean("redirectToHTTPS", REDIRECT_TO_HTTPS)
    if redirect and protocol != "HTTP":
        r.errors.append(spec_error(REDIRECT_ONLY_ON_HTTP, r.path))
    port = r.integer("port", PORT) if r.has("port") else required_value(r)
    return Listener(name=name, port=port, protocol=protocol, redirect_to_https=redirect)


def _host(r: Reader) -> Host:
    hostname = r.string("hostname", required=True)
    bounded(r, "hostname", hostname, DNS_NAME_RE, "host name (exact, or *.domain)")
    tls = None
    if r.has("tls"):
        t = r.child("tls")
        secret = t.string("secretName") or None
        bounded(t, "secretName", secret or "", HOST_NAME_RE, "Secret name")
        tls = HostTLS(secret)
    if not r.has("routes"):
        r.error("routes", "Required value")
    route_readers = list(r.items("routes", ROUTES, check_minimum=r.has("routes")))
    routes = tuple(_route(x) for x in route_readers)
    _unique(route_readers, ("name",), r.errors)
    return Host(hostname, routes, tls)


def _route(r: Reader) -> Route:
    name = r.string("name", required=True)
    if r.has("name") and not DNS_LABEL_RE.match(name):
        r.error("name", f"{name!r} must be a lowercase DNS label (a-z, 0-9, '-')")
    match = _match(r.child("match"))
    backends: tuple[Backend, ...] = ()
    if r.has("backends"):
        readers = list(r.items("backends", ROUTE_BACKENDS))
        backends = tuple(parse_backend(b) for b in readers)
        _unique(readers, ("service", "port"), r.errors)
        if backends and all(b.weight == 0 for b in backends):
            r.error("backends", BACKEND_WEIGHT.message)
    redirect = _redirect(r.child("redirect")) if r.has("redirect") else None
    if r.has("backends") == r.has("redirect"):
        r.errors.append(spec_error(ROUTE_BACKENDS_OR_REDIRECT, r.path))
    for rule in BACKEND_ONLY:
        # A redirect route answers by itself: these would silently do nothing.
        if r.has((rule.field_path or "").lstrip(".")) and not r.has("backends"):
            r.errors.append(spec_error(rule, r.path))
    rewrite = None
    if r.has("rewrite"):
        w = r.child("rewrite")
        rewrite = w.string("pathPrefix") or None
        if w.has("pathPrefix") and (len(rewrite or "") > PATH_LENGTH
                                    or not HTTP_PATH_RE.match(rewrite or "")):
            w.error("pathPrefix", f"{rewrite!r} must start with '/' and hold only URL path "
                    "characters")
        if not r.has("backends"):
            r.errors.append(spec_error(REWRITE_NEEDS_BACKENDS, r.path))
        if w.has("pathPrefix") and match.path.type != "Prefix":
            r.errors.append(spec_error(REWRITE_NEEDS_PREFIX, r.path))
    return Route(
        name=name,
        match=match,
        backends=backends,
        redirect=redirect,
        timeouts=_route_timeouts(r.child("timeouts")),
        retries=_retries(r.child("retries")) if r.has("retries") else None,
        request_headers=_header_changes(r.child("requestHeaders")),
        response_headers=_header_changes(r.child("responseHeaders")),
        rewrite_path_prefix=rewrite,
        allowed_source_ranges=parse_source_ranges(r, "allowedSourceRanges"),
    )


def _match(r: Reader) -> RouteMatch:
    p = r.child("path")
    path_type = p.enum("type", PATH_TYPE)
    value = p.string("value", DEFAULT_PATH)
    if p.has("value") and (not PATH_MATCH_LENGTH.contains(len(value))
                           or not HEADER_VALUE_RE.match(value)):
        p.error("value", f"{value!r} must be {PATH_MATCH_LENGTH.minimum}-"
                f"{PATH_MATCH_LENGTH.maximum} characters without control characters")
    elif path_type != "RegularExpression" and not HTTP_PATH_RE.match(value):
        p.errors.append(spec_error(PATH_VALUE, p.path))
    elif path_type == "RegularExpression":
        _regex(p, "value", value)
    headers = []
    for h in r.items("headers", HEADER_MATCHES):
        hname = h.string("name", required=True)
        bounded(h, "name", hname, HEADER_NAME_RE, "header name (an HTTP token)",
                HEADER_NAME_LENGTH)
        htype = h.enum("type", HEADER_MATCH_TYPE)
        hvalue = h.string("value", required=True)
        if len(hvalue) > HEADER_VALUE_LENGTH or not HEADER_VALUE_RE.match(hvalue):
            h.error("value", f"must be at most {HEADER_VALUE_LENGTH} characters without "
                    "control characters")
        elif htype == "RegularExpression":
            _regex(h, "value", hvalue)
        headers.append(HeaderMatch(hname, hvalue, htype))
    method = None
    if r.has("method"):
        method = r.enum("method", METHOD, "GET")
    return RouteMatch(PathMatch(path_type, value), tuple(headers), method)


def _route_timeouts(r: Reader) -> RouteTimeouts:
    return RouteTimeouts(_optional_duration(r, "request", ROUTE_REQUEST_TIMEOUT),
                         _optional_duration(r, "server", ROUTE_SERVER_TIMEOUT))


def _retries(r: Reader) -> Retries:
    attempts = r.integer("attempts", RETRY_ATTEMPTS)
    raw = r.raw("retryOn")
    if raw is None:
        return Retries(attempts)
    keywords: list[str] = []
    if not isinstance(raw, list):
        r.error("retryOn", "must be a list")
        raw = []
    if len(raw) > len(RETRY_ON.values):
        r.error("retryOn", f"must have at most {len(RETRY_ON.values)} items")
    for i, value in enumerate(raw):
        where = f"retryOn[{i}]"
        if value not in RETRY_ON.values:
            r.error(where, f"Unsupported value: {json.dumps(value)}: supported values: "
                    + ", ".join(f'"{k}"' for k in RETRY_ON.values))
        elif value in keywords:
            r.error(where, f"Duplicate value: {json.dumps(value)}")
        else:
            keywords.append(value)
    return Retries(attempts, tuple(keywords) or (DEFAULT_RETRY_ON,))


def _header_changes(r: Reader) -> HeaderChanges:
    maps: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("set", "add"):
        values = r.string_map(key)
        if len(values) > HEADER_CHANGES.maximum:
            r.error(key, f"must have at most {HEADER_CHANGES.maximum} properties")
        if not all(HEADER_NAME_RE.match(k) for k in values):
            r.error(key, HEADER_MAP_KEYS.message)
        for k, v in values.items():
            if len(v) > HEADER_VALUE_LENGTH or not HEADER_VALUE_RE.match(v):
                r.error(f"{key}.{k}", f"should match '{HEADER_VALUE}' (no control "
                        f"characters) and be at most {HEADER_VALUE_LENGTH} characters")
        maps[key] = tuple(sorted(values.items()))
    remove = r.string_list("remove")
    if len(remove) > HEADER_CHANGES.maximum:
        r.error("remove", f"must have at most {HEADER_CHANGES.maximum} items")
    seen: set[str] = set()
    for i, hname in enumerate(remove):
        if len(hname) > HEADER_NAME_LENGTH or not HEADER_NAME_RE.match(hname):
            r.error(f"remove[{i}]", f"{hname!r} is not a valid header name (an HTTP token)")
        if hname in seen:
            r.error(f"remove[{i}]", f"Duplicate value: {json.dumps(hname)}")
        seen.add(hname)
    return HeaderChanges(maps["set"], maps["add"], tuple(remove))


def _redirect(r: Reader) -> Redirect:
    scheme = r.enum("scheme", REDIRECT_SCHEME) if r.has("scheme") else None
    hostname = r.string("hostname") or None
    bounded(r, "hostname", hostname or "", HOST_NAME_RE, "host name")
    path = r.string("path") or None
    if r.has("path") and (len(path or "") > PATH_LENGTH or not HTTP_PATH_RE.match(path or "")):
        r.error("path", f"{path!r} must start with '/' and hold only URL path characters")
    code = r.raw("statusCode")
    if code is None:
        code = REDIRECT_CODE.default
    elif isinstance(code, bool) or code not in REDIRECT_CODES:
        r.error("statusCode", f"Unsupported value: {json.dumps(code)}: supported values: "
                + ", ".join(f'"{c}"' for c in REDIRECT_CODES))
        code = REDIRECT_CODE.default
    if not (r.has("scheme") or r.has("hostname") or r.has("path")):
        r.errors.append(spec_error(REDIRECT_NEEDS_TARGET, r.path))
    return Redirect(scheme, hostname, path, int(code))


def _default_backend(r: Reader) -> Backend:
    be = parse_backend(r)
    return Backend(be.service, be.port)  # no weight: the default backend is one Service


def _hsts(r: Reader) -> HSTS:
    hsts = HSTS(
        max_age_ms=r.duration_ms("maxAge", HSTS_MAX_AGE),
        include_subdomains=r.boolean("includeSubdomains", HSTS_INCLUDE_SUBDOMAINS),
        preload=r.boolean("preload", HSTS_PRELOAD),
    )
    if hsts.preload and not hsts.include_subdomains:
        r.errors.append(spec_error(PRELOAD_NEEDS_SUBDOMAINS, r.path))
    return hsts


def _cross_field_rules(rp: ReverseProxy, errors: list[FieldError]) -> None:
    """The rules the CRD states in CEL on spec (roundhouse.model.rules), in its words."""
    ports = [li.port for li in rp.listeners]
    if len(set(ports)) != len(ports):
        errors.append(spec_error(LISTENER_PORTS_UNIQUE))
    has_https = any(li.protocol == "HTTPS" for li in rp.listeners)
    if any(li.redirect_to_https for li in rp.listeners) and not has_https:
        errors.append(spec_error(REDIRECT_NEEDS_HTTPS))
    if any(h.tls for h in rp.hosts) and not has_https:
        errors.append(spec_error(HOST_TLS_NEEDS_HTTPS))
    if has_https and not any(h.tls for h in rp.hosts):
        errors.append(spec_error(HTTPS_NEEDS_HOST_TLS))
    if rp.hsts and not has_https:
        errors.append(spec_error(HSTS_NEEDS_HTTPS))
    if certificate_count(rp.hosts) > MAX_CERTIFICATES:
        errors.append(spec_error(CERTIFICATES))
    limits_rules(rp.algorithm, rp.limits, errors)
    reserved_port_rules([li.port for li in rp.listeners], errors)


CERTIFICATES_MESSAGE = CERTIFICATES.message  # tests/unit/test_render_limits.py reads it


def certificate_count(hosts: tuple[Host, ...]) -> int:
    """The certificates the hosts' tls put on an HTTPS bind line: each distinct
    secretName, plus one issued certificate for all the hosts without one."""
    own = {h.tls.secret_name for h in hosts if h.tls and h.tls.secret_name}
    return len(own) + (1 if any(h.tls and h.tls.issued for h in hosts) else 0)
