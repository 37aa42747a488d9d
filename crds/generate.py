"""Generate the Roundhouse CRDs (crds/loadbalancers.yaml, crds/reverseproxies.yaml).

The two kinds share most of their schema (algorithm, sessionPersistence, healthCheck,
timeouts, limits, proxy, status, printer columns); writing the YAML from one source keeps
them identical and keeps every duration rule, pattern and bound in one place.

The LoadBalancer schema mirrors operator/roundhouse/model/loadbalancer.py: same field
names, defaults, ranges, enums and patterns, and one CEL rule for each rule in
`_cross_field_rules`, in the same words, so the API server and the offline parser agree.
tests/unit/test_crd_schema.py checks both that agreement and that the YAML files are
exactly what this script writes.

Usage:  python crds/generate.py          # rewrite the YAML files
        python crds/generate.py --check  # exit 1 when a YAML file is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "roundhouse.dev"
VERSION = "v1alpha1"
HERE = Path(__file__).resolve().parent

# The same regular expressions as roundhouse.model.values, in RE2 syntax (which the
# API server uses) that Python's re reads the same way.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A DNS subdomain (no wildcard): Secret names, Host headers, SNI, redirect hosts.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
# A DNS name that may start with '*.' (certificate names, virtual hosts).
DNS_NAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
DURATION = r"^[0-9]{1,7}(ms|s|m|h)$"
COOKIE_NAME = r"^[A-Za-z0-9_-]+$"
# An HTTP path as HAProxy reads it unquoted in haproxy.cfg: RFC 3986 path and query
# characters without the ones HAProxy's config parser treats specially (#, quotes, \, $).
HTTP_PATH = r"^/[A-Za-z0-9._~!&()*+,;=:@%/?-]*$"
# An RFC 7230 header field name (token).
HEADER_NAME = r"^[A-Za-z0-9!#%&*+.^_|~-]+$"
# A header value: no control characters (they would end the line in haproxy.cfg).
HEADER_VALUE = r"^[^\x00-\x1f\x7f]*$"
DAY_HOURS = 24

PROTOCOLS = ["TCP", "HTTP", "HTTPS", "TLSPassthrough"]
ALGORITHMS = ["roundrobin", "leastconn", "source", "random", "first"]
PERSISTENCE_TYPES = ["Cookie", "SourceIP"]
HEALTH_CHECK_TYPES = ["TCP", "HTTP"]
SERVICE_TYPES = ["ClusterIP", "NodePort", "LoadBalancer"]
TLS_VERSIONS = ["1.2", "1.3"]

Schema = dict[str, Any]


# ---------------------------------------------------------------------------- builders


# Route fields that only a request sent to a backend uses (not a redirect).
BACKEND_ONLY_ROUTE_FIELDS = ("timeouts", "retries", "requestHeaders", "responseHeaders")


def rule(expr: str, message: str, *, field_path: str | None = None,
         reason: str = "FieldValueInvalid") -> Schema:
    """One x-kubernetes-validations entry."""
    out: Schema = {"rule": expr, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    out["reason"] = reason
    return out



# Ports the proxy Pod itself uses (roundhouse.model.pod.RESERVED_PORTS, same words):
# a listener there would fail to bind, or answer the kubelet's probes.
RESERVED_PORTS = {
    8404: "the proxy's status port (health probes and /metrics)",
    9101: "the agent's metrics port",
}


def reserved_port_rules() -> list[Schema]:
    """One rule per port the proxy Pod reserves, on a listener, naming the port."""
    return [rule(f"self.port != {port}",
                 f"port {port} is reserved by the proxy Pod: {what}", field_path=".port")
            for port, what in RESERVED_PORTS.items()]


def listener_rules() -> list[Schema]:
    """Cross-listener rules shared by LoadBalancer and ReverseProxy."""
    return [
        rule("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",
             "a listener port is used twice: listener ports must be unique",
             field_path=".listeners"),
        rule("!self.listeners.exists(l, l.redirectToHTTPS) || "
             "self.listeners.exists(l, l.protocol == 'HTTPS')",
             "redirectToHTTPS needs an HTTPS listener to redirect to",
             field_path=".listeners"),
    ]

def defaulted(value: Any, schema: Schema) -> Any:
    """The API server's structural defaulting of value (a copy) by schema."""
    if isinstance(value, dict):
        out = dict(value)
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
        for key, sub in props.items():
            if key in out:
                out[key] = defaulted(out[key], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [defaulted(v, schema["items"]) for v in value]
    return value


def _node(type_: str | None, description: str, extra: Schema, rules: list[Schema] | None,
          default: Any) -> Schema:
    out: Schema = {}
    if type_ is not None:
        out["type"] = type_
    out["description"] = description
    if default is not None:
        out["default"] = default
    out.update({k: v for k, v in extra.items() if v is not None})
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def string(description: str, *, max_length: int | None = None, pattern: str | None = None,
           min_length: int | None = None, enum: list[str] | None = None,
           default: str | None = None, fmt: str | None = None,
           rules: list[Schema] | None = None) -> Schema:
    if enum is None and max_length is None:
        raise ValueError(f"unbounded string: {description}")
    return _node("string", description, {
        "format": fmt, "enum": enum, "minLength": min_length, "maxLength": max_length,
        "pattern": pattern}, rules, default)


def integer(description: str, *, minimum: int | None = None, maximum: int | None = None,
            default: int | None = None, enum: list[int] | None = None,
            rules: list[Schema] | None = None) -> Schema:
    # No `format: int32/int64`: with a format, kube-openapi reports a boolean or an
    # object given for an integer as "must be of type int32: \"\"" instead of naming
    # the type, and a float as two errors.
    return _node("integer", description, {
        "enum": enum, "minimum": minimum, "maximum": maximum}, rules, default)


def boolean(description: str, *, default: bool | None = None) -> Schema:
    return _node("boolean", description, {}, None, default)


def obj(description: str, properties: dict[str, Schema], *, required: list[str] | None = None,
        rules: list[Schema] | None = None, default: Schema | None = None) -> Schema:
    """An object. A default is written fully defaulted: the API server checks a default
    against the node's rules as written, without applying the nested defaults first."""
    node = _node("object", description, {"required": required, "properties": properties},
                 rules, None)
    if default is None:
        return node
    return _node("object", description, {"required": required, "properties": properties},
                 rules, defaulted(default, node))


def string_map(description: str, *, max_properties: int, value: Schema,
               rules: list[Schema] | None = None) -> Schema:
    return _node("object", description, {"maxProperties": max_properties,
                                         "additionalProperties": value}, rules, None)


def array(description: str, items: Schema, *, max_items: int, min_items: int | None = None,
          list_type: str | None = None, map_keys: list[str] | None = None,
          rules: list[Schema] | None = None, default: list[Any] | None = None) -> Schema:
    extra: Schema = {"minItems": min_items, "maxItems": max_items}
    if list_type:
        extra["x-kubernetes-list-type"] = list_type
    if map_keys:
        extra["x-kubernetes-list-map-keys"] = map_keys
    extra["items"] = items
    return _node("array", description, extra, rules, default)


def int_or_string(description: str, *, minimum: int | None = None,
                  maximum: int | None = None, pattern: str | None = None,
                  max_length: int | None = None) -> Schema:
    """x-kubernetes-int-or-string: the API server applies minimum/maximum to an integer
    and maxLength/pattern to a string, as JSON Schema does."""
    out: Schema = {"description": description, "x-kubernetes-int-or-string": True}
    out.update({k: v for k, v in {"minimum": minimum, "maximum": maximum,
                                  "maxLength": max_length, "pattern": pattern}.items()
                if v is not None})
    return out


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


def duration(name: str, description: str, *, default: str | None = None,
             max_hours: int = DAY_HOURS, limit_text: str | None = None) -> Schema:
    """A duration string ('500ms', '5s', '2m', '1h') that must be > 0 and <= max_hours.

    The CEL rule checks the range. It leaves a value that does not match the pattern to
    the pattern's own error, and it reads hours with a regular expression, not with
    duration(), so that '9999999h' (beyond Go's time.Duration) is a clean rejection,
    not an evaluation error.
    """
    limit = limit_text or f"{max_hours}h"
    check = (
        f"!self.matches('{DURATION}') || "
        "(!self.matches('^0+(ms|s|m|h)$') && (self.endsWith('h') ? "
        f"self.matches('^0*{le_regex(max_hours)}h$') : "
        f"duration(self) <= duration('{max_hours}h')))"
    )
    text = f"{description} A number and a unit (ms, s, m or h), e.g. 500ms, 5s, 2m, 1h; " \
           f"more than 0 and at most {limit}."
    if default is not None:
        text += f" Defaults to {default}."
    return string(text, max_length=9, pattern=DURATION, default=default, rules=[
        rule(check, f"{name} must be more than 0 and at most {limit}")])


# -------------------------------------------------------------------- shared blocks


def service_name(description: str) -> Schema:
    return string(description + " A Service name (a DNS label) in the same namespace.",
                  max_length=63, pattern=DNS_LABEL)


def service_port(description: str) -> Schema:
    return int_or_string(
        description + " A Service port number (1-65535) or a Service port name "
        "(a lowercase DNS label).",
        minimum=1, maximum=65535, max_length=63, pattern=DNS_LABEL)


def backend_item(what: str) -> Schema:
    return obj(
        f"One Service port that receives {what} traffic.",
        {
            "service": service_name("The Service to send traffic to."),
            "port": service_port("The Service port."),
            "weight": integer(
                "The share of traffic relative to the other backends, 0-256 (HAProxy "
                "server weight); 0 takes the backend out of rotation. Defaults to 1.",
                minimum=0, maximum=256, default=1),
        },
        required=["service", "port"],
    )


BACKEND_WEIGHT = "self.exists(b, b.weight > 0)"


def algorithm() -> Schema:
    return string(
        "How HAProxy picks a backend server: roundrobin (weighted, in turn), leastconn "
        "(fewest connections), source (hash of the client address), random (weighted, "
        "power of two choices) or first (fill each server up to "
        "limits.maxConnectionsPerServer before using the next). Defaults to roundrobin.",
        enum=ALGORITHMS, default="roundrobin")


def session_persistence() -> Schema:
    return obj(
        "Keeps a client on the same backend server. Absent: no persistence.",
        {
            "type": string(
                "Cookie (HAProxy inserts a cookie; needs an HTTP or HTTPS listener) or "
                "SourceIP (a stick table keyed on the client address). Defaults to Cookie.",
                enum=PERSISTENCE_TYPES, default="Cookie"),
            "cookieName": string(
                "The cookie's name, 1-64 characters of A-Z, a-z, 0-9, '_' or '-'. Only "
                "with type Cookie; when absent the operator uses RH_SESSION (it is not "
                "defaulted here, so that it can be told apart from an explicit value).",
                min_length=1, max_length=64, pattern=COOKIE_NAME),
            "maxAge": duration(
                "maxAge", "How long a client stays pinned (cookie maxlife or stick-table "
                "expiry).", default="1h", max_hours=30 * DAY_HOURS,
                limit_text="720h (30 days)"),
        },
        rules=[rule("!has(self.cookieName) || self.type == 'Cookie'",
                    "cookieName is only allowed when type is Cookie",
                    field_path=".cookieName", reason="FieldValueForbidden")],
    )


def health_check() -> Schema:
    only_http = [
        rule(f"!has(self.{key}) || self.type == 'HTTP'",
             f"{key} is only allowed when type is HTTP",
             field_path=f".{key}", reason="FieldValueForbidden")
        for key in ("path", "host", "expectStatus")
    ]
    return obj(
        "Active health checks of the backend servers. Absent: no active checks (servers "
        "follow their endpoints' readiness only).",
        {
            "type": string("TCP (connect) or HTTP (a GET request). Defaults to TCP.",
                           enum=HEALTH_CHECK_TYPES, default="TCP"),
            "path": string(
                "The HTTP path to GET; starts with '/', no spaces. Only with type HTTP; "
                "when absent the operator uses '/'.",
                max_length=1024, pattern=HTTP_PATH),
            "host": string(
                "The Host header to send, a DNS name. Only with type HTTP; when absent "
                "HAProxy sends none.", max_length=253, pattern=DNS_SUBDOMAIN),
            "expectStatus": integer(
                "The HTTP status code a healthy server answers, 100-599. Only with type "
                "HTTP; when absent the operator expects 200.", minimum=100, maximum=599),
            "interval": duration("interval", "Time between two checks of a server.",
                                 default="2s"),
            "timeout": duration("timeout", "How long a check may take.", default="1s"),
            "rise": integer("Consecutive successful checks that mark a server up, 1-100. "
                            "Defaults to 2.", minimum=1, maximum=100, default=2),
            "fall": integer("Consecutive failed checks that mark a server down, 1-100. "
                            "Defaults to 3.", minimum=1, maximum=100, default=3),
        },
        rules=only_http,
    )


def timeouts() -> Schema:
    return obj(
        "HAProxy timeouts.",
        {
            "connect": duration("connect", "Time to establish a connection to a server.",
                                default="5s"),
            "client": duration("client", "Maximum inactivity time on the client side.",
                               default="50s"),
            "server": duration("server", "Maximum inactivity time on the server side.",
                               default="50s"),
            "queue": duration("queue", "Maximum time a request waits in the queue for a "
                              "free server slot.", default="30s"),
            "tunnel": duration("tunnel", "Maximum inactivity time of a tunnel (WebSocket, "
                               "CONNECT, TCP after the first exchange).", default="1h"),
        },
        default={},
    )


def limits() -> Schema:
    return obj(
        "Connection limits.",
        {
            "maxConnections": integer(
                "Maximum concurrent connections per proxy replica, 1-1000000. Defaults to "
                "10000.", minimum=1, maximum=1_000_000, default=10_000),
            "maxConnectionsPerServer": integer(
                "Maximum concurrent connections to one backend server, 0-100000; further "
                "requests queue. 0: unlimited, no queueing. Must be above 0 with "
                "algorithm first, and at most maxConnections. Defaults to 0.",
                minimum=0, maximum=100_000, default=0),
            "maxConnectionsPerClient": integer(
                "Maximum concurrent connections from one client address to one proxy "
                "replica, 0-100000; further connections are refused. 0: unlimited. At "
                "most maxConnections. Defaults to 0.",
                minimum=0, maximum=100_000, default=0),
            "requestRatePerClient": obj(
                "At most `requests` HTTP requests from one client address in any `period` "
                "(a sliding window, per proxy replica); further requests get 429 with "
                "Retry-After. Only with an HTTP or HTTPS listener. Absent: unlimited.",
                {
                    "requests": integer("Requests allowed per period, 1-1000000.",
                                        minimum=1, maximum=1_000_000),
                    "period": duration("period", "The window.", default="1s", max_hours=1),
                },
                required=["requests"]),
        },
        rules=[rule("self.maxConnectionsPerServer <= self.maxConnections",
                    "maxConnectionsPerServer must not exceed spec.limits.maxConnections",
                    field_path=".maxConnectionsPerServer"),
               rule("self.maxConnectionsPerClient <= self.maxConnections",
                    "maxConnectionsPerClient must not exceed spec.limits.maxConnections",
                    field_path=".maxConnectionsPerClient")],
        default={},
    )


ALGORITHM_FIRST = rule(
    "self.algorithm != 'first' || self.limits.maxConnectionsPerServer > 0",
    "limits.maxConnectionsPerServer must be set above 0 when algorithm is 'first' "
    "(it fills each server up to this limit)",
    field_path=".limits.maxConnectionsPerServer")


# Kubernetes label keys and values (k8s.io/apimachinery/pkg/util/validation), as a Pod's
# nodeSelector and tolerations need them (roundhouse.model.kubetypes, same rules).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A qualified name: an optional DNS subdomain prefix and '/', then a name of at most 63.
# ([.] rather than an escaped dot: the same text is a pattern and a CEL string literal.)
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
PREFIX_AT_MOST_253 = r"^[^/]{0,253}(/[^/]*)?$"
LABEL_KEY_TEXT = ("an optional DNS subdomain prefix of at most 253 characters and '/', then "
                  "a name of at most 63 alphanumeric characters, '-', '_' or '.', starting "
                  "and ending with an alphanumeric character (e.g. 'example.com/MyName')")
# A resource.Quantity that is not negative (the API server refuses negative requests).
QUANTITY = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
# What HAProxy may ask for (roundhouse.model.kubetypes.RESOURCE_NAMES).
RESOURCE_NAMES = ["cpu", "memory"]


def quantity(description: str) -> Schema:
    return int_or_string(description + " A quantity, e.g. 100m, 0.5, 128Mi, 1Gi; not "
                         "negative.", minimum=0, pattern=QUANTITY, max_length=64)


def quantities(description: str) -> Schema:
    return obj(description, {name: quantity(f"The container's {name}.")
                             for name in RESOURCE_NAMES})


def quantity_le(name: str) -> Schema:
    """requests.<name> <= limits.<name>, compared as quantities (CEL's quantity library),
    as the API server checks a container's resources."""
    req, lim = f"self.requests.{name}", f"self.limits.{name}"
    return rule(
        f"!has(self.requests) || !has(self.limits) || !has({req}) || !has({lim}) || "
        f"!isQuantity(string({req})) || "
        f"!isQuantity(string({lim})) || "
        f"quantity(string({req})).compareTo(quantity(string({lim}))) <= 0",
        f"must be less than or equal to {name} limit",
        field_path=f".requests.{name}")


def toleration() -> Schema:
    return obj("A toleration, as in a Pod's tolerations.", {
        "key": string("The taint key to tolerate, a label key; empty with operator "
                      "Exists matches every taint.", max_length=317,
                      pattern="^(" + QUALIFIED_NAME[1:-1] + ")?$",
                      rules=[rule(f"self.matches('{PREFIX_AT_MOST_253}')",
                                  f"a taint key is {LABEL_KEY_TEXT}")]),
        "operator": string("Exists or Equal. Kubernetes treats absent or empty as Equal.",
                           enum=["Exists", "Equal", ""]),
        "value": string("The taint value to match with operator Equal, a label value.",
                        max_length=63, pattern=LABEL_VALUE),
        "effect": string("The taint effect to tolerate; empty matches every effect.",
                         enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": integer(
            "How long a NoExecute taint is tolerated before eviction; absent: forever."),
    }, rules=[
        rule("(has(self.key) && self.key != '') || "
             "(has(self.operator) && self.operator == 'Exists')",
             "operator must be Exists when `key` is empty, which means \"match all values "
             "and all keys\"", field_path=".operator"),
        rule("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
             "effect must be 'NoExecute' when `tolerationSeconds` is set",
             field_path=".effect"),
        rule("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || "
             "self.value == ''", "value must be empty when `operator` is 'Exists'",
             field_path=".operator"),
    ])


def proxy() -> Schema:
    return obj(
        "The HAProxy Deployment and Service the operator runs for this resource.",
        {
            "replicas": integer("Number of HAProxy pods, 1-50. Defaults to 2.",
                                minimum=1, maximum=50, default=2),
            "serviceType": string("The type of the Service in front of the pods. "
                                  "Defaults to LoadBalancer.",
                                  enum=SERVICE_TYPES, default="LoadBalancer"),
            "resources": obj(
                "Compute resources of the HAProxy container (cpu and memory), as in a "
                "Pod's resources; each request at most its limit. Absent: the operator's "
                "defaults.",
                {
                    "limits": quantities("Maximum resources, e.g. cpu: 500m, memory: 256Mi."),
                    "requests": quantities("Requested resources, e.g. cpu: 100m, "
                                           "memory: 128Mi."),
                },
                rules=[quantity_le(name) for name in RESOURCE_NAMES]),
            "nodeSelector": string_map(
                "Node labels the HAProxy pods must run on, as in a Pod's nodeSelector: "
                "label keys and label values.",
                max_properties=32,
                value=string("A label value.", max_length=63, pattern=LABEL_VALUE),
                rules=[rule(f"self.all(k, k.matches('{QUALIFIED_NAME}') && "
                            f"k.matches('{PREFIX_AT_MOST_253}'))",
                            f"a nodeSelector key is {LABEL_KEY_TEXT}")]),
            "tolerations": array(
                "Tolerations of the HAProxy pods, as in a Pod's tolerations.",
                toleration(), max_items=32),
        },
        default={},
    )


def name_rule(suffix: str) -> Schema:
    return rule(
        "self.metadata.name.size() <= 50 && !self.metadata.name.contains('.')",
        "metadata.name must be a DNS label of at most 50 characters "
        f"(children are named <name>-{suffix})",
        field_path=".metadata.name")


def root_metadata() -> Schema:
    # The root may only restrict metadata.name and metadata.generateName, and only with
    # value validations (no description): this exists so that the fieldPath of the
    # name rule refers to a declared field.
    return {"type": "object", "properties": {"name": {"type": "string"}}}


def status() -> Schema:
    return obj(
        "The observed state, written by the operator.",
        {
            "observedGeneration": integer("The metadata.generation the status describes."),
            "conditions": array(
                "The latest observations: Ready, and the conditions that explain it.",
                obj("One condition, as metav1.Condition.", {
                    "type": string("The condition's type, e.g. Ready.", max_length=316),
                    "status": string("True, False or Unknown.",
                                     enum=["True", "False", "Unknown"]),
                    "reason": string("A CamelCase reason for the last transition.",
                                     max_length=1024),
                    "message": string("A human-readable explanation.", max_length=32768),
                    "observedGeneration": integer(
                        "The metadata.generation the condition describes."),
                    "lastTransitionTime": string(
                        "When the status last changed (RFC 3339).", max_length=64,
                        fmt="date-time"),
                }, required=["type", "status"]),
                max_items=32, list_type="map", map_keys=["type"]),
            "backends": obj("Backend servers (endpoints) in rotation.", {
                "ready": integer("Servers that are ready.", minimum=0),
                "total": integer("Servers known.", minimum=0),
            }),
            "backendSummary": string("ready/total, e.g. 3/3, for the BACKENDS column.",
                                     max_length=64),
            "address": string("The address clients connect to: the Service's load balancer "
                              "address, else its cluster IP.", max_length=1024),
        },
    )


PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether the proxy serves the current spec."},
    {"name": "Backends", "type": "string", "jsonPath": ".status.backendSummary",
     "description": "Ready/total backend servers."},
    {"name": "Address", "type": "string", "jsonPath": ".status.address",
     "description": "The address clients connect to."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd(kind: str, plural: str, short_names: list[str], description: str,
        spec: Schema, name_suffix: str) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["roundhouse"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": string("APIVersion of this object: "
                                             f"{GROUP}/{VERSION}.", max_length=253),
                        "kind": string(f"Kind of this object: {kind}.", max_length=63),
                        "metadata": root_metadata(),
                        "spec": spec,
                        "status": status(),
                    },
                    "x-kubernetes-validations": [name_rule(name_suffix)],
                }},
            }],
        },
    }


# --------------------------------------------------------------------- LoadBalancer


def source_ranges(scope: str, otherwise: str) -> Schema:
    return array(
        f"Client addresses allowed {scope}, as CIDRs (10.0.0.0/8, 2001:db8::/32, "
        f"203.0.113.7/32), at most 100; {otherwise}. Absent or empty: every client. "
        "HAProxy checks the client's own address (the proxy Service keeps it: "
        "externalTrafficPolicy Local; a LoadBalancer Service also gets "
        "loadBalancerSourceRanges).",
        string("A CIDR.", max_length=49, rules=[rule(
            "isCIDR(self)", "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32")]),
        max_items=100)


def upstream_tls(plain: str) -> Schema:
    return obj(
        f"Connect to the backends with TLS (re-encryption). Absent: {plain}.",
        {
            "caSecretName": string("A Secret whose ca.crt verifies the backends' "
                                   "certificates; absent: the system CAs.",
                                   max_length=253, pattern=DNS_SUBDOMAIN),
            "sni": string("The server name to send; absent: none.", max_length=253,
                          pattern=DNS_SUBDOMAIN),
            "verify": boolean("Verify the backends' certificates. Defaults to true.",
                              default=True),
        })


def loadbalancer_spec() -> Schema:
    listener = obj(
        "A port the proxy listens on.",
        {
            "name": string("The listener's name, a lowercase DNS label, unique in the "
                           "list.", max_length=63, pattern=DNS_LABEL),
            "port": integer("The port, 1-65535, unique in the list; not one the proxy "
                            "Pod uses itself (8404, 9101).", minimum=1, maximum=65535),
            "protocol": string(
                "TCP (layer 4), HTTP, HTTPS (TLS terminated by the proxy) or "
                "TLSPassthrough (TLS passed through to the backends). Defaults to HTTP.",
                enum=PROTOCOLS, default="HTTP"),
            "redirectToHTTPS": boolean(
                "Answer every request with a 301 redirect to the HTTPS listener. Only on "
                "an HTTP listener, and only when the resource has an HTTPS listener. "
                "Defaults to false.", default=False),
            "tls": obj(
                "The certificate of an HTTPS listener (only on HTTPS listeners). Absent, "
                "or without secretName: the operator issues and rotates one.",
                {
                    "secretName": string(
                        "A kubernetes.io/tls Secret in the same namespace holding the "
                        "certificate and key.", max_length=253, pattern=DNS_SUBDOMAIN),
                    "dnsNames": array(
                        "DNS names for the certificate the operator issues (a name may "
                        "start with '*.').",
                        string("A DNS name.", max_length=253, pattern=DNS_NAME),
                        max_items=32),
                    "minVersion": string("The lowest TLS version accepted, 1.2 or 1.3. "
                                         "Defaults to 1.2.", enum=TLS_VERSIONS,
                                         default="1.2"),
                }),
        },
        required=["name", "port"],
        rules=[
            rule("!self.redirectToHTTPS || self.protocol == 'HTTP'",
                 "redirectToHTTPS is only allowed on an HTTP listener",
                 field_path=".redirectToHTTPS", reason="FieldValueForbidden"),
            rule("!has(self.tls) || self.protocol == 'HTTPS'",
                 "tls is only allowed on an HTTPS listener",
                 field_path=".tls", reason="FieldValueForbidden"),
            *reserved_port_rules(),
        ],
    )
    return obj(
        "The desired load balancer.",
        {
            "listeners": array(
                "The ports the proxy listens on, 1-16, with unique names and ports.",
                listener, min_items=1, max_items=16, list_type="map", map_keys=["name"]),
            "backends": array(
                "The Service ports that receive the traffic of every listener, 1-32, each "
                "(service, port) once; at least one with a weight above 0.",
                backend_item("the listeners'"), min_items=1, max_items=32,
                list_type="map", map_keys=["service", "port"]),
            "algorithm": algorithm(),
            "sessionPersistence": session_persistence(),
            "healthCheck": health_check(),
            "timeouts": timeouts(),
            "limits": limits(),
            "proxy": proxy(),
            "upstreamTLS": upstream_tls("plain TCP/HTTP"),
            "allowedSourceRanges": source_ranges(
                "to connect to any listener", "any other client is refused as it connects"),
        },
        required=["listeners", "backends"],
        rules=[
            *listener_rules(),
            rule(BACKEND_WEIGHT.replace("self.", "self.backends."),
                 "at least one backend needs a weight above 0", field_path=".backends"),
            rule("!has(self.sessionPersistence) || self.sessionPersistence.type != 'Cookie' "
                 "|| self.listeners.exists(l, l.protocol == 'HTTP' || l.protocol == 'HTTPS')",
                 "Cookie persistence needs an HTTP or HTTPS listener; use SourceIP for TCP",
                 field_path=".sessionPersistence.type"),
            rule("!has(self.limits.requestRatePerClient) || "
                 "self.listeners.exists(l, l.protocol == 'HTTP' || l.protocol == 'HTTPS')",
                 "requestRatePerClient needs an HTTP or HTTPS listener; use "
                 "maxConnectionsPerClient for TCP",
                 field_path=".limits.requestRatePerClient"),
            rule("!has(self.upstreamTLS) || "
                 "!self.listeners.exists(l, l.protocol == 'TLSPassthrough')",
                 "cannot be used with a TLSPassthrough listener, whose stream is already "
                 "the client's TLS", field_path=".upstreamTLS"),
            ALGORITHM_FIRST,
        ],
    )


def loadbalancer_crd() -> Schema:
    return crd(
        "LoadBalancer", "loadbalancers", ["lb", "rhlb"],
        "A LoadBalancer runs a highly available HAProxy in front of Services: listeners "
        "(TCP, HTTP, HTTPS, TLS passthrough) that all send traffic to the same backends.",
        loadbalancer_spec(), "lb")


# --------------------------------------------------------------------- ReverseProxy

RETRY_ON = ["connect-failure", "empty-response", "junk-response", "response-timeout",
            "0rtt-rejected", "all-retryable-errors", "404", "408", "425", "500", "501",
            "502", "503", "504"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


def header_name(description: str) -> Schema:
    return string(description + " An HTTP header name.", max_length=256, pattern=HEADER_NAME)


def header_value(description: str) -> Schema:
    return string(description + " No control characters.", max_length=4096,
                  pattern=HEADER_VALUE)


def header_map(description: str) -> Schema:
    return string_map(
        description, max_properties=16,
        value=header_value("The header value."),
        rules=[rule(f"self.all(k, k.matches('{HEADER_NAME}'))",
                    "header names must be HTTP tokens (letters, digits and !#%&*+.^_|~-)")])


def header_changes(where: str) -> Schema:
    return obj(
        f"Changes to the {where} headers.",
        {
            "set": header_map("Headers to set, replacing any existing value (name: value)."),
            "add": header_map("Headers to add, keeping existing values (name: value)."),
            "remove": array("Header names to remove.", header_name("A header to remove."),
                            max_items=16, list_type="set"),
        })


def route() -> Schema:
    match = obj(
        "What requests the route takes. Defaults to every request (path prefix /).",
        {
            "path": obj(
                "The request path to match. Defaults to prefix /.",
                {
                    "type": string("Exact, Prefix (whole path segments) or "
                                   "RegularExpression. Defaults to Prefix.",
                                   enum=["Exact", "Prefix", "RegularExpression"],
                                   default="Prefix"),
                    "value": string("The path, or the regular expression. Defaults to /.",
                                    min_length=1, max_length=1024, default="/",
                                    pattern=HEADER_VALUE),
                },
                rules=[rule("self.type == 'RegularExpression' || self.value.matches("
                            f"'{HTTP_PATH}')",
                            "path value must start with '/' and hold only URL path "
                            "characters unless type is RegularExpression",
                            field_path=".value")],
                default={}),
            "headers": array(
                "Request headers that must all match.",
                obj("A header to match.", {
                    "name": header_name("The header's name."),
                    "type": string("Exact or RegularExpression. Defaults to Exact.",
                                   enum=["Exact", "RegularExpression"], default="Exact"),
                    "value": header_value("The value, or the regular expression."),
                }, required=["name", "value"]),
                max_items=16),
            "method": string("The HTTP method to match; absent: every method.",
                             enum=METHODS),
        },
        default={})
    return obj(
        "A route: requests that match go to the backends, or get a redirect.",
        {
            "name": string("The route's name, a lowercase DNS label, unique in the host.",
                           max_length=63, pattern=DNS_LABEL),
            "match": match,
            "backends": array(
                "The Service ports that serve the route, 1-16, each (service, port) "
                "once; at least one with a weight above 0. Exactly one of backends or "
                "redirect.", backend_item("the route's"), min_items=1, max_items=16,
                rules=[rule(BACKEND_WEIGHT, "at least one backend needs a weight above 0")],
                list_type="map", map_keys=["service", "port"]),
            "timeouts": obj("Timeouts of this route.", {
                "request": duration("request", "Time to receive the whole request."),
                "server": duration("server", "Maximum inactivity time on the server side; "
                                   "absent: spec.timeouts.server."),
            }),
            "retries": obj("Retries of failed requests to another server.", {
                "attempts": integer("How many times to retry, 1-10. Defaults to 3.",
                                    minimum=1, maximum=10, default=3),
                # Not "on": YAML 1.1 (PyYAML, kubectl) reads an unquoted key on as true.
                "retryOn": array("The failures to retry on (HAProxy retry-on keywords); "
                                 "absent: connect-failure.",
                                 string("A retry-on keyword.", enum=RETRY_ON),
                                 max_items=len(RETRY_ON), list_type="set"),
            }),
            "requestHeaders": header_changes("request"),
            "responseHeaders": header_changes("response"),
            "allowedSourceRanges": source_ranges(
                "on this route", "any other client gets 403 Forbidden"),
            "rewrite": obj("Rewrites of the request before it goes to the backends.", {
                "pathPrefix": string(
                    "Replaces the matched path prefix (with match.path.type Prefix).",
                    max_length=1024, pattern=HTTP_PATH),
            }),
            "redirect": obj(
                "Answer with a redirect instead of sending the request to backends; at "
                "least one of scheme, hostname and path.",
                {
                    "scheme": string("The scheme to redirect to.", enum=["http", "https"]),
                    "hostname": string("The host to redirect to.", max_length=253,
                                       pattern=DNS_SUBDOMAIN),
                    "path": string("The path to redirect to.", max_length=1024,
                                   pattern=HTTP_PATH),
                    "statusCode": integer("The redirect status code. Defaults to 302.",
                                          enum=[301, 302, 303, 307, 308], default=302),
                },
                rules=[rule("has(self.scheme) || has(self.hostname) || has(self.path)",
                            "redirect needs at least one of scheme, hostname or path")]),
        },
        required=["name"],
        rules=[
            rule("has(self.backends) != has(self.redirect)",
                 "a route needs exactly one of backends or redirect"),
            rule("!has(self.rewrite) || has(self.backends)",
                 "rewrite is only allowed on a route with backends",
                 field_path=".rewrite", reason="FieldValueForbidden"),
            # A redirect route answers by itself: what only a request to a backend
            # uses would be accepted and silently do nothing.
            *(rule(f"!has(self.{field}) || has(self.backends)",
                   f"{field} is only allowed on a route with backends",
                   field_path=f".{field}", reason="FieldValueForbidden")
              for field in BACKEND_ONLY_ROUTE_FIELDS),
            rule("!has(self.rewrite) || !has(self.rewrite.pathPrefix) || "
                 "self.match.path.type == 'Prefix'",
                 "rewrite.pathPrefix needs match.path.type Prefix",
                 field_path=".rewrite", reason="FieldValueForbidden"),
        ],
    )


def reverseproxy_spec() -> Schema:
    listener = obj(
        "A port the proxy listens on.",
        {
            "name": string("The listener's name, a lowercase DNS label, unique in the "
                           "list.", max_length=63, pattern=DNS_LABEL),
            "port": integer("The port, 1-65535, unique in the list; not one the proxy "
                            "Pod uses itself (8404, 9101).", minimum=1, maximum=65535),
            "protocol": string("HTTP or HTTPS (TLS terminated with the certificates of "
                               "the hosts). Defaults to HTTP.", enum=["HTTP", "HTTPS"],
                               default="HTTP"),
            "redirectToHTTPS": boolean(
                "Answer every request with a 301 redirect to the HTTPS listener. Only on "
                "an HTTP listener, and only when there is an HTTPS listener. Defaults to "
                "false.", default=False),
        },
        required=["name", "port"],
        rules=[rule("!self.redirectToHTTPS || self.protocol == 'HTTP'",
                    "redirectToHTTPS is only allowed on an HTTP listener",
                    field_path=".redirectToHTTPS", reason="FieldValueForbidden"),
               *reserved_port_rules()],
    )
    host = obj(
        "A virtual host and its routes.",
        {
            "hostname": string("The host name requests are for: exact (www.example.com) "
                               "or a wildcard (*.example.com).", max_length=253,
                               pattern=DNS_NAME),
            "tls": obj(
                "Serve this host on the HTTPS listeners. Without secretName the operator "
                "issues and rotates a certificate for the hostname.",
                {"secretName": string("A kubernetes.io/tls Secret in the same namespace.",
                                      max_length=253, pattern=DNS_SUBDOMAIN)}),
            "routes": array("The host's routes, 1-64, in order of precedence.", route(),
                            min_items=1, max_items=64, list_type="map", map_keys=["name"]),
        },
        required=["hostname", "routes"],
    )
    return obj(
        "The desired reverse proxy.",
        {
            "listeners": array(
                "The ports the proxy listens on, 1-16, with unique names and ports.",
                listener, min_items=1, max_items=16, list_type="map", map_keys=["name"]),
            "hosts": array("The virtual hosts, 1-32, with unique hostnames.", host,
                           min_items=1, max_items=32, list_type="map",
                           map_keys=["hostname"]),
            "defaultBackend": obj(
                "Where requests for no known host (or no matching route) go; absent: "
                "HAProxy answers 404.",
                {"service": service_name("The Service."),
                 "port": service_port("The Service port.")},
                required=["service", "port"]),
            "hsts": obj(
                "Send Strict-Transport-Security on HTTPS responses. Needs an HTTPS "
                "listener.",
                {
                    "maxAge": duration("maxAge", "How long browsers remember to use HTTPS.",
                                       default="8760h", max_hours=2 * 365 * DAY_HOURS,
                                       limit_text="17520h (2 years)"),
                    "includeSubdomains": boolean("Also for every subdomain. Defaults to "
                                                 "false.", default=False),
                    "preload": boolean("Ask to be preloaded in browsers (needs "
                                       "includeSubdomains). Defaults to false.",
                                       default=False),
                },
                rules=[rule("!self.preload || self.includeSubdomains",
                            "preload needs includeSubdomains", field_path=".preload")]),
            "upstreamTLS": upstream_tls("plain HTTP"),
            "algorithm": algorithm(),
            "sessionPersistence": session_persistence(),
            "healthCheck": health_check(),
            "timeouts": timeouts(),
            "limits": limits(),
            "proxy": proxy(),
            "allowedSourceRanges": source_ranges(
                "to connect to any listener", "any other client is refused as it connects"),
        },
        required=["listeners", "hosts"],
        rules=[
            *listener_rules(),
            rule("!self.hosts.exists(h, has(h.tls)) || "
                 "self.listeners.exists(l, l.protocol == 'HTTPS')",
                 "a host with tls needs an HTTPS listener", field_path=".hosts"),
            rule("!self.listeners.exists(l, l.protocol == 'HTTPS') || "
                 "self.hosts.exists(h, has(h.tls))",
                 "an HTTPS listener needs at least one host with tls",
                 field_path=".listeners"),
            rule("!has(self.hsts) || self.listeners.exists(l, l.protocol == 'HTTPS')",
                 "hsts needs an HTTPS listener", field_path=".hsts"),
            certificates_rule(),
            ALGORITHM_FIRST,
        ],
    )


# Each distinct Secret, plus one issued certificate, is a `crt <file>` on the HTTPS
# listener's bind line, and an HAProxy line holds at most 64 words (the model's
# MAX_CERTIFICATES and CERTIFICATES_MESSAGE, in the same words).
MAX_CERTIFICATES = 29


def certificates_rule() -> Schema:
    """The number of certificates, counted as a set: a host counts when no host with a
    smaller hostname (hostnames are unique) names the same Secret."""
    own = ("self.hosts.filter(h, has(h.tls) && has(h.tls.secretName) && "
           "!self.hosts.exists(o, has(o.tls) && has(o.tls.secretName) && "
           "o.tls.secretName == h.tls.secretName && o.hostname < h.hostname)).size()")
    issued = "(self.hosts.exists(h, has(h.tls) && !has(h.tls.secretName)) ? 1 : 0)"
    return rule(f"{own} + {issued} <= {MAX_CERTIFICATES}",
                f"the hosts' tls need more than {MAX_CERTIFICATES} certificates (each "
                "distinct secretName, plus one issued for the hosts without): an HTTPS "
                f"listener serves at most {MAX_CERTIFICATES}", field_path=".hosts")


def reverseproxy_crd() -> Schema:
    return crd(
        "ReverseProxy", "reverseproxies", ["rp"],
        "A ReverseProxy runs a highly available HAProxy that routes HTTP requests by host, "
        "path, headers and method to Services.",
        reverseproxy_spec(), "rp")


# ------------------------------------------------------------------------- output

HEADER = ("# Generated by crds/generate.py from one source for both kinds; edit that file and "
          "run\n# `python crds/generate.py` (tests/unit/test_crd_schema.py checks they match).\n")

FILES = {"loadbalancers.yaml": loadbalancer_crd, "reverseproxies.yaml": reverseproxy_crd}


def render(doc: Schema) -> str:
    return HEADER + "---\n" + yaml.safe_dump(doc, sort_keys=False, width=100,
                                            allow_unicode=True)


def main(argv: list[str]) -> int:
    stale = []
    for name, build in FILES.items():
        text = render(build())
        path = HERE / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    for name in stale:
        print(f"crds/{name} is out of date: run python crds/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
