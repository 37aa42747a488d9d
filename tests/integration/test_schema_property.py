"""Issue 11 against the ground truth: objects drawn from the CRDs' own schema and CEL rules
(tests/unit/schema_strategies.py) sent to the real API server with server-side dry run.

For every drawn object the offline evaluator (tests/unit/schema_validator.py) must agree
with the API server on accept or reject; every object the API server accepts, as it
returns it (pruned, defaulted), must render, pass `haproxy -c` on 2.6 and 3.4 and keep
the structure hash honest (tests/unit/schema_properties.py). Per kind, most objects are
drawn with the CEL rules kept and the rest from the OpenAPI schema alone, so that the
rules' rejections are compared too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client

from tests.integration.operator_process import install
from tests.unit.conftest import haproxy_binaries
from tests.unit.schema_properties import Rendered, Tally, check_configs, check_object
from tests.unit.schema_strategies import SchemaStrategies

PLURALS = {"LoadBalancer": "loadbalancers", "ReverseProxy": "reverseproxies"}
# About 200 objects in all: per kind, this many with the CEL rules kept and without.
WITH_RULES = int(os.environ.get("ROUNDHOUSE_PROPERTY_API_EXAMPLES", "60"))
WITHOUT_RULES = WITH_RULES * 2 // 3
NAMESPACE = "default"


@pytest.fixture(scope="module")
def crds_installed(control_plane: Any) -> None:
    install(control_plane)


def draw(kind: str, keep_rules: bool, count: int) -> list[dict[str, Any]]:
    """count objects from the strategies (generation only: nothing to shrink)."""
    strategies = SchemaStrategies.for_kind(kind, keep_rules)
    drawn: list[dict[str, Any]] = []

    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    # The API server checks the object's namespace against the request's, which must
    # exist: every object goes to one namespace.
    @given(strategies.objects(namespaces=st.just(NAMESPACE)))
    def collect(obj: dict[str, Any]) -> None:
        drawn.append(obj)

    collect()
    return drawn


def dry_run(kube: client.ApiClient, obj: dict[str, Any]) -> tuple[bool, Any]:
    """(accepted, the object as the API server would store it | its rejection)."""
    try:
        out = client.CustomObjectsApi(kube).create_namespaced_custom_object(
            "roundhouse.dev", "v1alpha1", NAMESPACE, PLURALS[obj["kind"]], obj,
            dry_run="All")
    except client.ApiException as err:
        if err.status not in (400, 422):
            raise
        return False, json.loads(err.body or "{}").get("message", err.body)
    return True, out


@pytest.mark.parametrize("kind", sorted(PLURALS))
def test_api_server_accepted_objects_render_and_pass_haproxy(
        crds_installed: None, kube: client.ApiClient, kind: str, tmp_path: Path) -> None:
    started = time.monotonic()
    objects = draw(kind, True, WITH_RULES) + draw(kind, False, WITHOUT_RULES)
    validator = SchemaStrategies.for_kind(kind).validator
    disagreements: list[str] = []
    accepted: list[dict[str, Any]] = []
    for obj in objects:
        ok, answer = dry_run(kube, obj)
        predicted = validator.validate(obj)
        if ok != (not predicted):
            disagreements.append(
                f"API server {'accepts' if ok else 'rejects: ' + str(answer)}; evaluator "
                f"{'accepts' if not predicted else 'rejects: ' + '; '.join(map(str, predicted))}"
                f"\n{yaml.safe_dump(obj, allow_unicode=True)}")
        if ok:
            accepted.append(answer)
    tally = Tally()
    rendered: list[Rendered] = []
    for stored in accepted:
        item = check_object(stored, tally)
        if item is not None:
            rendered.append(item)
    failures = check_configs(rendered, haproxy_binaries(), tmp_path, tally)
    print(f"\n{kind}: {len(objects)} drawn, {len(accepted)} accepted by the API server, "
          f"{len(disagreements)} evaluator disagreements, {tally.checked} rendered and "
          f"checked; known open classes: {tally.known or {}}; "
          f"{time.monotonic() - started:.1f}s")
    assert not disagreements, f"{len(disagreements)} disagreements:\n" + \
        "\n\n".join(disagreements[:3])
    assert not failures, f"{len(failures)} configs failed haproxy -c:\n" + \
        "\n\n".join(failures[:3])
    # The API server must both accept and reject some: the comparison means something.
    assert len(accepted) >= WITH_RULES // 2 and len(accepted) < len(objects)
