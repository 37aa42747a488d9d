"""Faults on the dependency-trigger path, with no cluster: a reconcile started by a Service
event whose write fails is retried with backoff until it goes through; a retry is gone
after stop(); a re-list (the watch re-established) re-triggers what changed meanwhile and
nothing else. The real handler, Reconciler and pipeline run; only the API writes are
replaced (a recorder that can refuse)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

import roundhouse.handlers
from roundhouse import apply
from roundhouse.handlers import dependencies
from roundhouse.handlers.dependencies import Listed, Relisting
from roundhouse.handlers.state import DEBOUNCER
from roundhouse.handlers.trigger import Debouncer
from tests.unit.cluster_fixtures import endpoint_slice, pods, service
from tests.unit.conftest import lb_object

NS = "default"


class FakeApi:
    """Records writes; refuses a child write while `refusing` is above 0 (one per call)."""

    def __init__(self, refusing: int = 0) -> None:
        self.refusing = refusing
        self.applies: list[str] = []
        self.refused = 0
        self.statuses: list[dict[str, Any]] = []

    async def apply_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.refusing > 0:
            self.refusing -= 1
            self.refused += 1
            raise apply.ApplyError(obj["kind"], obj["metadata"]["name"], 403,
                                   'configmaps "web-lb" is forbidden: exceeded quota')
        self.applies.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return obj

    async def write_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def programmed(self) -> str:
        conditions = self.statuses[-1]["conditions"] if self.statuses else []
        return next((c["reason"] for c in conditions if c["type"] == "Programmed"), "")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi()
    monkeypatch.setattr(apply, "apply_object", fake.apply_object)
    monkeypatch.setattr(apply, "write_status", fake.write_status)
    monkeypatch.setattr(apply, "post_events", lambda body, events: None)
    monkeypatch.setattr(DEBOUNCER, "retry_delays", (0.05, 0.1, 0.2))
    roundhouse.handlers.stop_reconciling()
    yield fake
    roundhouse.handlers.stop_reconciling()


def indexes() -> dict[str, Any]:
    """The kopf indexes one LoadBalancer `web` (backend Service `web`, 3 ready Pods) needs."""
    return {
        "rh_services": {(NS, "web"): [service()]},
        "rh_slices": {(NS, "web"): [endpoint_slice("web", pods(3))]},
        "rh_secrets": {}, "rh_configmaps": {}, "rh_proxy_pods": {}, "rh_rp_claims": {},
        "rh_lb_refs": {("Service", NS, "web"): [("LoadBalancer", "web")]},
        "rh_rp_refs": {},
        "rh_loadbalancers": {(NS, "web"): [lb_object()]},
        "rh_reverseproxies": {},
    }


async def slice_event(event: str | None, version: str, idx: dict[str, Any],
                      name: str = "web-abc") -> None:
    await dependencies.endpoints_changed(
        namespace=NS, name=name, labels={"kubernetes.io/service-name": "web"}, type=event,
        meta={"resourceVersion": version}, **idx)


async def until(predicate: Any, timeout: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def test_a_refused_write_from_a_trigger_is_retried_with_backoff_until_it_converges(
        api: FakeApi) -> None:
    """An EndpointSlice change re-reconciles `web`; the API server refuses its first
    write three times (a quota): the status says ApplyFailed, and retries 50, 100 and
    200 ms apart (the test's backoff) write every child once it is lifted."""
    api.refusing = 3

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await slice_event("MODIFIED", "2", indexes())
        await until(lambda: api.refused == 1)
        assert api.programmed() == "ApplyFailed" and DEBOUNCER.retrying() == 1
        await until(lambda: len(api.applies) >= 8)
        await asyncio.sleep(0.3)  # no retry after success
        return loop.time() - start

    took = asyncio.run(scenario())
    assert api.refused == 3
    assert "ConfigMap/web-lb" in api.applies and api.programmed() != "ApplyFailed"
    assert len(api.applies) == len(set(api.applies))  # each child written once
    assert DEBOUNCER.retrying() == 0
    assert took >= 0.05 + 0.1 + 0.2  # the backoff was waited, not skipped


def test_stop_cancels_a_pending_retry(api: FakeApi) -> None:
    api.refusing = 1000

    async def scenario() -> int:
        await slice_event("MODIFIED", "2", indexes())
        await until(lambda: DEBOUNCER.retrying() == 1)
        assert DEBOUNCER.retrying() == 1
        roundhouse.handlers.stop_reconciling()  # the Lease is lost
        refused = api.refused
        await asyncio.sleep(0.4)  # past the 50 ms and 100 ms retries
        return api.refused - refused

    assert asyncio.run(scenario()) == 0
    assert DEBOUNCER.retrying() == 0 and not api.applies


def test_an_invalid_spec_is_not_retried() -> None:
    async def scenario() -> int:
        runs = 0
        debouncer = Debouncer(spacing=0.01, retry_delays=(0.02,))

        async def invalid() -> None:
            nonlocal runs
            runs += 1
            raise kopf.PermanentError("invalid spec")

        debouncer.schedule("lb", invalid)
        await asyncio.sleep(0.2)
        assert debouncer.retrying() == 0
        return runs

    assert asyncio.run(scenario()) == 1


def test_the_backoff_grows_then_stays_at_its_last_step() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        runs: list[float] = []
        debouncer = Debouncer(spacing=0.001, retry_delays=(0.02, 0.05, 0.1))

        async def failing() -> None:
            runs.append(loop.time())
            raise TimeoutError("API server timed out")

        debouncer.schedule("lb", failing)
        await asyncio.sleep(0.55)
        debouncer.stop()
        return runs

    runs = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert len(gaps) >= 4, gaps
    assert gaps[0] >= 0.02 and gaps[1] >= 0.05 and all(g >= 0.1 for g in gaps[2:]), gaps
    assert all(g < 0.1 + 0.15 for g in gaps[2:]), gaps  # 0.1 repeats, it does not grow


def test_an_event_during_the_backoff_runs_at_once(api: FakeApi) -> None:
    """A new event is new information: it runs at the usual spacing, not after the
    pending retry's backoff."""
    api.refusing = 1
    api_delays = (5.0,)

    async def scenario() -> float:
        DEBOUNCER.retry_delays = api_delays
        loop = asyncio.get_running_loop()
        idx = indexes()
        await slice_event("MODIFIED", "2", idx)
        await until(lambda: DEBOUNCER.retrying() == 1)
        start = loop.time()
        await slice_event("MODIFIED", "3", idx)
        await until(lambda: "ConfigMap/web-lb" in api.applies)
        return loop.time() - start

    assert asyncio.run(scenario()) < 1
    assert DEBOUNCER.retrying() == 0


def test_a_relist_reconciles_only_what_changed_meanwhile(api: FakeApi) -> None:
    """The first listing triggers nothing (the resume handlers cover it); after watch
    events, a re-list (the watch broke: an API server restart, 410 Gone) re-reconciles
    the dependents of an object whose version moved, and skips unchanged ones."""
    async def scenario() -> list[int]:
        idx = indexes()
        counts = []
        await slice_event(None, "1", idx)  # the first listing
        await slice_event(None, "1", idx, name="web-def")
        await asyncio.sleep(0.1)
        counts.append(len(api.statuses))
        await slice_event("MODIFIED", "2", idx)  # watching
        await until(lambda: len(api.statuses) > counts[-1])
        await asyncio.sleep(0.2)
        counts.append(len(api.statuses))
        idx["rh_slices"] = {(NS, "web"): [endpoint_slice("web", pods(2))]}
        await slice_event(None, "2", idx)  # re-listed as last seen: nothing to do
        await asyncio.sleep(0.2)
        counts.append(len(api.statuses))
        await slice_event(None, "7", idx, name="web-def")  # changed while unwatched
        await until(lambda: len(api.statuses) > counts[-1])
        counts.append(len(api.statuses))
        return counts

    first, watched, unchanged, changed = asyncio.run(scenario())
    assert first == 0 and watched == 1 and unchanged == 1 and changed == 2
    assert api.statuses[-1]["backends"] == {"ready": 2, "total": 2}


def test_relisting_tells_a_relist_from_the_first_listing() -> None:
    relisting = Relisting()
    assert relisting.listed("secrets", ("ns", "a"), "1") is Listed.FIRST
    assert relisting.listed("secrets", ("ns", "b"), "1") is Listed.FIRST
    # A kind with no watch event since its listing: a second sighting means a re-list,
    # and everything is re-triggered once (objects before it may be new ones).
    assert relisting.listed("secrets", ("ns", "new"), "9") is Listed.FIRST
    assert relisting.listed("secrets", ("ns", "a"), "1") is Listed.RELIST
    assert relisting.listed("secrets", ("ns", "b"), "2") is Listed.CHANGED
    assert relisting.listed("secrets", ("ns", "c"), "5") is Listed.CHANGED  # new meanwhile
    # After a watch event, the first listing event already is a re-list.
    relisting.watched("services", ("ns", "s"), "3")
    assert relisting.listed("services", ("ns", "s"), "3") is Listed.UNCHANGED
    assert relisting.listed("services", ("ns", "t"), "4") is Listed.CHANGED
    relisting.watched("services", ("ns", "t"), "4", deleted=True)
    assert relisting.listed("services", ("ns", "t"), "8") is Listed.CHANGED  # re-created
    relisting.reset()  # a new term as leader: its listing is a first one
    assert relisting.listed("services", ("ns", "s"), "3") is Listed.FIRST
