"""Two operator replicas: one leads (holds the Lease) and reconciles, the other stands by;
when the leader dies without a word (SIGKILL), the standby takes the Lease and reconciles."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from kubernetes import client

from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    condition,
    create_lb,
    get_lb,
    install,
    sample_app,
    wait_for,
)
from tests.integration.test_operator import lb_body

LEASE = "roundhouse-operator"


def holder(kube: client.ApiClient) -> tuple[str | None, int]:
    spec = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec
    return spec.holder_identity, spec.lease_transitions or 0


def identity_of(op: OperatorProcess) -> str:
    assert op.proc is not None
    return f"{socket.gethostname()}-{op.proc.pid}"  # roundhouse.leader.identity()


def reconciled(kube: client.ApiClient, namespace: str, name: str) -> bool:
    return condition(get_lb(kube, namespace, name), "BackendsHealthy").get("status") == "True"


def test_a_standby_takes_over_when_the_leader_dies(
        control_plane: Any, kube: client.ApiClient, namespace: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    install(control_plane)
    sample_app(kube, namespace, replicas=2)
    logs = tmp_path_factory.mktemp("failover")
    args = ("--leader-election-namespace", OPERATOR_NAMESPACE, "--namespace", namespace)
    leader = OperatorProcess(control_plane, logs / "leader.log", *args).start()
    standby: OperatorProcess | None = None
    try:
        # A Lease left by an earlier test's operator expires first (15 s at most).
        wait_for(lambda: holder(kube)[0] == identity_of(leader), 40, "the first replica leads")
        standby = OperatorProcess(control_plane, logs / "standby.log", *args).start()
        wait_for(lambda: "standing by" in standby.log(), 30, "the second replica stands by")
        create_lb(kube, namespace, lb_body("before"))
        wait_for(lambda: reconciled(kube, namespace, "before"), 60, "the leader reconciles")
        assert "reconciled (" not in standby.log(), "a standby must not reconcile"
        _, transitions = holder(kube)

        leader.stop(kill=True)  # no graceful shutdown: the Lease is simply not renewed
        killed = time.monotonic()
        # The Lease runs out 15 s after the last renewal; the standby looks every 5 s.
        wait_for(lambda: holder(kube)[0] == identity_of(standby), 40,
                 "the standby takes the Lease", interval=0.5)
        took_over = time.monotonic() - killed
        create_lb(kube, namespace, lb_body("after"))
        wait_for(lambda: reconciled(kube, namespace, "after"), 60, "the new leader reconciles")
        print(f"standby took the Lease {took_over:.1f}s after the leader was killed, "
              f"reconciled a new LoadBalancer {time.monotonic() - killed:.1f}s after")
        assert holder(kube)[1] == transitions + 1
        assert not standby.forbidden_errors() and not leader.forbidden_errors()
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()
