"""The agents' reports: what each proxy Pod's agent says it runs. Pure.

Each agent writes one key of the report ConfigMap (`<child>-agents`, one JSON value per
Pod). status.py reads them for `Programmed`; the operator drops the keys of Pods that no
longer exist (stale_reports), as it sees the Pods: the agents' Role only lets them patch
that one ConfigMap, not list Pods.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Mapping
from typing import Any

# A new Pod's agent may report before the operator's watch has seen that Pod: a report
# younger than this is kept even if its Pod is unknown.
REPORT_GRACE = dt.timedelta(seconds=60)


def parse_agent_report(text: str) -> dict[str, Any]:
    """An agent's report: {"configHash", "structureHash", "error", "reloads", "time"},
    and once HAProxy answered {"maxconn", "maxsock", "ulimitN"}. Not a JSON object: {}."""
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


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
