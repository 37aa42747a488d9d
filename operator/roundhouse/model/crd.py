"""The Roundhouse CRDs (crds/loadbalancers.yaml, crds/reverseproxies.yaml), built from
roundhouse.model.rules.

The two kinds share most of their schema (algorithm, sessionPersistence, healthCheck,
timeouts, limits, proxy, status, printer columns); building them from one source keeps
them identical. Every pattern, enum, bound, default and CEL rule comes from
roundhouse.model.rules, which the offline parser reads too: this module adds only the
schema's shape and its descriptions. tests/unit/test_crd_schema.py checks that the
generated schema holds no value the rules module does not state, and that the YAML files
are exactly what `python crds/generate.py` writes.
"""

from __future__ import annotations

from typing import Any

import yaml

from roundhouse import API_GROUP as GROUP
from roundhouse import API_VERSION as VERSION
from roundhouse.model import rules as R
from roundhouse.model.rules import Duration, Enum, Int, Items, Rule

Schema = dict[str, Any]


# ---------------------------------------------------------------------------- builders


def cel(*rules: Rule) -> list[Schema]:
    """x-kubernetes-validations entries, one per rule."""
    return [r.schema() for r in rules]


# Cross-listener rules shared by LoadBalancer and ReverseProxy.
LISTENER_RULES = (R.LISTENER_PORTS_UNIQUE, R.REDIRECT_NEEDS_HTTPS)


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
           min_length: int | None = None, enum: Enum | None = None,
           default: str | None = None, fmt: str | None = None,
           rules: list[Schema] | None = None) -> Schema:
    """A string; an enum brings its values and its default."""
    if enum is None and max_length is None:
        raise ValueError(f"unbounded string: {description}")
    return _node("string", description, {
        "format": fmt, "enum": list(enum.values) if enum else None, "minLength": min_length,
        "maxLength": max_length, "pattern": pattern}, rules,
        enum.default if enum else default)


def integer(description: str, bounds: Int = R.UNBOUNDED, *, enum: tuple[int, ...] | None = None,
            rules: list[Schema] | None = None) -> Schema:
    # No `format: int32/int64`: with a format, kube-openapi reports a boolean or an
    # object given for an integer as "must be of type int32: \"\"" instead of naming
    # the type, and a float as two errors.
    return _node("integer", description, {
        "enum": list(enum) if enum else None, "minimum": bounds.minimum,
        "maximum": bounds.maximum}, rules, bounds.default)


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


def string_map(description: str, *, size: Items, value: Schema,
               rules: list[Schema] | None = None) -> Schema:
    return _node("object", description, {"maxProperties": size.maximum,
                                         "additionalProperties": value}, rules, None)


def array(description: str, items: Schema, size: Items, *, list_type: str | None = None,
          map_keys: list[str] | None = None, rules: list[Schema] | None = None) -> Schema:
    extra: Schema = {"minItems": size.minimum, "maxItems": size.maximum}
    if list_type:
        extra["x-kubernetes-list-type"] = list_type
    if map_keys:
        extra["x-kubernetes-list-map-keys"] = map_keys
    extra["items"] = items
    return _node("array", description, extra, rules, None)


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


def duration(d: Duration, description: str) -> Schema:
    """A duration string ('500ms', '5s', '2m', '1h') within its bounds (d.bounds)."""
    text = f"{description} A number and a unit (ms, s, m or h), e.g. 500ms, 5s, 2m, 1h; " \
           f"{d.bounds}."
    if d.default is not None:
        text += f" Defaults to {d.default}."
    return string(text, max_length=R.DURATION_LENGTH, pattern=R.DURATION, default=d.default,
                  rules=cel(d.rule()))


# -------------------------------------------------------------------- shared blocks


def service_name(description: str) -> Schema:
    return string(description + " A Service name (a DNS label) in the same namespace.",
                  max_length=R.NAME_LENGTH, pattern=R.DNS_LABEL)


def service_port(description: str) -> Schema:
    return int_or_string(
        description + " A Service port number (1-65535) or a Service port name "
        "(a lowercase DNS label).",
        minimum=R.PORT.minimum, maximum=R.PORT.maximum, max_length=R.NAME_LENGTH,
        pattern=R.DNS_LABEL)


def backend_item(what: str) -> Schema:
    return obj(
        f"One Service port that receives {what} traffic.",
        {
            "service": service_name("The Service to send traffic to."),
            "port": service_port("The Service port."),
            "weight": integer(
                "The share of traffic relative to the other backends, 0-256 (HAProxy "
                "server weight); 0 takes the backend out of rotation. Defaults to 1.",
                R.WEIGHT),
        },
        required=["service", "port"],
    )


def algorithm() -> Schema:
    return string(
        "How HAProxy picks a backend server: roundrobin (weighted, in turn), leastconn "
        "(fewest connections), source (hash of the client address), random (weighted, "
        "power of two choices) or first (fill each server up to "
        "limits.maxConnectionsPerServer before using the next). Defaults to roundrobin.",
        enum=R.ALGORITHM)


def session_persistence() -> Schema:
    return obj(
        "Keeps a client on the same backend server. Absent: no persistence.",
        {
            "type": string(
                "Cookie (HAProxy inserts a cookie; needs an HTTP or HTTPS listener) or "
                "SourceIP (a stick table keyed on the client address). Defaults to Cookie.",
                enum=R.PERSISTENCE_TYPE),
            "cookieName": string(
                "The cookie's name, 1-64 characters of A-Z, a-z, 0-9, '_' or '-'. Only "
                "with type Cookie; when absent the operator uses RH_SESSION (it is not "
                "defaulted here, so that it can be told apart from an explicit value).",
                min_length=R.COOKIE_NAME_LENGTH.minimum,
                max_length=R.COOKIE_NAME_LENGTH.maximum, pattern=R.COOKIE_NAME),
            "maxAge": duration(
                R.PERSISTENCE_MAX_AGE, "How long a client stays pinned (cookie maxlife or "
                "stick-table expiry)."),
        },
        rules=cel(R.COOKIE_NAME_ONLY_FOR_COOKIE),
    )


def health_check() -> Schema:
    return obj(
        "Active health checks of the backend servers. Absent: no active checks (servers "
        "follow their endpoints' readiness only).",
        {
            "type": string("TCP (connect) or HTTP (a GET request). Defaults to TCP.",
                           enum=R.HEALTH_CHECK_TYPE),
            "path": string(
                "The HTTP path to GET; starts with '/', no spaces. Only with type HTTP; "
                "when absent the operator uses '/'.",
                max_length=R.PATH_LENGTH, pattern=R.HTTP_PATH),
            "host": string(
                "The Host header to send, a DNS name. Only with type HTTP; when absent "
                "HAProxy sends none.", max_length=R.SUBDOMAIN_LENGTH,
                pattern=R.DNS_SUBDOMAIN),
            "expectStatus": integer(
                "The HTTP status code a healthy server answers, 100-599. Only with type "
                "HTTP; when absent the operator expects 200.", R.EXPECT_STATUS),
            "interval": duration(R.CHECK_INTERVAL, "Time between two checks of a server."),
            "timeout": duration(R.CHECK_TIMEOUT, "How long a check may take."),
            "rise": integer("Consecutive successful checks that mark a server up, 1-100. "
                            "Defaults to 2.", R.RISE),
            "fall": integer("Consecutive failed checks that mark a server down, 1-100. "
                            "Defaults to 3.", R.FALL),
        },
        rules=cel(*R.HTTP_CHECK_ONLY),
    )


def timeouts() -> Schema:
    return obj(
        "HAProxy timeouts.",
        {
            "connect": duration(R.TIMEOUT_CONNECT,
                                "Time to establish a connection to a server."),
            "client": duration(R.TIMEOUT_CLIENT, "Maximum inactivity time on the client side."),
            "server": duration(R.TIMEOUT_SERVER, "Maximum inactivity time on the server side."),
            "queue": duration(R.TIMEOUT_QUEUE, "Maximum time a request waits in the queue for "
                              "a free server slot."),
            "tunnel": duration(R.TIMEOUT_TUNNEL, "Maximum inactivity time of a tunnel "
                               "(WebSocket, CONNECT, TCP after the first exchange)."),
            "request": duration(
                R.TIMEOUT_REQUEST,
                "HTTP and HTTPS listeners: the time a client has to send a request's "
                "headers, and again to send the first "
                f"{R.REQUEST_BODY_BYTES} bytes of its body (all of it when shorter); a "
                "request that misses it is answered 408. The "
                "rest of a longer body is bound only by the client timeout, so large "
                "uploads at normal speed pass. Not applied to protocol upgrades "
                "(WebSocket), CONNECT and gRPC, whose bodies are streams."),
            "drain": duration(
                R.TIMEOUT_DRAIN,
                "How long the old HAProxy processes keep serving the connections they "
                "hold after a reload (WebSockets, gRPC streams, long downloads) before "
                "they are closed. Each HAProxy process keeps the value it started with: "
                "the processes a change replaces still drain for the previous one."),
        },
        default={},
    )


def limits() -> Schema:
    return obj(
        "Connection limits.",
        {
            "maxConnections": integer(
                "Maximum concurrent connections per proxy replica, 1-1000000. Defaults to "
                "10000.", R.MAX_CONNECTIONS),
            "maxConnectionsPerServer": integer(
                "Maximum concurrent connections to one backend server, 0-100000; further "
                "requests queue. 0: unlimited, no queueing. Must be above 0 with "
                "algorithm first, and at most maxConnections. Defaults to 0.",
                R.MAX_CONNECTIONS_PER_SERVER),
            "maxConnectionsPerClient": integer(
                "Maximum concurrent connections from one client address to one proxy "
                "replica, 0-100000; further connections are refused. 0: unlimited. At "
                "most maxConnections. Defaults to 0.",
                R.MAX_CONNECTIONS_PER_CLIENT),
            "requestRatePerClient": obj(
                "At most `requests` HTTP requests from one client address in any `period` "
                "(a sliding window, per proxy replica); further requests get 429 with "
                "Retry-After. Only with an HTTP or HTTPS listener. Absent: unlimited.",
                {
                    "requests": integer("Requests allowed per period, 1-1000000.",
                                        R.RATE_REQUESTS),
                    "period": duration(R.RATE_PERIOD, "The window."),
                },
                required=["requests"]),
        },
        rules=cel(R.PER_SERVER_AT_MOST_MAX, R.PER_CLIENT_AT_MOST_MAX),
        default={},
    )


def quantity(description: str) -> Schema:
    return int_or_string(description + " A quantity, e.g. 100m, 0.5, 128Mi, 1Gi; not "
                         "negative.", minimum=R.QUANTITY_MINIMUM, pattern=R.QUANTITY,
                         max_length=R.QUANTITY_LENGTH)


def quantities(description: str) -> Schema:
    return obj(description, {name: quantity(f"The container's {name}.")
                             for name in R.RESOURCE_NAMES})


def toleration() -> Schema:
    return obj("A toleration, as in a Pod's tolerations.", {
        "key": string("The taint key to tolerate, a label key; empty with operator "
                      "Exists matches every taint.", max_length=R.TAINT_KEY_LENGTH,
                      pattern=R.TAINT_KEY, rules=cel(R.TAINT_KEY_PREFIX)),
        "operator": string("Exists or Equal. Kubernetes treats absent or empty as Equal.",
                           enum=R.TOLERATION_OPERATOR),
        "value": string("The taint value to match with operator Equal, a label value.",
                        max_length=R.LABEL_VALUE_LENGTH, pattern=R.LABEL_VALUE),
        "effect": string("The taint effect to tolerate; empty matches every effect.",
                         enum=R.TAINT_EFFECT),
        "tolerationSeconds": integer(
            "How long a NoExecute taint is tolerated before eviction; absent: forever."),
    }, rules=cel(R.TOLERATION_EMPTY_KEY, R.TOLERATION_SECONDS, R.TOLERATION_EXISTS_VALUE))


def proxy() -> Schema:
    return obj(
        "The HAProxy Deployment and Service the operator runs for this resource.",
        {
            "replicas": integer("Number of HAProxy pods, 1-50. Defaults to 2.", R.REPLICAS),
            "serviceType": string("The type of the Service in front of the pods. "
                                  "Defaults to LoadBalancer.",
                                  enum=R.SERVICE_TYPE),
            "resources": obj(
                "Compute resources of the HAProxy container (cpu and memory), as in a "
                "Pod's resources; each request at most its limit. Absent: the operator's "
                "defaults.",
                {
                    "limits": quantities("Maximum resources, e.g. cpu: 500m, memory: 256Mi."),
                    "requests": quantities("Requested resources, e.g. cpu: 100m, "
                                           "memory: 128Mi."),
                },
                rules=cel(*R.REQUESTS_AT_MOST_LIMITS)),
            "nodeSelector": string_map(
                "Node labels the HAProxy pods must run on, as in a Pod's nodeSelector: "
                "label keys and label values.",
                size=R.NODE_SELECTOR,
                value=string("A label value.", max_length=R.LABEL_VALUE_LENGTH,
                             pattern=R.LABEL_VALUE),
                rules=cel(R.NODE_SELECTOR_KEYS)),
            "tolerations": array(
                "Tolerations of the HAProxy pods, as in a Pod's tolerations.",
                toleration(), R.TOLERATIONS),
        },
        default={},
    )


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
                    "type": string("The condition's type, e.g. Ready.",
                                   max_length=R.CONDITION_TYPE_LENGTH),
                    "status": string("True, False or Unknown.", enum=R.CONDITION_STATUS),
                    "reason": string("A CamelCase reason for the last transition.",
                                     max_length=R.CONDITION_REASON_LENGTH),
                    "message": string("A human-readable explanation.",
                                      max_length=R.CONDITION_MESSAGE_LENGTH),
                    "observedGeneration": integer(
                        "The metadata.generation the condition describes."),
                    "lastTransitionTime": string(
                        "When the status last changed (RFC 3339).",
                        max_length=R.TIMESTAMP_LENGTH, fmt="date-time"),
                }, required=["type", "status"]),
                R.CONDITIONS, list_type="map", map_keys=["type"]),
            "backends": obj("Backend servers (endpoints) in rotation.", {
                "ready": integer("Servers that are ready.", R.STATUS_COUNT),
                "total": integer("Servers known.", R.STATUS_COUNT),
            }),
            "backendSummary": string("ready/total, e.g. 3/3, for the BACKENDS column.",
                                     max_length=R.BACKEND_SUMMARY_LENGTH),
            "address": string("The address clients connect to: the Service's load balancer "
                              "address, else its cluster IP.", max_length=R.ADDRESS_LENGTH),
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
                                             f"{GROUP}/{VERSION}.",
                                             max_length=R.API_VERSION_LENGTH),
                        "kind": string(f"Kind of this object: {kind}.",
                                       max_length=R.KIND_LENGTH),
                        "metadata": root_metadata(),
                        "spec": spec,
                        "status": status(),
                    },
                    "x-kubernetes-validations": cel(R.name_rule(name_suffix)),
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
        string("A CIDR.", max_length=R.CIDR_LENGTH, rules=cel(R.CIDR)), R.SOURCE_RANGES)


def upstream_tls(plain: str) -> Schema:
    return obj(
        f"Connect to the backends with TLS (re-encryption). Absent: {plain}.",
        {
            "caSecretName": string("A Secret whose ca.crt verifies the backends' "
                                   "certificates; absent: the system CAs.",
                                   max_length=R.SUBDOMAIN_LENGTH, pattern=R.DNS_SUBDOMAIN),
            "sni": string("The server name to send; absent: none.",
                          max_length=R.SUBDOMAIN_LENGTH, pattern=R.DNS_SUBDOMAIN),
            "verify": boolean("Verify the backends' certificates. Defaults to true.",
                              default=R.UPSTREAM_VERIFY),
        })


def access_log() -> Schema:
    return obj(
        "Which requests the proxy logs to its stdout, one line each (TCP listeners: one "
        "line per connection). Absent: every request.",
        {
            "mode": string(
                "All (every request), Sampled (one request in sampleOneIn, plus every "
                "response with a 5xx status and every request the proxy answers itself, "
                "such as a 503 with no server to send it to) or Disabled. Defaults to All.",
                enum=R.ACCESS_LOG_MODE),
            "sampleOneIn": integer(
                "With mode Sampled: log one request in this many, chosen at random, "
                "2-1000000; when absent the operator uses 100 (it is not defaulted here, "
                "so that it is only allowed with mode Sampled).", R.ACCESS_LOG_SAMPLE),
        },
        rules=cel(R.ACCESS_LOG_SAMPLE_ONLY_SAMPLED),
    )


def proxy_settings() -> dict[str, Schema]:
    """The fields both kinds share, in the order both CRDs list them."""
    return {"algorithm": algorithm(), "sessionPersistence": session_persistence(),
            "healthCheck": health_check(), "timeouts": timeouts(), "limits": limits(),
            "proxy": proxy(), "accessLog": access_log()}


def listener_source_ranges() -> Schema:
    return source_ranges("to connect to any listener",
                         "any other client is refused as it connects")


def loadbalancer_spec() -> Schema:
    listener = obj(
        "A port the proxy listens on.",
        {
            "name": string("The listener's name, a lowercase DNS label, unique in the "
                           "list.", max_length=R.NAME_LENGTH, pattern=R.DNS_LABEL),
            "port": integer("The port, 1-65535, unique in the list; not one the proxy "
                            "Pod uses itself (8404, 9101).", R.PORT),
            "protocol": string(
                "TCP (layer 4), HTTP, HTTPS (TLS terminated by the proxy) or "
                "TLSPassthrough (TLS passed through to the backends). Defaults to HTTP.",
                enum=R.PROTOCOL),
            "redirectToHTTPS": boolean(
                "Answer every request with a 301 redirect to the HTTPS listener. Only on "
                "an HTTP listener, and only when the resource has an HTTPS listener. "
                "Defaults to false.", default=R.REDIRECT_TO_HTTPS),
            "tls": obj(
                "The certificate of an HTTPS listener (only on HTTPS listeners). Absent, "
                "or without secretName: the operator issues and rotates one.",
                {
                    "secretName": string(
                        "A kubernetes.io/tls Secret in the same namespace holding the "
                        "certificate and key.", max_length=R.SUBDOMAIN_LENGTH,
                        pattern=R.DNS_SUBDOMAIN),
                    "dnsNames": array(
                        "DNS names for the certificate the operator issues (a name may "
                        "start with '*.').",
                        string("A DNS name.", max_length=R.SUBDOMAIN_LENGTH,
                               pattern=R.DNS_NAME),
                        R.DNS_NAMES),
                    "minVersion": string("The lowest TLS version accepted, 1.2 or 1.3. "
                                         "Defaults to 1.2.", enum=R.TLS_VERSION),
                }),
        },
        required=["name", "port"],
        rules=cel(R.REDIRECT_ONLY_ON_HTTP, R.TLS_ONLY_ON_HTTPS, *R.RESERVED_PORT_RULES),
    )
    return obj(
        "The desired load balancer.",
        {
            "listeners": array(
                "The ports the proxy listens on, 1-16, with unique names and ports.",
                listener, R.LISTENERS, list_type="map", map_keys=["name"]),
            "backends": array(
                "The Service ports that receive the traffic of every listener, 1-32, each "
                "(service, port) once; at least one with a weight above 0.",
                backend_item("the listeners'"), R.LB_BACKENDS,
                list_type="map", map_keys=["service", "port"]),
            **proxy_settings(),
            "upstreamTLS": upstream_tls("plain TCP/HTTP"),
            "allowedSourceRanges": listener_source_ranges(),
        },
        required=["listeners", "backends"],
        rules=cel(*LISTENER_RULES, R.SPEC_BACKEND_WEIGHT, R.COOKIE_NEEDS_HTTP,
                  R.RATE_NEEDS_HTTP, R.UPSTREAM_TLS_NOT_PASSTHROUGH, R.ALGORITHM_FIRST),
    )


def loadbalancer_crd() -> Schema:
    return crd(
        "LoadBalancer", "loadbalancers", ["lb", "rhlb"],
        "A LoadBalancer runs a highly available HAProxy in front of Services: listeners "
        "(TCP, HTTP, HTTPS, TLS passthrough) that all send traffic to the same backends.",
        loadbalancer_spec(), "lb")


# --------------------------------------------------------------------- ReverseProxy

def header_name(description: str) -> Schema:
    return string(description + " An HTTP header name.", max_length=R.HEADER_NAME_LENGTH,
                  pattern=R.HEADER_NAME)


def header_value(description: str) -> Schema:
    return string(description + " No control characters.", max_length=R.HEADER_VALUE_LENGTH,
                  pattern=R.HEADER_VALUE)


def header_map(description: str) -> Schema:
    return string_map(
        description, size=R.HEADER_CHANGES, value=header_value("The header value."),
        rules=cel(R.HEADER_MAP_KEYS))


def header_changes(where: str) -> Schema:
    return obj(
        f"Changes to the {where} headers.",
        {
            "set": header_map("Headers to set, replacing any existing value (name: value)."),
            "add": header_map("Headers to add, keeping existing values (name: value)."),
            "remove": array("Header names to remove.", header_name("A header to remove."),
                            R.HEADER_CHANGES, list_type="set"),
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
                                   enum=R.PATH_TYPE),
                    "value": string("The path, or the regular expression. Defaults to /.",
                                    min_length=R.PATH_MATCH_LENGTH.minimum,
                                    max_length=R.PATH_MATCH_LENGTH.maximum,
                                    default=R.DEFAULT_PATH, pattern=R.HEADER_VALUE),
                },
                rules=cel(R.PATH_VALUE),
                default={}),
            "headers": array(
                "Request headers that must all match.",
                obj("A header to match.", {
                    "name": header_name("The header's name."),
                    "type": string("Exact or RegularExpression. Defaults to Exact.",
                                   enum=R.HEADER_MATCH_TYPE),
                    "value": header_value("The value, or the regular expression."),
                }, required=["name", "value"]),
                R.HEADER_MATCHES),
            "method": string("The HTTP method to match; absent: every method.",
                             enum=R.METHOD),
        },
        default={})
    return obj(
        "A route: requests that match go to the backends, or get a redirect.",
        {
            "name": string("The route's name, a lowercase DNS label, unique in the host.",
                           max_length=R.NAME_LENGTH, pattern=R.DNS_LABEL),
            "match": match,
            "backends": array(
                "The Service ports that serve the route, 1-16, each (service, port) "
                "once; at least one with a weight above 0. Exactly one of backends or "
                "redirect.", backend_item("the route's"), R.ROUTE_BACKENDS,
                rules=cel(R.BACKEND_WEIGHT),
                list_type="map", map_keys=["service", "port"]),
            "timeouts": obj("Timeouts of this route.", {
                "request": duration(R.ROUTE_REQUEST_TIMEOUT,
                                    "Time to receive the whole request."),
                "server": duration(R.ROUTE_SERVER_TIMEOUT,
                                   "Maximum inactivity time on the server side; "
                                   "absent: spec.timeouts.server."),
            }),
            "retries": obj("Retries of failed requests to another server.", {
                "attempts": integer("How many times to retry, 1-10. Defaults to 3.",
                                    R.RETRY_ATTEMPTS),
                # Not "on": YAML 1.1 (PyYAML, kubectl) reads an unquoted key on as true.
                "retryOn": array("The failures to retry on (HAProxy retry-on keywords); "
                                 "absent: connect-failure.",
                                 string("A retry-on keyword.", enum=R.RETRY_ON),
                                 R.RETRY_ON_ITEMS, list_type="set"),
            }),
            "requestHeaders": header_changes("request"),
            "responseHeaders": header_changes("response"),
            "allowedSourceRanges": source_ranges(
                "on this route", "any other client gets 403 Forbidden"),
            "rewrite": obj("Rewrites of the request before it goes to the backends.", {
                "pathPrefix": string(
                    "Replaces the matched path prefix (with match.path.type Prefix).",
                    max_length=R.PATH_LENGTH, pattern=R.HTTP_PATH),
            }),
            "redirect": obj(
                "Answer with a redirect instead of sending the request to backends; at "
                "least one of scheme, hostname and path.",
                {
                    "scheme": string("The scheme to redirect to.", enum=R.REDIRECT_SCHEME),
                    "hostname": string("The host to redirect to.",
                                       max_length=R.SUBDOMAIN_LENGTH, pattern=R.DNS_SUBDOMAIN),
                    "path": string("The path to redirect to.", max_length=R.PATH_LENGTH,
                                   pattern=R.HTTP_PATH),
                    "statusCode": integer("The redirect status code. Defaults to 302.",
                                          R.REDIRECT_CODE, enum=R.REDIRECT_CODES),
                },
                rules=cel(R.REDIRECT_NEEDS_TARGET)),
        },
        required=["name"],
        rules=cel(R.ROUTE_BACKENDS_OR_REDIRECT, R.REWRITE_NEEDS_BACKENDS, *R.BACKEND_ONLY,
                  R.REWRITE_NEEDS_PREFIX),
    )


def reverseproxy_spec() -> Schema:
    listener = obj(
        "A port the proxy listens on.",
        {
            "name": string("The listener's name, a lowercase DNS label, unique in the "
                           "list.", max_length=R.NAME_LENGTH, pattern=R.DNS_LABEL),
            "port": integer("The port, 1-65535, unique in the list; not one the proxy "
                            "Pod uses itself (8404, 9101).", R.PORT),
            "protocol": string("HTTP or HTTPS (TLS terminated with the certificates of "
                               "the hosts). Defaults to HTTP.", enum=R.RP_PROTOCOL),
            "redirectToHTTPS": boolean(
                "Answer every request with a 301 redirect to the HTTPS listener. Only on "
                "an HTTP listener, and only when there is an HTTPS listener. Defaults to "
                "false.", default=R.REDIRECT_TO_HTTPS),
        },
        required=["name", "port"],
        rules=cel(R.REDIRECT_ONLY_ON_HTTP, *R.RESERVED_PORT_RULES),
    )
    host = obj(
        "A virtual host and its routes.",
        {
            "hostname": string("The host name requests are for: exact (www.example.com) "
                               "or a wildcard (*.example.com).",
                               max_length=R.SUBDOMAIN_LENGTH, pattern=R.DNS_NAME),
            "tls": obj(
                "Serve this host on the HTTPS listeners. Without secretName the operator "
                "issues and rotates a certificate for the hostname.",
                {"secretName": string("A kubernetes.io/tls Secret in the same namespace.",
                                      max_length=R.SUBDOMAIN_LENGTH,
                                      pattern=R.DNS_SUBDOMAIN)}),
            "routes": array("The host's routes, 1-64, in order of precedence.", route(),
                            R.ROUTES, list_type="map", map_keys=["name"]),
        },
        required=["hostname", "routes"],
    )
    return obj(
        "The desired reverse proxy.",
        {
            "listeners": array(
                "The ports the proxy listens on, 1-16, with unique names and ports.",
                listener, R.LISTENERS, list_type="map", map_keys=["name"]),
            "hosts": array("The virtual hosts, 1-32, with unique hostnames.", host,
                           R.HOSTS, list_type="map",
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
                    "maxAge": duration(R.HSTS_MAX_AGE,
                                       "How long browsers remember to use HTTPS."),
                    "includeSubdomains": boolean("Also for every subdomain. Defaults to "
                                                 "false.", default=R.HSTS_INCLUDE_SUBDOMAINS),
                    "preload": boolean("Ask to be preloaded in browsers (needs "
                                       "includeSubdomains). Defaults to false.",
                                       default=R.HSTS_PRELOAD),
                },
                rules=cel(R.PRELOAD_NEEDS_SUBDOMAINS)),
            "upstreamTLS": upstream_tls("plain HTTP"),
            **proxy_settings(),
            "allowedSourceRanges": listener_source_ranges(),
        },
        required=["listeners", "hosts"],
        rules=cel(*LISTENER_RULES, R.HOST_TLS_NEEDS_HTTPS, R.HTTPS_NEEDS_HOST_TLS,
                  R.HSTS_NEEDS_HTTPS, R.CERTIFICATES, R.ALGORITHM_FIRST),
    )


def reverseproxy_crd() -> Schema:
    return crd(
        "ReverseProxy", "reverseproxies", ["rp"],
        "A ReverseProxy runs a highly available HAProxy that routes HTTP requests by host, "
        "path, headers and method to Services.",
        reverseproxy_spec(), "rp")


# ------------------------------------------------------------------------- output

HEADER = ("# Generated by crds/generate.py from operator/roundhouse/model/rules.py (every rule)\n"
          "# and roundhouse.model.crd (the shape); edit those and run `python crds/generate.py`\n"
          "# then `make manifests` (the unit tier fails if a copy differs).\n")

FILES = {"loadbalancers.yaml": loadbalancer_crd, "reverseproxies.yaml": reverseproxy_crd}


def render(doc: Schema) -> str:
    """The text of one CRD file."""
    return HEADER + "---\n" + yaml.safe_dump(doc, sort_keys=False, width=100,
                                            allow_unicode=True)
