"""Resources + Services/EndpointSlices/Secrets -> ProxyGraph. Pure: no I/O.

Like Contour's DAG builder: every reference is resolved here; a part that cannot
be resolved is dropped with a recorded Problem (which becomes a status
condition), so one broken reference never breaks the config for the rest.
Output is sorted and stable, so the same inputs give byte-identical configs.

- types        ProxyGraph and its parts; ClusterState, what a build reads besides the spec
- names        every name derived from a resource (children, issued Secrets, DNS names)
- endpoints    Services + EndpointSlices -> weighted endpoints -> sticky server slots
- secrets      Secrets -> certificate files (serving pairs, the upstream CA)
- listeners    listener logic every kind shares
- routes       route logic the HTTP kinds share (path precedence, prefixes, ports)
- loadbalancer, reverseproxy, gateway
               one builder per input kind; they share the modules above, never each
               other (an import-linter contract)
"""

from __future__ import annotations

from roundhouse.graph.endpoints import (
    MAX_WEIGHT,
    MIN_SLOTS,
    WeightedEndpoint,
    assign_slots,
    cookie_key_for,
    resolve_backends,
)
from roundhouse.graph.listeners import https_down
from roundhouse.graph.loadbalancer import build_loadbalancer_graph
from roundhouse.graph.names import (
    agent_status_name,
    child_name,
    issued_ca_name,
    issued_dns_names,
    issued_secret_name,
    kind_of,
)
from roundhouse.graph.reverseproxy import build_reverseproxy_graph, route_pool_name
from roundhouse.graph.secrets import (
    ResolvedUpstreamTLS,
    pair_certificate,
    refuse_unverifiable,
    resolve_upstream_tls,
)
from roundhouse.graph.types import (
    Certificate,
    ClusterState,
    Frontend,
    PathRewrite,
    Pool,
    Problem,
    ProxyGraph,
    RedirectRule,
    RouteRule,
    Routing,
    Server,
    UpstreamTLSConfig,
    VirtualHost,
)
from roundhouse.server_state import DRAIN, MAINT, READY

__all__ = [
    "DRAIN", "MAINT", "MAX_WEIGHT", "MIN_SLOTS", "READY",
    "Certificate", "ClusterState", "Frontend", "PathRewrite", "Pool", "Problem",
    "ProxyGraph", "RedirectRule", "ResolvedUpstreamTLS", "RouteRule", "Routing", "Server",
    "UpstreamTLSConfig", "VirtualHost", "WeightedEndpoint",
    "agent_status_name", "assign_slots", "build_loadbalancer_graph",
    "build_reverseproxy_graph", "child_name", "cookie_key_for", "https_down",
    "issued_ca_name", "issued_dns_names", "issued_secret_name", "kind_of",
    "pair_certificate", "refuse_unverifiable", "resolve_backends", "resolve_upstream_tls",
    "route_pool_name",
]
