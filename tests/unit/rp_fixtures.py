"""Builders for ReverseProxy unit tests: objects, and clusters that resolve them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from roundhouse.graph import ClusterState, issued_secret_name
from roundhouse.model.cluster import (
    TLSSecret,
    parse_endpoint_slice,
    parse_service,
    parse_tls_secret,
)
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service
from tests.unit.conftest import EXAMPLES

RP_EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.yaml")
                          if any(d and d.get("kind") == "ReverseProxy"
                                 for d in yaml.safe_load_all(p.read_text())))


def rp_object(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "ReverseProxy",
        "metadata": {"name": "site", "namespace": "default", "uid": "uid-rp", "generation": 1},
        "spec": {
            "listeners": [{"name": "http", "port": 80}],
            "hosts": [{"hostname": "www.example.test",
                       "routes": [{"name": "web", "backends": [{"service": "web",
                                                                "port": 80}]}]}],
        },
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


def offline_cluster(rp_name: str) -> ClusterState:
    """examples/offline-cluster.yaml, plus the issued Secret the operator would write."""
    docs = list(yaml.safe_load_all((EXAMPLES / "offline-cluster.yaml").read_text()))
    services = {s.name: s for s in (parse_service(d) for d in docs if d["kind"] == "Service")}
    slices = [s for s in (parse_endpoint_slice(d) for d in docs
                          if d["kind"] == "EndpointSlice") if s]
    secrets = {s.name: s for s in (parse_tls_secret(d) for d in docs if d["kind"] == "Secret")}
    name = issued_secret_name("ReverseProxy", rp_name)
    secrets[name] = TLSSecret(name, True, True, "golden")
    return ClusterState(services, slices, secrets)


def example_object(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ReverseProxy"]
    doc["metadata"]["uid"] = "golden-uid"
    return dict(doc)


def cluster_for(obj: dict[str, Any], *, secrets: bool = True) -> ClusterState:
    """Every Service a spec names exists with a ready, a draining and an unready endpoint;
    every Secret it names (and the issued one) exists and is usable."""
    spec = obj["spec"]
    backends = [be for h in spec["hosts"] for r in h["routes"] for be in r.get("backends", [])]
    if spec.get("defaultBackend"):
        backends.append(spec["defaultBackend"])
    services: dict[str, Any] = {}
    ports: dict[str, dict[str, int]] = {}
    for be in backends:
        port = be["port"]
        name = port if isinstance(port, str) else f"p{port}"
        number = port if isinstance(port, int) else 80 + len(ports.get(be["service"], {}))
        ports.setdefault(be["service"], {})[name] = number
    slices = []
    for i, (svc, named) in enumerate(sorted(ports.items())):
        services[svc] = service(svc, tuple(named.items()))
        for j, pname in enumerate(sorted(named)):
            slices.append(endpoint_slice(svc, [
                endpoint(f"{svc}-a", f"10.244.{i % 250}.1"),
                endpoint(f"{svc}-b", f"10.244.{i % 250}.2", ready=False, serving=True,
                         terminating=True),
                endpoint(f"{svc}-c", f"10.244.{i % 250}.3", ready=False),
            ], port=8000 + j, port_name=pname, name=f"{svc}-{j}"))
    found: dict[str, TLSSecret] = {}
    if secrets:
        names = {issued_secret_name("ReverseProxy", obj["metadata"]["name"])}
        names |= {h["tls"]["secretName"] for h in spec["hosts"]
                  if (h.get("tls") or {}).get("secretName")}
        found = {n: TLSSecret(n, True, True, f"fp-{n}") for n in names}
        ca = (spec.get("upstreamTLS") or {}).get("caSecretName")
        if ca:
            # One Secret may be both a serving pair and the upstream CA bundle.
            pair = ca in found
            found[ca] = TLSSecret(ca, pair, pair, f"fp-{ca}" if pair else "", has_ca=True,
                                  ca_fingerprint="ca-fp")
    return ClusterState(services, slices, found)
