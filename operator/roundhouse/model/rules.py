"""The spec's rules, each stated once: patterns, enums, bounds, defaults, limits and the
cross-field rules with their messages.

Two readers derive from this module and nothing else: the offline parser
(roundhouse.model.loadbalancer / reverseproxy, through values.py and reader.py) and the
CRD schema (roundhouse.model.crd, written to crds/*.yaml by crds/generate.py), so that
`kubectl apply` and `roundhouse render` cannot drift apart. tests/unit/test_crd_schema.py
walks the generated schema and fails on any pattern, enum, bound or CEL rule that is not
one of this module's values.

Patterns are RE2 (what the API server runs) that Python's `re` reads the same way;
`[.]` rather than an escaped dot where the same text is also a CEL string literal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roundhouse.model.pod import RESERVED_PORTS, reserved_port_message

INVALID = "FieldValueInvalid"
FORBIDDEN = "FieldValueForbidden"


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: a CEL expression (the CRD's x-kubernetes-validations entry),
    the message both the API server and the parser print, and the field it names
    (relative to the node the rule sits on)."""

    expr: str
    message: str
    field_path: str | None = None
    reason: str = INVALID

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.expr, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Int:
    """An integer field: its bounds and its default (None: no bound, no default)."""

    minimum: int | None = None
    maximum: int | None = None
    default: int | None = None

    def contains(self, value: int) -> bool:
        return (self.minimum is None or value >= self.minimum) and \
            (self.maximum is None or value <= self.maximum)


@dataclass(frozen=True)
class Enum:
    """A string field with a fixed set of values and its default (None: none)."""

    values: tuple[str, ...]
    default: str | None = None


@dataclass(frozen=True)
class Items:
    """A list's (or map's) size bounds."""

    maximum: int
    minimum: int | None = None


# ------------------------------------------------------------------------- patterns

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A DNS subdomain (no wildcard): Secret names, Host headers, SNI, redirect hosts.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
# A DNS name that may start with '*.' (certificate names, virtual hosts).
DNS_NAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
DURATION = r"^[0-9]{1,7}(ms|s|m|h)$"
DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
COOKIE_NAME = r"^[A-Za-z0-9_-]+$"
# An HTTP path as HAProxy reads it unquoted in haproxy.cfg: RFC 3986 path and query
# characters without the ones HAProxy's config parser treats specially (#, quotes, \, $).
HTTP_PATH = r"^/[A-Za-z0-9._~!&()*+,;=:@%/?-]*$"
# An RFC 7230 header field name (token).
HEADER_NAME = r"^[A-Za-z0-9!#%&*+.^_|~-]+$"
# A header value: no control characters (they would end the line in haproxy.cfg).
HEADER_VALUE = r"^[^\x00-\x1f\x7f]*$"

# Kubernetes' own expressions (k8s.io/apimachinery/pkg/util/validation), unanchored as
# its messages quote them.
K8S_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
K8S_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
K8S_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# The same, as the CRD states them for a Pod's nodeSelector and tolerations.
LABEL_VALUE = f"^{K8S_LABEL_VALUE}$"
# A qualified name: an optional DNS subdomain prefix and '/', then a name of at most 63.
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# A taint key: a qualified name, or empty (with operator Exists: every taint).
TAINT_KEY = "^(" + QUALIFIED_NAME[1:-1] + ")?$"
PREFIX_AT_MOST_253 = r"^[^/]{0,253}(/[^/]*)?$"
LABEL_KEY_TEXT = ("an optional DNS subdomain prefix of at most 253 characters and '/', then "
                  "a name of at most 63 alphanumeric characters, '-', '_' or '.', starting "
                  "and ending with an alphanumeric character (e.g. 'example.com/MyName')")
# A resource.Quantity that is not negative (the API server refuses negative requests).
QUANTITY = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"

# ---------------------------------------------------------------------- string sizes

NAME_LENGTH = 63  # a DNS label: listener, route, Service and port names
SUBDOMAIN_LENGTH = 253  # a DNS subdomain: Secret names, host names, SNI
PATH_LENGTH = 1024
PATH_MATCH_LENGTH = Int(1, PATH_LENGTH)  # a route's match.path.value
HEADER_NAME_LENGTH = 256
HEADER_VALUE_LENGTH = 4096
COOKIE_NAME_LENGTH = Int(1, 64)
DURATION_LENGTH = 9  # 7 digits and "ms"
CIDR_LENGTH = 49  # an IPv6 address with an IPv4 tail, '/', 3 digits
TAINT_KEY_LENGTH = 317  # 253 + '/' + 63
LABEL_VALUE_LENGTH = 63
QUANTITY_LENGTH = 64
API_VERSION_LENGTH = 253
KIND_LENGTH = 63
# The status the operator writes (metav1.Condition's own limits where it has them).
CONDITION_TYPE_LENGTH = 316
CONDITION_REASON_LENGTH = 1024
CONDITION_MESSAGE_LENGTH = 32768
TIMESTAMP_LENGTH = 64
BACKEND_SUMMARY_LENGTH = 64
ADDRESS_LENGTH = 1024

# --------------------------------------------------------------------------- enums

PROTOCOL = Enum(("TCP", "HTTP", "HTTPS", "TLSPassthrough"), "HTTP")
HTTP_PROTOCOLS = ("HTTP", "HTTPS")
RP_PROTOCOL = Enum(HTTP_PROTOCOLS, "HTTP")
ALGORITHM = Enum(("roundrobin", "leastconn", "source", "random", "first"), "roundrobin")
PERSISTENCE_TYPE = Enum(("Cookie", "SourceIP"), "Cookie")
DEFAULT_COOKIE_NAME = "RH_SESSION"  # not a CRD default: told apart from an explicit value
HEALTH_CHECK_TYPE = Enum(("TCP", "HTTP"), "TCP")
SERVICE_TYPE = Enum(("ClusterIP", "NodePort", "LoadBalancer"), "LoadBalancer")
TLS_VERSION = Enum(("1.2", "1.3"), "1.2")
PATH_TYPE = Enum(("Exact", "Prefix", "RegularExpression"), "Prefix")
DEFAULT_PATH = "/"
HEADER_MATCH_TYPE = Enum(("Exact", "RegularExpression"), "Exact")
METHOD = Enum(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
               "PATCH"))
RETRY_ON = Enum(("connect-failure", "empty-response", "junk-response", "response-timeout",
                 "0rtt-rejected", "all-retryable-errors", "404", "408", "425", "500", "501",
                 "502", "503", "504"))
DEFAULT_RETRY_ON = "connect-failure"  # absent retryOn
REDIRECT_SCHEME = Enum(("http", "https"))
REDIRECT_CODES = (301, 302, 303, 307, 308)
REDIRECT_CODE = Int(default=302)
TOLERATION_OPERATOR = Enum(("Exists", "Equal", ""))
TAINT_EFFECT = Enum(("", "NoSchedule", "PreferNoSchedule", "NoExecute"))
# The container resources a proxy may ask for: the others (hugepages, extended
# resources such as GPUs, ephemeral-storage: its volumes have size limits) mean nothing
# to HAProxy.
RESOURCE_NAMES = ("cpu", "memory")
CONDITION_STATUS = Enum(("True", "False", "Unknown"))
# Access logs: every request (All), one in sampleOneIn plus every 5xx (Sampled), none
# (Disabled). Not On/Off: YAML 1.1 (kubectl's) reads those unquoted as booleans.
ACCESS_LOG_MODE = Enum(("All", "Sampled", "Disabled"), "All")

# ---------------------------------------------------------------- boolean defaults

REDIRECT_TO_HTTPS = False
UPSTREAM_VERIFY = True
HSTS_INCLUDE_SUBDOMAINS = False
HSTS_PRELOAD = False

# ------------------------------------------------------------------ integer bounds

UNBOUNDED = Int()  # tolerationSeconds, observedGeneration
PORT = Int(1, 65535)
WEIGHT = Int(0, 256, 1)
EXPECT_STATUS = Int(100, 599)
DEFAULT_EXPECT_STATUS = 200  # not a CRD default: only allowed with type HTTP
DEFAULT_CHECK_PATH = "/"  # not a CRD default either
RISE = Int(1, 100, 2)
FALL = Int(1, 100, 3)
MAX_CONNECTIONS = Int(1, 1_000_000, 10_000)
MAX_CONNECTIONS_PER_SERVER = Int(0, 100_000, 0)
MAX_CONNECTIONS_PER_CLIENT = Int(0, 100_000, 0)
RATE_REQUESTS = Int(1, 1_000_000)
REPLICAS = Int(1, 50, 2)
RETRY_ATTEMPTS = Int(1, 10, 3)
ACCESS_LOG_SAMPLE = Int(2, 1_000_000)  # accessLog.sampleOneIn
DEFAULT_ACCESS_LOG_SAMPLE = 100  # not a CRD default: only allowed with mode Sampled
QUANTITY_MINIMUM = 0
STATUS_COUNT = Int(0)  # status.backends.ready/total
GENERATION = Int(0, 2**63 - 1, 0)  # metadata.generation, as the parser reads it

# ------------------------------------------------------------------ list and map sizes

LISTENERS = Items(16, 1)
LB_BACKENDS = Items(32, 1)
ROUTE_BACKENDS = Items(16, 1)
HOSTS = Items(32, 1)
ROUTES = Items(64, 1)
HEADER_MATCHES = Items(16)
HEADER_CHANGES = Items(16)  # set, add (properties) and remove (items)
RETRY_ON_ITEMS = Items(len(RETRY_ON.values))
DNS_NAMES = Items(32)
SOURCE_RANGES = Items(100)
NODE_SELECTOR = Items(32)
TOLERATIONS = Items(32)
CONDITIONS = Items(32)

# ----------------------------------------------------------------------- durations

DAY_HOURS = 24
HOUR_MS = DURATION_UNITS_MS["h"]


@dataclass(frozen=True)
class Duration:
    """A duration field ('500ms', '5s', '2m', '1h'): at least min_ms (by default: more
    than 0), at most max_hours."""

    name: str  # the field's key, as the message names it
    default: str | None = None
    max_hours: int = DAY_HOURS
    limit_text: str | None = None  # how the message shows the limit; default "<h>h"
    min_ms: int = 1  # the shortest accepted; 1 is "more than 0"

    def __post_init__(self) -> None:
        # rule() lets any number of hours pass the lower bound.
        assert 1 <= self.min_ms <= HOUR_MS, f"{self.name}: min_ms beyond an hour"

    @property
    def default_ms(self) -> int:
        """The default in milliseconds; 0 when there is none."""
        if self.default is None:
            return 0
        number = self.default.rstrip("hms")
        return int(number) * DURATION_UNITS_MS[self.default[len(number):]]

    @property
    def max_ms(self) -> int:
        return self.max_hours * HOUR_MS

    @property
    def limit(self) -> str:
        return self.limit_text or f"{self.max_hours}h"

    @property
    def min_text(self) -> str:
        """The lower bound as a duration literal ('1s')."""
        unit = next(u for u in ("h", "m", "s", "ms") if self.min_ms % DURATION_UNITS_MS[u] == 0)
        return f"{self.min_ms // DURATION_UNITS_MS[unit]}{unit}"

    @property
    def minimum(self) -> str:
        """The lower bound in words: 'more than 0', or 'at least 1s'."""
        return "more than 0" if self.min_ms <= 1 else f"at least {self.min_text}"

    @property
    def bounds(self) -> str:
        return f"{self.minimum} and at most {self.limit}"

    @property
    def message(self) -> str:
        return f"{self.name} must be {self.bounds}"

    def rule(self) -> Rule:
        """The range check. It leaves a value that does not match the pattern to the
        pattern's own error, and it reads hours with a regular expression, not with
        duration(), so that '9999999h' (beyond Go's time.Duration) is a clean rejection,
        not an evaluation error. A lower bound above 0 is at most an hour, so any
        number of hours passes it."""
        low = "" if self.min_ms <= 1 else (
            f" && (self.endsWith('h') || duration(self) >= duration('{self.min_text}'))")
        return Rule(
            f"!self.matches('{DURATION}') || "
            "(!self.matches('^0+(ms|s|m|h)$') && (self.endsWith('h') ? "
            f"self.matches('^0*{le_regex(self.max_hours)}h$') : "
            f"duration(self) <= duration('{self.max_hours}h')){low})",
            self.message)


def le_regex(n: int) -> str:
    """A regular expression (no anchors) for the decimal numbers 0..n, no leading zeros."""
    digits = str(n)
    if len(digits) == 1:
        return f"[0-{n}]"
    alts = ["[0-9]"] + ["[1-9][0-9]" if k == 2 else f"[1-9][0-9]{{{k - 1}}}"
                        for k in range(2, len(digits))]
    for i, ch in enumerate(digits):
        low, d = (1 if i == 0 else 0), int(ch)
        if d > low:
            cls = f"[{low}-{d - 1}]" if d - 1 > low else str(low)
            rest = len(digits) - i - 1
            tail = "" if rest == 0 else "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
            alts.append(digits[:i] + cls + tail)
    alts.append(digits)
    return "(" + "|".join(alts) + ")"


TIMEOUT_CONNECT = Duration("connect", "5s")
TIMEOUT_CLIENT = Duration("client", "50s")
TIMEOUT_SERVER = Duration("server", "50s")
TIMEOUT_QUEUE = Duration("queue", "30s")
TIMEOUT_TUNNEL = Duration("tunnel", "1h")
CHECK_INTERVAL = Duration("interval", "2s")
CHECK_TIMEOUT = Duration("timeout", "1s")
PERSISTENCE_MAX_AGE = Duration("maxAge", "1h", 30 * DAY_HOURS, "720h (30 days)")
RATE_PERIOD = Duration("period", "1s", 1)
ROUTE_REQUEST_TIMEOUT = Duration("request")
ROUTE_SERVER_TIMEOUT = Duration("server")
HSTS_MAX_AGE = Duration("maxAge", "8760h", 2 * 365 * DAY_HOURS, "17520h (2 years)")
# The whole request head and the first REQUEST_BODY_BYTES of its body (the whole body
# when shorter) must arrive within it; at least a second, so that a slow network is not
# taken for an attack, at most an hour.
TIMEOUT_REQUEST = Duration("request", "10s", 1, min_ms=1000)
REQUEST_BODY_BYTES = 8192
# How long old HAProxy workers keep serving their connections after a reload
# (hard-stop-after). At least a second: HAProxy reads 0 as "never stop".
TIMEOUT_DRAIN = Duration("drain", "10m", DAY_HOURS, min_ms=1000)
DURATIONS = (TIMEOUT_CONNECT, TIMEOUT_CLIENT, TIMEOUT_SERVER, TIMEOUT_QUEUE, TIMEOUT_TUNNEL,
             TIMEOUT_REQUEST, TIMEOUT_DRAIN,
             CHECK_INTERVAL, CHECK_TIMEOUT, PERSISTENCE_MAX_AGE, RATE_PERIOD,
             ROUTE_REQUEST_TIMEOUT, ROUTE_SERVER_TIMEOUT, HSTS_MAX_AGE)

# ------------------------------------------------------------------- other limits

# Every certificate of an HTTPS listener goes on its one `bind` line (crt <file> each),
# and an HAProxy config line holds at most 64 words: `bind :443 ssl alpn h2,http/1.1`
# plus 2 words a certificate leaves room for 29.
MAX_CERTIFICATES = 29
# Children are named <name>-<suffix>: the name leaves room for the suffix.
MAX_NAME_LENGTH = 50
# Route fields that only a request sent to a backend uses (not a redirect).
BACKEND_ONLY_ROUTE_FIELDS = ("timeouts", "retries", "requestHeaders", "responseHeaders")
# Health-check fields that only an HTTP check uses.
HTTP_CHECK_FIELDS = ("path", "host", "expectStatus")

# ------------------------------------------------------------------ cross-field rules

# On a listener (LoadBalancer and ReverseProxy).
REDIRECT_ONLY_ON_HTTP = Rule("!self.redirectToHTTPS || self.protocol == 'HTTP'",
                             "redirectToHTTPS is only allowed on an HTTP listener",
                             ".redirectToHTTPS", FORBIDDEN)
TLS_ONLY_ON_HTTPS = Rule("!has(self.tls) || self.protocol == 'HTTPS'",
                         "tls is only allowed on an HTTPS listener", ".tls", FORBIDDEN)
RESERVED_PORT_RULES = tuple(Rule(f"self.port != {port}", reserved_port_message(port), ".port")
                            for port in RESERVED_PORTS)

# On spec, about the listeners (both kinds).
LISTENER_PORTS_UNIQUE = Rule(
    "self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",
    "a listener port is used twice: listener ports must be unique", ".listeners")
REDIRECT_NEEDS_HTTPS = Rule(
    "!self.listeners.exists(l, l.redirectToHTTPS) || "
    "self.listeners.exists(l, l.protocol == 'HTTPS')",
    "redirectToHTTPS needs an HTTPS listener to redirect to", ".listeners")

# Backends: on a list of backends, and on spec for the LoadBalancer's.
BACKEND_WEIGHT_MESSAGE = "at least one backend needs a weight above 0"
BACKEND_WEIGHT = Rule("self.exists(b, b.weight > 0)", BACKEND_WEIGHT_MESSAGE)
SPEC_BACKEND_WEIGHT = Rule("self.backends.exists(b, b.weight > 0)", BACKEND_WEIGHT_MESSAGE,
                           ".backends")

# Session persistence, health checks, limits.
COOKIE_NAME_ONLY_FOR_COOKIE = Rule("!has(self.cookieName) || self.type == 'Cookie'",
                                   "cookieName is only allowed when type is Cookie",
                                   ".cookieName", FORBIDDEN)

ACCESS_LOG_SAMPLE_ONLY_SAMPLED = Rule("!has(self.sampleOneIn) || self.mode == 'Sampled'",
                                      "sampleOneIn is only allowed when mode is Sampled",
                                      ".sampleOneIn", FORBIDDEN)


def http_check_only(key: str) -> Rule:
    """A health-check field an HTTP check uses, refused with type TCP."""
    return Rule(f"!has(self.{key}) || self.type == 'HTTP'",
                f"{key} is only allowed when type is HTTP", f".{key}", FORBIDDEN)


HTTP_CHECK_ONLY = tuple(http_check_only(key) for key in HTTP_CHECK_FIELDS)
PER_SERVER_AT_MOST_MAX = Rule("self.maxConnectionsPerServer <= self.maxConnections",
                              "maxConnectionsPerServer must not exceed "
                              "spec.limits.maxConnections", ".maxConnectionsPerServer")
PER_CLIENT_AT_MOST_MAX = Rule("self.maxConnectionsPerClient <= self.maxConnections",
                              "maxConnectionsPerClient must not exceed "
                              "spec.limits.maxConnections", ".maxConnectionsPerClient")
ALGORITHM_FIRST = Rule(
    "self.algorithm != 'first' || self.limits.maxConnectionsPerServer > 0",
    "limits.maxConnectionsPerServer must be set above 0 when algorithm is 'first' "
    "(it fills each server up to this limit)", ".limits.maxConnectionsPerServer")

# LoadBalancer spec.
COOKIE_NEEDS_HTTP = Rule(
    "!has(self.sessionPersistence) || self.sessionPersistence.type != 'Cookie' "
    "|| self.listeners.exists(l, l.protocol == 'HTTP' || l.protocol == 'HTTPS')",
    "Cookie persistence needs an HTTP or HTTPS listener; use SourceIP for TCP",
    ".sessionPersistence.type")
RATE_NEEDS_HTTP = Rule(
    "!has(self.limits.requestRatePerClient) || "
    "self.listeners.exists(l, l.protocol == 'HTTP' || l.protocol == 'HTTPS')",
    "requestRatePerClient needs an HTTP or HTTPS listener; use maxConnectionsPerClient "
    "for TCP", ".limits.requestRatePerClient")
UPSTREAM_TLS_NOT_PASSTHROUGH = Rule(
    "!has(self.upstreamTLS) || !self.listeners.exists(l, l.protocol == 'TLSPassthrough')",
    "cannot be used with a TLSPassthrough listener, whose stream is already the client's "
    "TLS", ".upstreamTLS")

# ReverseProxy spec.
HOST_TLS_NEEDS_HTTPS = Rule(
    "!self.hosts.exists(h, has(h.tls)) || self.listeners.exists(l, l.protocol == 'HTTPS')",
    "a host with tls needs an HTTPS listener", ".hosts")
HTTPS_NEEDS_HOST_TLS = Rule(
    "!self.listeners.exists(l, l.protocol == 'HTTPS') || self.hosts.exists(h, has(h.tls))",
    "an HTTPS listener needs at least one host with tls", ".listeners")
HSTS_NEEDS_HTTPS = Rule(
    "!has(self.hsts) || self.listeners.exists(l, l.protocol == 'HTTPS')",
    "hsts needs an HTTPS listener", ".hsts")
PRELOAD_NEEDS_SUBDOMAINS = Rule("!self.preload || self.includeSubdomains",
                                "preload needs includeSubdomains", ".preload")
# The number of certificates, counted as a set: a host counts when no host with a
# smaller hostname (hostnames are unique) names the same Secret.
CERTIFICATES = Rule(
    "self.hosts.filter(h, has(h.tls) && has(h.tls.secretName) && "
    "!self.hosts.exists(o, has(o.tls) && has(o.tls.secretName) && "
    "o.tls.secretName == h.tls.secretName && o.hostname < h.hostname)).size()"
    " + (self.hosts.exists(h, has(h.tls) && !has(h.tls.secretName)) ? 1 : 0)"
    f" <= {MAX_CERTIFICATES}",
    f"the hosts' tls need more than {MAX_CERTIFICATES} certificates (each distinct "
    "secretName, plus one issued for the hosts without): an HTTPS listener serves at most "
    f"{MAX_CERTIFICATES}", ".hosts")

# A ReverseProxy route.
ROUTE_BACKENDS_OR_REDIRECT = Rule("has(self.backends) != has(self.redirect)",
                                  "a route needs exactly one of backends or redirect")
REWRITE_NEEDS_BACKENDS = Rule("!has(self.rewrite) || has(self.backends)",
                              "rewrite is only allowed on a route with backends", ".rewrite",
                              FORBIDDEN)


def backend_only(field: str) -> Rule:
    """A redirect route answers by itself: what only a request to a backend uses would
    be accepted and silently do nothing."""
    return Rule(f"!has(self.{field}) || has(self.backends)",
                f"{field} is only allowed on a route with backends", f".{field}", FORBIDDEN)


BACKEND_ONLY = tuple(backend_only(field) for field in BACKEND_ONLY_ROUTE_FIELDS)
REWRITE_NEEDS_PREFIX = Rule(
    "!has(self.rewrite) || !has(self.rewrite.pathPrefix) || self.match.path.type == 'Prefix'",
    "rewrite.pathPrefix needs match.path.type Prefix", ".rewrite", FORBIDDEN)
REDIRECT_NEEDS_TARGET = Rule("has(self.scheme) || has(self.hostname) || has(self.path)",
                             "redirect needs at least one of scheme, hostname or path")
PATH_VALUE = Rule(f"self.type == 'RegularExpression' || self.value.matches('{HTTP_PATH}')",
                  "path value must start with '/' and hold only URL path characters unless "
                  "type is RegularExpression", ".value")
HEADER_MAP_KEYS = Rule(f"self.all(k, k.matches('{HEADER_NAME}'))",
                       "header names must be HTTP tokens (letters, digits and !#%&*+.^_|~-)")

# Values checked by a function of the Kubernetes CEL library.
CIDR = Rule("isCIDR(self)", "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32")

# Kubernetes types the proxy Pod gets (core/validation, in its words).
NODE_SELECTOR_KEYS = Rule(f"self.all(k, k.matches('{QUALIFIED_NAME}') && "
                          f"k.matches('{PREFIX_AT_MOST_253}'))",
                          f"a nodeSelector key is {LABEL_KEY_TEXT}")
TAINT_KEY_PREFIX = Rule(f"self.matches('{PREFIX_AT_MOST_253}')",
                        f"a taint key is {LABEL_KEY_TEXT}")
EMPTY_KEY_MESSAGE = ("operator must be Exists when `key` is empty, which means \"match all "
                     "values and all keys\"")
SECONDS_MESSAGE = "effect must be 'NoExecute' when `tolerationSeconds` is set"
EXISTS_VALUE_MESSAGE = "value must be empty when `operator` is 'Exists'"
TOLERATION_EMPTY_KEY = Rule("(has(self.key) && self.key != '') || "
                            "(has(self.operator) && self.operator == 'Exists')",
                            EMPTY_KEY_MESSAGE, ".operator")
TOLERATION_SECONDS = Rule("!has(self.tolerationSeconds) || "
                          "(has(self.effect) && self.effect == 'NoExecute')",
                          SECONDS_MESSAGE, ".effect")
TOLERATION_EXISTS_VALUE = Rule("!has(self.operator) || self.operator != 'Exists' || "
                               "!has(self.value) || self.value == ''",
                               EXISTS_VALUE_MESSAGE, ".operator")


def request_at_most_limit_message(name: str) -> str:
    return f"must be less than or equal to {name} limit"


def request_at_most_limit(name: str) -> Rule:
    """requests.<name> <= limits.<name>, compared as quantities (CEL's quantity library),
    as the API server checks a container's resources."""
    req, lim = f"self.requests.{name}", f"self.limits.{name}"
    return Rule(
        f"!has(self.requests) || !has(self.limits) || !has({req}) || !has({lim}) || "
        f"!isQuantity(string({req})) || "
        f"!isQuantity(string({lim})) || "
        f"quantity(string({req})).compareTo(quantity(string({lim}))) <= 0",
        request_at_most_limit_message(name), f".requests.{name}")


REQUESTS_AT_MOST_LIMITS = tuple(request_at_most_limit(name) for name in RESOURCE_NAMES)


def name_message(suffix: str) -> str:
    """What metadata.name must be (the parser's message; the CRD's names the field)."""
    return (f"must be a DNS label of at most {MAX_NAME_LENGTH} characters "
            f"(children are named <name>-{suffix})")


def name_rule(suffix: str) -> Rule:
    """On the root: metadata.name leaves room for the children's suffix."""
    return Rule(f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && "
                "!self.metadata.name.contains('.')", f"metadata.name {name_message(suffix)}",
                ".metadata.name")


LB_SUFFIX = "lb"
RP_SUFFIX = "rp"
NAME_RULES = (name_rule(LB_SUFFIX), name_rule(RP_SUFFIX))


def all_rules() -> tuple[Rule, ...]:
    """Every rule this module states, for the test that the CRD holds no other."""
    rules = [value for value in globals().values() if isinstance(value, Rule)]
    for value in list(globals().values()):
        if isinstance(value, tuple) and value and all(isinstance(v, Rule) for v in value):
            rules.extend(value)
    rules.extend(d.rule() for d in DURATIONS)
    return tuple(rules)
