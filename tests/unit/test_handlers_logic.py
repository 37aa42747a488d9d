"""The handler-side logic that needs no cluster: debouncing, condition merging, reports,
which children a reconcile writes (the API client replaced by a recorder), when a
reconcile reuses the desired state."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest

from roundhouse import apply, kube
from roundhouse import reconciler as reconciler_module
from roundhouse.handlers.trigger import Debouncer
from roundhouse.model import parse_loadbalancer
from roundhouse.pipeline import desired_for_loadbalancer
from roundhouse.reconciler import DesiredCache, Reconciler
from roundhouse.reports import parse_agent_report
from roundhouse.status import Condition, merge_conditions, ready_condition
from tests.unit.cluster_fixtures import endpoint, service, state
from tests.unit.conftest import lb_object


def test_an_isolated_event_runs_at_once() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        ran: list[float] = []

        async def action() -> None:
            ran.append(loop.time())
        start = loop.time()
        Debouncer(spacing=0.5).schedule("lb", action)
        while not ran and loop.time() - start < 2:
            await asyncio.sleep(0.001)
        return ran[0] - start

    assert asyncio.run(scenario()) < 0.1  # not the 0.5 s spacing


def test_a_burst_is_spaced_and_ends_with_the_latest_action() -> None:
    spacing = 0.3  # wide enough that a loaded machine's slow 10 ms sleeps still coalesce

    async def scenario() -> tuple[list[int], float]:
        loop = asyncio.get_running_loop()
        runs: list[int] = []
        debouncer = Debouncer(spacing=spacing)
        start = loop.time()
        for i in range(10):
            async def action(i: int = i) -> None:
                runs.append(i)
            debouncer.schedule("lb", action)
            await asyncio.sleep(0.01)
        burst = loop.time() - start
        # Wait for the pending run (with the latest action), not a fixed pause.
        deadline = loop.time() + 10
        while (not runs or runs[-1] != 9) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(spacing)  # nothing else may run after it
        return runs, burst

    runs, burst = asyncio.run(scenario())
    # The first event ran at once; the nine after it (90 ms, longer on a loaded machine)
    # became one run per spacing of the burst at most, the last with the latest action.
    assert runs[0] == 0 and runs[-1] == 9, runs
    assert len(runs) <= 2 + int(burst / spacing), (runs, burst)
    assert len(runs) < 10, runs  # coalesced, not one run per event


def test_a_steady_stream_runs_once_per_spacing() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ran: list[float] = []
        debouncer = Debouncer(spacing=0.1)

        async def action() -> None:
            ran.append(loop.time() - start)

        while loop.time() - start < 1.0:
            debouncer.schedule("lb", action)  # an event every 20 ms, never quiet
            await asyncio.sleep(0.02)
        return ran

    ran = asyncio.run(scenario())
    gaps = [b - a for a, b in itertools.pairwise(ran)]
    assert ran[0] < 0.05 and 4 <= len(ran) <= 11, ran
    assert min(gaps) >= 0.1 - 0.005 and max(gaps) < 0.1 + 0.25, ran  # slack: a busy machine


def test_a_slow_run_spaces_the_next_by_twice_its_time() -> None:
    """A run that takes 80 ms is followed no sooner than 160 ms after it started, and
    an event during it never starts a second run alongside it."""
    async def scenario() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        starts: list[float] = []
        overlap = 0
        busy = False
        debouncer = Debouncer(spacing=0.01)

        async def slow() -> None:
            nonlocal busy, overlap
            overlap += busy
            busy = True
            starts.append(loop.time() - start)
            await asyncio.sleep(0.08)
            busy = False

        for _ in range(3):
            debouncer.schedule("lb", slow)
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.4)
        return starts, overlap

    starts, overlap = asyncio.run(scenario())
    assert overlap == 0 and len(starts) == 2, starts
    assert starts[1] - starts[0] >= 0.16 - 0.005, starts


def test_keys_are_independent() -> None:
    async def scenario() -> set[str]:
        seen: set[str] = set()
        debouncer = Debouncer(spacing=0.02)
        for key in ("a", "b"):
            async def action(key: str = key) -> None:
                seen.add(key)
            debouncer.schedule(key, action)
        await asyncio.sleep(0.1)
        return seen

    assert asyncio.run(scenario()) == {"a", "b"}


def test_a_failing_action_does_not_break_later_ones() -> None:
    async def scenario() -> list[str]:
        out: list[str] = []
        debouncer = Debouncer(spacing=0.01)

        async def boom() -> None:
            raise RuntimeError("API down")

        async def ok() -> None:
            out.append("ok")

        debouncer.schedule("lb", boom)
        await asyncio.sleep(0.05)
        debouncer.schedule("lb", ok)
        await asyncio.sleep(0.05)
        return out

    assert asyncio.run(scenario()) == ["ok"]


T0 = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions([], [Condition("Accepted", True, "Valid", "ok"),
                                  Condition("Ready", False, "Pending", "wait")], 1, T0)
    second = merge_conditions(first, [Condition("Accepted", True, "Valid", "still ok"),
                                      Condition("Ready", True, "Ready", "done")], 2, T1)
    by_type = {c["type"]: c for c in second}
    assert by_type["Accepted"]["lastTransitionTime"] == "2026-11-25T10:00:00Z"
    assert by_type["Ready"]["lastTransitionTime"] == "2026-11-25T10:05:00Z"
    assert all(c["observedGeneration"] == 2 for c in second)


def test_ready_reports_the_first_failing_condition() -> None:
    ready = ready_condition([Condition("Accepted", True, "Valid", ""),
                             Condition("TLSReady", False, "SecretNotFound", "no 'x'")])
    assert (ready.status, ready.reason, ready.message) == (
        False, "SecretNotFound", "TLSReady: no 'x'")
    assert ready_condition([Condition("Accepted", True, "Valid", "")]).status is True


def test_agent_reports_parse_or_are_ignored() -> None:
    assert parse_agent_report('{"configHash": "abc", "error": null}')["configHash"] == "abc"
    assert parse_agent_report("not json") == {}
    assert parse_agent_report('["a list"]') == {}


def _child(kind: str, name: str, **data: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns"}, "data": data}


def test_only_changed_children_are_written_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []

    async def fake_apply(obj: dict[str, Any]) -> dict[str, Any]:
        written.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return obj

    monkeypatch.setattr(apply, "apply_object", fake_apply)
    applied: apply.Applied = {}
    first = [_child("Role", "r"), _child("ConfigMap", "cm", v="1"), _child("Service", "s")]
    assert asyncio.run(apply.apply_changed(first, applied)) == [
        ("Role", "r"), ("ConfigMap", "cm"), ("Service", "s")]
    # A readiness flip: only the ConfigMap differs, so it is the only write.
    flip = [_child("Role", "r"), _child("ConfigMap", "cm", v="2"), _child("Service", "s")]
    assert asyncio.run(apply.apply_changed(flip, applied)) == [("ConfigMap", "cm")]
    assert asyncio.run(apply.apply_changed(flip, applied)) == []
    assert written == ["Role/r", "ConfigMap/cm", "Service/s", "ConfigMap/cm"]


def test_a_failed_write_is_tried_again_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def flaky_apply(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(obj["metadata"]["name"])
        if obj["metadata"]["name"] == "cm" and calls.count("cm") == 1:
            raise apply.ApplyError("ConfigMap", "cm", 500, "etcd timeout")
        return obj

    monkeypatch.setattr(apply, "apply_object", flaky_apply)
    applied: apply.Applied = {}
    children = [_child("Role", "r"), _child("ConfigMap", "cm"), _child("Service", "s")]
    with pytest.raises(apply.ApplyError):
        asyncio.run(apply.apply_changed(children, applied))
    assert set(applied) == {("Role", "r")}  # neither the failed one nor those after it
    assert asyncio.run(apply.apply_changed(children, applied)) == [
        ("ConfigMap", "cm"), ("Service", "s")]


def test_the_desired_state_is_reused_while_its_inputs_are_equal() -> None:
    """A reconcile whose inputs did not change (an agent's report, a Pod turning Ready)
    renders nothing; one endpoint turning NotReady renders again. What is kept is the
    outcome (graph, config hash, fingerprints), not the children."""
    model = parse_loadbalancer(lb_object())
    cache = DesiredCache()
    key = ("LoadBalancer", "default", "web")
    assert cache.get(key, (model, state(3), {})) is None
    desired = desired_for_loadbalancer(model, state(3))
    first = cache.put(key, (model, state(3), {}), desired)
    assert first.config_hash == desired.rendered.config_hash
    assert dict(first.fingerprints) == {apply.child_key(c): apply.fingerprint(c)
                                        for c in desired.children}
    # Equal inputs, not the same objects.
    assert cache.get(key, (parse_loadbalancer(lb_object()), state(3), {})) is first
    flipped = state(2, extra=[endpoint("web-3", "10.244.0.3", ready=False)])
    assert cache.get(key, (model, flipped, {})) is None
    changed = cache.put(key, (model, flipped, {}), desired_for_loadbalancer(model, flipped))
    assert changed.graph.backends_ready == 2
    # Applied: all children in the cached form; one missing or different: not.
    applied = dict(changed.fingerprints)
    assert changed.applied(applied)
    assert not changed.applied({**applied, ("ConfigMap", "web-lb"): "other"})
    assert not changed.applied({k: v for k, v in applied.items() if k[0] != "Service"})


def test_a_reconcile_renders_again_only_to_write_a_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing to write, a reconcile reuses the outcome; once a child must be
    written again (the resync forgets what was applied), it renders the children."""
    written: list[str] = []

    async def fake_apply(obj: dict[str, Any]) -> dict[str, Any]:
        written.append(obj["kind"])
        return obj

    async def fake_status(*args: Any) -> None:
        return None
    monkeypatch.setattr(apply, "apply_object", fake_apply)
    monkeypatch.setattr(apply, "write_status", fake_status)
    monkeypatch.setattr(apply, "post_events", lambda body, events: None)
    rendered: list[int] = []
    real = reconciler_module.resources.desired

    def counting(*args: Any, **kw: Any) -> Any:
        rendered.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(reconciler_module.resources, "desired", counting)
    body = lb_object()
    idx = reconciler_module.Indexes(
        services={("default", "web"): [state(3).services["web"]]},
        slices={("default", "web"): state(3).slices}, secrets={}, configmaps={}, pods={})
    rec = Reconciler()
    key = ("LoadBalancer", "default", "web")
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert len(rendered) == 1 and len(written) == 8
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert len(rendered) == 1 and len(written) == 8  # nothing to write, nothing rendered
    rec.forget_applied(key)
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert len(rendered) == 2 and len(written) == 16


def test_an_expected_failure_logs_one_line_not_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """A refused child or a missing Secret is already in the status: a retry of it says
    so in one line, where any other failure keeps its traceback."""
    async def scenario() -> None:
        debouncer = Debouncer(spacing=0.01)

        async def refused() -> None:
            raise kopf.TemporaryError("applying Deployment 'web-lb' failed (422): ...")

        async def broken() -> None:
            raise RuntimeError("a bug")

        debouncer.schedule("lb", refused)
        await asyncio.sleep(0.05)
        debouncer.schedule("lb", broken)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="roundhouse.handlers.trigger"):
        asyncio.run(scenario())
    [calm, loud] = caplog.records
    assert calm.levelno == logging.WARNING and calm.exc_info is None
    assert "applying Deployment 'web-lb' failed (422)" in calm.getMessage()
    assert loud.exc_info is not None


# What kube-apiserver answers when it refuses a Deployment, with the fields it names.
REFUSED_DEPLOYMENT = json.dumps({
    "kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
    "message": 'Deployment.apps "web-lb" is invalid: [spec.template.spec.nodeSelector: '
               'Invalid value: "a b": ..., spec.template.spec.tolerations[1].operator: '
               'Invalid value: "Equal": ..., spec.template.spec.containers[0].resources.'
               'requests[cpu]: Invalid value: "2": must be less than or equal to cpu limit]',
    "details": {"name": "web-lb", "group": "apps", "kind": "Deployment", "causes": [
        {"reason": "FieldValueInvalid", "field": "spec.template.spec.nodeSelector"},
        {"reason": "FieldValueInvalid", "field": "spec.template.spec.tolerations[1].operator"},
        {"reason": "FieldValueInvalid",
         "field": "spec.template.spec.containers[0].resources.requests[cpu]"},
        {"reason": "FieldValueInvalid", "field": "spec.template.spec.securityContext"}]}})


def test_apply_failed_names_the_resource_fields_behind_the_child() -> None:
    obj = {"kind": "Deployment", "metadata": {"name": "web-lb", "namespace": "default"}}
    err = apply.apply_error(obj, 422, REFUSED_DEPLOYMENT)
    assert err.fields == ("spec.proxy.nodeSelector", "spec.proxy.tolerations[1].operator",
                          "spec.proxy.resources.requests.cpu")
    assert str(err).startswith("applying Deployment 'web-lb' failed (422): Deployment.apps ")
    assert str(err).endswith("(caused by spec.proxy.nodeSelector, spec.proxy.tolerations[1]."
                             "operator, spec.proxy.resources.requests.cpu of this resource)")
    # Not JSON (a proxy's error page): the text as it came, no fields.
    assert str(apply.apply_error(obj, 502, "<html>bad gateway</html>")).endswith(
        "failed (502): <html>bad gateway</html>")


def test_children_carry_the_fingerprint_of_what_was_applied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    async def fake_apply(obj: dict[str, Any]) -> dict[str, Any]:
        sent.append(obj)
        return obj

    monkeypatch.setattr(apply, "apply_object", fake_apply)
    child = _child("ConfigMap", "cm", v="1")
    applied: apply.Applied = {}
    asyncio.run(apply.apply_changed([child], applied))
    (written,) = sent
    digest = written["metadata"]["annotations"][apply.FINGERPRINT]
    assert digest == apply.fingerprint(child) == applied[("ConfigMap", "cm")]
    assert "annotations" not in child["metadata"]  # the desired object is left as it was


def _listed(kind: str, name: str, owner: str, digest: str | None) -> dict[str, Any]:
    annotations = {apply.FINGERPRINT: digest} if digest else {}
    return {"metadata": {"name": name, "namespace": "ns", "annotations": annotations,
                         "labels": {"roundhouse.dev/owner-kind": kind,
                                    "roundhouse.dev/owner-name": owner}}}


def test_a_new_term_recalls_what_is_applied_from_the_fingerprints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str | None, str]] = []

    async def fake_list(kind: str, namespace: str | None, selector: str,
                        page: int = 500) -> list[dict[str, Any]]:
        asked.append((kind, namespace, selector))
        if kind == "ConfigMap":
            return [_listed("LoadBalancer", "web-lb", "web", "d1"),
                    _listed("LoadBalancer", "old-lb", "old", None)]  # an older version's
        if kind == "Deployment":
            return [_listed("ReverseProxy", "site-rp", "site", "d2")]
        return []

    monkeypatch.setattr(kube, "list_metadata", fake_list)
    reconciler = Reconciler()
    reconciler.last_applied[("LoadBalancer", "ns", "web")] = {("ConfigMap", "web-lb"): "fresh"}
    assert asyncio.run(reconciler.recall_applied([])) == 2
    # What this process applied itself stays; a child with no fingerprint is written again.
    assert reconciler.last_applied == {
        ("LoadBalancer", "ns", "web"): {("ConfigMap", "web-lb"): "fresh"},
        ("ReverseProxy", "ns", "site"): {("Deployment", "site-rp"): "d2"}}
    assert {k for k, _, _ in asked} == set(apply.CHILD_KINDS)
    assert {(ns, sel) for _, ns, sel in asked} == {(None, apply.MANAGED_SELECTOR)}
    asked.clear()
    asyncio.run(Reconciler().recall_applied(["a", "b"]))  # only the namespaces it watches
    assert {ns for _, ns, _ in asked} == {"a", "b"}


def test_a_failed_recall_leaves_every_child_to_be_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise ConnectionError("API server unreachable")

    monkeypatch.setattr(kube, "list_metadata", down)
    reconciler = Reconciler()
    assert asyncio.run(reconciler.recall_applied([])) == 0
    assert reconciler.last_applied == {}


def _recorded_status_writes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Status writes recorded instead of sent (no Events): the list they go to."""
    writes: list[dict[str, Any]] = []

    async def fake_write(kind: str, namespace: str, name: str,
                         status_body: dict[str, Any]) -> None:
        writes.append(status_body)

    monkeypatch.setattr(apply, "write_status", fake_write)
    monkeypatch.setattr(apply, "post_events", lambda body, events: None)
    return writes


def test_status_is_compared_with_what_was_written_not_a_lagging_body(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A trigger's body comes from kopf's index, which can lag behind our own status write:
    a status equal to that stale body but not to the stored one must still be written."""
    writes = _recorded_status_writes(monkeypatch)
    reconciler = Reconciler()
    key = ("LoadBalancer", "ns", "web")
    healthy = [Condition("BackendsHealthy", True, "AllReady", "3/3")]
    unhealthy = [Condition("BackendsHealthy", False, "NoEndpoints", "none")]
    stale = {"metadata": {"generation": 1},
             "status": {"observedGeneration": 1, "conditions": merge_conditions(
                 [], healthy, 1, dt.datetime.now(dt.UTC))}}
    asyncio.run(reconciler._write(key, stale, unhealthy))  # written: False
    asyncio.run(reconciler._write(key, stale, healthy))  # the body still says True
    assert [w["conditions"][0]["status"] for w in writes] == ["False", "True"]
    asyncio.run(reconciler._write(key, stale, healthy))  # now truly unchanged
    assert len(writes) == 2


def test_a_status_written_over_ours_is_written_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way round: a status someone else wrote over ours (the body shows it) is
    written again, though it differs from nothing this process wrote."""
    writes = _recorded_status_writes(monkeypatch)
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


def test_resource_events_schedule_a_reconcile_once_per_generation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource's own watch events: a listing, a create and a spec change each
    reconcile it; its own status writes (same generation) do not; a deletion forgets it."""
    from roundhouse.handlers import reconcile

    scheduled: list[tuple[str, list[tuple[str, str]], str]] = []
    monkeypatch.setattr(reconcile, "schedule",
                        lambda ns, targets, kwargs, trigger: scheduled.append(
                            (ns, list(targets), trigger)))
    forgotten: list[tuple[str, str, str]] = []
    monkeypatch.setattr(reconcile.RECONCILER, "forget",
                        lambda *key: forgotten.append(key))
    monkeypatch.setattr(reconcile, "SEEN", {})
    handler = next(h for h in kopf.get_default_registry()._watching.get_all_handlers()
                   if h.id == "reconcile" and h.selector.any_name == "loadbalancers")

    def event(kind: str | None, generation: int, uid: str = "u1") -> None:
        asyncio.run(handler.fn(namespace="ns", name="a", type=kind,
                               meta={"uid": uid, "generation": generation}))

    event(None, 1)  # listed at the start of a term
    event("MODIFIED", 1)  # its status written: nothing new
    event("MODIFIED", 2)  # spec changed
    event("MODIFIED", 2)
    event("DELETED", 2)
    event("ADDED", 1, uid="u2")  # created again under the same name
    assert scheduled == [("ns", [("LoadBalancer", "a")], "resume"),
                         ("ns", [("LoadBalancer", "a")], "update"),
                         ("ns", [("LoadBalancer", "a")], "create")]
    assert forgotten == [("LoadBalancer", "ns", "a")]


def test_a_dependency_run_still_waiting_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconcile that is waiting for a missing object fails its run, so the Debouncer
    tries again with its backoff instead of leaving it to the resync."""
    from roundhouse.handlers import dependencies

    debouncer = Debouncer(spacing=0.0, retry_delays=(0.01,))
    monkeypatch.setattr(dependencies, "DEBOUNCER", debouncer)
    monkeypatch.setattr(dependencies.RESYNC, "remember", lambda kwargs: None)
    answers = [["Secret ns/tls not found"], []]
    calls: list[str] = []

    async def fake_reconcile(kind: str, body: Any, idx: Any, trigger: str) -> list[str]:
        calls.append(trigger)
        return answers.pop(0)
    monkeypatch.setattr(dependencies.RECONCILER, "reconcile", fake_reconcile)
    body = lb_object()
    kwargs = {"rh_services": {}, "rh_slices": {}, "rh_secrets": {}, "rh_configmaps": {},
              "rh_proxy_pods": {}, "rh_rp_claims": {},
              "rh_loadbalancers": {("ns", "a"): [body]}, "rh_reverseproxies": {}}

    async def scenario() -> None:
        dependencies.schedule("ns", [("LoadBalancer", "a")], kwargs, trigger="create")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(calls) == 2 and not debouncer.retrying():
                break

    asyncio.run(scenario())
    assert calls == ["create", "create"]
    assert debouncer.retrying() == 0


def test_indexed_bodies_leave_out_what_no_reconcile_reads() -> None:
    from roundhouse.handlers.indexes import resource_body

    body = lb_object()
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(body["spec"]),
        "team": "web"}
    kept = resource_body(kopf.Body(body))
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "web"}
    assert kept["spec"] == body["spec"] and kept["metadata"]["uid"] == "uid-1"
    assert "managedFields" in body["metadata"]  # the event's body is left alone


def test_reconciles_run_at_most_the_concurrency_bound_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 resources at once must not each hold a rendered state while writes queue."""
    monkeypatch.setenv("ROUNDHOUSE_RECONCILE_CONCURRENCY", "3")
    running, peak = 0, 0

    async def slow_apply(obj: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    idx = _offline(monkeypatch, slow_apply)
    rec = Reconciler()

    async def scenario() -> None:
        bodies = []
        for i in range(10):
            body = lb_object()
            body["metadata"]["name"] = f"lb{i}"
            bodies.append(body)
        await asyncio.gather(*(rec.reconcile("LoadBalancer", b, idx) for b in bodies))

    asyncio.run(scenario())
    assert peak == 3
    assert len(rec.written_status) == 10


def test_the_echo_of_its_own_configmap_write_is_told_from_an_edit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A readiness flip writes the proxy ConfigMap; its watch event must not reconcile
    the owner again. An edit by someone else (other content) still does."""
    written: dict[tuple[str, str], dict[str, Any]] = {}

    async def fake_apply(obj: dict[str, Any]) -> None:
        written[(obj["kind"], obj["metadata"]["name"])] = obj

    idx = _offline(monkeypatch, fake_apply)
    rec = Reconciler()
    asyncio.run(rec.reconcile("LoadBalancer", lb_object(), idx))
    config = written[("ConfigMap", "web-lb")]
    content = {k: dict(config[k]) for k in ("data", "binaryData") if config.get(k)}
    assert content
    event = {"metadata": {**config["metadata"], "resourceVersion": "7"}, **content}
    assert rec.own_configmap_write("default", "web-lb", event)
    edited = {**event, "data": {**(event.get("data") or {}), "extra": "edited"}}
    assert not rec.own_configmap_write("default", "web-lb", edited)
    assert not rec.own_configmap_write("default", "other-lb", event)
    rec.forget("LoadBalancer", "default", "web")
    assert not rec.own_configmap_write("default", "web-lb", event)


def test_the_index_takes_the_slots_of_its_own_proxy_configmap_write_without_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy ConfigMap's watch event after our write: the slots come from the render
    (a gzipped megabyte at 8,192 slots is not decoded on every flip), equal to what
    decoding gives; anyone else's content is still decoded."""
    from roundhouse.handlers import indexes
    from roundhouse.render import payload
    from roundhouse.server_state import slot_map

    written: dict[tuple[str, str], dict[str, Any]] = {}

    async def fake_apply(obj: dict[str, Any]) -> None:
        written[(obj["kind"], obj["metadata"]["name"])] = obj

    idx = _offline(monkeypatch, fake_apply)
    rec = Reconciler()
    monkeypatch.setattr(indexes, "RECONCILER", rec)
    asyncio.run(rec.reconcile("LoadBalancer", lb_object(), idx))
    config = written[("ConfigMap", "web-lb")]
    event = {"metadata": config["metadata"],
             **{k: dict(config[k]) for k in ("data", "binaryData") if config.get(k)}}
    decoded = slot_map(json.loads(payload.decode(event)["servers.json"]))
    assert sum(map(len, decoded.values())) >= 3
    assert rec.own_proxy_configmap("default", "web-lb", event) == decoded

    def no_decoding(body: Any) -> dict[str, str]:
        raise AssertionError("decoded its own write")

    monkeypatch.setattr(indexes.payload, "decode", no_decoding)
    index_fn = getattr(indexes.rh_configmaps, "__wrapped__", indexes.rh_configmaps)
    got = asyncio.run(index_fn(namespace="default", name="web-lb", body=event))
    assert got == {("default", "web-lb"): {"slots": decoded, "data": {}}}
    monkeypatch.undo()
    edited = {**event, "metadata": {**event["metadata"], "resourceVersion": "9"}}
    edited["data"] = {**(event.get("data") or {}), "haproxy.cfg": "# edited"}
    assert rec.own_proxy_configmap("default", "web-lb", edited) is None
    assert rec.own_proxy_configmap("default", "web-lb-agents", event) is None


def _offline(monkeypatch: pytest.MonkeyPatch, apply_object: Any) -> Any:
    """The reconciler's writes stubbed (children through `apply_object`, no status, no
    Events), and indexes holding the Service `web` with 3 ready endpoints."""
    async def no_status(*args: Any) -> None:
        return None
    monkeypatch.setattr(apply, "apply_object", apply_object)
    monkeypatch.setattr(apply, "write_status", no_status)
    monkeypatch.setattr(apply, "post_events", lambda body, events: None)
    return reconciler_module.Indexes(
        services={("default", "web"): [state(3).services["web"]]},
        slices={("default", "web"): state(3).slices}, secrets={}, configmaps={}, pods={})


def test_an_endpoint_change_renders_and_writes_the_proxy_configmap_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A readiness flip renders only the proxy ConfigMap (config_only) and writes it; a
    scale past the slots changes the config's structure: the other children are completed
    from that render, and the Deployment (which carries the structure hash) is written too."""
    written: list[tuple[str, str]] = []

    async def fake_apply(obj: dict[str, Any]) -> None:
        written.append((obj["kind"], obj["metadata"]["name"]))

    idx = _offline(monkeypatch, fake_apply)
    renders: list[bool] = []
    real = reconciler_module.resources.desired

    def recording(*args: Any, config_only: bool = False, **kw: Any) -> Any:
        renders.append(config_only)
        return real(*args, config_only=config_only, **kw)
    monkeypatch.setattr(reconciler_module.resources, "desired", recording)
    rec = Reconciler()
    body = lb_object()
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert renders == [False] and len(written) == 8
    written.clear()
    # web-3 turns NotReady.
    idx.slices = {("default", "web"): state(
        2, extra=[endpoint("web-3", "10.244.0.3", ready=False)]).slices}
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert renders == [False, True] and written == [("ConfigMap", "web-lb")]
    outcome = rec.desired.entries[("LoadBalancer", "default", "web")][1]
    assert outcome.graph.backends_ready == 2
    assert outcome.applied(rec.last_applied[("LoadBalancer", "default", "web")])
    written.clear()
    # 20 endpoints need more than the 8 slots: a new structure.
    idx.slices = {("default", "web"): state(20).slices}
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    # Rendered once (config-only), then completed from that same render, not again.
    assert renders == [False, True, True]
    assert written == [("ConfigMap", "web-lb"), ("Deployment", "web-lb")]
    outcome = rec.desired.entries[("LoadBalancer", "default", "web")][1]
    assert outcome.graph.backends_total == 20 and len(outcome.fingerprints) == 8
    assert outcome.applied(rec.last_applied[("LoadBalancer", "default", "web")])
    # The Service changes (one more port), not only endpoints: everything is rendered.
    renders.clear()
    idx.services = {("default", "web"): [service("web", (("http", 80), ("admin", 81)))]}
    asyncio.run(rec.reconcile("LoadBalancer", body, idx))
    assert renders == [False]


def test_a_run_that_reports_its_cost_is_spaced_by_that_not_its_wall_time() -> None:
    """A reconcile that waited 400 ms for the API server but rendered for 1 ms (its
    returned cost) does not hold back the next change by 800 ms. The times are long so
    that a loaded machine's scheduling delays (tens of ms) cannot decide the outcome."""
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        starts: list[float] = []
        debouncer = Debouncer(spacing=0.01)

        async def queued() -> float:
            starts.append(loop.time() - start)
            await asyncio.sleep(0.4)  # waiting on the API, no CPU
            return 0.001

        debouncer.schedule("lb", queued)
        await asyncio.sleep(0.45)  # the first run is over
        debouncer.schedule("lb", queued)
        await asyncio.sleep(0.75)
        return starts

    starts = asyncio.run(scenario())
    assert len(starts) == 2
    assert starts[1] - starts[0] < 0.7, starts  # at 2 x wall time it would be >= 0.8


def test_a_run_that_rendered_nothing_does_not_hold_back_the_next() -> None:
    """Runs that report no cost (an agent's report after a flip) go back to back; the
    spacing counts from the last run that rendered, whatever ran since."""
    spacing = 0.6  # long, so that a loaded machine's scheduling delays decide nothing

    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        starts: list[tuple[str, float]] = []
        debouncer = Debouncer(spacing=spacing)

        def action(name: str, cost: float) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                starts.append((name, loop.time() - start))
                return cost
            return run

        for i in range(3):
            debouncer.schedule("lb", action(f"free{i}", 0.0))
            await asyncio.sleep(0.02)
        debouncer.schedule("lb", action("render", 0.001))
        await asyncio.sleep(0.02)
        debouncer.schedule("lb", action("free-after-render", 0.0))
        await asyncio.sleep(spacing + 0.1)
        debouncer.schedule("lb", action("render-later", 0.001))
        await asyncio.sleep(0.05)
        return starts

    starts = dict(asyncio.run(scenario()))
    assert list(starts) == ["free0", "free1", "free2", "render", "free-after-render",
                            "render-later"], starts
    assert starts["render"] < spacing / 2, starts  # three free runs held nothing back
    assert starts["free-after-render"] - starts["render"] >= spacing - 0.005, starts
    # Spaced from the render, not from the free run in between (that would be a whole
    # spacing after the free run).
    assert starts["render-later"] - starts["free-after-render"] < spacing / 2, starts


def test_a_reconcile_records_its_rendering_time(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[str] = []

    async def fake_apply(obj: dict[str, Any]) -> None:
        writes.append(obj["kind"])
        await asyncio.sleep(0.1)  # API time: not rendering

    idx = _offline(monkeypatch, fake_apply)
    rec = Reconciler()
    key = ("LoadBalancer", "default", "web")
    asyncio.run(rec.reconcile("LoadBalancer", lb_object(), idx))
    assert len(writes) >= 6, writes  # so the API time (>= 0.6 s) cannot fit under 0.5
    assert 0 < rec.render_seconds[key] < 0.5, writes  # the writes' 100 ms are not in it
    asyncio.run(rec.reconcile("LoadBalancer", lb_object(), idx))
    assert rec.render_seconds[key] == 0.0  # nothing changed: nothing rendered
    rec.forget(*key)
    assert key not in rec.render_seconds


@pytest.mark.parametrize("trigger", ["dependency", "create"])
def test_a_fan_out_writes_every_config_before_any_status(
        monkeypatch: pytest.MonkeyPatch, trigger: str) -> None:
    """Resources sharing a Service: their dependency-triggered reconciles write status
    only once no other reconcile still writes children (reconciler.ConfigsFirst). A
    resource's own create does not wait for the others."""
    events: list[str] = []

    async def slow_apply(obj: dict[str, Any]) -> None:
        await asyncio.sleep(0.005 if obj["kind"] != "ConfigMap" else 0.02)
        events.append(f"{obj['kind']} {obj['metadata']['name']}")

    idx = _offline(monkeypatch, slow_apply)

    async def record_status(kind: str, namespace: str, name: str, body: Any) -> None:
        events.append(f"status {name}")
    monkeypatch.setattr(apply, "write_status", record_status)
    rec = Reconciler()
    bodies = []
    for i in range(4):
        body = lb_object()
        body["metadata"]["name"] = f"lb{i}"
        bodies.append(body)

    async def scenario() -> None:
        await asyncio.gather(*(rec.reconcile("LoadBalancer", b, idx, trigger=trigger)
                               for b in bodies))

    asyncio.run(scenario())
    children = [i for i, e in enumerate(events) if not e.startswith("status")]
    statuses = [i for i, e in enumerate(events) if e.startswith("status")]
    assert len(children) == 4 * 8 and len(statuses) == 4
    if trigger == "dependency":
        assert max(children) < min(statuses), events
    else:
        assert min(statuses) < max(children), events  # the first one did not wait
