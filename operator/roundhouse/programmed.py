"""`Programmed`, computed purely from the proxy Pods and their agents' reports.

Inputs are what the operator's indexes hold: the proxy Pods (model/pods.py) and the
report ConfigMap's data (`<name>-lb-agents`, one JSON value per Pod, written by the
agents). Reports of Pods that no longer exist are ignored here, and dropped from the
ConfigMap by the operator (stale_reports), which sees the Pods; the agents' Role only
lets them patch that one ConfigMap, not list Pods.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roundhouse.model.pods import ProxyPod
from roundhouse.status import Condition

SHOWN = 3  # Pods named in a message; the rest are counted
# A new Pod's agent may report before the operator's watch has seen that Pod: a report
# younger than this is kept even if its Pod is unknown.
REPORT_GRACE = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Want:
    """What the spec asks of every proxy replica."""

    replicas: int
    config_hash: str
    max_connections: int


def parse_agent_report(text: str) -> dict[str, Any]:
    """An agent's report: {"configHash", "structureHash", "error", "reloads", "time"},
    and once HAProxy answered {"maxconn", "maxsock", "ulimitN"}."""
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def programmed(want: Want, pods: Sequence[ProxyPod],
               reports: Mapping[str, Mapping[str, Any]]) -> Condition:
    ready = sorted(p.name for p in pods if p.ready)
    failing = sorted((p for p in pods if p.problem), key=lambda p: p.name)
    if failing:
        return Condition("Programmed", False, "ProxyPodsFailing",
                         f"{len(ready)}/{want.replicas} proxy replicas are ready; "
                         + _listed([str(p.problem) for p in failing]))
    if not ready:
        return Condition("Programmed", False, "NoReadyReplicas",
                         f"0/{want.replicas} proxy replicas are ready; config "
                         f"{want.config_hash} is waiting for them")
    current = [p for p in ready if reports.get(p, {}).get("configHash") == want.config_hash]
    if len(current) == len(ready):
        summary = f"{len(ready)} ready proxy replica(s) run config {want.config_hash}"
        reduced = _reduced(want, {p: reports.get(p, {}) for p in ready})
        if reduced:
            return Condition("Programmed", True, "ConnectionLimitReduced",
                             f"{reduced}; {summary}")
        return Condition("Programmed", True, "Programmed", summary)
    rejected = sorted({str(r["error"]) for p in ready if (r := reports.get(p, {})).get("error")})
    if rejected:
        return Condition("Programmed", False, "ConfigRejected",
                         f"proxies kept their previous config: {rejected[0]}")
    return Condition("Programmed", False, "Pending",
                     f"{len(current)}/{len(ready)} ready proxy replicas run config "
                     f"{want.config_hash}")


def _reduced(want: Want, reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Replicas whose HAProxy accepts fewer connections than the spec asks: the node's
    open-files limit is too low for it (HAProxy needs about two per connection)."""
    low = [f"{pod} at most {r['maxconn']} (open-files limit {r.get('ulimitN', '?')})"
           for pod, r in sorted(reports.items())
           if isinstance(r.get("maxconn"), int) and r["maxconn"] < want.max_connections]
    if not low:
        return ""
    return (f"HAProxy accepts fewer connections than spec.limits.maxConnections "
            f"({want.max_connections}): " + _listed(low)
            + "; raise the nodes' open-files limit (RLIMIT_NOFILE) or lower maxConnections")


def _listed(items: list[str]) -> str:
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more" if more > 0 else "")


def stale_reports(data: Mapping[str, str], pods: Collection[str], now: dt.datetime,
                  grace: dt.timedelta = REPORT_GRACE) -> list[str]:
    """Keys of the report ConfigMap whose Pod is gone (and whose report is not brand new)."""
    stale = []
    for pod, text in data.items():
        if pod in pods:
            continue
        reported = _parse_time(parse_agent_report(text).get("time"))
        if reported is not None and now - reported < grace:
            continue
        stale.append(pod)
    return sorted(stale)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC)
