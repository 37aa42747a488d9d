"""kopf indexes: the in-memory view every reconcile reads instead of extra GETs.

kopf fills all indexes before any resource handler runs, so a restarted operator
never renders a config from a half-known cluster (which would drop backends).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP, API_VERSION
from roundhouse.handlers.state import RECONCILER
from roundhouse.model.cluster import parse_endpoint_slice, parse_service, parse_tls_secret
from roundhouse.model.pods import parse_proxy_pod
from roundhouse.render import payload
from roundhouse.resources import claim_of
from roundhouse.server_state import slot_map

MANAGED = {"app.kubernetes.io/managed-by": "roundhouse"}


@kopf.index("services")
async def rh_services(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): parse_service(dict(body))}


@kopf.index("discovery.k8s.io", "v1", "endpointslices")
async def rh_slices(namespace: str, body: kopf.Body, **_: Any) -> Any:
    parsed = parse_endpoint_slice(dict(body))
    return {(namespace, parsed.service): parsed} if parsed else None


def _is_tls_secret(body: kopf.Body, **_: Any) -> bool:
    """Serving certificates, and CA bundles (ca.crt) that verify upstream backends."""
    data = body.get("data") or {}
    return body.get("type") == "kubernetes.io/tls" or "tls.crt" in data or "ca.crt" in data


@kopf.index("secrets", when=_is_tls_secret)
async def rh_secrets(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    """Only what decisions need: usability, a fingerprint, and the public certificates."""
    data = body.get("data") or {}
    public = {key: base64.b64decode(data[key]).decode(errors="replace")
              for key in ("tls.crt", "ca.crt") if data.get(key)}
    return {(namespace, name): (parse_tls_secret(dict(body)), public)}


@kopf.index("configmaps", labels=MANAGED)
async def rh_configmaps(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    """Our own ConfigMaps: the previous slot assignment (proxy ConfigMaps), the agents'
    reports (status ConfigMaps). Only the slots of a proxy ConfigMap are kept, not its
    files: they can be a megabyte, and nothing else reads them from here."""
    own = RECONCILER.own_proxy_configmap(namespace, name, body)
    if own is not None:  # the echo of our write: its slots are known, nothing to decode
        return {(namespace, name): {"slots": own, "data": {}}}
    try:
        files = payload.decode(body)
    except payload.PayloadError:
        files = {}
    if "servers.json" not in files:
        return {(namespace, name): {"slots": {}, "data": files}}
    try:
        slots = slot_map(json.loads(files["servers.json"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        slots = {}
    return {(namespace, name): {"slots": slots, "data": {}}}


@kopf.index("pods", labels=MANAGED)
async def rh_proxy_pods(namespace: str, name: str, labels: kopf.Labels, status: kopf.Status,
                  meta: kopf.Meta, **_: Any) -> Any:
    instance = labels.get("app.kubernetes.io/instance")
    if not instance or meta.get("deletionTimestamp"):
        return None
    # Readiness and, if it cannot run, why: every status change re-reconciles its owner
    # (dependencies.proxy_pod_changed), which reads this.
    return {(namespace, instance): parse_proxy_pod(name, status)}


# Held for every resource, and read by no reconcile: the API server's field ownership and
# kubectl's client-side copy of the whole object.
_UNREAD_METADATA = ("managedFields",)
_UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def resource_body(body: kopf.Body) -> dict[str, Any]:
    """The resource as a reconcile reads it, without what it never reads."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in _UNREAD_METADATA}
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in _UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items()
                               if k not in _UNREAD_ANNOTATIONS}
    return {**body, "metadata": meta}


@kopf.index(API_GROUP, API_VERSION, "loadbalancers")
async def rh_loadbalancers(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): resource_body(body)}


@kopf.index(API_GROUP, API_VERSION, "reverseproxies")
async def rh_reverseproxies(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): resource_body(body)}


@kopf.index(API_GROUP, API_VERSION, "reverseproxies")
async def rh_rp_claims(namespace: str, body: kopf.Body, **_: Any) -> Any:
    """Which (hostname, port) pairs each ReverseProxy of a namespace claims: conflicts."""
    return {namespace: claim_of(body)}


def _upstream_ca_ref(namespace: str, spec: kopf.Spec, me: tuple[str, str]
                     ) -> dict[tuple[str, str, str], tuple[str, str]]:
    """spec.upstreamTLS.caSecretName, which both kinds have."""
    upstream = spec.get("upstreamTLS")
    ca = upstream.get("caSecretName") if isinstance(upstream, Mapping) else None
    return {("Secret", namespace, str(ca)): me} if ca else {}


@kopf.index(API_GROUP, API_VERSION, "loadbalancers")
async def rh_lb_refs(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Which LoadBalancers refer to which Service / Secret, for level-based re-reconciles."""
    refs: dict[tuple[str, str, str], tuple[str, str]] = {}
    for backend in spec.get("backends") or []:
        if isinstance(backend, dict) and backend.get("service"):
            refs[("Service", namespace, str(backend["service"]))] = ("LoadBalancer", name)
    for listener in spec.get("listeners") or []:
        secret = ((listener or {}).get("tls") or {}).get("secretName")
        if secret:
            refs[("Secret", namespace, str(secret))] = ("LoadBalancer", name)
    refs.update(_upstream_ca_ref(namespace, spec, ("LoadBalancer", name)))
    return refs or None


@kopf.index(API_GROUP, API_VERSION, "reverseproxies")
async def rh_rp_refs(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """The same for ReverseProxies: route and default backends, host and CA Secrets.

    Read from the raw spec, so a ReverseProxy that is invalid now still recovers
    when the Service it names appears.
    """
    refs: dict[tuple[str, str, str], tuple[str, str]] = {}
    me = ("ReverseProxy", name)
    default = spec.get("defaultBackend") or {}
    if isinstance(default, dict) and default.get("service"):
        refs[("Service", namespace, str(default["service"]))] = me
    for host in spec.get("hosts") or []:
        if not isinstance(host, dict):
            continue
        secret = (host.get("tls") or {}).get("secretName")
        if secret:
            refs[("Secret", namespace, str(secret))] = me
        for route in host.get("routes") or []:
            for backend in (route or {}).get("backends") or []:
                if isinstance(backend, dict) and backend.get("service"):
                    refs[("Service", namespace, str(backend["service"]))] = me
    refs.update(_upstream_ca_ref(namespace, spec, me))
    return refs or None
