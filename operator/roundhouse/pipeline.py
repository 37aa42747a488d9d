"""The pure pipeline in one call: model -> graph -> rendered config -> child objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roundhouse.graph import ClusterState, ProxyGraph, build_loadbalancer_graph
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.render import objects
from roundhouse.render.haproxy import RenderedConfig, RenderOptions, render_haproxy


@dataclass(frozen=True)
class Desired:
    graph: ProxyGraph
    rendered: RenderedConfig
    children: tuple[dict[str, Any], ...]  # in apply order: RBAC, config, workload, service


def loadbalancer_owner(lb: LoadBalancer) -> objects.Owner:
    return objects.Owner("LoadBalancer", lb.name, lb.namespace, lb.uid)


def desired_for_loadbalancer(
    lb: LoadBalancer,
    cluster: ClusterState,
    images: objects.ProxyImages | None = None,
    options: RenderOptions | None = None,
) -> Desired:
    graph = build_loadbalancer_graph(lb, cluster)
    rendered = render_haproxy(graph, options)
    owner = loadbalancer_owner(lb)
    proxy = objects.ProxySpec(
        replicas=lb.proxy.replicas,
        service_type=lb.proxy.service_type,
        resources=lb.proxy.resources,
        node_selector=lb.proxy.node_selector,
        tolerations=lb.proxy.tolerations,
        preserve_client_ip=bool(lb.session_persistence
                                and lb.session_persistence.type == "SourceIP"),
    )
    children = (
        objects.service_account(owner),
        objects.agent_role(owner, graph),
        objects.agent_role_binding(owner),
        objects.config_map(owner, rendered),
        objects.agent_status_config_map(owner),
        objects.deployment(owner, graph, rendered, proxy, images or objects.ProxyImages()),
        objects.pod_disruption_budget(owner),
        objects.service(owner, graph, proxy),
    )
    return Desired(graph, rendered, children)
