"""The Gateway API controller: GatewayClasses of controllerName roundhouse.dev/gateway-controller,
their Gateways and the HTTPRoutes attached to them.

What it keeps: the Gateway API objects as last seen (the handlers in handlers/gateway.py
feed them), and per Gateway the route statuses and the Services and Secrets its last
build read (which changes re-reconcile it). A reconcile of one Gateway: gather (the kopf
indexes of Services, EndpointSlices, Secrets, proxy Pods and ConfigMaps the other kinds
use) -> graph.build_gateway_graph (pure) -> the same children as a ReverseProxy, applied
the same way -> the statuses of the Gateway and of its routes' parent entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roundhouse import apply, status
from roundhouse.graph import ClusterState, child_name
from roundhouse.graph.gateway import (
    MIRRORED_SECRET_PREFIX,
    Condition,
    GatewayBuild,
    ListenerResult,
    ParentResult,
    build_gateway_graph,
    gateway_cluster_state,
    mirrored_secret_name,
)
from roundhouse.model import gatewayapi as g
from roundhouse.model.cluster import TLSSecret
from roundhouse.model.common import ProxySettings
from roundhouse.pipeline import desired_for_gateway
from roundhouse.reconciler import Indexes, Reconciler, proxy_pods, report_data
from roundhouse.render import objects
from roundhouse.reports import parse_agent_report

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, name)
COPY_OF = "roundhouse.dev/copy-of"


@dataclass
class GatewayState:
    """The Gateway API objects as last seen, and what each Gateway's last build read."""

    classes: dict[str, g.GatewayClass] = field(default_factory=dict)
    gateways: dict[Key, dict[str, Any]] = field(default_factory=dict)  # raw bodies
    routes: dict[Key, g.HTTPRoute] = field(default_factory=dict)
    grants: dict[Key, g.ReferenceGrant] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # per Gateway: the route statuses it contributes, and the objects it read
    parents: dict[Key, dict[Key, list[ParentResult]]] = field(default_factory=dict)
    reads: dict[Key, set[tuple[str, str, str]]] = field(default_factory=dict)
    written_routes: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    written_gateways: dict[Key, dict[str, Any]] = field(default_factory=dict)
    written_classes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ours(self, class_name: str) -> bool:
        cls = self.classes.get(class_name)
        return cls is not None and cls.controller_name == g.CONTROLLER_NAME

    def our_gateways(self, class_name: str | None = None) -> list[Key]:
        return [k for k, body in self.gateways.items()
                if self.ours(_class_of(body))
                and (class_name is None or _class_of(body) == class_name)]

    def gateways_reading(self, kind: str, namespace: str, name: str) -> list[Key]:
        return [k for k, read in self.reads.items() if (kind, namespace, name) in read]

    def gateways_of_route(self, route: g.HTTPRoute | None, key: Key) -> set[Key]:
        """The Gateways a route names now, and those it was attached to before."""
        out = {k for k, routes in self.parents.items() if key in routes}
        if route is not None:
            out |= {(p.namespace, p.name) for p in route.parent_refs
                    if p.group == g.GROUP and p.kind == "Gateway"}
        return {k for k in out if k in self.gateways}

    def reset(self) -> None:
        for value in vars(self).values():
            value.clear()


STATE = GatewayState()


def proxy_defaults() -> ProxySettings:
    """The proxy settings of every Gateway (Gateway API has no field for them): the chart's
    gatewayAPI.proxy values, passed as ROUNDHOUSE_GATEWAY_PROXY (JSON: replicas,
    resources, serviceType); Roundhouse's defaults otherwise."""
    raw = os.environ.get("ROUNDHOUSE_GATEWAY_PROXY") or "{}"
    try:
        given = json.loads(raw)
    except ValueError:
        log.warning("ROUNDHOUSE_GATEWAY_PROXY is not JSON (%r): using the defaults", raw)
        given = {}
    base = ProxySettings()
    return ProxySettings(
        replicas=int(given.get("replicas") or base.replicas),
        service_type=str(given.get("serviceType") or base.service_type),
        resources=dict(given.get("resources") or {}),
    )


PROXY_DEFAULTS = proxy_defaults()


def _class_of(body: Mapping[str, Any]) -> str:
    return str((body.get("spec") or {}).get("gatewayClassName") or "")


# ------------------------------------------------------------------------- gathering


def cluster_state(gw: g.Gateway, routes: list[g.HTTPRoute], idx: Indexes
                  ) -> tuple[ClusterState, set[tuple[str, str, str]]]:
    """graph.gateway_cluster_state from the kopf indexes; and what was read."""
    def secret(namespace: str, name: str) -> TLSSecret | None:
        entry = idx.first(idx.secrets, (namespace, name))
        return entry[0] if entry is not None else None

    cm = idx.first(idx.configmaps, (gw.namespace, child_name("Gateway", gw.name)))
    return gateway_cluster_state(
        gw, routes, lambda ns, name: idx.first(idx.services, (ns, name)),
        lambda ns, name: idx.slices.get((ns, name)) or [], secret,
        cm["slots"] if cm else {})


# ------------------------------------------------------------------------- reconcile


async def reconcile(reconciler: Reconciler, namespace: str, name: str, idx: Indexes) -> float:
    """One Gateway. Returns the seconds spent rendering (the Debouncer's cost)."""
    key = (namespace, name)
    body = STATE.gateways.get(key)
    if body is None or not STATE.ours(_class_of(body)):
        await _forget(key)
        return 0.0
    gw = dataclasses.replace(g.parse_gateway(body), proxy=PROXY_DEFAULTS)
    routes = [r for r in STATE.routes.values()
              if any(p.group == g.GROUP and p.kind == "Gateway" and p.namespace == namespace
                     and p.name == name for p in r.parent_refs)]
    async with reconciler.lock(("Gateway", namespace, name)):
        start = time.perf_counter()
        cluster, reads = cluster_state(gw, routes, idx)
        build = build_gateway_graph(gw, routes, list(STATE.grants.values()), cluster,
                                    STATE.namespace_labels)
        desired = desired_for_gateway(build.graph, gw, reconciler.images)
        cost = time.perf_counter() - start
        copies = await mirrored_secrets(gw, build, idx)
        children = list(desired.children) + copies
        applied = reconciler.last_applied.setdefault(("Gateway", namespace, name), {})
        prints = {apply.child_key(c): apply.fingerprint(c) for c in children}
        failure = None
        try:
            written = await apply.apply_changed(children, applied, prints)
        except apply.ApplyError as err:
            failure, written = str(err), []
        try:  # even when a child was refused: a revoked grant's key goes all the same
            await _delete_stale_copies(namespace, name, applied, copies)
        except apply.ApplyError as err:
            failure = failure or str(err)
        if written:
            log.info("applied %s of Gateway %s/%s (config %s)",
                     ", ".join(f"{k} {n}" for k, n in written), namespace, name,
                     desired.rendered.config_hash)
        STATE.reads[key] = reads
        owner = objects.owner_of(gw)
        programmed = status.programmed(
            status.Want(gw.proxy.replicas, desired.rendered.config_hash,
                        gw.limits.max_connections),
            proxy_pods(owner, idx),
            {p: parse_agent_report(t) for p, t in report_data(owner, idx).items()})
        service = idx.first(idx.services, (namespace, child_name("Gateway", name)))
        address = service.address if service else None
        await _write_gateway(key, body, build, programmed, address, failure)
        await _write_routes(key, build.routes)
    return cost


# (namespace, name) -> (fingerprint, the Secret's data): a copy is fetched once per
# rotation, and only the newest rotation of each Secret is kept.
_MIRRORED: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}


async def mirrored_secrets(gw: g.Gateway, build: GatewayBuild,
                           idx: Indexes) -> list[dict[str, Any]]:
    """The copies, in the Gateway's namespace, of the certificate Secrets the graph serves
    from other namespaces (a ReferenceGrant allowed each): children of the Gateway, so
    they go with it; rewritten when the original rotates (its fingerprint moves)."""
    wanted = {c.secret for c in build.graph.certificates}
    owner = objects.owner_of(gw)
    out = []
    for li in gw.listeners:
        for ref in li.certificate_refs:
            copy = mirrored_secret_name(gw.name, ref.namespace, ref.name)
            if ref.namespace == gw.namespace or copy not in wanted:
                continue
            entry = idx.first(idx.secrets, (ref.namespace, ref.name))
            if entry is None:
                continue
            source, fingerprint = (ref.namespace, ref.name), entry[0].fingerprint
            cached = _MIRRORED.get(source)
            if cached is None or cached[0] != fingerprint:
                obj = await apply.read_object("Secret", ref.namespace, ref.name)
                data = (obj or {}).get("data") or {}
                cached = fingerprint, {k: data[k] for k in ("tls.crt", "tls.key") if k in data}
                _MIRRORED[source] = cached
            wanted.discard(copy)  # two listeners naming one Secret: one copy
            out.append({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {**objects.child_meta(owner, copy), "annotations": {
                    COPY_OF: f"{ref.namespace}/{ref.name}"}},
                "data": cached[1],
            })
    return out


def stale_copies(applied: Mapping[tuple[str, str], str],
                 copies: list[dict[str, Any]]) -> list[str]:
    """The certificate copies this Gateway applied before (in this term, or in an earlier
    one: Reconciler.recall_applied) and serves no more (its ReferenceGrant revoked, the
    listener or its reference gone): a private key must not stay behind in the Gateway's
    namespace once nothing allows it there."""
    current = {c["metadata"]["name"] for c in copies}
    return sorted(name for kind, name in applied if kind == "Secret"
                  and name.startswith(MIRRORED_SECRET_PREFIX) and name not in current)


async def _delete_stale_copies(namespace: str, name: str, applied: dict[tuple[str, str], str],
                               copies: list[dict[str, Any]]) -> None:
    for copy in stale_copies(applied, copies):
        await apply.delete_object("Secret", namespace, copy)
        applied.pop(("Secret", copy), None)
        log.info("deleted the certificate copy %s/%s of Gateway %s: no longer served",
                 namespace, copy, name)


async def _forget(key: Key) -> None:
    """Not (or no longer) ours: take our parent entries off its routes."""
    if key in STATE.parents:
        await _write_routes(key, {})
    STATE.parents.pop(key, None)
    STATE.reads.pop(key, None)
    STATE.written_gateways.pop(key, None)


def _conditions(found: list[Condition], previous: list[Mapping[str, Any]], generation: int,
                now: dt.datetime) -> list[dict[str, Any]]:
    return status.merge_conditions(
        previous, [status.Condition(c.type, c.status, c.reason, c.message) for c in found],
        generation, now)


def gateway_status(body: Mapping[str, Any], build: GatewayBuild, programmed: status.Condition,
                   address: str | None, failure: str | None, now: dt.datetime
                   ) -> dict[str, Any]:
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    old = body.get("status") or {}
    ready = programmed.status and address is not None and failure is None
    if failure is not None:
        gw_programmed = Condition(g.PROGRAMMED, False, g.REASON_INVALID, failure)
    elif address is None:
        gw_programmed = Condition(g.PROGRAMMED, False, "AddressNotAssigned",
                                  "the proxy Service has no address yet")
    else:
        gw_programmed = Condition(g.PROGRAMMED, programmed.status,
                                  g.REASON_PROGRAMMED if programmed.status else
                                  g.REASON_INVALID if programmed.reason == "ConfigRejected"
                                  else g.REASON_PENDING, programmed.message)
    old_listeners = {li.get("name"): li for li in old.get("listeners") or []}
    listeners = []
    for li in build.listeners:
        found = [c if c.type != g.PROGRAMMED or not c.status or ready else
                 Condition(g.PROGRAMMED, False, g.REASON_PENDING, gw_programmed.message)
                 for c in li.conditions]
        listeners.append(_listener_status(li, found, old_listeners.get(li.name) or {},
                                          generation, now))
    out: dict[str, Any] = {
        "conditions": _conditions([*build.conditions, gw_programmed],
                                  old.get("conditions") or [], generation, now),
        "listeners": listeners,
    }
    if address:
        out["addresses"] = [{"type": "Hostname" if not _is_ip(address) else "IPAddress",
                             "value": address}]
    return out


def _listener_status(li: ListenerResult, found: list[Condition], old: Mapping[str, Any],
                     generation: int, now: dt.datetime) -> dict[str, Any]:
    return {
        "name": li.name,
        "supportedKinds": [{"group": grp, "kind": kind} for grp, kind in li.supported_kinds],
        "attachedRoutes": li.attached_routes,
        "conditions": _conditions(found, old.get("conditions") or [], generation, now),
    }


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


async def _write_gateway(key: Key, body: Mapping[str, Any], build: GatewayBuild,
                         programmed: status.Condition, address: str | None,
                         failure: str | None) -> None:
    now = dt.datetime.now(dt.UTC)
    new = gateway_status(body, build, programmed, address, failure, now)
    current = body.get("status") or {}
    old = STATE.written_gateways.get(key) or current
    # As Reconciler._write: a status someone else wrote over ours is put back.
    if _same(old, new) and _same(current, new):
        return
    await apply.write_status("Gateway", key[0], key[1], new)
    STATE.written_gateways[key] = new
    problems = [c for c in build.conditions if not c.status]
    if failure or problems:
        message = failure or problems[0].message
        apply.post_events(body, [status.Event("Warning", "Invalid", message)])


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Equal but for lastTransitionTime (kept from `old` when the status did not flip)."""
    return bool(_strip(old) == _strip(new))


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


async def _write_routes(gateway: Key, routes: dict[Key, list[ParentResult]]) -> None:
    """Each route's parent entries for our controller, from every Gateway's last build."""
    before = set(STATE.parents.get(gateway) or {})
    STATE.parents[gateway] = routes
    now = dt.datetime.now(dt.UTC)
    for key in sorted(before | set(routes)):
        route = STATE.routes.get(key)
        if route is None:
            continue
        mine = [p for gw_routes in STATE.parents.values() for p in gw_routes.get(key, [])]
        previous = STATE.written_routes.get(key)
        if previous is None:
            previous = await _current_parents(key)
        old = {_ref_id(p.get("parentRef") or {}): p for p in previous}
        others = [p for p in previous if p.get("controllerName") != g.CONTROLLER_NAME]
        entries = [{
            "parentRef": p.parent.raw(),
            "controllerName": g.CONTROLLER_NAME,
            "conditions": _conditions(list(p.conditions),
                                      (old.get(_ref_id(p.parent.raw())) or {}).get(
                                          "conditions") or [], route.generation, now),
        } for p in mine]
        new = others + entries
        if _same({"p": previous}, {"p": new}):
            continue
        await apply.write_status("HTTPRoute", key[0], key[1], {"parents": new})
        STATE.written_routes[key] = new


def _ref_id(ref: Mapping[str, Any]) -> tuple[Any, ...]:
    return (ref.get("namespace"), ref.get("name"), ref.get("sectionName"), ref.get("port"))


async def _current_parents(key: Key) -> list[dict[str, Any]]:
    obj = await apply.read_object("HTTPRoute", key[0], key[1])
    return list(((obj or {}).get("status") or {}).get("parents") or [])


async def write_class_status(body: Mapping[str, Any]) -> None:
    """Accepted: Roundhouse implements every GatewayClass naming its controller."""
    cls = g.parse_gateway_class(dict(body))
    if cls.controller_name != g.CONTROLLER_NAME:
        return
    old = body.get("status") or {}
    now = dt.datetime.now(dt.UTC)
    new = {"conditions": _conditions(
        [Condition(g.ACCEPTED, True, g.REASON_ACCEPTED,
                   "handled by Roundhouse (roundhouse.dev/gateway-controller)"),
         Condition(g.SUPPORTED_VERSION, True, g.REASON_SUPPORTED_VERSION,
                   "Gateway API v1 standard channel")],
        old.get("conditions") or [], cls.generation, now)}
    if _same(STATE.written_classes.get(cls.name) or old, new):
        return
    await apply.write_cluster_status("GatewayClass", cls.name, new)
    STATE.written_classes[cls.name] = new
