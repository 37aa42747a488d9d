"""The operator's metrics (roundhouse.metrics): a reconcile run with the API replaced by
recorders moves the reconcile, condition and trigger metrics as it should; the label
helpers keep their sets small. The metrics live in the process-wide registry, so every
test compares values before and after what it does."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from roundhouse import apply, metrics
from roundhouse.handlers.trigger import Debouncer
from roundhouse.reconciler import Indexes, Reconciler
from tests.unit.cluster_fixtures import endpoint_slice, pods, service
from tests.unit.conftest import lb_object

NS = "default"


def value(name: str, **labels: str) -> float:
    return metrics.sample(name, labels)


def reconciles(trigger: str, outcome: str, kind: str = "LoadBalancer") -> float:
    return value("roundhouse_operator_reconciles_total", kind=kind, trigger=trigger,
                 outcome=outcome)


def durations(outcome: str, kind: str = "LoadBalancer") -> float:
    return value("roundhouse_operator_reconcile_duration_seconds_count", kind=kind,
                 outcome=outcome)


def conditions(condition: str, status: str, kind: str = "LoadBalancer") -> float:
    return value("roundhouse_operator_resource_conditions", kind=kind, condition=condition,
                 status=status)


def indexes(with_service: bool = True) -> Indexes:
    found = {(NS, "web"): [service()]} if with_service else {}
    slices = {(NS, "web"): [endpoint_slice("web", pods(3))]} if with_service else {}
    return Indexes(services=found, slices=slices, secrets={}, configmaps={}, pods={})


class FakeAPI:
    """apply's writers replaced: children and status writes are recorded, Events dropped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: str = "") -> None:
        self.applied: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.refuse = refuse

        async def apply_object(obj: dict[str, Any]) -> dict[str, Any]:
            if obj["kind"] == self.refuse:
                raise apply.ApplyError(obj["kind"], obj["metadata"]["name"], 422, "refused")
            self.applied.append(obj["kind"])
            return obj

        async def write_status(kind: str, namespace: str, name: str,
                               status: dict[str, Any]) -> None:
            self.statuses.append(status)

        monkeypatch.setattr(apply, "apply_object", apply_object)
        monkeypatch.setattr(apply, "write_status", write_status)
        monkeypatch.setattr(apply, "post_events", lambda body, events: None)


def test_a_reconcile_is_counted_timed_and_its_conditions_recorded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeAPI(monkeypatch)
    reconciler = Reconciler()
    body = lb_object()
    body["metadata"]["name"] = "metrics-ok"
    before = (reconciles("create", "success"), durations("success"),
              conditions("Accepted", "True"), conditions("Ready", "False"),
              conditions("Ready", "True"))

    waiting = asyncio.run(reconciler.reconcile("LoadBalancer", body, indexes(),
                                               trigger="create"))

    assert waiting == [] and "Deployment" in api.applied and len(api.statuses) == 1
    assert reconciles("create", "success") == before[0] + 1
    assert durations("success") == before[1] + 1
    written = {c["type"]: c["status"] for c in api.statuses[0]["conditions"]}
    assert written["Accepted"] == "True" and written["Ready"] == "False"  # no proxy Pods
    assert conditions("Accepted", "True") == before[2] + 1
    assert conditions("Ready", "False") == before[3] + 1
    assert conditions("Ready", "True") == before[4]

    # The same resource again (its status now as written): counted again, its
    # conditions not twice.
    body["status"] = api.statuses[0]
    asyncio.run(reconciler.reconcile("LoadBalancer", body, indexes(), trigger="resync"))
    assert len(api.statuses) == 1  # nothing changed, nothing written
    assert reconciles("resync", "success") >= 1
    assert conditions("Accepted", "True") == before[2] + 1

    # Deleted: it no longer counts.
    reconciler.forget("LoadBalancer", NS, "metrics-ok")
    assert conditions("Accepted", "True") == before[2]
    assert conditions("Ready", "False") == before[3]


def test_invalid_waiting_and_failed_reconciles_have_their_outcome(
        monkeypatch: pytest.MonkeyPatch) -> None:
    FakeAPI(monkeypatch, refuse="Deployment")
    reconciler = Reconciler()
    before = {o: reconciles("update", o) for o in metrics.OUTCOMES}
    before_accepted_false = conditions("Accepted", "False")

    invalid = lb_object(algorithm="fastest")
    invalid["metadata"]["name"] = "metrics-invalid"
    with pytest.raises(kopf.PermanentError):
        asyncio.run(reconciler.reconcile("LoadBalancer", invalid, indexes(), trigger="update"))
    assert reconciles("update", "invalid") == before["invalid"] + 1
    assert conditions("Accepted", "False") == before_accepted_false + 1

    refused = lb_object()
    refused["metadata"]["name"] = "metrics-refused"
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconciler.reconcile("LoadBalancer", refused, indexes(), trigger="update"))
    assert reconciles("update", "error") == before["error"] + 1

    FakeAPI(monkeypatch)  # the Service is missing now: done, but waiting for it
    missing = lb_object()
    missing["metadata"]["name"] = "metrics-missing"
    waiting = asyncio.run(reconciler.reconcile("LoadBalancer", missing,
                                               indexes(with_service=False), trigger="update"))
    assert waiting
    assert reconciles("update", "waiting") == before["waiting"] + 1
    assert reconciles("update", "success") == before["success"]
    for name in ("metrics-invalid", "metrics-refused", "metrics-missing"):
        reconciler.forget("LoadBalancer", NS, name)
    assert conditions("Accepted", "False") == before_accepted_false


def test_coalesced_trigger_events_are_counted_and_the_queue_drains() -> None:
    events = "roundhouse_operator_trigger_events_total"
    coalesced = "roundhouse_operator_trigger_coalesced_events_total"
    pending = "roundhouse_operator_trigger_pending"

    async def scenario() -> tuple[float, list[int]]:
        debouncer = Debouncer(spacing=0.2)
        runs: list[int] = []
        release = asyncio.Event()

        async def first() -> None:
            runs.append(0)
            await release.wait()

        debouncer.schedule("lb", first)
        await asyncio.sleep(0.05)  # the first runs; the next three wait for it together
        for i in (1, 2, 3):
            async def later(i: int = i) -> None:
                runs.append(i)
            debouncer.schedule("lb", later)
        queued = metrics.sample(pending)
        release.set()
        deadline = asyncio.get_running_loop().time() + 5
        while runs[-1] != 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return queued, runs

    before = (metrics.sample(events), metrics.sample(coalesced), metrics.sample(pending))
    queued, runs = asyncio.run(scenario())
    assert runs == [0, 3]  # the three became one run, with the latest action
    assert metrics.sample(events) == before[0] + 4
    assert metrics.sample(coalesced) == before[1] + 2
    assert queued == before[2] + 1  # one run pending while the first ran
    assert metrics.sample(pending) == before[2]


def test_retries_and_leader() -> None:
    before = value("roundhouse_operator_retries_total", kind="ReverseProxy", trigger="create")
    metrics.count_retry("ReverseProxy", "create")
    assert value("roundhouse_operator_retries_total", kind="ReverseProxy",
                 trigger="create") == before + 1
    metrics.set_leader(True)
    assert metrics.sample("roundhouse_operator_leader") == 1
    metrics.set_leader(False)
    assert metrics.sample("roundhouse_operator_leader") == 0


@pytest.mark.parametrize(("method", "content_type", "verb"), [
    ("PATCH", "application/apply-patch+yaml", "apply"),
    ("PATCH", "application/merge-patch+json", "patch"),
    ("GET", "application/json", "get"),
    ("POST", "application/json", "create"),
    ("PUT", "application/json", "update"),
    ("DELETE", "application/json", "delete"),
])
def test_api_verbs(method: str, content_type: str, verb: str) -> None:
    assert metrics.api_verb(method, content_type) == verb
    assert verb in metrics.VERBS


@pytest.mark.parametrize(("path", "resource"), [
    ("/api/v1/namespaces/ns/configmaps/web-lb", "configmaps"),
    ("/api/v1/namespaces/ns/secrets/web-lb-ca?x=1", "secrets"),
    ("/apis/roundhouse.dev/v1alpha1/namespaces/ns/loadbalancers/web/status",
     "loadbalancers/status"),
    ("/apis/apps/v1/namespaces/ns/deployments", "deployments"),
    ("/api/v1/namespaces/ns", "other"),
    ("/version", "other"),
])
def test_api_resources_are_plurals_never_names(path: str, resource: str) -> None:
    assert metrics.api_resource(path) == resource


@pytest.mark.parametrize(("status", "result"), [
    (200, "2xx"), (201, "2xx"), (404, "4xx"), (409, "4xx"), (500, "5xx"), (None, "error"),
    (0, "error"), (99, "error")])
def test_results_are_status_classes(status: int | None, result: str) -> None:
    assert metrics.result_class(status) == result
    assert result in metrics.RESULTS
