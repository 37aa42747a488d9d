"""The status of a LoadBalancer or a ReverseProxy, computed purely: no I/O, no kopf.

Inputs: what the pure pipeline concluded (the graph's problems, endpoint counts and
certificates; the rendered config's hash), and what the operator's indexes hold about the
proxy (its Pods, model/pods.py; its agents' reports, reports.py; its Service's address).
Outputs: the conditions, the status body, and the Events a change of them deserves. The
reconciler writes the last two (apply.write_status, apply.post_events).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roundhouse.graph import ProxyGraph
from roundhouse.model.pods import ProxyPod
from roundhouse.reports import parse_agent_report

CONDITION_TYPES = ("Accepted", "Programmed", "BackendsHealthy", "TLSReady", "Ready")
# Every reason a condition can take (the graph's problems supply some of them). Ready
# takes "Ready", or the reason of the condition that decides it.
REASONS: dict[str, tuple[str, ...]] = {
    "Accepted": ("Valid", "InvalidSpec", "HostnameConflict"),
    "Programmed": ("Programmed", "ConnectionLimitReduced", "ProxyPodsFailing",
                   "NoReadyReplicas", "ConfigRejected", "Pending", "ApplyFailed"),
    "BackendsHealthy": ("AllReady", "SomeReady", "NoEndpoints", "NoReadyEndpoints",
                        "BackendNotFound", "PortNotFound"),
    "TLSReady": ("NoTLS", "CertificatesReady", "SecretNotFound", "CertificatePending",
                 "InvalidSecret", "RedirectTargetDown"),
}
# True, but short of what the spec asks: Ready stays True and names it, and a Warning
# Event is posted when a condition takes such a reason.
DEGRADED_REASONS = frozenset({"ConnectionLimitReduced"})
# False while work is under way, as after every create and every config change (the
# proxies starting, picking up a new config, a certificate being issued): shown in status,
# never a Warning Event. Posting one per change cost a create request per resource and per
# endpoint flip (an Event storm when many resources share a Service).
PROGRESS_REASONS = frozenset({"Pending", "NoReadyReplicas", "CertificatePending"})
SHOWN = 3  # Pods named in a message; the rest are counted
MESSAGE_CHARS = 1024  # what a condition's message keeps


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Want:
    """What the spec asks of every proxy replica."""

    replicas: int
    config_hash: str
    max_connections: int


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the resource: type is "Normal" or "Warning"."""

    type: str
    reason: str
    message: str


# ------------------------------------------------------------------ conditions


def conditions(graph: ProxyGraph, config_hash: str, replicas: int, pods: Sequence[ProxyPod],
               reports: Mapping[str, str]) -> list[Condition]:
    """Every condition of a valid spec. `reports`: the report ConfigMap's data (Pod ->
    the agent's JSON); reports of Pods not in `pods` count for nothing."""
    want = Want(replicas, config_hash, graph.limits.max_connections)
    parsed = {pod: parse_agent_report(text) for pod, text in reports.items()}
    found = [accepted(graph), programmed(want, pods, parsed), backends_healthy(graph),
             tls_ready(graph)]
    return [*found, ready_condition(found)]


def invalid_spec(message: str) -> list[Condition]:
    """The only condition of a spec that does not parse: nothing else was computed."""
    return [Condition("Accepted", False, "InvalidSpec", message)]


def apply_failed(found: list[Condition], message: str) -> list[Condition]:
    """`found` with Programmed False because the API server refused a child, and Ready
    decided again."""
    refused = Condition("Programmed", False, "ApplyFailed", message)
    kept = [refused if c.type == "Programmed" else c for c in found if c.type != "Ready"]
    return [*kept, ready_condition(kept)]


def accepted(g: ProxyGraph) -> Condition:
    """Valid, but parts refused (a hostname another ReverseProxy serves): False, and why."""
    return _from_problems(g, "Accepted") or Condition("Accepted", True, "Valid",
                                                      "spec is valid")


def programmed(want: Want, pods: Sequence[ProxyPod],
               reports: Mapping[str, Mapping[str, Any]]) -> Condition:
    """Whether every ready proxy replica runs the rendered config, from the Pods and their
    agents' reports (parsed)."""
    ready = sorted(p.name for p in pods if p.ready)
    failing = sorted((p for p in pods if p.problem), key=lambda p: p.name)
    if failing:
        return Condition("Programmed", False, "ProxyPodsFailing",
                         f"{len(ready)}/{want.replicas} proxy replicas are ready; "
                         + _listed([str(p.problem) for p in failing]))
    if not ready:
        return Condition("Programmed", False, "NoReadyReplicas",
                         f"0/{want.replicas} proxy replicas are ready; config "
                         f"{want.config_hash} is waiting for them")
    current = [p for p in ready if reports.get(p, {}).get("configHash") == want.config_hash]
    if len(current) == len(ready):
        summary = f"{len(ready)} ready proxy replica(s) run config {want.config_hash}"
        reduced = _reduced(want, {p: reports.get(p, {}) for p in ready})
        if reduced:
            return Condition("Programmed", True, "ConnectionLimitReduced",
                             f"{reduced}; {summary}")
        return Condition("Programmed", True, "Programmed", summary)
    rejected = sorted({str(r["error"]) for p in ready if (r := reports.get(p, {})).get("error")})
    if rejected:
        return Condition("Programmed", False, "ConfigRejected",
                         f"proxies kept their previous config: {rejected[0]}")
    return Condition("Programmed", False, "Pending",
                     f"{len(current)}/{len(ready)} ready proxy replicas run config "
                     f"{want.config_hash}")


def backends_healthy(g: ProxyGraph) -> Condition:
    broken = _from_problems(g, "BackendsHealthy")
    if broken:
        return broken
    if g.backends_total == 0:
        return Condition("BackendsHealthy", False, "NoEndpoints",
                         "the backend Services have no endpoints")
    if g.backends_ready == 0:
        return Condition("BackendsHealthy", False, "NoReadyEndpoints",
                         f"0/{g.backends_total} endpoints are ready")
    return Condition("BackendsHealthy", True,
                     "AllReady" if g.backends_ready == g.backends_total else "SomeReady",
                     f"{g.backends_ready}/{g.backends_total} endpoints are ready")


def tls_ready(g: ProxyGraph) -> Condition:
    broken = _from_problems(g, "TLSReady")
    if broken:
        return broken
    if not g.certificates:
        return Condition("TLSReady", True, "NoTLS", "no listener terminates TLS")
    names = ", ".join(sorted({c.secret for c in g.certificates}))
    return Condition("TLSReady", True, "CertificatesReady", f"serving certificates from {names}")


def ready_condition(found: list[Condition]) -> Condition:
    """True when every other condition is; else the first False one, named."""
    failing = [c for c in found if not c.status]
    if not failing:
        degraded = [c for c in found if c.reason in DEGRADED_REASONS]
        if degraded:
            return Condition("Ready", True, degraded[0].reason,
                             f"{degraded[0].type}: {degraded[0].message}")
        return Condition("Ready", True, "Ready", "all conditions are met")
    first = failing[0]
    return Condition("Ready", False, first.reason, f"{first.type}: {first.message}")


def _from_problems(g: ProxyGraph, condition: str) -> Condition | None:
    """False with the first problem's reason and every problem's message; None: none."""
    found = [p for p in g.problems if p.condition == condition]
    if not found:
        return None
    return Condition(condition, False, found[0].reason, "; ".join(p.message for p in found))


def _reduced(want: Want, reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Replicas whose HAProxy accepts fewer connections than the spec asks: the node's
    open-files limit is too low for it (HAProxy needs about two per connection)."""
    low = [f"{pod} at most {r['maxconn']} (open-files limit {r.get('ulimitN', '?')})"
           for pod, r in sorted(reports.items())
           if isinstance(r.get("maxconn"), int) and r["maxconn"] < want.max_connections]
    if not low:
        return ""
    return (f"HAProxy accepts fewer connections than spec.limits.maxConnections "
            f"({want.max_connections}): " + _listed(low)
            + "; raise the nodes' open-files limit (RLIMIT_NOFILE) or lower maxConnections")


def _listed(items: list[str]) -> str:
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


# ------------------------------------------------------------------ the status body


def backend_counts(g: ProxyGraph) -> dict[str, int]:
    return {"ready": g.backends_ready, "total": g.backends_total}


def status_body(previous: Iterable[Mapping[str, Any]], found: Iterable[Condition],
                generation: int, now: dt.datetime, counts: Mapping[str, int] | None = None,
                address: str | None = None) -> dict[str, Any]:
    """The status subresource to write. `previous`: the conditions it holds now.
    `counts` and `address` are left out when unknown (an invalid spec, no Service yet)."""
    body: dict[str, Any] = {"observedGeneration": generation,
                            "conditions": merge_conditions(previous, found, generation, now)}
    if counts:
        body["backends"] = dict(counts)
        body["backendSummary"] = f"{counts['ready']}/{counts['total']}"
    if address:
        body["address"] = address
    return body


def unchanged(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Nothing to write: every field of `new` is already in the status as it is."""
    return all(old.get(k) == v for k, v in new.items())


def merge_conditions(previous: Iterable[Mapping[str, Any]], new: Iterable[Condition],
                     generation: int, now: dt.datetime) -> list[dict[str, Any]]:
    """Keep lastTransitionTime unless the status really flipped."""
    before = {c.get("type"): c for c in previous or []}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for c in new:
        status = "True" if c.status else "False"
        old = before.get(c.type) or {}
        out.append({
            "type": c.type,
            "status": status,
            "reason": c.reason,
            "message": c.message[:MESSAGE_CHARS],
            "observedGeneration": generation,
            "lastTransitionTime": old.get("lastTransitionTime", stamp)
            if old.get("status") == status else stamp,
        })
    return out


def events(previous: Iterable[Mapping[str, Any]], found: Iterable[Condition]) -> list[Event]:
    """The Events a written status deserves, against the conditions it held before:
    a Warning when a condition turns False or its message changes while False, unless
    its reason is progress (PROGRESS_REASONS); a Warning once per change of a degraded
    reason (its message names the config, which moves); Normal "Ready" when Ready turns
    True."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for c in found:
        old = before.get(c.type) or {}
        if c.type == "Ready":
            if c.status and old.get("status") != "True":
                out.append(Event("Normal", "Ready", c.message))
        elif not c.status:
            if c.reason in PROGRESS_REASONS:
                continue
            # The status keeps MESSAGE_CHARS of a message: compare what it kept.
            if (old.get("status"), old.get("message")) != ("False", c.message[:MESSAGE_CHARS]):
                out.append(Event("Warning", c.reason, c.message))
        elif c.reason in DEGRADED_REASONS and old.get("reason") != c.reason:
            out.append(Event("Warning", c.reason, c.message))
    return out
