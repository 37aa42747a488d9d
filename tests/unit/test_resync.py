"""The resync loop: each resource once per period, at its own offset, through the
debouncer; no kopf timer (so no finalizer on every resource)."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import kopf

from roundhouse.handlers import reconcile  # noqa: F401  (registers the handlers)
from roundhouse.handlers.resync import Key, Resync, due, slot_of

KEYS: list[Key] = [("LoadBalancer", "ns", f"lb{i}") for i in range(200)] + [
    ("ReverseProxy", "other", f"rp{i}") for i in range(100)]


def test_every_key_is_due_once_per_period_and_spread_over_it() -> None:
    slots = 300
    seen: collections.Counter[Key] = collections.Counter()
    per_tick = []
    for tick in range(slots):
        now = due(KEYS, tick, tick + 1, slots)
        per_tick.append(len(now))
        seen.update(now)
    assert set(seen) == set(KEYS) and set(seen.values()) == {1}
    assert max(per_tick) <= 8  # spread out, not all at once (300 keys over 300 ticks)


def test_a_late_tick_catches_up_and_a_long_gap_covers_everyone() -> None:
    slots = 10
    late = due(KEYS, 3, 6, slots)  # ticks 4, 5 and 6 at once
    assert late == [k for k in KEYS if slot_of(k, slots) in {4, 5, 6}]
    assert sorted(due(KEYS, 0, 25, slots)) == sorted(KEYS)


class _Index(dict[Any, Any]):
    pass


def _kwargs(lbs: list[str]) -> dict[str, Any]:
    bodies = _Index({("ns", n): [{"metadata": {"namespace": "ns", "name": n}}] for n in lbs})
    empty = _Index()
    return {"rh_services": empty, "rh_slices": empty, "rh_secrets": empty,
            "rh_configmaps": empty, "rh_proxy_pods": empty, "rh_rp_claims": empty,
            "rh_loadbalancers": bodies, "rh_reverseproxies": empty}


def test_the_loop_schedules_each_resource_after_the_first_period() -> None:
    scheduled: list[Key] = []
    resync = Resync(period=0.2, tick=0.02, schedule=lambda key, _action: scheduled.append(key))

    async def go() -> None:
        task = asyncio.create_task(resync.run())
        await asyncio.sleep(0.1)
        assert scheduled == []  # nothing known yet, and the first period is skipped anyway
        resync.remember(_kwargs(["a", "b", "c"]))
        await asyncio.sleep(0.45)  # past the first period, then one more
        task.cancel()

    asyncio.run(go())
    counts = collections.Counter(scheduled)
    assert set(counts) == {("LoadBalancer", "ns", n) for n in "abc"}
    assert all(1 <= c <= 2 for c in counts.values()), counts


def test_forgotten_indexes_schedule_nothing() -> None:
    resync = Resync(period=1, tick=1)
    resync.remember(_kwargs(["a"]))
    assert resync.keys() == [("LoadBalancer", "ns", "a")]
    resync.forget()
    assert resync.keys() == []


def test_no_kopf_timer_is_registered() -> None:
    """A timer would make kopf add a finalizer to every resource."""
    registry = kopf.get_default_registry()
    assert not list(registry._spawning.get_all_handlers())
