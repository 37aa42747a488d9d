"""The pure pipeline in one call: model -> graph -> rendered config -> child objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roundhouse.graph import (
    ClusterState,
    ProxyGraph,
    build_loadbalancer_graph,
    build_reverseproxy_graph,
)
from roundhouse.graph.gateway import SUPPORTED_PROTOCOLS
from roundhouse.model.gatewayapi import Gateway
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.model.reverseproxy import ReverseProxy
from roundhouse.render import objects
from roundhouse.render.haproxy import RenderedConfig, RenderOptions, render_haproxy


@dataclass(frozen=True)
class Desired:
    graph: ProxyGraph
    rendered: RenderedConfig
    # In apply order: RBAC, config, workload, service. With `config_only`, the proxy
    # ConfigMap alone: what endpoints can change while the config's structure stays.
    children: tuple[dict[str, Any], ...]


def desired_for_loadbalancer(
    lb: LoadBalancer,
    cluster: ClusterState,
    images: objects.ProxyImages | None = None,
    options: RenderOptions | None = None,
    config_only: bool = False,
) -> Desired:
    graph = build_loadbalancer_graph(lb, cluster)
    return _desired(graph, lb, images, options, config_only)


def desired_for_reverseproxy(
    rp: ReverseProxy,
    cluster: ClusterState,
    images: objects.ProxyImages | None = None,
    options: RenderOptions | None = None,
    conflicts: Mapping[str, str] | None = None,
    config_only: bool = False,
) -> Desired:
    """`conflicts`: hostname -> message for hostnames another ReverseProxy serves."""
    graph = build_reverseproxy_graph(rp, cluster, conflicts=conflicts)
    return _desired(graph, rp, images, options, config_only)


def desired_for_gateway(
    graph: ProxyGraph,
    gateway: Gateway,
    images: objects.ProxyImages | None = None,
    options: RenderOptions | None = None,
) -> Desired:
    """A Gateway's graph is built with its routes (graph.build_gateway_graph), whose
    statuses it also gives; from the graph on, the same path as the other kinds."""
    return _desired(graph, gateway, images, options)


def _desired(graph: ProxyGraph, model: LoadBalancer | ReverseProxy | Gateway,
             images: objects.ProxyImages | None, options: RenderOptions | None,
             config_only: bool = False) -> Desired:
    """One path from a graph to the children, whichever kind the graph came from."""
    rendered = render_haproxy(graph, options)
    config_only_desired = Desired(graph, rendered,
                                  (objects.config_map(objects.owner_of(model), rendered),))
    return config_only_desired if config_only else complete(config_only_desired, model, images)


def complete(desired: Desired, model: LoadBalancer | ReverseProxy | Gateway,
             images: objects.ProxyImages | None = None) -> Desired:
    """Every child, from a config-only `desired` (the graph, the config and its
    ConfigMap are reused, not built or rendered again; the reconciler completes one
    whose structure turned out to change)."""
    graph, rendered = desired.graph, desired.rendered
    (config_map,) = desired.children  # config-only: the proxy ConfigMap
    owner = objects.owner_of(model)
    persistence = model.session_persistence
    proxy = objects.ProxySpec(
        replicas=model.proxy.replicas,
        service_type=model.proxy.service_type,
        resources=model.proxy.resources,
        node_selector=model.proxy.node_selector,
        tolerations=model.proxy.tolerations,
        # Source-address persistence, per-client limits and source ranges need the
        # client's own address.
        preserve_client_ip=bool(persistence and persistence.type == "SourceIP")
        or model.limits.per_client or bool(model.allowed_source_ranges),
    )
    children = (
        objects.service_account(owner),
        objects.agent_role(owner, graph),
        objects.agent_role_binding(owner),
        config_map,
        objects.agent_status_config_map(owner),
        objects.deployment(owner, graph, rendered, proxy, images or objects.ProxyImages()),
        objects.pod_disruption_budget(owner),
        objects.service(owner, graph, proxy, declared_ports(model)),
    )
    return Desired(graph, rendered, children)


def declared_ports(model: LoadBalancer | ReverseProxy | Gateway) -> list[int]:
    """The ports of the listeners the proxy can serve, valid or not (a Gateway's listener
    of an unsupported protocol, UDP among them, gets none)."""
    return [li.port for li in model.listeners
            if not isinstance(model, Gateway) or li.protocol in SUPPORTED_PROTOCOLS]
