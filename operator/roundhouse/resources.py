"""Both resource kinds through one reconciler. Pure: no I/O, no Kubernetes client.

A LoadBalancer and a ReverseProxy differ in their spec, not in how they are
reconciled: each names Services and Secrets, may need an issued certificate, and
compiles through the same ProxyGraph into the same children. This module answers
those questions for either kind, so the reconciler has no per-kind branches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from roundhouse.graph import ClusterState
from roundhouse.model import parse_loadbalancer
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.model.reverseproxy import ReverseProxy, parse_reverseproxy
from roundhouse.pipeline import Desired, desired_for_loadbalancer, desired_for_reverseproxy
from roundhouse.render import objects

Model = LoadBalancer | ReverseProxy
KINDS = {"LoadBalancer": "loadbalancers", "ReverseProxy": "reverseproxies"}


def parse(kind: str, body: Mapping[str, Any]) -> Model:
    """Raises SpecError naming every bad field."""
    return parse_loadbalancer(dict(body)) if kind == "LoadBalancer" else parse_reverseproxy(
        dict(body))


def desired(model: Model, cluster: ClusterState, images: objects.ProxyImages,
            conflicts: Mapping[str, str] | None = None, config_only: bool = False) -> Desired:
    if isinstance(model, LoadBalancer):
        return desired_for_loadbalancer(model, cluster, images, config_only=config_only)
    return desired_for_reverseproxy(model, cluster, images, conflicts=conflicts or {},
                                    config_only=config_only)


# ------------------------------------------------------------------ hostname claims


@dataclass(frozen=True)
class Claim:
    """The (hostname, port) pairs one ReverseProxy serves; the oldest claim wins."""

    name: str
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text)
    pairs: frozenset[tuple[str, int]]

    @property
    def hostnames(self) -> set[str]:
        return {host for host, _ in self.pairs}


def claim_of(body: Mapping[str, Any]) -> Claim:
    """Read from the raw spec, so even a spec that fails validation claims nothing odd."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    listeners = [li for li in spec.get("listeners") or []
                 if isinstance(li, dict) and isinstance(li.get("port"), int)]
    plain = {int(li["port"]) for li in listeners if li.get("protocol", "HTTP") == "HTTP"}
    every = {int(li["port"]) for li in listeners}
    pairs: set[tuple[str, int]] = set()
    for host in spec.get("hosts") or []:
        if isinstance(host, dict) and host.get("hostname"):
            # As served: a host with tls on every listener, one without on HTTP only.
            ports = every if host.get("tls") is not None else plain
            pairs.update((str(host["hostname"]).lower(), port) for port in ports)
    return Claim(str(meta.get("name") or ""), str(meta.get("creationTimestamp") or ""),
                 frozenset(pairs))


def hostname_conflicts(mine: Claim, others: Iterable[Claim]) -> dict[str, str]:
    """hostname -> why this ReverseProxy may not serve it: an older one already does.

    Older wins (then the smaller name), like Gateway API listeners: adding a
    ReverseProxy can never take a hostname away from one that already serves it.
    """
    out: dict[str, str] = {}
    for other in sorted(others, key=lambda c: (c.created, c.name)):
        if other.name == mine.name or (other.created, other.name) > (mine.created, mine.name):
            continue
        for host, port in sorted(mine.pairs & other.pairs):
            out.setdefault(host, f"hostname {host!r} on port {port} is already served by "
                                 f"ReverseProxy {other.name!r}, created earlier")
    return out
