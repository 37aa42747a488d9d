"""One reconcile of a LoadBalancer: gather (indexes) -> pure pipeline -> apply -> status.

Called from kopf handlers (create/update/resume/timer) and from debounced dependency
triggers; a per-object lock makes the two paths take turns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from roundhouse import apply, certificates, status
from roundhouse.graph import ClusterState, ProxyGraph, child_name
from roundhouse.model import SpecError, parse_loadbalancer
from roundhouse.model.cluster import TLSSecret
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.pipeline import Desired, desired_for_loadbalancer, loadbalancer_owner
from roundhouse.render import objects
from roundhouse.status import Condition

log = logging.getLogger(__name__)
RETRY_DELAY = 15


@dataclass
class Indexes:
    """The kopf indexes a reconcile reads (live mappings, passed from handler kwargs)."""

    services: Mapping[Any, Any]
    slices: Mapping[Any, Any]
    secrets: Mapping[Any, Any]
    configmaps: Mapping[Any, Any]
    pods: Mapping[Any, Any]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(kwargs["rh_services"], kwargs["rh_slices"], kwargs["rh_secrets"],
                   kwargs["rh_configmaps"], kwargs["rh_proxy_pods"])

    def first(self, index: Mapping[Any, Any], key: Any) -> Any:
        values = index.get(key)
        return next(iter(values), None) if values is not None else None


@dataclass
class Reconciler:
    images: objects.ProxyImages = field(default_factory=objects.ProxyImages)
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    last_applied: dict[tuple[str, str], str] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        self.locks.pop((namespace, name), None)
        self.last_applied.pop((namespace, name), None)

    async def reconcile(self, body: Any, idx: Indexes) -> list[str]:
        """Returns the messages of problems worth a retry (missing dependencies)."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        async with self.lock(namespace, name):
            return await self._reconcile(body, idx, namespace, name)

    async def _reconcile(self, body: Any, idx: Indexes, namespace: str,
                         name: str) -> list[str]:
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        previous = (body.get("status") or {}).get("conditions") or []
        try:
            lb = parse_loadbalancer(dict(body))
        except SpecError as err:
            message = "; ".join(str(e) for e in err.errors)
            await self._write(body, namespace, name, generation, previous, [
                Condition("Accepted", False, "InvalidSpec", message)], {}, None)
            raise kopf.PermanentError(f"invalid spec: {message}") from err

        cluster = self._cluster_state(lb, idx)
        issued = await certificates.ensure_issued(
            lb, lambda secret: idx.first(idx.secrets, (namespace, secret)), body)
        if issued:
            cluster = ClusterState(cluster.services, cluster.slices,
                                   {**cluster.secrets, **issued}, cluster.previous_slots)
        desired = desired_for_loadbalancer(lb, cluster, self.images)
        fingerprint = apply.fingerprint(desired.children)
        if self.last_applied.get((namespace, name)) != fingerprint:
            await apply.apply_all(desired.children)
            self.last_applied[(namespace, name)] = fingerprint
            log.info("applied %d children of LoadBalancer %s/%s (config %s)",
                     len(desired.children), namespace, name, desired.rendered.config_hash)
        conditions = self._conditions(lb, desired, idx)
        proxy_service = idx.first(idx.services, (namespace, child_name("LoadBalancer", name)))
        counts = {"ready": desired.graph.backends_ready, "total": desired.graph.backends_total}
        await self._write(body, namespace, name, generation, previous, conditions, counts,
                          proxy_service.address if proxy_service else None)
        return [p.message for p in desired.graph.problems if p.retry]

    def _cluster_state(self, lb: LoadBalancer, idx: Indexes) -> ClusterState:
        ns = lb.namespace
        services = {be.service: svc for be in lb.backends
                    if (svc := idx.first(idx.services, (ns, be.service))) is not None}
        slices = [s for svc in services for s in (idx.slices.get((ns, svc)) or [])]
        secrets: dict[str, TLSSecret] = {}
        for li in lb.listeners:
            if li.tls is None:
                continue
            secret_name = li.tls.secret_name or certificates.issued_name(lb)
            entry = idx.first(idx.secrets, (ns, secret_name))
            if entry is not None:
                secrets[secret_name] = entry[0]
        cm = idx.first(idx.configmaps, (ns, child_name("LoadBalancer", lb.name)))
        return ClusterState(services, slices, secrets, cm["slots"] if cm else {})

    def _conditions(self, lb: LoadBalancer, desired: Desired, idx: Indexes) -> list[Condition]:
        g = desired.graph
        conditions = [Condition("Accepted", True, "Valid", "spec is valid")]
        conditions.append(_programmed(lb, desired, idx))
        conditions.append(_backends_healthy(g))
        conditions.append(_tls_ready(lb, g))
        conditions.append(status.ready_condition(conditions))
        return conditions

    async def _write(self, body: Any, namespace: str, name: str, generation: int,
                     previous: list[Any], conditions: list[Condition], counts: dict[str, int],
                     address: str | None) -> None:
        now = dt.datetime.now(dt.UTC)
        merged = status.merge_conditions(previous, conditions, generation, now)
        new_status: dict[str, Any] = {"observedGeneration": generation, "conditions": merged}
        if counts:
            new_status["backends"] = counts
            new_status["backendSummary"] = f"{counts['ready']}/{counts['total']}"
        if address:
            new_status["address"] = address
        old = body.get("status") or {}
        if all(old.get(k) == v for k, v in new_status.items()):
            return
        await status.write_status("LoadBalancer", namespace, name, new_status)
        before = {c.get("type"): (c.get("status"), c.get("message")) for c in previous}
        for c in conditions:
            if not c.status and c.type != "Ready" and before.get(c.type) != ("False", c.message):
                kopf.event(body, type="Warning", reason=c.reason, message=c.message)
            elif c.status and c.type == "Ready" and before.get("Ready", ("",))[0] != "True":
                kopf.event(body, type="Normal", reason="Ready", message=c.message)


def _programmed(lb: LoadBalancer, desired: Desired, idx: Indexes) -> Condition:
    instance = child_name("LoadBalancer", lb.name)
    pods = list(idx.pods.get((lb.namespace, instance)) or [])
    ready = sorted(pod for pod, is_ready in pods if is_ready)
    want = desired.rendered.config_hash
    if not ready:
        return Condition("Programmed", False, "NoReadyReplicas",
                         f"0/{lb.proxy.replicas} proxy replicas are ready; config {want} "
                         "is waiting for them")
    cm = idx.first(idx.configmaps, (lb.namespace, objects.agent_status_name(
        loadbalancer_owner(lb))))
    reports = {pod: parse_agent_report(text) for pod, text in (cm["data"] if cm else {}).items()}
    current = [p for p in ready if reports.get(p, {}).get("configHash") == want]
    if len(current) == len(ready):
        return Condition("Programmed", True, "Programmed",
                         f"{len(ready)} ready proxy replica(s) run config {want}")
    rejected = sorted({str(r["error"]) for p in ready if (r := reports.get(p, {})).get("error")})
    if rejected:
        return Condition("Programmed", False, "ConfigRejected",
                         f"proxies kept their previous config: {rejected[0]}")
    return Condition("Programmed", False, "Pending",
                     f"{len(current)}/{len(ready)} ready proxy replicas run config {want}")


def parse_agent_report(text: str) -> dict[str, Any]:
    """An agent's report: {"configHash", "structureHash", "error", "reloads", "time"}."""
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _backends_healthy(g: ProxyGraph) -> Condition:
    broken = [p for p in g.problems if p.condition == "BackendsHealthy"]
    if broken:
        return Condition("BackendsHealthy", False, broken[0].reason,
                         "; ".join(p.message for p in broken))
    if g.backends_total == 0:
        return Condition("BackendsHealthy", False, "NoEndpoints",
                         "the backend Services have no endpoints")
    if g.backends_ready == 0:
        return Condition("BackendsHealthy", False, "NoReadyEndpoints",
                         f"0/{g.backends_total} endpoints are ready")
    return Condition("BackendsHealthy", True,
                     "AllReady" if g.backends_ready == g.backends_total else "SomeReady",
                     f"{g.backends_ready}/{g.backends_total} endpoints are ready")


def _tls_ready(lb: LoadBalancer, g: ProxyGraph) -> Condition:
    broken = [p for p in g.problems if p.condition == "TLSReady"]
    if broken:
        return Condition("TLSReady", False, broken[0].reason,
                         "; ".join(p.message for p in broken))
    if not g.certificates:
        return Condition("TLSReady", True, "NoTLS", "no listener terminates TLS")
    names = ", ".join(sorted({c.secret for c in g.certificates}))
    return Condition("TLSReady", True, "CertificatesReady", f"serving certificates from {names}")
