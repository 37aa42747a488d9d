"""A status someone else wrote over ours is written again at the next reconcile."""
from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from roundhouse import apply
from roundhouse.reconciler import Reconciler
from roundhouse.status import Condition, merge_conditions


def test_a_status_written_over_ours_is_written_again(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[dict[str, Any]] = []

    async def fake_write(kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        writes.append(body)

    monkeypatch.setattr(apply, "write_status", fake_write)
    monkeypatch.setattr(apply, "post_events", lambda body, events: None)
    reconciler = Reconciler()
    key = ("LoadBalancer", "ns", "web")
    healthy = [Condition("BackendsHealthy", True, "AllReady", "2/2")]
    stale = [Condition("BackendsHealthy", False, "NoEndpoints", "none")]
    asyncio.run(reconciler._write(key, {"metadata": {"generation": 1}}, healthy))
    # Someone else (a killed replica's late PATCH) writes False over it; the index shows it.
    overwritten = {"metadata": {"generation": 1}, "status": {
        "observedGeneration": 1,
        "conditions": merge_conditions([], stale, 1, dt.datetime.now(dt.UTC))}}
    asyncio.run(reconciler._write(key, overwritten, healthy))
    assert [w["conditions"][0]["status"] for w in writes] == ["True", "True"]
