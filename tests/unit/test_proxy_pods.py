"""model/pods.py and programmed.py: what the proxy Pods' status objects and the agents'
reports make of `Programmed`, table by table."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from roundhouse.model.pods import ProxyPod, parse_proxy_pod
from roundhouse.programmed import Want, programmed, stale_reports
from roundhouse.status import Condition, ready_condition

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
                          'Container image "haproxy:3.2" is not present with pull policy '
                          'of Never')), False,
     f'{POD}: container haproxy ErrImageNeverPull: Container image "haproxy:3.2" is not '
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


# -- Programmed ----------------------------------------------------------------------------------

WANT = Want(replicas=2, config_hash="c0ffee", max_connections=10_000)
OK = ProxyPod("p-a", True)
OK_B = ProxyPod("p-b", True)


def report(config: str = "c0ffee", error: str | None = None, **limits: int) -> dict[str, Any]:
    return {"configHash": config, "error": error, "reloads": 0} | limits


PROGRAMMED_CASES: list[tuple[str, list[ProxyPod], dict[str, dict[str, Any]], Condition]] = [
    ("all ready replicas run the config", [OK, OK_B],
     {"p-a": report(), "p-b": report(maxconn=10_486, ulimitN=21_024)},
     Condition("Programmed", True, "Programmed", "2 ready proxy replica(s) run config c0ffee")),
    ("a crash loop beside a ready replica", [OK, ProxyPod("p-b", False, "p-b: container "
                                                           "haproxy CrashLoopBackOff: x")],
     {"p-a": report()},
     Condition("Programmed", False, "ProxyPodsFailing",
               "1/2 proxy replicas are ready; p-b: container haproxy CrashLoopBackOff: x")),
    ("many failing: three named, the rest counted",
     [ProxyPod(f"p-{i}", False, f"p-{i}: unschedulable") for i in range(5)], {},
     Condition("Programmed", False, "ProxyPodsFailing",
               "0/2 proxy replicas are ready; p-0: unschedulable; p-1: unschedulable; "
               "p-2: unschedulable; and 2 more")),
    ("none ready, none failing: waiting", [ProxyPod("p-a", False)], {},
     Condition("Programmed", False, "NoReadyReplicas",
               "0/2 proxy replicas are ready; config c0ffee is waiting for them")),
    ("a replica runs fewer connections than asked", [OK, OK_B],
     {"p-a": report(maxconn=9_979, ulimitN=19_999), "p-b": report(maxconn=10_486)},
     Condition("Programmed", True, "ConnectionLimitReduced",
               "HAProxy accepts fewer connections than spec.limits.maxConnections (10000): "
               "p-a at most 9979 (open-files limit 19999); raise the nodes' open-files limit "
               "(RLIMIT_NOFILE) or lower maxConnections; 2 ready proxy replica(s) run config "
               "c0ffee")),
    ("rejected by a ready replica", [OK, OK_B],
     {"p-a": report(), "p-b": report("old", "haproxy -c rejected the configuration: bad")},
     Condition("Programmed", False, "ConfigRejected", "proxies kept their previous config: "
               "haproxy -c rejected the configuration: bad")),
    ("an old error of a Pod that is gone counts for nothing", [OK],
     {"p-a": report("old"), "p-gone": report("old", "haproxy -c rejected: long ago")},
     Condition("Programmed", False, "Pending", "0/1 ready proxy replicas run config c0ffee")),
]


@pytest.mark.parametrize(("pods", "reports", "expected"), [c[1:] for c in PROGRAMMED_CASES],
                         ids=[c[0] for c in PROGRAMMED_CASES])
def test_programmed(pods: list[ProxyPod], reports: dict[str, dict[str, Any]],
                    expected: Condition) -> None:
    assert programmed(WANT, pods, reports) == expected


def test_a_reduced_connection_limit_keeps_ready_true_and_names_it() -> None:
    reduced = programmed(WANT, [OK], {"p-a": report(maxconn=486, ulimitN=1024)})
    ready = ready_condition([Condition("Accepted", True, "Valid", ""), reduced])
    assert (ready.status, ready.reason) == (True, "ConnectionLimitReduced")
    assert "p-a at most 486 (open-files limit 1024)" in ready.message


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
