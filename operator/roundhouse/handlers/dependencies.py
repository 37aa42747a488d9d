"""Level-based triggers: a change to anything a resource depends on re-reconciles it.

Referenced Services and Secrets are found through the rh_lb_refs / rh_rp_refs
indexes; our own children (proxy Service, Pods, ConfigMaps, issued Secrets) through
their owner labels; ReverseProxies that share a hostname through rh_rp_claims (the
loser of a conflict takes the hostname over once the winner lets it go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP, API_VERSION
from roundhouse.handlers.indexes import MANAGED
from roundhouse.handlers.state import DEBOUNCER, RECONCILER
from roundhouse.reconciler import Indexes
from roundhouse.resources import KINDS

BODIES = {"LoadBalancer": "rh_loadbalancers", "ReverseProxy": "rh_reverseproxies"}


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


def _schedule(namespace: str, targets: Iterable[tuple[str, str]],
              kwargs: Mapping[str, Any]) -> None:
    idx = Indexes.from_kwargs(kwargs)
    for kind, name in targets:
        bodies = kwargs[BODIES[kind]]

        async def run(kind: str = kind, name: str = name, bodies: Any = bodies) -> None:
            body = idx.first(bodies, (namespace, name))  # None: deleted meanwhile
            if body is not None:
                await RECONCILER.reconcile(kind, body, idx, trigger="dependency")
        DEBOUNCER.schedule((kind, namespace, name), run)


def _trigger(kind: str, namespace: str, name: str, labels: Mapping[str, str],
             kwargs: Mapping[str, Any]) -> None:
    if kwargs.get("type") is None:
        return  # the initial listing: resume handlers reconcile everything anyway
    affected = _affected(kind, namespace, name, labels, kwargs)
    if kwargs.get("type") == "DELETED":
        # One of our children deleted by hand: the reconcile must write it again, not
        # skip it as already applied (the resync timer would, but only minutes later).
        for owner_kind, owner_name in affected:
            RECONCILER.forget_applied((owner_kind, namespace, owner_name), (kind, name))
    _schedule(namespace, affected, kwargs)


@kopf.on.event("services")
async def service_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Service", namespace, name, labels, kwargs)


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices")
async def endpoints_changed(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
    service = labels.get("kubernetes.io/service-name")
    if service:
        _trigger("Service", namespace, service, {}, kwargs)


@kopf.on.event("secrets")
async def secret_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Secret", namespace, name, labels, kwargs)


@kopf.on.event("configmaps", labels=MANAGED)
async def configmap_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("ConfigMap", namespace, name, labels, kwargs)


@kopf.on.event("pods", labels=MANAGED)
async def proxy_pod_changed(namespace: str, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _trigger("Pod", namespace, name, labels, kwargs)


_rp_generations: dict[tuple[str, str], int] = {}


@kopf.on.event(API_GROUP, API_VERSION, "reverseproxies")
async def reverseproxy_changed(namespace: str, name: str, meta: kopf.Meta,
                               **kwargs: Any) -> None:
    """A hostname claimed, changed or released: the other ReverseProxies re-decide.

    Only on spec changes and deletions (not on our own status writes), and for all
    others in the namespace: a hostname just dropped from a spec is not in its claim.
    """
    key = (namespace, name)
    generation = int(meta.get("generation") or 0)
    if kwargs.get("type") == "DELETED":
        _rp_generations.pop(key, None)
    elif kwargs.get("type") is None or _rp_generations.get(key) == generation:
        _rp_generations[key] = generation
        return
    else:
        _rp_generations[key] = generation
    others = {("ReverseProxy", c.name) for c in kwargs["rh_rp_claims"].get(namespace) or []
              if c.name != name}
    _schedule(namespace, others, kwargs)
