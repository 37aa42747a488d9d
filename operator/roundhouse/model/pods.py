"""Proxy Pods as the status needs them: ready or not, and why one cannot run.

Pure parsing of a Pod's `status` (the kubelet's and the scheduler's words), so that a
LoadBalancer says "roundhouse-web-lb-x: container haproxy CrashLoopBackOff: ...; last
exit: Cannot raise FD limit ..." instead of only "0/2 ready".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Waiting reasons of a container that is merely on its way (not a failure).
STARTING = frozenset({"", "ContainerCreating", "PodInitializing"})
# Other waiting reasons the kubelet uses for containers that cannot run. Names ending in
# Error or BackOff, or starting with Err, count too (CreateContainerConfigError,
# ImagePullBackOff, ErrImageNeverPull, ...): new ones of that shape need no change here.
FAILING = frozenset({"InvalidImageName", "CrashLoopBackOff"})
LAST_EXIT_CHARS = 300


@dataclass(frozen=True)
class ProxyPod:
    name: str
    ready: bool
    problem: str | None = None  # why it cannot run, naming the Pod; None: fine or starting


def parse_proxy_pod(name: str, status: Mapping[str, Any]) -> ProxyPod:
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    problems = [*_pod_problems(status, conditions), *_container_problems(status)]
    return ProxyPod(name, ready, f"{name}: " + "; ".join(problems) if problems else None)


def is_failing_reason(reason: str) -> bool:
    if reason in STARTING:
        return False
    return (reason in FAILING or reason.endswith(("Error", "BackOff"))
            or reason.startswith("Err"))


def _pod_problems(status: Mapping[str, Any],
                  conditions: list[Mapping[str, Any]]) -> list[str]:
    if status.get("phase") == "Failed":  # evicted, or a node that rejected it
        return [_join("pod failed", status.get("reason"), status.get("message"))]
    return [_join("unschedulable", c.get("message"))
            for c in conditions
            if c.get("type") == "PodScheduled" and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"]


def _container_problems(status: Mapping[str, Any]) -> list[str]:
    found = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            if isinstance(container, Mapping):
                problem = _container_problem(container)
                if problem:
                    found.append(problem)
    return found


def _container_problem(container: Mapping[str, Any]) -> str | None:
    state = container.get("state") or {}
    name = container.get("name", "?")
    waiting = state.get("waiting")
    terminated = state.get("terminated")
    if isinstance(waiting, Mapping) and is_failing_reason(str(waiting.get("reason") or "")):
        text = _join(f"container {name} {waiting.get('reason')}", waiting.get("message"))
        last = (container.get("lastState") or {}).get("terminated")
    elif isinstance(terminated, Mapping) and terminated.get("exitCode") not in (0, None):
        text, last = f"container {name} exited", terminated  # between two restarts
    else:
        return None
    if isinstance(last, Mapping):
        text += f"; last exit: {last_exit(last)}"
    return text


def last_exit(terminated: Mapping[str, Any]) -> str:
    """The container's termination message (its last log lines, with
    FallbackToLogsOnError), HAProxy's ALERT lines first; else the kubelet's reason."""
    lines = [line.strip() for line in str(terminated.get("message") or "").splitlines()
             if line.strip()]
    alerts = [line for line in lines if "[ALERT]" in line]
    text = " | ".join((alerts or lines)[-3:])[-LAST_EXIT_CHARS:]
    code = f"exit code {terminated.get('exitCode')}"
    text = text or str(terminated.get("reason") or "")
    return f"{text} ({code})" if text else code


def _join(head: str, *details: Any) -> str:
    parts = [str(d).strip() for d in details if d and str(d).strip()]
    return ": ".join([head, *parts])
