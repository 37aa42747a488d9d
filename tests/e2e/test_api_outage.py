"""The API server down for 30 s with traffic flowing: the proxies keep serving, and the
operator (which rides the outage out in the same process) reconciles a new resource soon
after the API server answers again (issue 12, faults)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from e2e.harness import traffic
from kubernetes import client
from tests.e2e.conftest import Env, lb_body, local_only
from tests.integration.operator_process import condition, create_lb, get_lb, wait_for

OUTAGE_SECONDS = 30.0
RECONCILED_WITHIN = 5.0  # the goal, from the API server's /readyz


@local_only("stops and restarts the local kube-apiserver; a cluster's own API server is "
            "not ours to stop")
def test_api_server_outage_loses_no_request_and_the_operator_resumes(
        env_factory: Callable[..., Env], control_plane: Any, kube: client.ApiClient) -> None:
    env = env_factory()
    traffic.wait_for_backends(env.port, set(env.backends.backends), timeout=90)
    with traffic.Load(env.port, connections=5, max_seconds=OUTAGE_SECONDS + 120) as load:
        time.sleep(2.0)
        control_plane.stop_apiserver()
        stopped = time.monotonic()
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            ready_after = control_plane.start_apiserver()
        back = time.monotonic()
        print(f"kube-apiserver down {back - stopped:.1f}s (ready {ready_after:.1f}s after "
              f"its start)")
        # A resource created now must be reconciled without waiting for a resync.
        # In the namespace that exists (a new one waits on the controller-manager's
        # default ServiceAccount, which catches up on its own time after an outage).
        namespace = env.namespace
        created = wait_for(lambda: create_lb(kube, namespace, lb_body("after")), 30,
                           "creating a LoadBalancer after the outage", interval=0.2)
        assert created
        reconciled = wait_for(
            lambda: condition(get_lb(kube, namespace, "after"), "Accepted").get("status")
            == "True", 60, "the new LoadBalancer to be Accepted", interval=0.1)
        assert reconciled
        took = time.monotonic() - back
        time.sleep(2.0)
        ok, failed = load.snapshot()
    print(f"new LoadBalancer Accepted {took:.1f}s after the API server answered again; "
          f"{ok} requests through the proxy, {failed} failed: {load.failures[:5]}")
    # The controller-manager's informers reconnect on their own backoff (tens of
    # seconds): the tests after this one need it (a new namespace's default
    # ServiceAccount), so wait for it here, where the outage was made.
    caught_up = time.monotonic()
    probe = new_namespace_when_ready(kube)
    print(f"controller-manager caught up {time.monotonic() - caught_up:.1f}s later")
    client.CoreV1Api(kube).delete_namespace(probe)
    assert failed == 0, load.failures[:10]
    assert ok > 100
    assert took < RECONCILED_WITHIN, f"reconciled {took:.1f}s after the API server returned"


def new_namespace_when_ready(kube: client.ApiClient, timeout: float = 240.0) -> str:
    core = client.CoreV1Api(kube)
    name = f"outage-probe-{int(time.time())}"
    core.create_namespace({"metadata": {"name": name,
                                        "labels": {"roundhouse.dev/test": "e2e"}}})
    wait_for(lambda: core.read_namespaced_service_account("default", name), timeout,
             "the controller-manager to give a new namespace its default ServiceAccount",
             interval=1.0)
    return name
