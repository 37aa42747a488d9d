"""Conditions and counts, computed purely, then written once per reconcile."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from roundhouse import kube

CONDITION_TYPES = ("Accepted", "Programmed", "BackendsHealthy", "TLSReady", "Ready")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def merge_conditions(previous: Iterable[Mapping[str, Any]], new: Iterable[Condition],
                     generation: int, now: dt.datetime) -> list[dict[str, Any]]:
    """Keep lastTransitionTime unless the status really flipped."""
    before = {c.get("type"): c for c in previous or []}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for c in new:
        status = "True" if c.status else "False"
        old = before.get(c.type) or {}
        out.append({
            "type": c.type,
            "status": status,
            "reason": c.reason,
            "message": c.message[:1024],
            "observedGeneration": generation,
            "lastTransitionTime": old.get("lastTransitionTime", stamp)
            if old.get("status") == status else stamp,
        })
    return out


# True, but short of what the spec asks: Ready stays True and names it, and a Warning
# Event is posted when a condition takes such a reason.
DEGRADED_REASONS = frozenset({"ConnectionLimitReduced"})


def ready_condition(conditions: list[Condition]) -> Condition:
    failing = [c for c in conditions if not c.status]
    if not failing:
        degraded = [c for c in conditions if c.reason in DEGRADED_REASONS]
        if degraded:
            return Condition("Ready", True, degraded[0].reason,
                             f"{degraded[0].type}: {degraded[0].message}")
        return Condition("Ready", True, "Ready", "all conditions are met")
    first = failing[0]
    return Condition("Ready", False, first.reason, f"{first.type}: {first.message}")


async def write_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource. A 404 means the object is gone: nothing to do."""
    try:
        await kube.request("PATCH", kube.object_path(kind, namespace, name, "status"),
                           body={"status": status},
                           content_type="application/merge-patch+json")
    except Exception as error:
        if kube.status_code(error) != 404:
            raise
