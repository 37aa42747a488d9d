"""Secrets -> the certificate files the agent writes for HAProxy. Pure.

A serving pair (tls.crt + tls.key) per TLS listener or host, and the CA (ca.crt) that
verifies upstream servers. A Secret that is missing or unusable leaves a Problem; when
the named CA Secret is unusable, the servers are put in maintenance rather than reached
unverified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from roundhouse.graph.types import (
    Certificate,
    ClusterState,
    Problem,
    Server,
    UpstreamTLSConfig,
)
from roundhouse.model.common import UpstreamTLS
from roundhouse.server_state import MAINT


def pair_certificate(secret_name: str, issued: bool, where: str, namespace: str,
                     cluster: ClusterState, problems: list[Problem]) -> Certificate | None:
    """The serving certificate in a Secret, or None with the Problem that explains why."""
    secret = cluster.secrets.get(secret_name)
    if secret is None:
        problems.append(Problem(
            "TLSReady", "CertificatePending" if issued else "SecretNotFound",
            f"{where}: issuing certificate into {secret_name!r}" if issued
            else f"{where}: Secret {secret_name!r} not found in namespace {namespace!r}",
            retry=True))
        return None
    if not secret.usable:
        missing = [k for k, ok in (("tls.crt", secret.has_cert), ("tls.key", secret.has_key))
                   if not ok]
        why = f"has no valid {' or '.join(missing)}" if missing else secret.problem
        problems.append(Problem("TLSReady", "InvalidSecret",
                                f"{where}: Secret {secret_name!r}: {why}" if not missing
                                else f"{where}: Secret {secret_name!r} {why}"))
        # No timed retry: the Secret exists, so its next edit re-reconciles through the
        # Secret watch; retrying every 15 s would only repeat the same verdict in the log.
        return None
    return Certificate(f"{secret_name}.pem", secret_name, secret.fingerprint, issued)


@dataclass(frozen=True)
class ResolvedUpstreamTLS:
    config: UpstreamTLSConfig
    ca: Certificate | None  # the CA file the agent writes from the Secret's ca.crt
    refuse: bool  # verify is on but the CA is unusable: never connect unverified


def resolve_upstream_tls(u: UpstreamTLS | None, namespace: str, cluster: ClusterState,
                         problems: list[Problem]) -> ResolvedUpstreamTLS | None:
    """spec.upstreamTLS -> how the pools reach their servers, with the CA it needs."""
    if u is None:
        return None
    if not u.verify or u.ca_secret_name is None:
        return ResolvedUpstreamTLS(UpstreamTLSConfig(u.verify, None, u.sni), None, False)
    where = "spec.upstreamTLS.caSecretName"
    secret = cluster.secrets.get(u.ca_secret_name)
    if secret is None or not secret.has_ca:
        problems.append(
            Problem("TLSReady", "SecretNotFound",
                    f"{where}: Secret {u.ca_secret_name!r} not found in namespace "
                    f"{namespace!r}", retry=True) if secret is None
            else Problem("TLSReady", "InvalidSecret",
                         f"{where}: Secret {u.ca_secret_name!r} has no valid ca.crt"))
        return ResolvedUpstreamTLS(UpstreamTLSConfig(True, None, u.sni), None, True)
    ca = Certificate(f"{u.ca_secret_name}.ca.pem", secret.name, secret.ca_fingerprint, False,
                     kind="ca")
    return ResolvedUpstreamTLS(UpstreamTLSConfig(True, ca.file, u.sni), ca, False)


def refuse_unverifiable(servers: tuple[Server, ...],
                        upstream: ResolvedUpstreamTLS | None) -> tuple[Server, ...]:
    """With a CA that must verify but is missing, every server is in maintenance (503)."""
    if upstream is None or not upstream.refuse:
        return servers
    return tuple(dataclasses.replace(s, state=MAINT) for s in servers)
