"""The operator at scale: fan-out, restart and cold start against the local control plane.

Real kube-apiserver, etcd, controller-manager, scheduler and kwok (proxy Pods simulated, on
enough kwok nodes for all of them), the operator as a real process with install.yaml's
identity and leader election. Backend Services get hand-made EndpointSlices (no backend
Pods needed). The API server writes an audit log of the operator's own requests only, so
the requests it costs are counted by the server, per verb and resource, not estimated.
Three phases, one JSON object last:

- fanout: one endpoint of a Service shared by N LoadBalancers flips NotReady and back;
  the time until each proxy ConfigMap, and each status, shows it (first, p50, last);
- restart: N LoadBalancers created, the operator killed (SIGKILL) when half of their
  proxy Deployments exist, started again: time to converge (one converged before the
  kill counts as 0), and exactly one of each child;
- cold: N LoadBalancers (each its own Service of E endpoints) created at once: time to the
  first and last converged (children applied, Accepted and BackendsHealthy true), the
  operator's requests per verb and per resource, its peak RSS, CPU of every process.

    python bench/scale.py [--fanout 200] [--restart 200] [--cold 1000] [--endpoints 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from e2e.cluster.controlplane import ControlPlane
from kubernetes import client, watch
from kubernetes import config as kube_config
from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    OperatorProcess,
    install,
)

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
GROUP, VERSION = "roundhouse.dev", "v1alpha1"
CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment",
               "PodDisruptionBudget", "Service")
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"first": round(min(values) * 1000), "p50": round(statistics.median(values) * 1000),
            "last": round(max(values) * 1000)}


# ---------------------------------------------------------------- cluster objects

def lb_body(name: str, service: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LoadBalancer",
            "metadata": {"name": name},
            "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                     "backends": [{"service": service, "port": "http"}]}}


def endpoint_address(index: int, i: int) -> str:
    """Backend addresses inside the Pod CIDR, clear of the kwok nodes' /24s."""
    n = index * 16 + i
    return f"10.244.{128 + n // 250}.{n % 250 + 1}"


def service_with_endpoints(kube: client.ApiClient, namespace: str, name: str, index: int,
                           count: int) -> None:
    client.CoreV1Api(kube).create_namespaced_service(namespace, {
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    client.DiscoveryV1Api(kube).create_namespaced_endpoint_slice(
        namespace, slice_body(name, index, count, not_ready=()))


def slice_body(service: str, index: int, count: int, not_ready: Iterable[int]) -> dict[str, Any]:
    down = set(not_ready)
    return {"metadata": {"name": f"{service}-0", "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "roundhouse-bench"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [endpoint_address(index, i)],
                           "conditions": {"ready": i not in down},
                           "targetRef": {"kind": "Pod", "name": f"{service}-{i}"}}
                          for i in range(count)]}


def new_namespace(kube: client.ApiClient, name: str) -> str:
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    return name


def create_all(kube: client.ApiClient, namespace: str, bodies: list[dict[str, Any]],
               threads: int = 8) -> None:
    api = client.CustomObjectsApi(kube)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "loadbalancers", b), bodies))


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def converged(obj: dict[str, Any]) -> bool:
    return condition_true(obj, "Accepted") and condition_true(obj, "BackendsHealthy")


# ---------------------------------------------------------------- watching

class Watcher:
    """A watch in a thread: every event's object with the time it arrived."""

    def __init__(self, lister: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(lister, args, kw),
                                        daemon=True)
        self._thread.start()

    def _run(self, lister: Callable[..., Any], args: tuple[Any, ...],
             kw: dict[str, Any]) -> None:
        try:
            # Plain JSON, not the client's typed models: building a V1ConfigMap and turning
            # it back into a dict cost the bench milliseconds per event, on the cores the
            # control plane and the operator share, and delayed the times it records.
            for event in self._watch.stream(lister, *args, _request_timeout=3600,
                                            deserialize=False, **kw):
                obj = event["object"]
                with self.lock:
                    self.events.append((time.monotonic(), obj))
        except BaseException as err:  # surfaced by since(): a dead watch must not look idle
            self.error = err

    def since(self, start: float) -> list[tuple[float, dict[str, Any]]]:
        if self.error is not None:
            raise RuntimeError(f"the watch failed: {self.error}") from self.error
        with self.lock:
            return [(t, o) for t, o in self.events if t >= start]

    def stop(self) -> None:
        self._watch.stop()


def seen_names(watcher: Watcher) -> set[str]:
    with watcher.lock:
        return {o["metadata"]["name"] for _, o in watcher.events}


def wait_quiet(watchers: list[Watcher], quiet: float, timeout: float) -> float:
    """Seconds until no watcher has seen an event for `quiet` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        last = max((w.events[-1][0] for w in watchers if w.events), default=start)
        if time.monotonic() - last >= quiet:
            return last - start
        time.sleep(0.2)
    raise RuntimeError(f"still changing {timeout:.0f}s after converging")


OPERATORS: list[OperatorProcess] = []  # the one running: a wait ends if it exits


def check_operator() -> None:
    for op in OPERATORS:
        if op.proc is not None and op.proc.poll() is not None:
            tail = "\n".join(op.log().splitlines()[-15:])
            raise RuntimeError(f"the operator exited ({op.proc.returncode}):\n{tail}")


def first_times(watcher: Watcher, start: float, names: set[str],
                test: Callable[[dict[str, Any]], bool], timeout: float,
                already: bool = False) -> dict[str, float]:
    """Seconds from `start` to the first event per name that passes `test`. `already`:
    a name whose last event before `start` passed it counts as 0 (it was done before,
    and nothing needs to write it again)."""
    deadline = time.monotonic() + timeout
    found: dict[str, float] = {}
    if already:
        with watcher.lock:
            before = {o["metadata"]["name"]: o for t, o in watcher.events if t < start}
        found = {name: 0.0 for name, obj in before.items() if name in names and test(obj)}
    while time.monotonic() < deadline:
        check_operator()
        for t, obj in watcher.since(start):
            name = obj["metadata"]["name"]
            if name in names and name not in found and test(obj):
                found[name] = t - start
        if len(found) == len(names):
            return found
        time.sleep(0.05)
    missing = sorted(names - set(found))
    raise RuntimeError(f"{len(missing)} of {len(names)} never showed it within {timeout:.0f}s: "
                       f"{', '.join(missing[:5])}")


# ---------------------------------------------------------------- processes

def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_rss_mb(self.pid))
            except OSError:
                return
            self._stop.wait(0.25)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak, 1)


def cpu_snapshot(cp: ControlPlane, operator: OperatorProcess) -> dict[str, float]:
    pids = {p.name: p.pid for p in cp.processes}
    assert operator.proc is not None
    pids["operator"] = operator.proc.pid
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = proc_cpu_seconds(pid)
        except OSError:
            continue
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 1) for k in after if k in before}


class Audit:
    """The operator's requests as the API server logged them (one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> dict[str, Any]:
        by_verb: collections.Counter[str] = collections.Counter()
        by_resource: collections.Counter[str] = collections.Counter()
        with self.path.open("rb") as f:
            f.seek(offset)
            for line in f:
                entry = json.loads(line)
                if entry.get("user", {}).get("username") != OPERATOR_USER:
                    continue
                verb = entry.get("verb", "?")
                ref = entry.get("objectRef") or {}
                resource = ref.get("resource", "?") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else "")
                by_verb[verb] += 1
                by_resource[f"{verb} {resource}"] += 1
        return {"total": sum(by_verb.values()), "by_verb": dict(by_verb.most_common()),
                "by_verb_and_resource": dict(by_resource.most_common())}


# ---------------------------------------------------------------- phases

def fanout(kube: client.ApiClient, count: int, endpoints: int, flips: int) -> dict[str, Any]:
    ns = new_namespace(kube, "scale-fanout")
    service_with_endpoints(kube, ns, "shared", 0, endpoints)
    core = client.CoreV1Api(kube)
    configmaps = Watcher(core.list_namespaced_config_map, ns,
                         label_selector="app.kubernetes.io/managed-by=roundhouse")
    lbs = Watcher(client.CustomObjectsApi(kube).list_namespaced_custom_object, GROUP,
                  VERSION, ns, "loadbalancers")
    names = {f"lb{i}" for i in range(count)}
    started = time.monotonic()
    create_all(kube, ns, [lb_body(n, "shared") for n in sorted(names)])
    settle = first_times(lbs, started, names, converged, 600)
    log(f"fanout: {count} LoadBalancers converged, last after {max(settle.values()):.1f}s")
    # The proxy Pods starting (kwok) keep re-reconciling their resources for a while: flip
    # once that churn is over, so the figures are the flip's alone.
    quiet = wait_quiet([configmaps, lbs], 5.0, 300)
    log(f"fanout: quiet (no ConfigMap or status change for 5 s) {quiet:.1f}s after converging")
    target = "shared-0"  # the endpoint that flips
    pattern = re.compile(r'"endpoint": "' + re.escape(f"shared/{target}:8080") +
                         r'"[^\n]*"state": "(\w+)"')
    flips_out: list[dict[str, Any]] = []
    for flip in range(flips):
        ready = flip % 2 == 1  # NotReady first, then back
        start = time.monotonic()
        client.DiscoveryV1Api(kube).replace_namespaced_endpoint_slice(
            "shared-0", ns, {**slice_body("shared", 0, endpoints, () if ready else (0,)),
                             "metadata": {**slice_body("shared", 0, endpoints, ())["metadata"],
                                          "resourceVersion": client.DiscoveryV1Api(kube)
                                          .read_namespaced_endpoint_slice("shared-0", ns)
                                          .metadata.resource_version}})
        want = "ready" if ready else None

        def cm_shows(obj: dict[str, Any], want: str | None = want) -> bool:
            match = pattern.search((obj.get("data") or {}).get("servers.json", ""))
            return bool(match) and ((match.group(1) == want) if want else
                                    match.group(1) != "ready")

        backends_ready = endpoints if ready else endpoints - 1

        def status_shows(obj: dict[str, Any], n: int = backends_ready) -> bool:
            return ((obj.get("status") or {}).get("backends") or {}).get("ready") == n

        cms = first_times(configmaps, start, {f"{n}-lb" for n in names}, cm_shows, 120)
        statuses = first_times(lbs, start, names, status_shows, 120)
        flips_out.append({"direction": "ready" if ready else "not_ready",
                          "configmaps_ms": summary_ms(list(cms.values())),
                          "status_ms": summary_ms(list(statuses.values()))})
        log(f"fanout flip {flip + 1}: configmaps last {max(cms.values()):.2f}s, "
            f"status last {max(statuses.values()):.2f}s")
        time.sleep(1)
    configmaps.stop()
    lbs.stop()
    return {"resources": count, "converged_s": round(max(settle.values()), 1),
            "quiet_after_s": round(quiet, 1), "flips": flips_out,
            "configmaps_last_ms_max": max(f["configmaps_ms"]["last"] for f in flips_out),
            "status_last_ms_max": max(f["status_ms"]["last"] for f in flips_out)}


def child_counts(kube: client.ApiClient, namespace: str) -> collections.Counter[tuple[str, str]]:
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    rbac, policy = client.RbacAuthorizationV1Api(kube), client.PolicyV1Api(kube)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    selector = "app.kubernetes.io/managed-by=roundhouse"
    for kind, lister in (("ServiceAccount", core.list_namespaced_service_account),
                         ("ConfigMap", core.list_namespaced_config_map),
                         ("Service", core.list_namespaced_service),
                         ("Deployment", apps.list_namespaced_deployment),
                         ("Role", rbac.list_namespaced_role),
                         ("RoleBinding", rbac.list_namespaced_role_binding),
                         ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget)):
        for item in lister(namespace, label_selector=selector).items:
            owner = (item.metadata.labels or {}).get("roundhouse.dev/owner-name", "?")
            counts[(owner, kind)] += 1
    return counts


def restart(kube: client.ApiClient, cp: ControlPlane, operator: OperatorProcess, count: int,
            endpoints: int) -> tuple[dict[str, Any], OperatorProcess]:
    ns = new_namespace(kube, "scale-restart")
    service_with_endpoints(kube, ns, "shared", 1, endpoints)
    lbs = Watcher(client.CustomObjectsApi(kube).list_namespaced_custom_object, GROUP,
                  VERSION, ns, "loadbalancers")
    names = {f"lb{i}" for i in range(count)}
    apps = client.AppsV1Api(kube)
    # A watch, not a list per poll: listing up to 200 Deployments took longer than the
    # operator needed to create the rest, and the kill came after all of them.
    deployments = Watcher(apps.list_namespaced_deployment, ns)
    create_all(kube, ns, [lb_body(n, "shared") for n in sorted(names)])
    deadline = time.monotonic() + 300
    while len(seen_names(deployments)) < count // 2:
        if time.monotonic() > deadline:
            raise RuntimeError("restart: half of the proxy Deployments never appeared")
        time.sleep(0.01)
    operator.stop(kill=True)
    deployments.stop()
    partial = len(apps.list_namespaced_deployment(ns).items)
    log(f"restart: killed the operator at {partial}/{count} proxy Deployments")
    second = OperatorProcess(cp, operator.log_path, "--leader-election-namespace",
                             OPERATOR_NAMESPACE).start()
    OPERATORS[:] = [second]
    started = time.monotonic()
    done = first_times(lbs, started, names, converged, 600, already=True)
    took = max(done.values())
    before = sum(1 for t in done.values() if t == 0.0)
    lbs.stop()
    counts = child_counts(kube, ns)
    # Exactly one of each child (two ConfigMaps: the config and the agents' reports).
    wrong = sorted(f"{owner} {kind} x{n}" for (owner, kind), n in counts.items()
                   if n != (2 if kind == "ConfigMap" else 1))
    missing = sorted(f"{n} {k}" for n in names for k in CHILD_KINDS if (n, k) not in counts)
    log(f"restart: converged {took:.1f}s after the restart ({before} were before the kill); "
        f"{len(wrong)} duplicated, "
        f"{len(missing)} missing")
    return ({"resources": count, "killed_at_deployments": partial,
             "converged_before_the_kill": before,
             "converged_after_restart_s": round(took, 1),
             "duplicated_children": wrong[:10], "missing_children": missing[:10]}, second)


def cold(kube: client.ApiClient, cp: ControlPlane, operator: OperatorProcess, audit: Audit,
         count: int, endpoints: int) -> dict[str, Any]:
    ns = new_namespace(kube, "scale-cold")
    log(f"cold: creating {count} Services with {endpoints} endpoints each")
    # Not measured, and not as fast as possible: an admin's burst is exempt from the API
    # server's fairness, and would starve everyone else (the operator's Lease included).
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: service_with_endpoints(kube, ns, f"svc{i}", 2 + i, endpoints),
                      range(count)))
    time.sleep(10)  # the operator's triggers on Services nothing references yet settle
    lbs = Watcher(client.CustomObjectsApi(kube).list_namespaced_custom_object, GROUP,
                  VERSION, ns, "loadbalancers")
    assert operator.proc is not None
    rss_before = proc_rss_mb(operator.proc.pid)
    rss = RssSampler(operator.proc.pid)
    cpu_before, mark = cpu_snapshot(cp, operator), audit.mark()
    names = {f"lb{i}" for i in range(count)}
    start = time.monotonic()
    create_all(kube, ns, [lb_body(f"lb{i}", f"svc{i}") for i in range(count)])
    created = time.monotonic() - start
    log(f"cold: {count} LoadBalancers created in {created:.1f}s")
    done = first_times(lbs, start, names, converged, 1200)
    cpu_after = cpu_snapshot(cp, operator)
    peak = rss.stop()
    lbs.stop()
    time.sleep(5)  # the audit log is written asynchronously (batch backend)
    requests = audit.since(mark)
    counts = child_counts(kube, ns)
    missing = sum(1 for n in names for k in CHILD_KINDS if (n, k) not in counts)
    log(f"cold: first converged {min(done.values()):.1f}s, last {max(done.values()):.1f}s; "
        f"{requests['total']} operator requests; RSS peak {peak} MiB")
    return {"resources": count, "endpoints": count * endpoints,
            "created_in_s": round(created, 1),
            "converged_first_s": round(min(done.values()), 1),
            "converged_p50_s": round(statistics.median(done.values()), 1),
            "converged_last_s": round(max(done.values()), 1),
            "missing_children": missing,
            "operator_requests": requests,
            "operator_requests_per_resource": round(requests["total"] / count, 2),
            "operator_rss_mb": {"before": round(rss_before, 1), "peak": peak,
                                "per_1000_resources": round((peak - rss_before) / count * 1000,
                                                            1)},
            "cpu_seconds": cpu_delta(cpu_before, cpu_after)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fanout", type=int, default=200, help="LoadBalancers sharing one "
                        "Service (0: skip)")
    parser.add_argument("--flips", type=int, default=4)
    parser.add_argument("--restart", type=int, default=200, help="LoadBalancers created "
                        "around a kill -9 (0: skip)")
    parser.add_argument("--cold", type=int, default=1000, help="LoadBalancers created at once "
                        "(0: skip)")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="roundhouse-scale-"))
    policy = work / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = Audit(work / "audit.log")
    # Room for every proxy Pod (2 per LoadBalancer, 110 per node): they are scheduled and
    # turn Ready as in a cluster that fits them, not left Pending.
    nodes = max(3, -(-2 * (args.fanout + args.restart + args.cold) // 100))
    cp = ControlPlane(controllers=True, nodes=nodes, log=log, apiserver_flags=[
        f"--audit-policy-file={policy}", f"--audit-log-path={audit.path}",
        "--audit-log-mode=batch", "--audit-log-format=json", "--audit-log-maxsize=0"])
    report: dict[str, Any] = {"benchmark": "scale"}
    # One Pod identity for the operator before and after the kill, as a container
    # restarted by the kubelet keeps its Pod's name (the Lease holder is then itself).
    os.environ["POD_NAME"] = "roundhouse-operator-bench-0"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with cp:
            install(cp)
            kube = kube_config.new_client_from_config(config_file=str(cp.admin_kubeconfig))
            operator = OperatorProcess(cp, work / "operator.log", "--leader-election-namespace",
                                       OPERATOR_NAMESPACE).start()
            OPERATORS[:] = [operator]
            try:
                if args.fanout:
                    report["fanout"] = fanout(kube, args.fanout, args.endpoints, args.flips)
                if args.restart:
                    report["restart"], operator = restart(kube, cp, operator, args.restart,
                                                          args.endpoints)
                if args.cold:
                    report["cold_start"] = cold(kube, cp, operator, audit, args.cold,
                                                args.endpoints)
            finally:
                # The one running may be the restart phase's (an interrupted run included).
                for running in OPERATORS:
                    running.stop()
                operator.stop()
                errors = [line for line in operator.log().splitlines()
                          if "Traceback" in line or " ERROR " in line]
                report["operator_log_errors"] = len(errors)
                report["operator_lease_lost"] = operator.log().count("lost the Lease")
                if errors:
                    log("operator log errors (first 5):\n" + "\n".join(errors[:5]))
        print(json.dumps(report))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
