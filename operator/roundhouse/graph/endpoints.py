"""Services and EndpointSlices -> weighted endpoints -> HAProxy server slots. Pure.

A backend that cannot be resolved (no such Service, no such port) is dropped with a
Problem; the rest keeps serving. Slots are sticky and their count never shrinks, so
endpoints coming and going change server lines at run time, never the structure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from roundhouse.graph.types import ClusterState, Problem, Server
from roundhouse.model.cluster import Endpoint, EndpointSlice
from roundhouse.model.common import Backend
from roundhouse.server_state import DRAIN, MAINT, READY

MAX_WEIGHT = 256
MIN_SLOTS = 8


@dataclass(frozen=True)
class WeightedEndpoint:
    endpoint: Endpoint
    key: str  # "<service>/<identity>:<port>"
    weight: int

    @property
    def ready(self) -> bool:
        return self.endpoint.ready


def cookie_key_for(namespace: str, uid: str) -> str:
    """The dynamic-cookie key: per resource, so cookies mean nothing elsewhere."""
    return hashlib.sha256(f"roundhouse/{namespace}/{uid}".encode()).hexdigest()[:24]


def resolve_backends(backends: list[tuple[str, Backend]], namespace: str,
                     cluster: ClusterState,
                     problems: list[Problem]) -> list[WeightedEndpoint]:
    """(field path, backend) pairs -> weighted endpoints; unresolvable ones -> Problems."""
    slices_by_service: dict[str, list[EndpointSlice]] = {}
    for s in cluster.slices:
        slices_by_service.setdefault(s.service, []).append(s)
    resolved: list[tuple[int, str, list[Endpoint]]] = []
    for where, be in backends:
        svc = cluster.services.get(be.service)
        if svc is None:
            problems.append(Problem("BackendsHealthy", "BackendNotFound",
                                    f"{where}: Service {be.service!r} not found in "
                                    f"namespace {namespace!r}", retry=True))
            continue
        sp = svc.find_port(be.port)
        if sp is None:
            known = ", ".join(f"{p.name or '<unnamed>'}={p.port}" for p in svc.ports) or "none"
            problems.append(Problem("BackendsHealthy", "PortNotFound",
                                    f"{where}: Service {be.service!r} has no port "
                                    f"{be.port!r} (ports: {known})"))
            continue
        eps = service_endpoints(namespace, be.service, sp.name,
                                tuple(slices_by_service.get(be.service, [])))
        resolved.append((be.weight, be.service, list(eps)))
    return _weigh(resolved)


# (namespace, service, port name) -> (the slices, their endpoints for that port).
_SHARED: dict[tuple[str, str, str], tuple[tuple[EndpointSlice, ...], tuple[Endpoint, ...]]] = {}
_SHARED_LIMIT = 4096


def service_endpoints(namespace: str, service: str, port_name: str,
                      slices: tuple[EndpointSlice, ...]) -> tuple[Endpoint, ...]:
    """A Service port's endpoints, from its EndpointSlices: computed once for every
    resource that shares the Service. The operator's indexes hand each reconcile the same
    slice objects until one changes, so 200 LoadBalancers behind one Service reuse one
    result per change (the slices are compared by identity: cheap, never a stale hit, as
    an entry holds its slices). Still a pure function of its arguments."""
    key = (namespace, service, port_name)
    hit = _SHARED.get(key)
    if hit is not None and len(hit[0]) == len(slices) and all(
            a is b for a, b in zip(hit[0], slices, strict=True)):
        return hit[1]
    eps: dict[tuple[str, int], Endpoint] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        for ep in sl.endpoints_for(port_name):
            eps.setdefault((ep.address, ep.port), ep)  # slices may overlap briefly
    if len(_SHARED) >= _SHARED_LIMIT:
        _SHARED.clear()
    result = tuple(eps.values())
    _SHARED[key] = (slices, result)
    return result


def _weigh(resolved: list[tuple[int, str, list[Endpoint]]]) -> list[WeightedEndpoint]:
    """Give each endpoint a weight so each Service gets its spec weight's share.

    Per-endpoint weight is service weight / ready endpoints, scaled so the
    largest is 256 (HAProxy's maximum). Weights change at run time with no reload.
    """
    shares = [w / max(1, sum(1 for e in eps if e.ready)) for w, _, eps in resolved]
    top = max(shares, default=0.0) or 1.0
    out: list[WeightedEndpoint] = []
    for (w, service, eps), share in zip(resolved, shares, strict=True):
        weight = max(1, round(MAX_WEIGHT * share / top)) if w > 0 else 0
        for ep in eps:
            out.append(WeightedEndpoint(ep, f"{service}/{ep.identity}:{ep.port}", weight))
    return sorted(out, key=lambda e: e.key)


def _slot_count(needed: int, previous: int) -> int:
    """Power of two with headroom; never shrinks, so scaling back and forth needs no reload."""
    slots = MIN_SLOTS
    while slots < needed + max(2, needed // 4):
        slots *= 2
    return max(slots, previous)


def assign_slots(endpoints: list[WeightedEndpoint],
                  previous: Mapping[str, str]) -> tuple[Server, ...]:
    """Sticky slot assignment: an endpoint keeps its slot for as long as it exists."""
    count = _slot_count(len(endpoints), len(previous))
    slot_names = [f"srv{i}" for i in range(1, count + 1)]
    known = set(slot_names)  # sets and an iterator: linear at 8,192 slots (was quadratic)
    by_key = {e.key: e for e in endpoints}
    taken: dict[str, WeightedEndpoint] = {}
    for slot, key in previous.items():
        if key and key in by_key and slot in known:
            taken[slot] = by_key.pop(key)
    free = iter([s for s in slot_names if s not in taken])
    for e in sorted(by_key.values(), key=lambda x: x.key):
        taken[next(free)] = e
    servers = []
    for slot in slot_names:
        occupant = taken.get(slot)
        if occupant is None:
            servers.append(Server(slot))
            continue
        e = occupant
        ep = e.endpoint
        state = READY if ep.ready else DRAIN if ep.serving and ep.terminating else MAINT
        servers.append(Server(slot, e.key, ep.address, ep.port, e.weight, state))
    return tuple(servers)
