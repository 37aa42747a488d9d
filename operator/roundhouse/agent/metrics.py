"""Prometheus metrics of the agent, in a registry of its own (one per Agent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from roundhouse.agent.plan import RELOAD_CATEGORIES


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reloads = Counter(
            "roundhouse_agent_reloads", "HAProxy reloads the agent triggered, by reason.",
            ["reason"], registry=self.registry)
        for reason in RELOAD_CATEGORIES:
            self.reloads.labels(reason)  # export zeros: rate() works from the first reload
        self.runtime_commands = Counter(
            "roundhouse_agent_runtime_commands",
            "Runtime API commands applied instead of a reload (set server, set ssl cert).",
            registry=self.registry)
        self.rejected_configs = Counter(
            "roundhouse_agent_rejected_configs",
            "Desired configurations not applied because HAProxy rejected them.",
            registry=self.registry)
        self.last_apply = Gauge(
            "roundhouse_agent_last_apply_timestamp_seconds",
            "When the desired configuration was last applied (or found already applied).",
            registry=self.registry)

    def reload(self, reason: str) -> None:
        self.reloads.labels(reason if reason in RELOAD_CATEGORIES else "structure").inc()

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose /metrics on `port`; 0 disables."""
        if port:
            start_http_server(port, addr=address, registry=self.registry)
