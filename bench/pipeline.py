"""Operator cost of one reconcile's pure work: model -> graph -> haproxy.cfg (+ its
structure hash) + servers.json -> the children, with the proxy ConfigMap encoded as
stored (gzip once large), for a LoadBalancer with N endpoints; the ConfigMap's stored
size against the API server's 1 MiB; and what an endpoint change costs (the structure
hash must not move: the agent applies it at run time, no reload).
Prints one JSON object last. No cluster, no network.

    python bench/pipeline.py [--sizes 10,100,1000,3280,10000,30000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from roundhouse.graph import ClusterState
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import parse_endpoint_slice, parse_service
from roundhouse.pipeline import desired_for_loadbalancer
from roundhouse.render import payload

SLICE_SIZE = 100  # the EndpointSlice controller's default maximum
CONFIGMAP_LIMIT = 1024 * 1024  # what the API server stores in one object


def cluster(n: int, not_ready: int = -1) -> ClusterState:
    """Service web with n endpoints in slices of 100; endpoint `not_ready` is not ready."""
    service = parse_service({"metadata": {"name": "web"},
                             "spec": {"ports": [{"name": "http", "port": 80,
                                                 "targetPort": 8080}]}})
    slices = []
    for start in range(0, n, SLICE_SIZE):
        endpoints = [{"addresses": [f"10.{244 + i // 65536}.{i // 256 % 256}.{i % 256}"],
                      "conditions": {"ready": i != not_ready},
                      "targetRef": {"kind": "Pod", "name": f"web-{i}"}}
                     for i in range(start, min(n, start + SLICE_SIZE))]
        parsed = parse_endpoint_slice({
            "metadata": {"name": f"web-{start // SLICE_SIZE}",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints})
        assert parsed is not None
        slices.append(parsed)
    return ClusterState({"web": service}, slices)


LB = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
      "metadata": {"name": "web", "namespace": "default", "uid": "u", "generation": 1},
      "spec": {"listeners": [{"name": "http", "port": 80}],
               "backends": [{"service": "web", "port": "http"}],
               "sessionPersistence": {"type": "Cookie"},
               "healthCheck": {"type": "HTTP", "path": "/healthz"}}}


def once(state: ClusterState) -> tuple[float, str, str, int, int]:
    """One reconcile's pure work: model -> graph -> haproxy.cfg + servers.json -> the
    children, the proxy ConfigMap encoded as it is stored (gzip above 256 KiB).
    Returns (seconds, config hash, structure hash, haproxy.cfg bytes, ConfigMap bytes)."""
    start = time.perf_counter()
    desired = desired_for_loadbalancer(parse_loadbalancer(LB), state)
    seconds = time.perf_counter() - start
    (cm,) = [c for c in desired.children
             if c["kind"] == "ConfigMap" and c["metadata"]["name"] == "web-lb"]
    stored = payload.stored_size(cm.get("data") or {}, cm.get("binaryData") or {})
    rendered = desired.rendered
    return (seconds, rendered.config_hash, rendered.structure_hash, len(rendered.config),
            stored)


def measure(n: int, repeat: int) -> dict[str, Any]:
    state, flipped = cluster(n), cluster(n, not_ready=n // 2)
    once(state)  # warm the template cache
    times = sorted(once(state)[0] for _ in range(repeat))
    _, config_hash, structure, size, stored = once(state)
    _, flipped_hash, flipped_structure, _, _ = once(flipped)
    tracemalloc.start()
    once(state)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "endpoints": n,
        "ms_p50": round(statistics.median(times) * 1000, 2),
        "ms_max": round(times[-1] * 1000, 2),
        "config_bytes": size,
        "configmap_bytes": stored,
        "peak_python_kib": round(peak / 1024),
        "readiness_flip_changes_config": flipped_hash != config_hash,
        "readiness_flip_keeps_structure": flipped_structure == structure,
    }
    print(f"{n:>6} endpoints: p50 {result['ms_p50']:8.2f} ms, max {result['ms_max']:8.2f} ms, "
          f"cfg {size:>8} B, ConfigMap {result['configmap_bytes']:>8} B, "
          f"peak {result['peak_python_kib']} KiB", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,3280,10000,30000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    results = [measure(int(n), args.repeat) for n in args.sizes.split(",")]
    ok = all(r["readiness_flip_changes_config"] and r["readiness_flip_keeps_structure"]
             for r in results)
    fits = [r["endpoints"] for r in results if r["configmap_bytes"] < CONFIGMAP_LIMIT]
    print(json.dumps({"benchmark": "pipeline", "repeat": args.repeat, "results": results,
                      "endpoint_changes_are_runtime_only": ok,
                      "largest_size_fitting_one_configmap": max(fits, default=0)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
