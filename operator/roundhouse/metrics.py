"""The operator's Prometheus metrics, and the small helpers the I/O layers record them with.

Everything lives in prometheus_client's default registry, beside its process and Python
collectors (`process_resident_memory_bytes`, `process_cpu_seconds_total`), and is served by
`serve()` from before leader election on: a standby replica answers too (leader 0).
The agent keeps its own registry and port (roundhouse.agent.metrics); both use the
`roundhouse_` prefix, `roundhouse_operator_` here.

Pure modules never import this: the reconciler, kube.py, leader.py and the handlers
record what they did, the pipeline stays free of side effects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server

from roundhouse.resources import KINDS
from roundhouse.status import CONDITION_TYPES

PREFIX = "roundhouse_operator"
# A reconcile's outcome: done; done but waiting for something missing (a Secret, a
# Service); refused for an invalid spec; failed (an API error, a refused child).
OUTCOMES = ("success", "waiting", "invalid", "error")
# What started a reconcile: kopf's create/update/resume, the resync timer, or a change of
# something it depends on (handlers/dependencies.py).
TRIGGERS = ("create", "update", "resume", "resync", "dependency")
# The verbs of kube.request, as Kubernetes' audit log names them.
VERBS = ("get", "create", "update", "apply", "patch", "delete")
RESULTS = ("2xx", "3xx", "4xx", "5xx", "error")  # HTTP status class; error: no answer
# Reconciles take milliseconds (nothing changed) to seconds (thousands of endpoints, a
# busy API server); API requests likewise.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


RECONCILE_DURATION = Histogram(
    _name("reconcile_duration_seconds"),
    "Time one reconcile took (after its per-resource lock), by kind and outcome.",
    ["kind", "outcome"], buckets=DURATION_BUCKETS)
RECONCILES = Counter(
    _name("reconciles"), "Reconciles run, by kind, what triggered them and outcome.",
    ["kind", "trigger", "outcome"])
RETRIES = Counter(
    _name("retries"),
    "Reconciles that failed or wait for a dependency and are scheduled to run again.",
    ["kind", "trigger"])
TRIGGER_EVENTS = Counter(
    _name("trigger_events"),
    "Dependency events (Service, EndpointSlice, Secret, Pod, ConfigMap) that asked for a "
    "re-reconcile of a resource.")
TRIGGER_COALESCED = Counter(
    _name("trigger_coalesced_events"),
    "Dependency events merged into a re-reconcile that was already pending for the resource.")
TRIGGER_PENDING = Gauge(
    _name("trigger_pending"),
    "Resources with a re-reconcile pending (waiting for the spacing, or for their running "
    "reconcile to end).")
API_REQUESTS = Counter(
    _name("api_requests"),
    "Requests the operator sent to the API server (children, status, CA reads), by verb, "
    "resource and result (HTTP status class, or error when no answer came).",
    ["verb", "resource", "result"])
API_DURATION = Histogram(
    _name("api_request_duration_seconds"),
    "Time from sending an API request to reading its answer, by verb.",
    ["verb"], buckets=DURATION_BUCKETS)
API_IN_FLIGHT = Gauge(
    _name("api_requests_in_flight"), "API requests sent and not yet answered.")
API_WAITING = Gauge(
    _name("api_requests_waiting"),
    "API requests queued for a free slot (ROUNDHOUSE_API_CONCURRENCY are in flight at most).")
RESOURCE_CONDITIONS = Gauge(
    _name("resource_conditions"),
    "Resources whose status condition has this status, by kind (as last written).",
    ["kind", "condition", "status"])
LEADER = Gauge(
    _name("leader"),
    "1 while this replica reconciles (holds the Lease, or runs without leader election).")


def _initialize() -> None:
    """Export zeros for the label sets known up front: rate() and sum() work from the
    first event, and a dashboard shows 0 rather than no data."""
    for kind in KINDS:
        for outcome in OUTCOMES:
            RECONCILE_DURATION.labels(kind, outcome)
            for trigger in TRIGGERS:
                RECONCILES.labels(kind, trigger, outcome)
        for trigger in TRIGGERS:
            RETRIES.labels(kind, trigger)
        for condition in CONDITION_TYPES:
            for status in ("True", "False"):
                RESOURCE_CONDITIONS.labels(kind, condition, status)


_initialize()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """/metrics on `port` (a daemon thread); 0 disables."""
    if port:
        _start_http_server(port, addr=address)


def observe_reconcile(kind: str, trigger: str, outcome: str, seconds: float) -> None:
    RECONCILES.labels(kind, trigger, outcome).inc()
    RECONCILE_DURATION.labels(kind, outcome).observe(seconds)


def count_retry(kind: str, trigger: str) -> None:
    RETRIES.labels(kind, trigger).inc()


def trigger_scheduled(coalesced: bool) -> None:
    """A dependency event for one resource; `coalesced`: one was pending already."""
    TRIGGER_EVENTS.inc()
    if coalesced:
        TRIGGER_COALESCED.inc()
    else:
        TRIGGER_PENDING.inc()


def trigger_started() -> None:
    """A pending re-reconcile starts: the events from now on schedule the next one."""
    TRIGGER_PENDING.dec()


def set_leader(leading: bool) -> None:
    LEADER.set(1 if leading else 0)


# The conditions last written per resource, so a change moves the gauge by one.
_conditions: dict[tuple[str, str, str], dict[str, str]] = {}


def record_conditions(kind: str, namespace: str, name: str,
                      conditions: Iterable[Mapping[str, Any]]) -> None:
    """The conditions of a resource's status as written (or found already written)."""
    key = (kind, namespace, name)
    new = {str(c.get("type")): str(c.get("status")) for c in conditions}
    old = _conditions.get(key, {})
    if new == old:
        return
    for condition, status in old.items():
        RESOURCE_CONDITIONS.labels(kind, condition, status).dec()
    for condition, status in new.items():
        RESOURCE_CONDITIONS.labels(kind, condition, status).inc()
    _conditions[key] = new


def forget_resource(kind: str, namespace: str, name: str) -> None:
    """The resource is deleted: it no longer counts."""
    for condition, status in _conditions.pop((kind, namespace, name), {}).items():
        RESOURCE_CONDITIONS.labels(kind, condition, status).dec()


def api_verb(method: str, content_type: str) -> str:
    """kube.request's HTTP method as a Kubernetes verb (a server-side apply is a PATCH)."""
    method = method.upper()
    if method == "PATCH":
        return "apply" if content_type == "application/apply-patch+yaml" else "patch"
    return {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}.get(
        method, method.lower())


def api_resource(path: str) -> str:
    """'configmaps', 'loadbalancers/status': the plural (and subresource) of an object path
    /api(s)/.../namespaces/NS/PLURAL/NAME[/SUBRESOURCE]; the label stays a small set."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2:]
        if rest:
            return "/".join([rest[0], *rest[2:3]])
    return "other"


def result_class(status: int | None) -> str:
    return f"{status // 100}xx" if status and 200 <= status < 600 else "error"


@dataclass
class ApiCall:
    """Filled in by the caller once the answer came; no status: no answer."""

    status: int | None = None


@contextmanager
def api_waiting() -> Iterator[None]:
    """Around waiting for a slot under kube.py's gate."""
    API_WAITING.inc()
    try:
        yield
    finally:
        API_WAITING.dec()


@contextmanager
def api_request(verb: str, resource: str) -> Iterator[ApiCall]:
    """Around one request in flight: counts it by result and times it."""
    call = ApiCall()
    API_IN_FLIGHT.inc()
    start = time.perf_counter()
    try:
        yield call
    finally:
        API_IN_FLIGHT.dec()
        API_DURATION.labels(verb).observe(time.perf_counter() - start)
        API_REQUESTS.labels(verb, resource, result_class(call.status)).inc()


def sample(name: str, labels: Mapping[str, str] | None = None,
           registry: CollectorRegistry = REGISTRY) -> float:
    """The current value of one sample (0 if it has none yet): for tests and the bench."""
    value = registry.get_sample_value(name, dict(labels or {}))
    return value if value is not None else 0.0
