"""Typed spec parsing and defaults. Pure: no I/O, no Kubernetes client."""

from roundhouse.model.errors import FieldError, SpecError
from roundhouse.model.loadbalancer import (
    Backend,
    HealthCheck,
    Limits,
    Listener,
    ListenerTLS,
    LoadBalancer,
    ProxySettings,
    SessionPersistence,
    Timeouts,
    parse_loadbalancer,
)

__all__ = [
    "Backend",
    "FieldError",
    "HealthCheck",
    "Limits",
    "Listener",
    "ListenerTLS",
    "LoadBalancer",
    "ProxySettings",
    "SessionPersistence",
    "SpecError",
    "Timeouts",
    "parse_loadbalancer",
]
