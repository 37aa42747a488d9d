"""Hypothesis strategies for valid Roundhouse resources.

`valid_loadbalancers()` draws whole LoadBalancer objects (apiVersion, kind, metadata,
spec) that both the CRD (crds/loadbalancers.yaml, as the API server applies it) and
`roundhouse.model.parse_loadbalancer` accept: every field in range, every cross-field
rule kept, optional fields sometimes left out so that defaults come into play.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from roundhouse.model import rules
from roundhouse.model.kubetypes import parse_quantity
from roundhouse.model.pod import RESERVED_PORTS

# The spec's own values (model/rules.py), so the strategies cannot drift from the CRD.
assert rules.PORT.minimum is not None and rules.PORT.maximum is not None
PORT_MIN, PORT_MAX = rules.PORT.minimum, rules.PORT.maximum

API_VERSION = "roundhouse.dev/v1alpha1"
PROTOCOLS = rules.PROTOCOL.values
ALGORITHMS = rules.ALGORITHM.values
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
DAY_MS = 86_400_000
# The largest number of each unit within a limit, given at most 7 digits.
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

Obj = dict[str, Any]


def dns_labels(max_length: int = 63) -> st.SearchStrategy[str]:
    """Lowercase RFC 1123 labels: what Service, listener and port names must be."""
    inner = max(0, min(max_length, 63) - 2)
    return st.from_regex(rf"\A[a-z0-9]([-a-z0-9]{{0,{inner}}}[a-z0-9])?\Z", fullmatch=True)


def short_labels() -> st.SearchStrategy[str]:
    """Mostly short labels, now and then a long one."""
    return st.one_of(dns_labels(12), dns_labels(12), dns_labels(63))


def dns_subdomains() -> st.SearchStrategy[str]:
    return st.lists(dns_labels(20), min_size=1, max_size=4).map(".".join)


def listener_ports() -> st.SearchStrategy[int]:
    """Any port but the ones the proxy Pod uses itself."""
    return st.integers(PORT_MIN, PORT_MAX).filter(lambda port: port not in RESERVED_PORTS)


def label_keys() -> st.SearchStrategy[str]:
    """Kubernetes label (and taint) keys: a name, or a DNS subdomain prefix and a name."""
    return st.one_of(dns_labels(20), st.tuples(dns_subdomains(), dns_labels(20)).map("/".join))


def dns_names() -> st.SearchStrategy[str]:
    """DNS names that may start with '*.' (certificate names)."""
    return st.tuples(st.booleans(), dns_subdomains()).map(
        lambda t: f"*.{t[1]}" if t[0] else t[1])


def durations(max_ms: int = DAY_MS) -> st.SearchStrategy[str]:
    """'500ms', '5s', '2m', '1h': more than 0 and at most max_ms, at most 7 digits."""
    def for_unit(unit: str) -> st.SearchStrategy[str]:
        top = min(9_999_999, max_ms // _UNIT_MS[unit])
        return st.integers(1, top).map(lambda n: f"{n}{unit}")
    return st.one_of(*(for_unit(u) for u in _UNIT_MS))


def quantities() -> st.SearchStrategy[str | int]:
    return st.one_of(
        st.integers(0, 64),
        st.integers(1, 4000).map(lambda n: f"{n}m"),
        st.sampled_from(["0.5", "1", "2", "1.5"]),
        st.tuples(st.integers(1, 4096), st.sampled_from(["Ki", "Mi", "Gi", "M", "G"])).map(
            lambda t: f"{t[0]}{t[1]}"),
    )


def _maybe(draw: st.DrawFn, obj: Obj, key: str, strategy: st.SearchStrategy[Any]) -> None:
    """Set obj[key] from strategy, or leave it out (the default applies)."""
    if draw(st.booleans()):
        obj[key] = draw(strategy)


@st.composite
def listener_tls(draw: st.DrawFn) -> Obj:
    tls: Obj = {}
    _maybe(draw, tls, "secretName", dns_subdomains())
    _maybe(draw, tls, "dnsNames", st.lists(dns_names(), max_size=4))
    _maybe(draw, tls, "minVersion", st.sampled_from(["1.2", "1.3"]))
    return tls


@st.composite
def listeners(draw: st.DrawFn) -> list[Obj]:
    count = draw(st.one_of(st.integers(1, 4), st.integers(1, 16)))
    names = draw(st.lists(short_labels(), min_size=count, max_size=count, unique=True))
    ports = draw(st.lists(listener_ports(), min_size=count, max_size=count,
                          unique=True))
    protocols = draw(st.lists(st.sampled_from(PROTOCOLS), min_size=count, max_size=count))
    has_https = "HTTPS" in protocols
    out = []
    for name, port, protocol in zip(names, ports, protocols, strict=True):
        listener: Obj = {"name": name, "port": port}
        if protocol != "HTTP" or draw(st.booleans()):
            listener["protocol"] = protocol
        if protocol == "HTTP" and has_https:
            _maybe(draw, listener, "redirectToHTTPS", st.booleans())
        elif draw(st.integers(0, 3)) == 0:
            listener["redirectToHTTPS"] = False
        if protocol == "HTTPS":
            _maybe(draw, listener, "tls", listener_tls())
        out.append(listener)
    return out


@st.composite
def backends(draw: st.DrawFn) -> list[Obj]:
    ports = st.one_of(st.integers(PORT_MIN, PORT_MAX), short_labels())
    pairs = draw(st.lists(st.tuples(short_labels(), ports), min_size=1, max_size=32,
                          unique=True))
    out = []
    for service, port in pairs:
        backend: Obj = {"service": service, "port": port}
        _maybe(draw, backend, "weight", st.integers(0, 256))
        out.append(backend)
    if all(b.get("weight", 1) == 0 for b in out):
        out[0]["weight"] = draw(st.integers(1, 256))
    return out


@st.composite
def session_persistence(draw: st.DrawFn, cookie_allowed: bool) -> Obj:
    kind = draw(st.sampled_from(["Cookie", "SourceIP"] if cookie_allowed else ["SourceIP"]))
    sp: Obj = {}
    if kind == "SourceIP" or draw(st.booleans()):
        sp["type"] = kind
    if kind == "Cookie":
        _maybe(draw, sp, "cookieName",
               st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z", fullmatch=True))
    _maybe(draw, sp, "maxAge", durations(30 * DAY_MS))
    return sp


@st.composite
def health_check(draw: st.DrawFn) -> Obj:
    kind = draw(st.sampled_from(["TCP", "HTTP"]))
    hc: Obj = {}
    if kind == "HTTP" or draw(st.booleans()):
        hc["type"] = kind
    if kind == "HTTP":
        _maybe(draw, hc, "path", st.from_regex(r"\A/[A-Za-z0-9._~!&()*+,;=:@%/?-]{0,40}\Z",
                                               fullmatch=True))
        _maybe(draw, hc, "host", dns_subdomains())
        _maybe(draw, hc, "expectStatus", st.integers(100, 599))
    _maybe(draw, hc, "interval", durations())
    _maybe(draw, hc, "timeout", durations())
    _maybe(draw, hc, "rise", st.integers(1, 100))
    _maybe(draw, hc, "fall", st.integers(1, 100))
    return hc


@st.composite
def timeouts(draw: st.DrawFn) -> Obj:
    out: Obj = {}
    for key in ("connect", "client", "server", "queue", "tunnel"):
        _maybe(draw, out, key, durations())
    return out


@st.composite
def limits(draw: st.DrawFn, algorithm: str, http: bool = True) -> Obj:
    out: Obj = {}
    _maybe(draw, out, "maxConnections", st.integers(1, 1_000_000))
    total = out.get("maxConnections", 10_000)
    low = 1 if algorithm == "first" else 0
    if low or draw(st.booleans()):
        out["maxConnectionsPerServer"] = draw(st.integers(low, min(100_000, total)))
    _maybe(draw, out, "maxConnectionsPerClient", st.integers(0, min(100_000, total)))
    if http and draw(st.booleans()):
        rate: Obj = {"requests": draw(st.integers(1, 1_000_000))}
        _maybe(draw, rate, "period", durations(3_600_000))
        out["requestRatePerClient"] = rate
    return out


@st.composite
def tolerations(draw: st.DrawFn) -> Obj:
    operator = draw(st.sampled_from(["Exists", "Equal"]))
    toleration: Obj = {"operator": operator}
    if operator == "Equal":  # an empty key only goes with Exists ("match all keys")
        toleration["key"] = draw(label_keys())
    else:
        _maybe(draw, toleration, "key", label_keys())
    if operator == "Equal":
        _maybe(draw, toleration, "value", dns_labels(20))
    _maybe(draw, toleration, "effect",
           st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]))
    if toleration.get("effect") == "NoExecute":
        _maybe(draw, toleration, "tolerationSeconds", st.integers(0, 86_400))
    return toleration


def _amount(quantity: str | int) -> Any:
    amount = parse_quantity(quantity)
    assert amount is not None, quantity
    return amount


def _requests_within_limits(resources: Obj) -> Obj:
    """A request above its limit is refused (as by the API server for a Pod): cap it."""
    for name, request in list(resources.get("requests", {}).items()):
        limit = resources.get("limits", {}).get(name)
        if limit is not None and _amount(request) > _amount(limit):
            resources["requests"][name] = limit
    return resources


@st.composite
def proxy(draw: st.DrawFn) -> Obj:
    out: Obj = {}
    _maybe(draw, out, "replicas", st.integers(1, 50))
    _maybe(draw, out, "serviceType", st.sampled_from(SERVICE_TYPES))
    resource = st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities(), max_size=2)
    _maybe(draw, out, "resources", st.fixed_dictionaries(
        {}, optional={"requests": resource, "limits": resource}).map(_requests_within_limits))
    _maybe(draw, out, "nodeSelector", st.dictionaries(
        st.sampled_from(["kubernetes.io/os", "topology.kubernetes.io/zone", "pool"]),
        dns_labels(20), max_size=3))
    _maybe(draw, out, "tolerations", st.lists(tolerations(), max_size=3))
    return out


@st.composite
def access_log(draw: st.DrawFn) -> Obj:
    """spec.accessLog: every mode; a sample size only with Sampled."""
    out: Obj = {}
    if draw(st.booleans()):
        out["mode"] = draw(st.sampled_from(rules.ACCESS_LOG_MODE.values))
    if out.get("mode") == "Sampled" and draw(st.booleans()):
        bounds = rules.ACCESS_LOG_SAMPLE
        out["sampleOneIn"] = draw(st.integers(bounds.minimum, bounds.maximum))
    return out


def source_ranges() -> st.SearchStrategy[list[str]]:
    """CIDRs of both families, host bits set or not (the parser masks them)."""
    v4 = st.builds(lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}",
                   st.integers(0, 2**32 - 1), st.integers(0, 32))
    v6 = st.builds(lambda a, n: f"{ipaddress.IPv6Address(a)}/{n}",
                   st.integers(0, 2**128 - 1).filter(lambda a: a >> 32 != 0xFFFF),
                   st.integers(0, 128))
    return st.lists(st.one_of(v4, v6), max_size=20)


@st.composite
def upstream_tls(draw: st.DrawFn) -> Obj:
    upstream: Obj = {}
    _maybe(draw, upstream, "caSecretName", dns_subdomains())
    _maybe(draw, upstream, "sni", dns_subdomains())
    _maybe(draw, upstream, "verify", st.booleans())
    return upstream


@st.composite
def loadbalancer_specs(draw: st.DrawFn) -> Obj:
    """A valid LoadBalancer spec."""
    spec: Obj = {"listeners": draw(listeners()), "backends": draw(backends())}
    algorithm = draw(st.sampled_from(ALGORITHMS))
    if algorithm != "roundrobin" or draw(st.booleans()):
        spec["algorithm"] = algorithm
    cookie_allowed = any(li.get("protocol", "HTTP") in ("HTTP", "HTTPS")
                         for li in spec["listeners"])
    _maybe(draw, spec, "sessionPersistence", session_persistence(cookie_allowed))
    _maybe(draw, spec, "healthCheck", health_check())
    _maybe(draw, spec, "timeouts", timeouts())
    if algorithm == "first" or draw(st.booleans()):
        spec["limits"] = draw(limits(algorithm, http=cookie_allowed))
    _maybe(draw, spec, "proxy", proxy())
    if not any(li.get("protocol") == "TLSPassthrough" for li in spec["listeners"]):
        _maybe(draw, spec, "upstreamTLS", upstream_tls())
    _maybe(draw, spec, "allowedSourceRanges", source_ranges())
    _maybe(draw, spec, "accessLog", access_log())
    return spec


def valid_loadbalancers() -> st.SearchStrategy[Obj]:
    """Whole LoadBalancer objects that the CRD and parse_loadbalancer both accept."""
    return st.builds(
        lambda name, namespace, spec: {
            "apiVersion": API_VERSION,
            "kind": "LoadBalancer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
        dns_labels(50),
        st.sampled_from(["default", "apps", "team-a"]),
        loadbalancer_specs(),
    )


# ------------------------------------------------------------------ ReverseProxy

PATH_REGEXES = ("/v[0-9]+/.*", "/static/.*\\.(css|js)", "/items/[0-9]{1,5}", "/it's/.*",
                "/a b/[^/]+", "/(en|de)(/.*)?")
HEADER_REGEXES = ("v[0-9]+", ".*canary.*", "(a|b)", "[^,]*")
METHODS = rules.METHOD.values
RETRY_ON = rules.RETRY_ON.values


def http_paths() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A/[A-Za-z0-9._~!&()*+,;=:@%/?-]{0,30}\Z", fullmatch=True)


def header_names() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A[A-Za-z0-9!#%&*+.^_|~-]{1,20}\Z", fullmatch=True)


def header_values() -> st.SearchStrategy[str]:
    """Printable text, with the characters haproxy.cfg treats specially."""
    return st.text(st.one_of(st.characters(min_codepoint=32, max_codepoint=126),
                             st.sampled_from("'\"\\$#% ")), max_size=24)


@st.composite
def route_match(draw: st.DrawFn) -> Obj:
    match: Obj = {}
    kind = draw(st.sampled_from(["Exact", "Prefix", "RegularExpression"]))
    path: Obj = {}
    if kind != "Prefix" or draw(st.booleans()):
        path["type"] = kind
    if kind == "RegularExpression":
        path["value"] = draw(st.sampled_from(PATH_REGEXES))
    else:
        _maybe(draw, path, "value", http_paths())
    if path or draw(st.booleans()):
        match["path"] = path
    headers = []
    for name in draw(st.lists(header_names(), max_size=2)):
        header: Obj = {"name": name}
        if draw(st.booleans()):
            header["type"] = "RegularExpression"
            header["value"] = draw(st.sampled_from(HEADER_REGEXES))
        else:
            header["value"] = draw(header_values())
        headers.append(header)
    if headers:
        match["headers"] = headers
    _maybe(draw, match, "method", st.sampled_from(METHODS))
    return match


@st.composite
def header_changes(draw: st.DrawFn) -> Obj:
    out: Obj = {}
    _maybe(draw, out, "set", st.dictionaries(header_names(), header_values(), max_size=3))
    _maybe(draw, out, "add", st.dictionaries(header_names(), header_values(), max_size=3))
    _maybe(draw, out, "remove", st.lists(header_names(), max_size=3, unique=True))
    return out


@st.composite
def route(draw: st.DrawFn, name: str) -> Obj:
    out: Obj = {"name": name}
    _maybe(draw, out, "match", route_match())
    if draw(st.integers(0, 4)) == 0:
        redirect: Obj = {}
        _maybe(draw, redirect, "scheme", st.sampled_from(["http", "https"]))
        _maybe(draw, redirect, "hostname", dns_subdomains())
        _maybe(draw, redirect, "path", http_paths())
        if not redirect:
            redirect["path"] = "/"
        _maybe(draw, redirect, "statusCode", st.sampled_from([301, 302, 303, 307, 308]))
        out["redirect"] = redirect
        return out
    ports = st.one_of(st.integers(PORT_MIN, PORT_MAX), short_labels())
    pairs = draw(st.lists(st.tuples(short_labels(), ports), min_size=1, max_size=3,
                          unique=True))
    route_backends = []
    for service, port in pairs:
        backend: Obj = {"service": service, "port": port}
        _maybe(draw, backend, "weight", st.integers(0, 256))
        route_backends.append(backend)
    if all(b.get("weight", 1) == 0 for b in route_backends):
        route_backends[0]["weight"] = draw(st.integers(1, 256))
    out["backends"] = route_backends
    timeouts_: Obj = {}
    _maybe(draw, timeouts_, "request", durations())
    _maybe(draw, timeouts_, "server", durations())
    if timeouts_:
        out["timeouts"] = timeouts_
    if draw(st.booleans()):
        retries: Obj = {}
        _maybe(draw, retries, "attempts", st.integers(1, 10))
        _maybe(draw, retries, "retryOn", st.lists(st.sampled_from(RETRY_ON), max_size=4,
                                                  unique=True))
        out["retries"] = retries
    _maybe(draw, out, "requestHeaders", header_changes())
    _maybe(draw, out, "responseHeaders", header_changes())
    path_type = ((out.get("match") or {}).get("path") or {}).get("type", "Prefix")
    if path_type == "Prefix" and draw(st.booleans()):
        out["rewrite"] = {"pathPrefix": draw(http_paths())}
    _maybe(draw, out, "allowedSourceRanges", source_ranges())
    return out


@st.composite
def reverseproxy_specs(draw: st.DrawFn) -> Obj:
    """A valid ReverseProxy spec."""
    count = draw(st.integers(1, 3))
    names = draw(st.lists(short_labels(), min_size=count, max_size=count, unique=True))
    ports = draw(st.lists(listener_ports(), min_size=count, max_size=count, unique=True))
    protocols = draw(st.lists(st.sampled_from(["HTTP", "HTTPS"]), min_size=count,
                              max_size=count))
    has_https = "HTTPS" in protocols
    listeners_ = []
    for name, port, protocol in zip(names, ports, protocols, strict=True):
        listener: Obj = {"name": name, "port": port}
        if protocol == "HTTPS" or draw(st.booleans()):
            listener["protocol"] = protocol
        if protocol == "HTTP" and has_https:
            _maybe(draw, listener, "redirectToHTTPS", st.booleans())
        listeners_.append(listener)
    hostnames = draw(st.lists(dns_names(), min_size=1, max_size=3, unique=True))
    hosts = []
    for i, hostname in enumerate(hostnames):
        host: Obj = {"hostname": hostname}
        if has_https and (i == 0 or draw(st.booleans())):
            tls: Obj = {}
            _maybe(draw, tls, "secretName", dns_subdomains())
            host["tls"] = tls
        route_names = draw(st.lists(short_labels(), min_size=1, max_size=3, unique=True))
        host["routes"] = [draw(route(n)) for n in route_names]
        hosts.append(host)
    spec: Obj = {"listeners": listeners_, "hosts": hosts}
    if draw(st.booleans()):
        spec["defaultBackend"] = {"service": draw(short_labels()),
                                  "port": draw(st.one_of(st.integers(PORT_MIN, PORT_MAX),
                                                         short_labels()))}
    if has_https and draw(st.booleans()):
        hsts: Obj = {}
        _maybe(draw, hsts, "maxAge", durations(2 * 365 * DAY_MS))
        sub = draw(st.booleans())
        if sub:
            hsts["includeSubdomains"] = True
            _maybe(draw, hsts, "preload", st.booleans())
        spec["hsts"] = hsts
    _maybe(draw, spec, "upstreamTLS", upstream_tls())
    algorithm = draw(st.sampled_from(ALGORITHMS))
    if algorithm != "roundrobin" or draw(st.booleans()):
        spec["algorithm"] = algorithm
    _maybe(draw, spec, "sessionPersistence", session_persistence(True))
    _maybe(draw, spec, "healthCheck", health_check())
    _maybe(draw, spec, "timeouts", timeouts())
    if algorithm == "first" or draw(st.booleans()):
        spec["limits"] = draw(limits(algorithm))
    _maybe(draw, spec, "proxy", proxy())
    _maybe(draw, spec, "allowedSourceRanges", source_ranges())
    _maybe(draw, spec, "accessLog", access_log())
    return spec


def valid_reverseproxies() -> st.SearchStrategy[Obj]:
    """Whole ReverseProxy objects that the CRD and parse_reverseproxy both accept."""
    return st.builds(
        lambda name, namespace, spec: {
            "apiVersion": API_VERSION,
            "kind": "ReverseProxy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        },
        dns_labels(50),
        st.sampled_from(["default", "apps", "team-a"]),
        reverseproxy_specs(),
    )
