"""Level-based triggers: a change to anything a resource depends on re-reconciles it.

Referenced Services and Secrets are found through the rh_lb_refs / rh_rp_refs
indexes; our own children (proxy Service, Pods, ConfigMaps, issued Secrets) through
their owner labels; ReverseProxies that share a hostname through rh_rp_claims (the
loser of a conflict takes the hostname over once the winner lets it go).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP, API_VERSION
from roundhouse.handlers.indexes import MANAGED
from roundhouse.handlers.resync import RESYNC
from roundhouse.handlers.state import DEBOUNCER, RECONCILER
from roundhouse.reconciler import Indexes
from roundhouse.resources import KINDS

log = logging.getLogger(__name__)
BODIES = {"LoadBalancer": "rh_loadbalancers", "ReverseProxy": "rh_reverseproxies"}


class Listed(enum.Enum):
    FIRST = "first"  # the first listing of the kind: the resources' own listing covers it
    UNCHANGED = "unchanged"  # re-listed as it was last seen
    CHANGED = "changed"  # re-listed, new or changed since it was last seen
    RELIST = "relist"  # the first sign of a re-list that may have hidden changes


class Relisting:
    """Tells the listing events of a re-list from those of the first listing.

    kopf lists each watched kind once and then watches from that list's
    resourceVersion. When a broken watch cannot go on from there (the version is no
    longer in etcd's history, compacted every 5 minutes: 410 Gone), kopf lists the
    kind again and hands every object to the event handlers as a listing event
    (type None), as in the first listing, without saying what changed meanwhile. The
    first listing needs no triggers (listing the resources reconciles each of them),
    but a re-list does: a Service, EndpointSlice or Secret that changed while no watch
    was open shows up only there, and would otherwise wait for the 5-minute resync.

    So the last resourceVersion of every object is kept. A listing event is part of a
    re-list once its kind has had a watch event, or when an object is listed a second
    time (a kind with no changes since the start). In a re-list, an object that is new
    or whose version moved re-triggers the resources that depend on it. One case is
    blind: in a kind without any watch event yet, objects created meanwhile that come
    in the list before the first object listed again look like a first listing; for
    them, a re-list noticed that way (RELIST) re-triggers every resource once.
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[Hashable, str]] = {}
        self._watching: set[str] = set()  # kinds with a watch event since their listing
        self._relisting: set[str] = set()

    def listed(self, kind: str, key: Hashable, version: str) -> Listed:
        versions = self._versions.setdefault(kind, {})
        previous = versions.get(key)
        versions[key] = version
        if kind in self._watching:  # a listing after watch events: a re-list
            self._watching.discard(kind)
            self._relisting.add(kind)
            log.info("%s are listed again (a watch was re-established): re-reconciling "
                     "what depends on those that changed", kind)
        elif kind not in self._relisting:
            if previous is None:
                return Listed.FIRST
            self._relisting.add(kind)
            log.info("%s are listed again (a watch was re-established): re-reconciling "
                     "every resource", kind)
            return Listed.RELIST
        return Listed.UNCHANGED if previous == version else Listed.CHANGED

    def watched(self, kind: str, key: Hashable, version: str, deleted: bool = False) -> None:
        versions = self._versions.setdefault(kind, {})
        if deleted:
            versions.pop(key, None)
        else:
            versions[key] = version
        self._relisting.discard(kind)
        self._watching.add(kind)

    def reset(self) -> None:
        """Forget everything: a new kopf run (after a lost Lease) lists afresh."""
        self._versions.clear()
        self._watching.clear()
        self._relisting.clear()


RELISTING = Relisting()
# Called with (kind, namespace, name, labels, kwargs) for every change a resource may
# depend on (a Service, EndpointSlice, Secret, proxy ConfigMap or Pod).
DEPENDENCY_HOOKS: list[Callable[[str, str, str, Mapping[str, str], Mapping[str, Any]],
                                None]] = []


def _affected(kind: str, namespace: str, name: str, labels: Mapping[str, str],
              kwargs: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every resource in `namespace` that depends on this object."""
    found: set[tuple[str, str]] = set()
    for index in ("rh_lb_refs", "rh_rp_refs"):
        found.update(kwargs[index].get((kind, namespace, name)) or [])
    owner_kind = labels.get(f"{API_GROUP}/owner-kind", "")
    owner_name = labels.get(f"{API_GROUP}/owner-name", "")
    if labels.get("app.kubernetes.io/managed-by") == "roundhouse" and owner_kind in KINDS:
        found.add((owner_kind, owner_name))
    return {(k, n) for k, n in found if n}


def schedule(namespace: str, targets: Iterable[tuple[str, str]], kwargs: Mapping[str, Any],
             trigger: str = "dependency") -> None:
    """Reconcile each (kind, name) in `namespace` through the Debouncer, with the body
    kopf's index holds when the run starts (the latest). A run still waiting for
    something (a missing Secret or Service) counts as failed: it is retried with the
    Debouncer's backoff, besides the trigger that the missing object's arrival fires."""
    idx = Indexes.from_kwargs(kwargs)
    RESYNC.remember(kwargs)
    for kind, name in targets:
        bodies = kwargs[BODIES[kind]]

        async def run(kind: str = kind, name: str = name, bodies: Any = bodies) -> float:
            """Returns the run's cost: its seconds of rendering (see trigger.py)."""
            body = idx.first(bodies, (namespace, name))  # None: deleted meanwhile
            if body is None:
                return 0.0
            waiting = await RECONCILER.reconcile(kind, body, idx, trigger=trigger)
            if waiting:
                raise kopf.TemporaryError("waiting for: " + "; ".join(waiting))
            if trigger != "dependency":  # the resource's own create, spec change or listing
                log.info("%s %s/%s reconciled (%s)", kind, namespace, name, trigger)
            return RECONCILER.render_seconds.get((kind, namespace, name), 0.0)
        DEBOUNCER.schedule((kind, namespace, name), run)


def _schedule_all(kwargs: Mapping[str, Any]) -> None:
    by_namespace: dict[str, set[tuple[str, str]]] = {}
    for kind, index in BODIES.items():
        for namespace, name in list(kwargs[index].keys()):
            by_namespace.setdefault(namespace, set()).add((kind, name))
    for namespace, targets in by_namespace.items():
        schedule(namespace, targets, kwargs)


def _trigger(kind: str, namespace: str, name: str, labels: Mapping[str, str],
             kwargs: Mapping[str, Any], watched: str, object_name: str | None = None,
             echo: bool = False) -> None:
    """`watched`: the kind of the event's object (an EndpointSlice stands for its
    Service); `object_name`: its name, when `name` is not it; `echo`: the event shows
    the operator's own last write (kept in the re-list bookkeeping, triggers nothing)."""
    key = (namespace, object_name or name)
    version = str((kwargs.get("meta") or {}).get("resourceVersion") or "")
    if kwargs.get("type") is None:  # a listing: the first one, or a re-list (Relisting)
        listed = RELISTING.listed(watched, key, version)
        if listed in (Listed.FIRST, Listed.UNCHANGED):
            return
        if listed is Listed.RELIST:
            _schedule_all(kwargs)
    else:
        RELISTING.watched(watched, key, version, deleted=kwargs.get("type") == "DELETED")
        if echo:
            return
    for hook in DEPENDENCY_HOOKS:  # the Gateway API controller's (handlers/gateway.py)
        hook(kind, namespace, name, labels, kwargs)
    affected = _affected(kind, namespace, name, labels, kwargs)
    if kwargs.get("type") == "DELETED":
        # One of our children deleted by hand: the reconcile must write it again, not
        # skip it as already applied (the resync timer would, but only minutes later).
        for owner_kind, owner_name in affected:
            RECONCILER.forget_applied((owner_kind, namespace, owner_name), (kind, name))
    schedule(namespace, affected, kwargs)


@kopf.on.event("services")
async def service_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Service", namespace, name, labels, kwargs, "services")


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices")
async def endpoints_changed(namespace: str, name: str, labels: kopf.Labels,
                            **kwargs: Any) -> None:
    service = labels.get("kubernetes.io/service-name")
    if service:
        _trigger("Service", namespace, service, {}, kwargs, "endpointslices", name)


@kopf.on.event("secrets")
async def secret_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Secret", namespace, name, labels, kwargs, "secrets")


@kopf.on.event("configmaps", labels=MANAGED)
async def configmap_changed(namespace: str, name: str, labels: kopf.Labels, body: kopf.Body,
                            **kwargs: Any) -> None:
    echo = (kwargs.get("type") in ("ADDED", "MODIFIED")
            and RECONCILER.own_configmap_write(namespace, name, body))
    _trigger("ConfigMap", namespace, name, labels, kwargs, "configmaps", echo=echo)


@kopf.on.event("pods", labels=MANAGED)
async def proxy_pod_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Pod", namespace, name, labels, kwargs, "pods")


_rp_generations: dict[tuple[str, str], int] = {}


@kopf.on.event(API_GROUP, API_VERSION, "reverseproxies")
async def reverseproxy_changed(namespace: str, name: str, meta: kopf.Meta,
                               **kwargs: Any) -> None:
    """A hostname claimed, changed or released: the other ReverseProxies re-decide.

    Only on spec changes and deletions (not on our own status writes), and for all
    others in the namespace: a hostname just dropped from a spec is not in its claim.
    A listing is skipped unless it shows a spec that changed since it was last seen
    (a re-list after the watch broke; see Relisting).
    """
    key = (namespace, name)
    generation = int(meta.get("generation") or 0)
    previous = _rp_generations.get(key)
    if kwargs.get("type") == "DELETED":
        _rp_generations.pop(key, None)
    else:
        _rp_generations[key] = generation
        if previous == generation or (kwargs.get("type") is None and previous is None):
            return
    others = {("ReverseProxy", c.name) for c in kwargs["rh_rp_claims"].get(namespace) or []
              if c.name != name}
    schedule(namespace, others, kwargs)


def reset() -> None:
    """A new kopf run (after a lost Lease) lists everything afresh."""
    RELISTING.reset()
    _rp_generations.clear()
