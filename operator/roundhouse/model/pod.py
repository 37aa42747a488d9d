"""Ports the proxy Pod itself uses: no listener may take one (HAProxy or the agent would
fail to bind it, or a probe would hit a listener). The CRD (from model/rules.py) refuses the same
ports with the same words (tests/unit/test_crd_schema.py checks that they agree)."""

from __future__ import annotations

STATUS_PORT = 8404  # HAProxy's status frontend: the kubelet probes /healthz, /metrics
AGENT_METRICS_PORT = 9101  # the agent sidecar's Prometheus metrics

RESERVED_PORTS: dict[int, str] = {
    STATUS_PORT: "the proxy's status port (health probes and /metrics)",
    AGENT_METRICS_PORT: "the agent's metrics port",
}


def reserved_port_message(port: int) -> str:
    """The one sentence both the CRD and the parser print for a reserved port."""
    return f"port {port} is reserved by the proxy Pod: {RESERVED_PORTS[port]}"
