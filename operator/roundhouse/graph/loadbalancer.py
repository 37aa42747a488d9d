"""LoadBalancer + cluster -> ProxyGraph. Pure: no I/O.

One pool per mode (be_http, be_tcp) holds every backend Service's endpoints; each
listener is a frontend whose default pool is its mode's. An HTTPS listener whose
certificate is missing is dropped (with a Problem); the other listeners keep serving.
"""

from __future__ import annotations

from roundhouse.graph.endpoints import assign_slots, cookie_key_for, resolve_backends
from roundhouse.graph.listeners import https_down
from roundhouse.graph.names import issued_dns_names, issued_secret_name
from roundhouse.graph.secrets import pair_certificate, refuse_unverifiable, resolve_upstream_tls
from roundhouse.graph.types import Certificate, ClusterState, Frontend, Pool, Problem, ProxyGraph
from roundhouse.model.loadbalancer import LoadBalancer


def build_loadbalancer_graph(lb: LoadBalancer, cluster: ClusterState) -> ProxyGraph:
    problems: list[Problem] = []
    endpoints = resolve_backends(
        [(f"spec.backends[{i}]", be) for i, be in enumerate(lb.backends)], lb.namespace,
        cluster, problems)
    cookie_key = cookie_key_for(lb.namespace, lb.uid)
    upstream = resolve_upstream_tls(lb.upstream_tls, lb.namespace, cluster, problems)
    modes = sorted({"http" if li.is_http else "tcp" for li in lb.listeners})
    pools = tuple(
        Pool(
            name=f"be_{mode}",
            mode=mode,
            algorithm=lb.algorithm,
            servers=refuse_unverifiable(
                assign_slots(endpoints, cluster.previous_slots.get(f"be_{mode}", {})),
                upstream),
            # Cookies only exist in HTTP; SourceIP stickiness works in both modes.
            persistence=lb.session_persistence
            if lb.session_persistence and (mode == "http" or
                                           lb.session_persistence.type == "SourceIP")
            else None,
            health_check=lb.health_check,
            max_connections_per_server=lb.limits.max_connections_per_server,
            cookie_key=cookie_key,
            upstream_tls=upstream.config if upstream else None,
        )
        for mode in modes
    )
    certificates, cert_for = _resolve_certificates(lb, cluster, problems)
    if upstream and upstream.ca:
        certificates = tuple(sorted((*certificates, upstream.ca), key=lambda c: c.file))
    https = lb.https_listener
    frontends = []
    for li in sorted(lb.listeners, key=lambda x: x.port):
        if li.protocol == "HTTPS" and li.name not in cert_for:
            continue  # its certificate is missing: drop the listener, keep the rest serving
        down = https_down(lb.listeners, li, https, https is not None and https.name in cert_for,
                          problems)
        frontends.append(Frontend(
            name=f"fe_{li.name}",
            port=li.port,
            mode="http" if li.is_http else "tcp",
            protocol=li.protocol,
            default_pool=f"be_{'http' if li.is_http else 'tcp'}",
            certificate=cert_for.get(li.name),
            min_tls_version=li.tls.min_version if li.tls else "1.2",
            redirect_https_port=https.port if li.redirect_to_https and https and not down
            else None,
            unavailable=down,
        ))
    ready = sum(1 for e in endpoints if e.ready)
    return ProxyGraph(
        kind="LoadBalancer",
        name=lb.name,
        namespace=lb.namespace,
        frontends=tuple(frontends),
        pools=pools,
        certificates=certificates,
        timeouts=lb.timeouts,
        limits=lb.limits,
        allowed_source_ranges=lb.allowed_source_ranges,
        access_log=lb.access_log,
        problems=tuple(problems),
        backends_ready=ready,
        backends_total=len(endpoints),
        issued_dns_names=issued_dns_names(lb),
    )


def _resolve_certificates(
    lb: LoadBalancer, cluster: ClusterState, problems: list[Problem]
) -> tuple[tuple[Certificate, ...], dict[str, str]]:
    certs: dict[str, Certificate] = {}
    cert_for: dict[str, str] = {}
    for i, li in enumerate(lb.listeners):
        if li.tls is None:
            continue
        secret_name = li.tls.secret_name or issued_secret_name("LoadBalancer", lb.name)
        cert = pair_certificate(secret_name, li.tls.issued, f"spec.listeners[{i}].tls",
                                lb.namespace, cluster, problems)
        if cert is not None:
            certs[cert.file] = cert
            cert_for[li.name] = cert.file
    return tuple(sorted(certs.values(), key=lambda c: c.file)), cert_for
