"""Traffic through the real data plane: operator -> ConfigMap -> agent -> HAProxy -> netns.

Every request goes to 127.0.0.1:<listener port> (HAProxy on the host) and is answered
by an HTTP server in the network namespace that owns the kwok Pod's IP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from e2e.harness import traffic
from tests.e2e.conftest import Env, measure, set_ready
from tests.integration.operator_process import condition, get_lb, wait_for


def _ready_env(env_factory: Callable[..., Env], **spec: Any) -> Env:
    env = env_factory(**spec)
    expected = set(env.backends.backends)
    traffic.wait_for_backends(env.port, expected, timeout=90)
    return env


def test_round_robin_spreads_over_every_ready_backend(env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    counts = traffic.spread(env.port, 300)
    print(f"300 requests: {dict(counts)}")
    assert "<error>" not in counts, counts
    assert set(counts) == set(env.backends.backends)
    for pod, n in counts.items():
        assert 80 <= n <= 120, f"{pod} got {n} of 300: {dict(counts)}"


def test_not_ready_backend_stops_getting_traffic_without_reload(
        env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    proxy = env.proxy
    assert proxy is not None
    master, workers, _ = proxy.show_proc()
    reloads = proxy.agent_state().get("reloads")
    victim = sorted(env.backends.backends)[0]
    others = set(env.backends.backends) - {victim}

    load = traffic.Load(env.port, connections=3, keep_replies=True, max_seconds=120).start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        set_ready(env.kube, env.namespace, victim, False)
        time.sleep(4.0)
        t_back = time.monotonic()
        set_ready(env.kube, env.namespace, victim, True)
        back = measure(lambda: any(r.backend == victim and r.at > t_back
                                   for r in list(load.replies)), 30,
                       f"{victim} answering again")
    finally:
        load.stop()
    replies = list(load.replies)
    after_down = [r for r in replies if t0 <= r.at < t_back]
    last_victim = max((r.at for r in after_down if r.backend == victim), default=t0)
    gone = last_victim - t0
    print(f"NotReady -> last request on {victim} after {gone * 1000:.0f} ms; "
          f"Ready -> first request after {back * 1000:.0f} ms; {len(replies)} replies, "
          f"{len(load.failures)} failures")
    assert not load.failures, load.failures[:5]
    late = [r for r in after_down if r.at > t0 + 1.0 and r.backend == victim]
    assert not late, f"{victim} still answered {len(late)} request(s) 1 s after NotReady"
    assert {r.backend for r in after_down if r.at > t0 + 1.0} == others
    # Endpoint readiness is runtime state: no reload, same master, same worker.
    assert proxy.show_proc()[:2] == (master, workers)
    assert proxy.agent_state().get("reloads") == reloads
    counts = traffic.spread(env.port, 30)
    assert set(counts) == set(env.backends.backends), counts


def test_status_ready_and_programmed_through_the_real_agent_report(
        env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    assert env.proxy is not None
    lb = wait_for(lambda: (o := get_lb(env.kube, env.namespace, "web")) and condition(
        o, "Ready").get("status") == "True" and o, 60, "Ready=True")
    assert condition(lb, "Programmed")["status"] == "True"
    assert condition(lb, "Programmed")["reason"] == "Programmed"
    core = client.CoreV1Api(env.kube)
    cm = core.read_namespaced_config_map("web-lb", env.namespace)
    digest = cm.metadata.annotations["roundhouse.dev/config-hash"]
    reports = core.read_namespaced_config_map("web-lb-agents", env.namespace).data or {}
    report = json.loads(reports[env.proxy.pod_name])
    assert report["configHash"] == digest and report["error"] is None, report
    assert env.proxy.agent_state()["configHash"] == digest
    assert lb["status"]["backends"] == {"ready": 3, "total": 3}
