"""kopf handlers of the Gateway API controller (registered with `run --gateway-api`).

Each Gateway API object is kept as last seen (gateways.STATE); a change re-reconciles
the Gateways it concerns, through the same Debouncer as the other kinds:

- a GatewayClass of ours: its status (Accepted), and every Gateway of the class;
- a Gateway: itself, on a new generation (not on our own status writes);
- an HTTPRoute: the Gateways it names now and those it was attached to;
- a ReferenceGrant, a Namespace's labels: every Gateway of ours (they are few);
- a Service, EndpointSlice or Secret a Gateway's last build read, a proxy Pod or
  ConfigMap a Gateway owns: that Gateway (dependencies.DEPENDENCY_HOOKS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP, gateways
from roundhouse.handlers.dependencies import DEPENDENCY_HOOKS
from roundhouse.handlers.state import DEBOUNCER, RECONCILER
from roundhouse.model import gatewayapi as g
from roundhouse.reconciler import Indexes

log = logging.getLogger(__name__)
STATE = gateways.STATE
_SEEN: dict[tuple[str, str, str], int] = {}  # (kind, namespace, name) -> generation


def schedule(targets: Iterable[tuple[str, str]], kwargs: Mapping[str, Any]) -> None:
    idx = Indexes.from_kwargs(kwargs)
    for namespace, name in set(targets):
        async def run(namespace: str = namespace, name: str = name) -> float:
            return await gateways.reconcile(RECONCILER, namespace, name, idx)
        DEBOUNCER.schedule(("Gateway", namespace, name), run)


def _new_generation(kind: str, namespace: str, name: str, meta: Mapping[str, Any],
                    event: str | None) -> bool:
    """A change of the spec (or a deletion), not one of our status writes."""
    key = (kind, namespace, name)
    if event == "DELETED":
        _SEEN.pop(key, None)
        return True
    generation = int(meta.get("generation") or 0)
    if _SEEN.get(key) == generation:
        return False
    _SEEN[key] = generation
    return True


@kopf.on.event(g.GROUP, g.VERSION, "gatewayclasses")
async def gatewayclass_changed(name: str, body: kopf.Body, meta: kopf.Meta,
                               type: str | None = None, **kwargs: Any) -> None:
    if type == "DELETED":
        STATE.classes.pop(name, None)
    else:
        STATE.classes[name] = g.parse_gateway_class(dict(body))
    if not _new_generation("GatewayClass", "", name, meta, type):
        return
    if type != "DELETED":
        await gateways.write_class_status(body)
    schedule([k for k, b in STATE.gateways.items() if gateways._class_of(b) == name], kwargs)


@kopf.on.event(g.GROUP, g.VERSION, "gateways")
async def gateway_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta,
                          type: str | None = None, **kwargs: Any) -> None:
    if type == "DELETED":
        STATE.gateways.pop((namespace, name), None)
        RECONCILER.forget("Gateway", namespace, name)
    else:
        STATE.gateways[(namespace, name)] = dict(body)
    if _new_generation("Gateway", namespace, name, meta, type):
        schedule([(namespace, name)], kwargs)


@kopf.on.event(g.GROUP, g.VERSION, "httproutes")
async def httproute_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta,
                            type: str | None = None, **kwargs: Any) -> None:
    key = (namespace, name)
    route = None if type == "DELETED" else g.parse_httproute(dict(body))
    targets = STATE.gateways_of_route(route, key)
    if route is None:
        STATE.routes.pop(key, None)
        STATE.written_routes.pop(key, None)
    else:
        STATE.routes[key] = route
    if _new_generation("HTTPRoute", namespace, name, meta, type):
        schedule(targets, kwargs)


@kopf.on.event(g.GROUP, "v1beta1", "referencegrants")
async def referencegrant_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta,
                                 type: str | None = None, **kwargs: Any) -> None:
    if type == "DELETED":
        STATE.grants.pop((namespace, name), None)
    else:
        STATE.grants[(namespace, name)] = g.parse_reference_grant(dict(body))
    if _new_generation("ReferenceGrant", namespace, name, meta, type):
        schedule(STATE.our_gateways(), kwargs)


@kopf.on.event("namespaces")
async def namespace_changed(name: str, labels: kopf.Labels, type: str | None = None,
                            **kwargs: Any) -> None:
    """allowedRoutes.namespaces.selector reads namespaces' labels."""
    new = dict(labels) if type != "DELETED" else None
    if STATE.namespace_labels.get(name) == new:
        return
    if new is None:
        STATE.namespace_labels.pop(name, None)
    else:
        STATE.namespace_labels[name] = new
    if type is not None:  # a listing fills the labels before the Gateways are built
        schedule(STATE.our_gateways(), kwargs)


def _dependency(kind: str, namespace: str, name: str, labels: Mapping[str, str],
                kwargs: Mapping[str, Any]) -> None:
    targets = set(STATE.gateways_reading(kind, namespace, name))
    if (labels.get("app.kubernetes.io/managed-by") == "roundhouse"
            and labels.get(f"{API_GROUP}/owner-kind") == "Gateway"):
        targets.add((namespace, labels.get(f"{API_GROUP}/owner-name", "")))
    schedule([t for t in targets if t[1] and t in STATE.gateways], kwargs)


DEPENDENCY_HOOKS.append(_dependency)


def reset() -> None:
    """A new term as leader lists everything afresh."""
    STATE.reset()
    _SEEN.clear()
