"""model/pods.py and reports.py: what a proxy Pod's status object says (ready, or why it
cannot run), and which agents' reports are stale. What they make of `Programmed` is in
the conditions table (tests/cases/conditions.yaml, test_status.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from roundhouse.model.pods import ProxyPod, parse_proxy_pod
from roundhouse.reports import stale_reports

POD = "roundhouse-web-lb-7d9f-x2k"
FD_ALERT = ("[NOTICE]   (1) : haproxy version is 3.2.26-1\n"
            "[ALERT]    (1) : [haproxy.main()] Cannot raise FD limit to 20041, "
            "limit is 20000.\n")
BACK_OFF = ("back-off 40s restarting failed container=haproxy "
            f"pod={POD}_default(8a0c)")


def container(name: str, waiting: str | None = None, message: str | None = None, *,
              last: dict[str, Any] | None = None, running: bool = False,
              terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting is not None:
        state["waiting"] = {"reason": waiting} | ({"message": message} if message else {})
    elif terminated is not None:
        state["terminated"] = terminated
    elif running:
        state["running"] = {"startedAt": "2026-12-02T04:00:00Z"}
    return {"name": name, "ready": running, "restartCount": 3 if last else 0,
            "state": state} | ({"lastState": {"terminated": last}} if last else {})


def pod_status(*containers: dict[str, Any], ready: bool = False,
               init: tuple[dict[str, Any], ...] = (), **extra: Any) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True"},
                  {"type": "Ready", "status": "True" if ready else "False"}]
    return {"phase": "Running" if containers else "Pending", "conditions": conditions,
            "containerStatuses": list(containers),
            "initContainerStatuses": list(init)} | extra


CRASHED = {"exitCode": 1, "reason": "Error", "message": FD_ALERT}

CASES: list[tuple[str, dict[str, Any], bool, str | None]] = [
    ("running and ready",
     pod_status(container("haproxy", running=True), container("agent", running=True),
                ready=True), True, None),
    ("still creating its containers: starting, not failing",
     pod_status(container("haproxy", "ContainerCreating"), container("agent", "ContainerCreating")),
     False, None),
    ("init container still running",
     pod_status(container("haproxy", "PodInitializing"),
                init=(container("agent-init", running=True),)), False, None),
    ("crash loop, with HAProxy's last words from the termination message",
     pod_status(container("haproxy", "CrashLoopBackOff", BACK_OFF, last=CRASHED),
                container("agent", running=True)), False,
     f"{POD}: container haproxy CrashLoopBackOff: {BACK_OFF}; last exit: [ALERT]    (1) : "
     "[haproxy.main()] Cannot raise FD limit to 20041, limit is 20000. (exit code 1)"),
    ("crash loop without a termination message: the kubelet's reason",
     pod_status(container("haproxy", "CrashLoopBackOff", BACK_OFF,
                          last={"exitCode": 137, "reason": "OOMKilled"})), False,
     f"{POD}: container haproxy CrashLoopBackOff: {BACK_OFF}; last exit: OOMKilled "
     "(exit code 137)"),
    ("between two restarts: terminated with an error",
     pod_status(container("haproxy", terminated=CRASHED)), False,
     f"{POD}: container haproxy exited; last exit: [ALERT]    (1) : [haproxy.main()] "
     "Cannot raise FD limit to 20041, limit is 20000. (exit code 1)"),
    ("image cannot be pulled",
     pod_status(container("haproxy", "ErrImagePull", 'pull access denied for "haproxy:9"'),
                container("agent", "ImagePullBackOff", 'Back-off pulling image "rh/agent:x"')),
     False, f'{POD}: container haproxy ErrImagePull: pull access denied for "haproxy:9"; '
     'container agent ImagePullBackOff: Back-off pulling image "rh/agent:x"'),
    ("image never pulled and not present",
     pod_status(container("haproxy", "ErrImageNeverPull",
                          'Container image "haproxy:3.4" is not present with pull policy '
                          'of Never')), False,
     f'{POD}: container haproxy ErrImageNeverPull: Container image "haproxy:3.4" is not '
     'present with pull policy of Never'),
    ("config error of an init container",
     pod_status(container("haproxy", "PodInitializing"),
                init=(container("agent-init", "CreateContainerConfigError",
                                'secret "x" not found'),)), False,
     f'{POD}: container agent-init CreateContainerConfigError: secret "x" not found'),
    ("unschedulable",
     {"phase": "Pending", "conditions": [
         {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
          "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                     "affinity/selector."}]}, False,
     f"{POD}: unschedulable: 0/3 nodes are available: 3 node(s) didn't match Pod's node "
     "affinity/selector."),
    ("scheduled later: not yet, but not unschedulable",
     {"phase": "Pending", "conditions": [
         {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
     False, None),
    ("evicted",
     {"phase": "Failed", "reason": "Evicted",
      "message": "The node was low on resource: memory."}, False,
     f"{POD}: pod failed: Evicted: The node was low on resource: memory."),
    ("empty status (just created)", {}, False, None),
]


@pytest.mark.parametrize(("status", "ready", "problem"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_proxy_pod_problem_from_its_status(status: dict[str, Any], ready: bool,
                                           problem: str | None) -> None:
    assert parse_proxy_pod(POD, status) == ProxyPod(POD, ready, problem)


def test_last_exit_keeps_only_the_end_of_a_long_termination_message() -> None:
    long = {"exitCode": 2, "message": "x" * 5000 + "\nthe end"}
    pod = parse_proxy_pod(POD, pod_status(container("agent", "CrashLoopBackOff", last=long)))
    assert pod.problem is not None
    assert pod.problem.endswith("the end (exit code 2)") and len(pod.problem) < 400


# -- stale reports -------------------------------------------------------------------------------

NOW = dt.datetime(2026, 12, 2, 4, 0, 0, tzinfo=dt.UTC)


def at(seconds_ago: int) -> str:
    when = NOW - dt.timedelta(seconds=seconds_ago)
    return json.dumps({"configHash": "c0ffee", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})


def test_reports_of_pods_that_are_gone_are_stale() -> None:
    data = {"p-a": at(3600), "p-gone": at(3600), "p-older": at(86_400), "p-b": at(1)}
    assert stale_reports(data, {"p-a", "p-b"}, NOW) == ["p-gone", "p-older"]


def test_a_fresh_report_of_an_unknown_pod_is_kept_for_a_while() -> None:
    """The agent of a brand-new Pod may report before the operator's watch sees the Pod."""
    data = {"p-new": at(5), "p-junk": "not json", "p-no-time": "{}"}
    assert stale_reports(data, set(), NOW) == ["p-junk", "p-no-time"]
    assert stale_reports({"p-new": at(61)}, set(), NOW) == ["p-new"]
