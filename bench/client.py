"""Kubernetes client styles against one local API server (issue 14): today's (the
synchronous `kubernetes` client in threads, as kube.py did it) and the async candidates
kubernetes_asyncio, lightkube and kr8s.

Latency and throughput: all clients in one process, taking turns request by request
(the machine is shared: load swings then hit every client alike): p50/p99 of a ConfigMap
GET, a server-side apply of a ConfigMap (same body, field manager roundhouse) and a merge
patch of a LoadBalancer's status; then 200 applies with 16 in flight, --rounds bursts per
client in turn (the median rate). Memory: per client, a fresh subprocess (imports don't
mix) imports it and makes 530 requests; the RSS growth from before the import; and the RSS
the import alone adds to a process that already has aiohttp (kopf's HTTP stack, always
in the operator). Prints one JSON object last, with the candidates' ratios to today's.

    pip install -e '.[bench]'  # the candidates
    python bench/client.py [--repeat 100] [--concurrent 200] [--limit 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACE = "default"
CONFIGMAP = "bench-client"
LB = "bench-client"
CLIENTS = ("kubernetes-threads", "kubernetes_asyncio", "lightkube", "kr8s")
WARMUP = 10


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def configmap_body(i: int = 0) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{CONFIGMAP}-{i}" if i else CONFIGMAP,
                         "namespace": NAMESPACE},
            "data": {"haproxy.cfg": "global\n" * 20, "servers.json": "{}"}}


STATUS = {"status": {"observedGeneration": 1, "backendSummary": "3/3 ready"}}
CM_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
LB_STATUS = f"/apis/roundhouse.dev/v1alpha1/namespaces/{NAMESPACE}/loadbalancers/{LB}/status"
APPLY_QUERY = [("fieldManager", "roundhouse"), ("force", "true")]


# -- one adapter per client: get(), apply(i), status() -----------------------------------

Ops = tuple[Callable[[], Awaitable[Any]], Callable[[int], Awaitable[Any]],
            Callable[[], Awaitable[Any]]]


async def kubernetes_threads(kubeconfig: str) -> Ops:
    """Today's: the generated sync client's param_serialize/call_api in asyncio.to_thread."""
    import kubernetes

    kubernetes.config.load_kube_config(config_file=kubeconfig)
    api = kubernetes.client.ApiClient()

    def call(method: str, path: str, body: Any, ctype: str, query: list[Any]) -> Any:
        _, url, headers, payload, _ = api.param_serialize(
            method, path, query_params=query, body=body,
            header_params={"Content-Type": ctype, "Accept": "application/json"},
            auth_settings=["BearerToken"])
        response = api.call_api(method, url, header_params=headers, body=payload)
        data = response.read()
        assert 200 <= response.status < 300, (response.status, data)
        return json.loads(data)

    def run(*args: Any) -> Awaitable[Any]:
        return asyncio.to_thread(call, *args)

    return (lambda: run("GET", f"{CM_PATH}/{CONFIGMAP}", None, "application/json", []),
            lambda i: run("PATCH", f"{CM_PATH}/{configmap_body(i)['metadata']['name']}",
                          json.dumps(configmap_body(i)), "application/apply-patch+yaml",
                          APPLY_QUERY),
            lambda: run("PATCH", LB_STATUS, STATUS, "application/merge-patch+json", []))


async def kubernetes_asyncio_ops(kubeconfig: str) -> Ops:
    from kubernetes_asyncio import client, config

    await config.load_kube_config(config_file=kubeconfig)
    api = client.ApiClient()

    async def call(method: str, path: str, body: Any, ctype: str, query: list[Any]) -> Any:
        response = await api.call_api(
            path, method, query_params=query, body=body,
            header_params={"Content-Type": ctype, "Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False)
        data = await response.read()
        assert 200 <= response.status < 300, (response.status, data)
        return json.loads(data)

    return (lambda: call("GET", f"{CM_PATH}/{CONFIGMAP}", None, "application/json", []),
            lambda i: call("PATCH", f"{CM_PATH}/{configmap_body(i)['metadata']['name']}",
                           configmap_body(i), "application/apply-patch+yaml", APPLY_QUERY),
            lambda: call("PATCH", LB_STATUS, STATUS, "application/merge-patch+json", []))


async def lightkube_ops(kubeconfig: str) -> Ops:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.generic_resource import create_namespaced_resource
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import PatchType

    api = AsyncClient(KubeConfig.from_file(kubeconfig).get(), field_manager="roundhouse")
    LoadBalancer = create_namespaced_resource(
        "roundhouse.dev", "v1alpha1", "LoadBalancer", "loadbalancers")

    async def apply(i: int) -> Any:
        return await api.apply(ConfigMap.from_dict(configmap_body(i)), force=True)

    return (lambda: api.get(ConfigMap, CONFIGMAP, namespace=NAMESPACE),
            apply,
            lambda: api.patch(LoadBalancer.Status, LB, STATUS, namespace=NAMESPACE,
                              patch_type=PatchType.MERGE))


async def kr8s_ops(kubeconfig: str) -> Ops:
    import kr8s.asyncio

    api = await kr8s.asyncio.api(kubeconfig=kubeconfig)

    async def call(method: str, version: str, url: str, body: Any, ctype: str,
                   query: list[Any]) -> Any:
        async with api.call_api(method, version=version, base="/api" if version == "v1"
                                else "/apis", url=url, content=body,
                                headers={"Content-Type": ctype}, params=query) as response:
            return response.json()

    cm = f"namespaces/{NAMESPACE}/configmaps"
    return (lambda: call("GET", "v1", f"{cm}/{CONFIGMAP}", None, "application/json", []),
            lambda i: call("PATCH", "v1", f"{cm}/{configmap_body(i)['metadata']['name']}",
                           json.dumps(configmap_body(i)), "application/apply-patch+yaml",
                           APPLY_QUERY),
            lambda: call("PATCH", "roundhouse.dev/v1alpha1",
                         f"namespaces/{NAMESPACE}/loadbalancers/{LB}/status",
                         json.dumps(STATUS), "application/merge-patch+json", []))


ADAPTERS = {"kubernetes-threads": kubernetes_threads, "kubernetes_asyncio": kubernetes_asyncio_ops,
            "lightkube": lightkube_ops, "kr8s": kr8s_ops}
IMPORTS = {"kubernetes-threads": "kubernetes", "kubernetes_asyncio": "kubernetes_asyncio",
           "lightkube": "lightkube", "kr8s": "kr8s.asyncio"}


# -- the worker: one client, one fresh process ------------------------------------------

async def timed(op: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await op()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 0.99), 2)}


def import_cost(name: str, after: str) -> dict[str, int]:
    """RSS added by importing the client into a process that already has `after` (aiohttp:
    kopf's HTTP stack, always loaded in the operator; kopf itself is not used here, as it
    imports whichever Kubernetes client it finds, to offer a login with it)."""
    __import__(after)
    before = rss_kib()
    __import__(IMPORTS[name])
    return {f"import_after_{after}": rss_kib() - before}


async def rss_worker(name: str, kubeconfig: str, repeat: int, concurrent: int,
                 limit: int) -> dict[str, Any]:
    rss_start = rss_kib()
    __import__(IMPORTS[name])
    rss_imported = rss_kib()
    get, apply, status = await ADAPTERS[name](kubeconfig)
    for op in (get, lambda: apply(0), status):
        await timed(op, WARMUP + repeat)
    await burst(apply, concurrent, limit)
    result: dict[str, Any] = {}
    rss_end = rss_kib()
    result["rss_kib"] = {"before_import": rss_start, "import": rss_imported - rss_start,
                         "growth": rss_end - rss_start,
                         "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    result["requests"] = 3 * (WARMUP + repeat) + concurrent
    return result


async def burst(apply: Callable[[int], Awaitable[Any]], concurrent: int, limit: int) -> float:
    """`concurrent` applies (of 20 ConfigMaps), `limit` in flight: requests per second."""
    gate = asyncio.Semaphore(limit)

    async def bounded(i: int) -> None:
        async with gate:
            await apply(1 + i % 20)

    start = time.perf_counter()
    await asyncio.gather(*(bounded(i) for i in range(concurrent)))
    return concurrent / (time.perf_counter() - start)


async def interleaved(names: list[str], kubeconfig: str, repeat: int, concurrent: int,
                      limit: int, rounds: int) -> dict[str, Any]:
    """Latency and throughput of every client in one process, taking turns request by
    request (and burst by burst): the shared machine's load swings hit them all alike."""
    ops = {name: await ADAPTERS[name](kubeconfig) for name in names}
    for get, _, _ in ops.values():
        await timed(get, WARMUP)
    kinds = ("get_configmap", "apply_configmap", "patch_status")
    samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in kinds} for n in names}
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            get, apply, status = ops[name]
            for kind, op in zip(kinds, (get, functools.partial(apply, 0), status), strict=True):
                samples[name][kind] += await timed(op, 1)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            rates[name].append(await burst(ops[name][1], concurrent, limit))
    return {name: {**{kind: summary(samples[name][kind]) for kind in kinds},
                   "concurrent_apply": {"requests": concurrent, "in_flight": limit,
                                        "rounds": rounds,
                                        "per_second": round(statistics.median(rates[name]), 1)}}
            for name in names}


# -- the driver ---------------------------------------------------------------------------

def run_worker(*argv: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return {"error": out.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ratios(today: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    out = {}
    for op in ("get_configmap", "apply_configmap", "patch_status"):
        for q in ("p50_ms", "p99_ms"):
            out[f"{op}.{q}"] = round(other[op][q] / today[op][q], 2)
    out["concurrent_apply.per_second"] = round(
        other["concurrent_apply"]["per_second"] / today["concurrent_apply"]["per_second"], 2)
    for key in ("growth", "import_after_aiohttp"):
        out[f"rss_kib.{key}"] = round(other["rss_kib"][key] / max(1, today["rss_kib"][key]), 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5,
                        help="concurrent bursts per client, in turn; the median is reported")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--import-after", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.import_after:
        print(json.dumps(import_cost(args.worker, args.import_after)))
        return 0
    if args.worker == "interleaved":
        print(json.dumps(asyncio.run(interleaved(
            args.clients.split(","), args.kubeconfig, args.repeat, args.concurrent,
            args.limit, args.rounds))))
        return 0
    if args.worker:
        print(json.dumps(asyncio.run(rss_worker(args.worker, args.kubeconfig, args.repeat,
                                                args.concurrent, args.limit))))
        return 0

    from e2e.cluster.controlplane import ControlPlane

    clients = args.clients.split(",")
    sizes = ["--repeat", str(args.repeat), "--concurrent", str(args.concurrent),
             "--limit", str(args.limit), "--rounds", str(args.rounds)]
    with ControlPlane(controllers=False, log=lambda m: print(m, file=sys.stderr)) as cp, \
            tempfile.TemporaryDirectory() as tmp:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "loadbalancers.yaml"))
        cp.kubectl("wait", "--for=condition=Established", "crd/loadbalancers.roundhouse.dev")
        lb = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
              "metadata": {"name": LB, "namespace": NAMESPACE},
              "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                       "backends": [{"service": "web", "port": "http"}]}}
        manifest = Path(tmp) / "objects.json"
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                        "items": [lb, configmap_body()]}))
        cp.kubectl("apply", "--server-side", "--field-manager=roundhouse", "-f", str(manifest))
        missing = [n for n in clients if importlib.util.find_spec(IMPORTS[n].split(".")[0])
                   is None]
        present = [n for n in clients if n not in missing]
        timing = run_worker("--worker", "interleaved", "--clients", ",".join(present),
                            "--kubeconfig", str(cp.admin_kubeconfig), *sizes)
        results: dict[str, Any] = {}
        for name in clients:
            if name in missing:
                results[name] = {"error": "not installed: pip install -e '.[bench]'"}
                continue
            rss = run_worker("--worker", name, "--kubeconfig", str(cp.admin_kubeconfig), *sizes)
            if "error" not in rss:
                rss["rss_kib"].update(run_worker("--worker", name, "--import-after", "aiohttp"))
            results[name] = {**timing.get(name, timing), **rss}
        version = cp.server_version().get("gitVersion")
    today = results.get("kubernetes-threads", {})
    vs_today = {name: ratios(today, r) for name, r in results.items()
                if name != "kubernetes-threads" and "error" not in r and "error" not in today
                and "get_configmap" in r}
    versions = {}
    for dist in ("kubernetes", "kubernetes_asyncio", "lightkube", "kr8s", "aiohttp", "httpx",
                 "httpx2"):
        try:
            from importlib.metadata import version as dist_version
            versions[dist] = dist_version(dist)
        except Exception:
            continue
    print(json.dumps({"bench": "client", "kube_apiserver": version, "versions": versions,
                      "repeat": args.repeat, "rounds": args.rounds, "results": results,
                      "vs_today": vs_today},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
