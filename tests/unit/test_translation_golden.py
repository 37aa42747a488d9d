"""The whole translation, input YAML -> output files, against golden files.

For every example (examples/*.yaml but sample-app.yaml and offline-cluster.yaml) and
every partial or invalid input of tests/cases/translation/, tests/unit/golden/<name>/
holds what Roundhouse makes of it, resolved against examples/offline-cluster.yaml (what
`roundhouse render --services` reads) plus the input's own cluster objects:

- status.yaml: the problems found (field, message, the condition each turns False, and
  whether the operator retries), then the status the operator writes, in fixed states
  of the proxy: `created`, no proxy Pod yet; `running`, every replica Ready and its
  agent reporting the rendered config; and `observed`, when the input holds proxy Pods
  or the agents' report ConfigMap of its own, for those (and the reports the operator
  then drops, of Pods that are gone). Fixed clock and generation; no address (only a
  cluster gives the proxy Service one).
- haproxy.cfg and servers.json: the proxy ConfigMap's files.
- objects.yaml: the children the operator applies, in order (the ConfigMap's files stand
  for the two files above), and the issued certificate's Secrets with their key and
  certificate material REDACTED.

An invalid spec has status.yaml only. The first resource document of an input is the
one translated; other ReverseProxies in it are the rest of the namespace (hostname
claims). The operator-issued serving Secret is taken as present (as `roundhouse render`
does), so its certificate is served.

Regenerate after an intended change, and review the diff:
    pytest tests/unit/test_translation_golden.py --update-golden
(or ROUNDHOUSE_UPDATE_GOLDEN=1); it also deletes golden files no input has any more.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse import certificates, resources, status
from roundhouse.graph import ClusterState, child_name, issued_secret_name
from roundhouse.graph.names import issued_dns_names
from roundhouse.model import SpecError
from roundhouse.model.cluster import (
    TLSSecret,
    parse_endpoint_slice,
    parse_service,
    parse_tls_secret,
)
from roundhouse.model.pods import ProxyPod, parse_proxy_pod
from roundhouse.pipeline import Desired
from roundhouse.render import objects
from roundhouse.reports import stale_reports
from tests.unit.conftest import EXAMPLES, REPO, HaproxyCheck

GOLDEN = Path(__file__).parent / "golden"
PARTIAL = REPO / "tests" / "cases" / "translation"
# gateway-api.yaml is a Gateway with its routes: its translation is checked by
# tests/unit/test_gateway_graph.py and test_gateway_status.py (render, haproxy -c).
NOT_EXAMPLES = {"sample-app.yaml", "offline-cluster.yaml", "gateway-api.yaml"}
INPUTS = {p.stem: p for p in [*sorted(p for p in EXAMPLES.glob("*.yaml")
                                      if p.name not in NOT_EXAMPLES),
                              *sorted(PARTIAL.glob("*.yaml"))]}
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
UID = "golden-uid"
IMAGES = objects.ProxyImages(haproxy="haproxy:3.4", agent="roundhouse:golden")
REDACTED = "REDACTED"


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def cluster_state(docs: Iterable[dict[str, Any]], namespace: str) -> ClusterState:
    """The Services, EndpointSlices and Secrets of `namespace`, as the indexes hold them."""
    here = [d for d in docs if (d.get("metadata") or {}).get("namespace") == namespace]
    services = {s.name: s for s in (parse_service(d) for d in here if d["kind"] == "Service")}
    slices = [s for s in (parse_endpoint_slice(d) for d in here
                          if d["kind"] == "EndpointSlice") if s]
    secrets = {s.name: s for s in (parse_tls_secret(d) for d in here if d["kind"] == "Secret")}
    return ClusterState(services, slices, secrets)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True)


def problem_entry(condition: str, reason: str, text: str, retry: bool = False) -> dict[str, Any]:
    """The field apart from the message ("spec.x[0].y: message"), and whether the
    operator retries (a dependency that may appear)."""
    field, sep, message = text.partition(": ")
    if not (sep and field.startswith("spec")):
        field, message = "", text
    entry: dict[str, Any] = {"field": field, "message": message, "condition": condition,
                             "reason": reason}
    return entry | ({"retry": True} if retry else {})


def subject_of(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The resource translated (the first), and the input's other documents."""
    docs = load(path)
    subject = next(d for d in docs if d.get("kind") in resources.KINDS)
    subject["metadata"]["uid"] = UID
    return subject, [d for d in docs if d is not subject]


def desired_of(model: resources.Model, subject: dict[str, Any],
               others: list[dict[str, Any]]) -> Desired:
    """The pure pipeline, as the reconciler runs it, on the offline cluster."""
    kind = subject["kind"]
    cluster = cluster_state([*load(EXAMPLES / "offline-cluster.yaml"), *others],
                            model.namespace)
    if issued_dns_names(model):  # what the operator would have issued by now
        issued = issued_secret_name(kind, model.name)
        cluster = ClusterState(cluster.services, cluster.slices,
                               {**cluster.secrets, issued: TLSSecret(issued, True, True,
                                                                     "golden")})
    conflicts = resources.hostname_conflicts(
        resources.claim_of(subject),
        [resources.claim_of(o) for o in others if o.get("kind") == "ReverseProxy"])
    return resources.desired(model, cluster, IMAGES, conflicts)


def translate(path: Path) -> dict[str, str]:
    """What Roundhouse makes of the input: golden file name -> its text."""
    subject, others = subject_of(path)
    kind = subject["kind"]
    generation = int(subject["metadata"].get("generation") or 1)
    try:
        model = resources.parse(kind, subject)
    except SpecError as err:
        found = status.invalid_spec("; ".join(str(e) for e in err.errors))
        return {"status.yaml": dump({
            "problems": [problem_entry("Accepted", "InvalidSpec", str(e)) for e in err.errors],
            "status": status.status_body([], found, generation, NOW)})}
    desired = desired_of(model, subject, others)
    replicas = model.proxy.replicas
    running = running_pods(kind, model.name, replicas)
    states = {"created": status_of(desired, replicas, generation, [], {}),
              "running": status_of(desired, replicas, generation, running,
                                   current_reports(desired, running))}
    dropped: dict[str, Any] = {}
    observed = observed_proxy(objects.owner_of(model), others)
    if observed:
        states["observed"] = status_of(desired, replicas, generation, *observed)
        pods, reports = observed
        # What the operator then drops from the report ConfigMap.
        dropped["staleReports"] = stale_reports(reports, {p.name for p in pods}, NOW)
    return {
        "status.yaml": dump({
            "problems": [problem_entry(p.condition, p.reason, p.message, p.retry)
                         for p in desired.graph.problems],
            "status": states} | dropped),
        "haproxy.cfg": desired.rendered.config,
        "servers.json": desired.rendered.server_state_json(),
        "objects.yaml": yaml.safe_dump_all(children(desired, objects.owner_of(model),
                                                    issued_dns_names(model)),
                                           sort_keys=False, width=100),
    }


def running_pods(kind: str, name: str, replicas: int) -> list[ProxyPod]:
    return [ProxyPod(f"{child_name(kind, name)}-{i}", True) for i in range(replicas)]


def current_reports(desired: Desired, pods: list[ProxyPod]) -> dict[str, str]:
    """Each agent reporting the rendered config (and no connection-limit figures)."""
    return {p.name: f'{{"configHash": "{desired.rendered.config_hash}"}}' for p in pods}


def observed_proxy(owner: objects.Owner, docs: list[dict[str, Any]]
                   ) -> tuple[list[ProxyPod], dict[str, str]] | None:
    """The input's own proxy Pods and agents' report ConfigMap, read as the operator's
    indexes read them; None when it has neither."""
    def mine(d: dict[str, Any], kind: str) -> bool:
        meta = d.get("metadata") or {}
        return d.get("kind") == kind and meta.get("namespace") == owner.namespace

    instance = child_name(owner.kind, owner.name)
    pods = [parse_proxy_pod(d["metadata"]["name"], d.get("status") or {}) for d in docs
            if mine(d, "Pod") and (d["metadata"].get("labels") or {}).get(
                "app.kubernetes.io/instance") == instance]
    reports = [dict(d.get("data") or {}) for d in docs if mine(d, "ConfigMap")
               and d["metadata"]["name"] == objects.agent_status_name(owner)]
    if not pods and not reports:
        return None
    return pods, (reports[0] if reports else {})


def status_of(desired: Desired, replicas: int, generation: int, pods: list[ProxyPod],
              reports: dict[str, str]) -> dict[str, Any]:
    """The status body the reconciler writes, for these proxy Pods and reports."""
    found = status.conditions(desired.graph, desired.rendered.config_hash, replicas, pods,
                              reports)
    return status.status_body([], found, generation, NOW,
                              status.backend_counts(desired.graph))


def children(desired: Desired, owner: objects.Owner,
             issued_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The children as applied; the ConfigMap's files point to their golden files."""
    out = []
    for obj in desired.children:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == child_name(
                owner.kind, owner.name):
            assert set(obj.get("data") or {}) == {"haproxy.cfg", "servers.json"}, \
                "a small config is plain text in data"
            obj = {**obj, "data": {k: f"(golden file {k})" for k in obj["data"]}}
        out.append(obj)
    if issued_names:  # certificates.py writes these, with generated keys
        for name in (certificates.ca_name(owner), certificates.issued_name(owner)):
            secret = objects.tls_secret(owner, name, REDACTED, REDACTED, REDACTED, REDACTED)
            secret["data"] = dict.fromkeys(secret["data"], REDACTED)
            out.append(secret)
    return out


# ------------------------------------------------------------------ the tests


def updating(config: pytest.Config) -> bool:
    return bool(config.getoption("--update-golden")) or os.environ.get(
        "ROUNDHOUSE_UPDATE_GOLDEN") == "1"


def test_there_are_inputs_of_both_kinds_and_partial_ones() -> None:
    kinds = {d["kind"] for p in INPUTS.values() for d in load(p) if d["kind"] in
             resources.KINDS}
    assert kinds == set(resources.KINDS)
    assert len([p for p in INPUTS.values() if p.parent == PARTIAL]) >= 4
    assert len(INPUTS) == len([*EXAMPLES.glob("*.yaml")]) - len(NOT_EXAMPLES) + len(
        [*PARTIAL.glob("*.yaml")]), "an example and a partial input share a name"


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_translation_matches_golden_files(name: str, request: pytest.FixtureRequest) -> None:
    produced = translate(INPUTS[name])
    directory = GOLDEN / name
    if updating(request.config):
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            if stale.name not in produced:
                stale.unlink()
        for file, text in produced.items():
            (directory / file).write_text(text)
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    if present != sorted(produced):
        pytest.fail(f"{directory.relative_to(REPO)} holds {present}, the translation makes "
                    f"{sorted(produced)}: regenerate with --update-golden (or "
                    "ROUNDHOUSE_UPDATE_GOLDEN=1) and review", pytrace=False)
    diffs = [diff(directory / file, text) for file, text in produced.items()]
    if any(diffs):
        pytest.fail("the translation differs from the golden files; if intended, "
                    "regenerate with --update-golden (or ROUNDHOUSE_UPDATE_GOLDEN=1) and "
                    "review the diff\n" + "".join(diffs), pytrace=False)


def diff(golden: Path, produced: str) -> str:
    return "".join(difflib.unified_diff(
        golden.read_text().splitlines(keepends=True), produced.splitlines(keepends=True),
        fromfile=str(golden.relative_to(REPO)), tofile="produced"))


def test_no_golden_files_without_an_input(request: pytest.FixtureRequest) -> None:
    stale = sorted(p.name for p in GOLDEN.iterdir() if p.name not in INPUTS)
    if stale and updating(request.config):
        for name in stale:
            target = GOLDEN / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        stale = []
    if stale:
        pytest.fail(f"golden files in {GOLDEN.relative_to(REPO)} for no input: {stale}; "
                    "delete them (--update-golden does)", pytrace=False)


@pytest.mark.parametrize("name", sorted(p.stem for p in PARTIAL.glob("*.yaml")))
def test_partial_inputs_render_configs_haproxy_accepts(name: str,
                                                        haproxy_check: HaproxyCheck) -> None:
    """What is left of a partial input still makes a config HAProxy loads (the examples
    are checked in test_render.py and test_reverseproxy_render.py)."""
    subject, others = subject_of(INPUTS[name])
    try:
        model = resources.parse(subject["kind"], subject)
    except SpecError:
        return  # nothing is rendered
    result = haproxy_check(desired_of(model, subject, others).graph)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secret_material_in_golden_files() -> None:
    """Nothing from a Secret's data (key or certificate) is in a golden file."""
    values = {v for p in [EXAMPLES / "offline-cluster.yaml", *PARTIAL.glob("*.yaml")]
              for d in load(p) if d.get("kind") == "Secret"
              for v in (d.get("data") or {}).values()}
    assert values
    for file in GOLDEN.rglob("*"):
        if file.is_file():
            text = file.read_text()
            assert not any(v[len(v) // 2:len(v) // 2 + 40] in text for v in values), file
            assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, file
