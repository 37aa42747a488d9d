"""Readiness propagation: from a Pod's Ready change to traffic following it, end to end.

Real control plane + operator + agent + HAProxy + network-namespace backends (the e2e
harness). For each flip, one backend Pod is patched NotReady: the time to its last reply
is measured under a steady request stream; then Ready again: the time to its first
reply. Prints one JSON object last: p50/p99 of both, and the reloads seen (must be 0).

    python bench/propagation.py [--flips 50] [--bulk 0]    # needs root (network namespaces)

--bulk N adds N NotReady endpoints in a second Service behind the same LoadBalancer: the
same flips with the slots (and the ConfigMap, gzipped above 256 KiB) of a large one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from e2e.harness import traffic
from e2e.harness.stack import local_stack
from kubernetes import client
from tests.e2e.conftest import BULK_BACKENDS, Env, bulk_endpoints, set_ready

QUIET_AFTER = 1.0  # seconds without the backend before a removal counts as done
LIMIT = 10.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_to_removal(env: Env, pod: str) -> float:
    """Seconds from the patch to the last reply from `pod` (0 when none came after)."""
    start = time.monotonic()
    set_ready(env.kube, env.namespace, pod, False)
    last = start
    while time.monotonic() - last < QUIET_AFTER and time.monotonic() - start < LIMIT:
        reply = traffic.get(env.port)
        if reply.backend == pod:
            last = reply.at
    if time.monotonic() - start >= LIMIT:
        raise RuntimeError(f"{pod} still got traffic {LIMIT}s after turning NotReady")
    return last - start


def time_to_return(env: Env, pod: str) -> float:
    start = time.monotonic()
    set_ready(env.kube, env.namespace, pod, True)
    while time.monotonic() - start < LIMIT:
        reply = traffic.get(env.port)
        if reply.backend == pod:
            return reply.at - start
    raise RuntimeError(f"{pod} got no traffic {LIMIT}s after turning Ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--bulk", type=int, default=0,
                        help="extra NotReady endpoints in a second Service (default 0)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roundhouse-bench-"))
    spec: dict[str, Any] = {"limits": {"maxConnections": 4000}}
    if args.bulk:
        spec |= {"before": bulk_endpoints(args.bulk), "backends": BULK_BACKENDS}
    stack = local_stack(work, lambda m: print(m, file=sys.stderr), **spec)
    try:
        with stack as (_, _, env):
            assert env.proxy is not None
            pods = sorted(env.backends.backends)
            traffic.wait_for_backends(env.port, set(pods))
            master, workers, _ = env.proxy.show_proc()
            reloads_before = int(env.proxy.agent_state()["reloads"])
            removal: list[float] = []
            returning: list[float] = []
            for i in range(args.flips):
                pod = pods[i % len(pods)]
                removal.append(time_to_removal(env, pod))
                returning.append(time_to_return(env, pod))
                print(f"flip {i + 1}/{args.flips} {pod}: out {removal[-1] * 1000:.0f} ms, "
                      f"back {returning[-1] * 1000:.0f} ms", file=sys.stderr)
            master_after, workers_after, _ = env.proxy.show_proc()
            reloads = int(env.proxy.agent_state()["reloads"]) - reloads_before
            report: dict[str, Any] = {
                "benchmark": "propagation",
                "flips": args.flips,
                "bulk_not_ready_endpoints": args.bulk,
                "configmap_compressed": bool(client.CoreV1Api(env.kube).read_namespaced_config_map(
                    "web-lb", env.namespace).binary_data),
                "not_ready_to_no_traffic_ms": {
                    "p50": round(statistics.median(removal) * 1000, 1),
                    "p99": round(percentile(removal, 0.99) * 1000, 1),
                    "max": round(max(removal) * 1000, 1)},
                "ready_to_traffic_ms": {
                    "p50": round(statistics.median(returning) * 1000, 1),
                    "p99": round(percentile(returning, 0.99) * 1000, 1),
                    "max": round(max(returning) * 1000, 1)},
                "reloads": reloads,
                "haproxy_master_unchanged": master == master_after,
                "haproxy_workers_unchanged": workers == workers_after,
            }
            print(json.dumps(report))
            return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
