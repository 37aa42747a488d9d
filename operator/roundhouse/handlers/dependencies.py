"""Level-based triggers: a change to anything a LoadBalancer depends on re-reconciles it.

Referenced Services and Secrets are found through the rh_lb_refs index; our own
children (proxy Service, Pods, ConfigMaps, issued Secrets) through their owner labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP
from roundhouse.handlers.indexes import MANAGED
from roundhouse.handlers.state import DEBOUNCER, RECONCILER
from roundhouse.reconciler import Indexes


def _affected(kind: str, namespace: str, name: str, labels: Mapping[str, str],
              refs: Mapping[Any, Any]) -> set[str]:
    names = set(refs.get((kind, namespace, name)) or [])
    if labels.get("app.kubernetes.io/managed-by") == "roundhouse" and labels.get(
            f"{API_GROUP}/owner-kind") == "LoadBalancer":
        names.add(labels.get(f"{API_GROUP}/owner-name", ""))
    names.discard("")
    return names


def _trigger(kind: str, namespace: str, name: str, labels: Mapping[str, str],
             kwargs: Mapping[str, Any]) -> None:
    if kwargs.get("type") is None:
        return  # the initial listing: resume handlers reconcile everything anyway
    idx = Indexes.from_kwargs(kwargs)
    bodies = kwargs["rh_loadbalancers"]
    for lb in _affected(kind, namespace, name, labels, kwargs["rh_lb_refs"]):
        async def run(lb: str = lb) -> None:
            body = idx.first(bodies, (namespace, lb))
            if body is not None:
                await RECONCILER.reconcile(body, idx)
        DEBOUNCER.schedule((namespace, lb), run)


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
