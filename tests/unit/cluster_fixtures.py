"""Builders for the cluster objects a graph resolves against (API-shaped dicts)."""

from __future__ import annotations

from typing import Any

from roundhouse.graph import ClusterState
from roundhouse.model.cluster import (
    TLSSecret,
    parse_endpoint_slice,
    parse_service,
)


def service(name: str = "web", ports: tuple[tuple[str, int], ...] = (("http", 80),)) -> Any:
    return parse_service({"metadata": {"name": name},
                          "spec": {"clusterIP": "10.96.0.10",
                                   "ports": [{"name": n, "port": p} for n, p in ports]}})


def endpoint(pod: str, ip: str, ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> dict[str, Any]:
    cond: dict[str, Any] = {"ready": ready, "terminating": terminating}
    if serving is not None:
        cond["serving"] = serving
    return {"addresses": [ip], "conditions": cond, "targetRef": {"kind": "Pod", "name": pod}}


def endpoint_slice(service_name: str, endpoints: list[dict[str, Any]], port: int = 8080,
                   port_name: str = "http", name: str | None = None) -> Any:
    return parse_endpoint_slice({
        "metadata": {"name": name or f"{service_name}-abc",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })


def pods(n: int, first: int = 1) -> list[dict[str, Any]]:
    return [endpoint(f"web-{i}", f"10.244.0.{i}") for i in range(first, first + n)]


def state(n_ready: int = 3, extra: list[dict[str, Any]] | None = None,
          previous: dict[str, dict[str, str]] | None = None,
          secrets: dict[str, TLSSecret] | None = None) -> ClusterState:
    return ClusterState({"web": service()}, [endpoint_slice("web", pods(n_ready) + (extra or []))],
                        secrets or {}, previous or {})
