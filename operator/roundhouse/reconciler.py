"""One reconcile of a LoadBalancer or a ReverseProxy: gather (indexes) -> pure pipeline
and pure status (status.py) -> apply the children -> write the status and its Events.

Called from kopf handlers (create/update/resume/timer) and from debounced dependency
triggers; a per-object lock makes the two paths take turns. Both kinds take the same
path; resources.py answers the few questions whose answer depends on the kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from roundhouse import apply, certificates, metrics, resources, status
from roundhouse.graph import ClusterState, ProxyGraph, child_name, issued_secret_name, names
from roundhouse.model import SpecError
from roundhouse.model.cluster import TLSSecret
from roundhouse.model.pods import ProxyPod
from roundhouse.pipeline import Desired, complete
from roundhouse.render import objects
from roundhouse.reports import stale_reports
from roundhouse.server_state import SlotMap, slot_map
from roundhouse.status import Condition

log = logging.getLogger(__name__)
RETRY_DELAY = 15
DEFAULT_RECONCILE_CONCURRENCY = 256
# How long a dependency-triggered reconcile holds its status write back while others still
# render or write proxy configs (ConfigsFirst).
STATUS_WAIT = 0.5


def reconcile_concurrency() -> int:
    """ROUNDHOUSE_RECONCILE_CONCURRENCY, else 256: enough that the 200 resources of a
    fan-out all queue their config writes before any of them writes its status, few
    enough that 1,000 new resources do not all hold rendered children at once."""
    value = os.environ.get("ROUNDHOUSE_RECONCILE_CONCURRENCY") or ""
    return max(1, int(value)) if value.isdigit() else DEFAULT_RECONCILE_CONCURRENCY
Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass
class Indexes:
    """The kopf indexes a reconcile reads (live mappings, passed from handler kwargs)."""

    services: Mapping[Any, Any]
    slices: Mapping[Any, Any]
    secrets: Mapping[Any, Any]
    configmaps: Mapping[Any, Any]
    pods: Mapping[Any, Any]
    claims: Mapping[Any, Any] = field(default_factory=dict)  # namespace -> Claim

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(kwargs["rh_services"], kwargs["rh_slices"], kwargs["rh_secrets"],
                   kwargs["rh_configmaps"], kwargs["rh_proxy_pods"], kwargs["rh_rp_claims"])

    def first(self, index: Mapping[Any, Any], key: Any) -> Any:
        values = index.get(key)
        return next(iter(values), None) if values is not None else None


@dataclass(frozen=True)
class Outcome:
    """What a reconcile needs of a desired state once its children are applied: the
    graph (conditions, counts, problems), the config's hash and each child's
    fingerprint. Kept per resource instead of the children themselves (about 27 KB of
    Python objects each at 10 endpoints, most of the operator's memory at 1,000
    resources); they are rendered again only when one of them has to be written."""

    graph: ProxyGraph
    config_hash: str
    structure_hash: str
    fingerprints: tuple[tuple[apply.ChildKey, str], ...]

    @classmethod
    def of(cls, desired: Desired, previous: Outcome | None = None) -> Outcome:
        """`previous`: the outcome whose other children a config-only `desired` keeps."""
        prints = dict(previous.fingerprints) if previous is not None else {}
        prints.update((apply.child_key(c), apply.fingerprint(c)) for c in desired.children)
        return cls(desired.graph, desired.rendered.config_hash,
                   desired.rendered.structure_hash, tuple(prints.items()))

    def applied(self, applied: apply.Applied) -> bool:
        """Every child is applied in this form already: nothing to write."""
        return all(applied.get(child) == digest for child, digest in self.fingerprints)


@dataclass
class DesiredCache:
    """The outcome of the last desired state per resource, with the inputs it was
    computed from.

    The pipeline is pure, so equal inputs (the parsed spec, the cluster state it
    resolved against, the hostname conflicts) give an equal result: most reconciles
    (an agent's report, a proxy Pod turning Ready) change none, and at thousands of
    endpoints rendering costs ~150 ms that comparing the inputs does not.
    """

    entries: dict[Key, tuple[Any, Outcome]] = field(default_factory=dict)

    def get(self, key: Key, inputs: Any) -> Outcome | None:
        cached = self.entries.get(key)
        return cached[1] if cached is not None and cached[0] == inputs else None

    def same_shape(self, key: Key, inputs: Any) -> Outcome | None:
        """The last outcome, if it was computed from the same inputs but the endpoints
        (the spec, the conflicts, the Services and Secrets alike; the EndpointSlices and
        the slots may differ). Then the children besides the proxy ConfigMap can only
        differ through the config's structure (the Deployment carries its hash)."""
        cached = self.entries.get(key)
        if cached is None:
            return None
        (model, cluster, conflicts), outcome = cached
        new_model, new_cluster, new_conflicts = inputs
        same = (model == new_model and conflicts == new_conflicts
                and cluster.services == new_cluster.services
                and cluster.secrets == new_cluster.secrets)
        return outcome if same else None

    def put(self, key: Key, inputs: Any, desired: Desired,
            previous: Outcome | None = None) -> Outcome:
        outcome = Outcome.of(desired, previous)
        self.entries[key] = (inputs, outcome)
        return outcome


class ConfigsFirst:
    """Status writes of dependency-triggered reconciles wait (at most STATUS_WAIT) while
    other reconciles still render or write children.

    One change to a Service shared by 200 resources starts 200 reconciles at once; each
    renders, writes its proxy ConfigMap, then its status. Interleaved, the status writes
    of the first ones take CPU and API slots from the configs of the last ones; so the
    statuses go after, and the last proxy learns of the change sooner. A resource's own
    create or spec change does not wait (the 1,000 of a cold start would hold each other
    back)."""

    def __init__(self) -> None:
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _event(self) -> asyncio.Event:
        """The event of the running loop (tests run several loops in one process)."""
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:
            self._idle, self._loop = asyncio.Event(), loop
        if not self._active:
            self._idle.set()
        return self._idle

    @contextlib.contextmanager
    def configuring(self) -> Iterator[None]:
        self._active += 1
        self._event().clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._event().set()

    async def wait(self, limit: float) -> None:
        if self._active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event().wait(), limit)


@dataclass
class Reconciler:
    images: objects.ProxyImages = field(default_factory=objects.ProxyImages)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    last_applied: dict[Key, apply.Applied] = field(default_factory=dict)
    desired: DesiredCache = field(default_factory=DesiredCache)
    written_status: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # (namespace, name) -> content digest of each ConfigMap this process last wrote, and
    # its server slots if it is a proxy ConfigMap (None otherwise)
    configmap_contents: dict[tuple[str, str], tuple[str, SlotMap | None]] = field(
        default_factory=dict)
    # Seconds the last reconcile of each resource spent rendering (0 when nothing was):
    # its CPU cost, which spaces its next dependency-triggered run (trigger.Debouncer).
    render_seconds: dict[Key, float] = field(default_factory=dict)
    configs_first: ConfigsFirst = field(default_factory=ConfigsFirst)
    _gate: asyncio.Semaphore | None = None

    def _slots(self) -> asyncio.Semaphore:
        """At most RECONCILE_CONCURRENCY reconciles render and write children at once
        (their status is written after). The API client lets 16 requests through at a
        time anyway; 1,000 resources created together would otherwise each hold rendered
        children while their 8 writes queue (most of the operator's peak memory), and
        every one would finish late instead of the first ones early."""
        if self._gate is None:
            self._gate = asyncio.Semaphore(reconcile_concurrency())
        return self._gate

    def _remember_configmaps(self, key: Key, desired: Desired,
                             written: list[apply.ChildKey]) -> None:
        kind, namespace, name = key
        proxy_configmap = child_name(kind, name)
        for child in desired.children:
            if child["kind"] == "ConfigMap" and apply.child_key(child) in written:
                configmap = child["metadata"]["name"]
                slots = (slot_map(desired.rendered.server_state)
                         if configmap == proxy_configmap else None)
                self.configmap_contents[(namespace, configmap)] = (
                    apply.content_digest(child), slots)

    def own_configmap_write(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """The event shows a ConfigMap with the content this process last wrote to it:
        the echo of its own write, nothing to reconcile. (A proxy ConfigMap is written
        on every readiness flip: without this, each write re-reconciled its owner.)"""
        return self._own_write(namespace, name, body) is not None

    def own_proxy_configmap(self, namespace: str, name: str,
                            body: Mapping[str, Any]) -> SlotMap | None:
        """The slots of a proxy ConfigMap whose content is what this process last wrote
        (the index then need not decode it: a gzipped megabyte at 8,192 slots), else
        None."""
        wrote = self._own_write(namespace, name, body)
        return wrote[1] if wrote is not None else None

    def _own_write(self, namespace: str, name: str,
                   body: Mapping[str, Any]) -> tuple[str, SlotMap | None] | None:
        """What this process remembers writing to the ConfigMap, if `body` holds it."""
        wrote = self.configmap_contents.get((namespace, name))
        return wrote if wrote is not None and wrote[0] == apply.content_digest(body) else None

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget_applied(self, key: Key, child: apply.ChildKey | None = None) -> None:
        """The next reconcile writes `child` (None: every child) again, even if unchanged:
        it was deleted by hand, or the resync repairs drift."""
        if child is None:
            self.last_applied.pop(key, None)
        else:
            self.last_applied.get(key, {}).pop(child, None)

    def forget_all(self) -> None:
        """A new term as leader: another replica may have written meanwhile, so nothing
        that was applied before counts as applied now."""
        self.locks.clear()
        self.last_applied.clear()
        self.desired.entries.clear()
        self.written_status.clear()
        self.configmap_contents.clear()
        self.render_seconds.clear()

    async def recall_applied(self, namespaces: list[str]) -> int:
        """At the start of a term as leader: what is already applied, from the children
        themselves (apply.applied_children), so the first reconciles write only what
        differs. Best effort: on an error every child is written once, as before.
        Returns how many resources were recalled."""
        try:
            found = await apply.applied_children(namespaces)
        except Exception as error:  # the API down, a namespace forbidden: write them all
            log.warning("cannot read what is applied already (%s): the first reconciles "
                        "apply every child", error)
            return 0
        for key, applied in found.items():
            self.last_applied.setdefault(key, {}).update(
                (child, digest) for child, digest in applied.items()
                if child not in self.last_applied[key])
        return len(found)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.locks.pop((kind, namespace, name), None)
        self.last_applied.pop((kind, namespace, name), None)
        self.desired.entries.pop((kind, namespace, name), None)
        self.written_status.pop((kind, namespace, name), None)
        self.render_seconds.pop((kind, namespace, name), None)
        for configmap in (child_name(kind, name), names.agent_status_name(kind, name)):
            self.configmap_contents.pop((namespace, configmap), None)
        metrics.forget_resource(kind, namespace, name)

    async def reconcile(self, kind: str, body: Any, idx: Indexes,
                        trigger: str = "dependency") -> list[str]:
        """Returns the messages of problems worth a retry (missing dependencies).
        `trigger`: what started it (create, update, resume, resync, dependency)."""
        meta = body.get("metadata") or {}
        key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        async with self.lock(key):
            start, outcome = time.perf_counter(), "error"
            try:
                waiting = await self._reconcile(key, body, idx, trigger == "dependency")
                outcome = "waiting" if waiting else "success"
                return waiting
            except kopf.PermanentError:
                outcome = "invalid"
                raise
            except asyncio.CancelledError:
                outcome = ""  # shutting down: neither a success nor a failure
                raise
            finally:
                if outcome:
                    metrics.observe_reconcile(kind, trigger, outcome,
                                              time.perf_counter() - start)

    async def _reconcile(self, key: Key, body: Any, idx: Indexes,
                         dependency: bool = False) -> list[str]:
        kind, namespace, name = key
        try:
            model = resources.parse(kind, body)
        except SpecError as err:
            message = "; ".join(str(e) for e in err.errors)
            await self._write(key, body, status.invalid_spec(message))
            raise kopf.PermanentError(f"invalid spec: {message}") from err

        owner = objects.owner_of(model)
        cluster = self._cluster_state(model, idx)
        issued = await certificates.ensure_issued(
            owner, names.issued_dns_names(model),
            lambda secret: idx.first(idx.secrets, (namespace, secret)), body)
        if issued:
            cluster = ClusterState(cluster.services, cluster.slices,
                                   {**cluster.secrets, **issued}, cluster.previous_slots)
        conflicts = self._conflicts(body, idx) if kind == "ReverseProxy" else {}
        inputs = (model, cluster, conflicts)
        applied = self.last_applied.setdefault(key, {})
        failure: apply.ApplyError | None = None
        written: list[apply.ChildKey] = []
        # The rendered children are held only in here.
        async with self._slots():
            outcome = self.desired.get(key, inputs)
            self.render_seconds[key] = 0.0
            if outcome is None or not outcome.applied(applied):
                with self.configs_first.configuring():
                    rendering = time.perf_counter()
                    desired, outcome = self._desired(key, inputs, applied)
                    self.render_seconds[key] = time.perf_counter() - rendering
                    try:
                        written = await apply.apply_changed(desired.children, applied,
                                                            dict(outcome.fingerprints))
                    except apply.ApplyError as err:
                        failure = err
                    self._remember_configmaps(key, desired, written)
                    del desired
        conditions = status.conditions(outcome.graph, outcome.config_hash,
                                       model.proxy.replicas, proxy_pods(owner, idx),
                                       report_data(owner, idx))
        proxy_service = idx.first(idx.services, (namespace, child_name(kind, name)))
        counts = status.backend_counts(outcome.graph)
        address = proxy_service.address if proxy_service else None
        if failure is not None:
            # The API server refused a child (too large, a quota, an admission webhook):
            # the user sees its message in status and an Event, and the run is retried.
            await self._write(key, body, status.apply_failed(conditions, str(failure)),
                              counts, address)
            raise kopf.TemporaryError(str(failure), delay=RETRY_DELAY) from failure
        if written:
            log.info("applied %s of %s %s/%s (config %s)",
                     ", ".join(f"{k} {n}" for k, n in written), kind, namespace, name,
                     outcome.config_hash)
        if dependency:
            await self.configs_first.wait(STATUS_WAIT)
        await self._write(key, body, conditions, counts, address)
        await _drop_stale_reports(owner, idx)
        return [p.message for p in outcome.graph.problems if p.retry]

    def _desired(self, key: Key, inputs: tuple[resources.Model, ClusterState, dict[str, str]],
                 applied: apply.Applied) -> tuple[Desired, Outcome]:
        """The children to apply and the new outcome. When only endpoints moved (a
        readiness flip, a scale within the slots) and the config's structure stayed, only
        the proxy ConfigMap is rendered: the other seven children are as last applied."""
        model, cluster, conflicts = inputs
        previous = self.desired.same_shape(key, inputs)
        if previous is not None and previous.applied(applied):
            partial = resources.desired(model, cluster, self.images, conflicts,
                                        config_only=True)
            if partial.rendered.structure_hash == previous.structure_hash:
                return partial, self.desired.put(key, inputs, partial, previous)
            # The structure changed (slots added): the same graph and config, all children.
            desired = complete(partial, model, self.images)
        else:
            desired = resources.desired(model, cluster, self.images, conflicts)
        return desired, self.desired.put(key, inputs, desired)

    def _cluster_state(self, model: resources.Model, idx: Indexes) -> ClusterState:
        ns = model.namespace
        services = {svc: found for svc in sorted(model.service_refs())
                    if (found := idx.first(idx.services, (ns, svc))) is not None}
        slices = [s for svc in services for s in (idx.slices.get((ns, svc)) or [])]
        wanted = model.secret_refs()
        if names.issued_dns_names(model):
            wanted.add(issued_secret_name(names.kind_of(model), model.name))
        secrets: dict[str, TLSSecret] = {}
        for secret_name in sorted(wanted):
            entry = idx.first(idx.secrets, (ns, secret_name))
            if entry is not None:
                secrets[secret_name] = entry[0]
        cm = idx.first(idx.configmaps, (ns, child_name(names.kind_of(model), model.name)))
        return ClusterState(services, slices, secrets, cm["slots"] if cm else {})

    @staticmethod
    def _conflicts(body: Any, idx: Indexes) -> dict[str, str]:
        mine = resources.claim_of(body)
        namespace = (body.get("metadata") or {}).get("namespace")
        return resources.hostname_conflicts(mine, idx.claims.get(namespace) or [])

    async def _write(self, key: Key, body: Any, conditions: list[Condition],
                     counts: dict[str, int] | None = None, address: str | None = None) -> None:
        """The status status.py computes, written only if it changed, with its Events.

        "Changed" against the status this process wrote last, when it wrote one: the body
        a trigger reads from kopf's index can lag behind that write, and a status equal
        to the lagging body but not to the stored one would never be written."""
        kind, namespace, name = key
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        current = body.get("status") or {}
        old = self.written_status.get(key) or current
        previous = old.get("conditions") or []
        new = status.status_body(previous, conditions, generation, dt.datetime.now(dt.UTC),
                                 counts, address)
        # Unchanged against what this process wrote and against the body too: a status
        # someone else wrote over ours (a replaced replica's late write) is put back.
        if status.unchanged(old, new) and status.unchanged(current, new):
            metrics.record_conditions(kind, namespace, name, new["conditions"])
            return
        await apply.write_status(kind, namespace, name, new)
        self.written_status[key] = new
        metrics.record_conditions(kind, namespace, name, new["conditions"])
        apply.post_events(body, status.events(previous, conditions))


async def _drop_stale_reports(owner: objects.Owner, idx: Indexes) -> None:
    """Reports of Pods that are gone: out of the agents' ConfigMap (status ignores them
    already). The operator does it, as it sees the Pods; the agents cannot list them."""
    pods = {p.name for p in proxy_pods(owner, idx)}
    stale = stale_reports(report_data(owner, idx), pods, dt.datetime.now(dt.UTC))
    if not stale:
        return
    name = objects.agent_status_name(owner)
    try:
        await apply.drop_config_map_keys(owner.namespace, name, stale)
    except apply.ApplyError as err:  # the next reconcile tries again
        log.warning("cannot drop stale agent reports: %s", err)
        return
    log.info("dropped the reports of Pods that are gone from %s/%s: %s", owner.namespace,
             name, ", ".join(stale))


def proxy_pods(owner: objects.Owner, idx: Indexes) -> list[ProxyPod]:
    return list(idx.pods.get((owner.namespace, child_name(owner.kind, owner.name))) or [])


def report_data(owner: objects.Owner, idx: Indexes) -> dict[str, str]:
    cm = idx.first(idx.configmaps, (owner.namespace, objects.agent_status_name(owner)))
    return dict(cm["data"]) if cm else {}
