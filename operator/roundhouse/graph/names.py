"""Every name Roundhouse derives from a resource, in one place. Pure.

A resource `<name>` of kind LoadBalancer owns children named `<name>-lb` (`<name>-rp`
for a ReverseProxy): the Deployment, Service, ConfigMap, ServiceAccount, Role and
PodDisruptionBudget. Around them: the agents' report ConfigMap `<child>-agents`, and,
when a listener or host asks for an operator-issued certificate, the serving Secret
`<child>-tls` signed by the CA Secret `<child>-ca`.
"""

from __future__ import annotations

from roundhouse.model.gatewayapi import Gateway
from roundhouse.model.loadbalancer import LoadBalancer
from roundhouse.model.reverseproxy import ReverseProxy

_SUFFIX = {"LoadBalancer": "lb", "ReverseProxy": "rp", "Gateway": "gw"}


def kind_of(model: LoadBalancer | ReverseProxy | Gateway) -> str:
    if isinstance(model, Gateway):
        return "Gateway"
    return "LoadBalancer" if isinstance(model, LoadBalancer) else "ReverseProxy"


def child_name(kind: str, name: str) -> str:
    """The name of the resource's children (and of its proxy Service)."""
    return f"{name}-{_SUFFIX[kind]}"


def agent_status_name(kind: str, name: str) -> str:
    """The ConfigMap the proxy Pods' agents report into (one key per Pod)."""
    return f"{child_name(kind, name)}-agents"


def issued_secret_name(kind: str, name: str) -> str:
    """The Secret that holds the operator-issued serving certificate."""
    return f"{child_name(kind, name)}-tls"


def issued_ca_name(kind: str, name: str) -> str:
    """The Secret that holds the CA the operator signs the serving certificate with."""
    return f"{child_name(kind, name)}-ca"


def issued_dns_names(model: LoadBalancer | ReverseProxy | Gateway) -> tuple[str, ...]:
    """The DNS names the operator-issued certificate covers; empty when none is needed.

    The names the spec asks for (a LoadBalancer's listener dnsNames, a ReverseProxy's
    hosts) plus the proxy Service's own, so in-cluster clients can verify it as well.
    """
    if isinstance(model, Gateway):
        return ()  # listeners name their certificates (certificateRefs)
    if isinstance(model, LoadBalancer):
        issued = [li.tls for li in model.listeners if li.tls and li.tls.issued]
        if not issued:
            return ()
        asked = {dns for tls in issued for dns in tls.dns_names}
    else:
        asked = set(model.issued_hostnames())
        if not asked:
            return ()
    base = child_name(kind_of(model), model.name)
    service = {base, f"{base}.{model.namespace}", f"{base}.{model.namespace}.svc",
               f"{base}.{model.namespace}.svc.cluster.local"}
    return tuple(sorted(asked | service))
