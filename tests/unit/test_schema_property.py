"""Issue 11: objects drawn from the CRDs' own schema and CEL rules (not from the model's
idea of what is valid), kept when the offline evaluator of the API server accepts them,
must render, pass `haproxy -c` on 2.6 and 3.4, and keep the structure hash honest
(tests/unit/schema_properties.py). ROUNDHOUSE_PROPERTY_EXAMPLES sets how many objects are
drawn in all (both kinds); `make test-property-large` draws thousands."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings

from tests.unit.conftest import haproxy_binaries
from tests.unit.schema_properties import Rendered, Tally, check_configs, check_object
from tests.unit.schema_strategies import SchemaStrategies

EXAMPLES = int(os.environ.get("ROUNDHOUSE_PROPERTY_EXAMPLES", "200"))
KINDS = ("LoadBalancer", "ReverseProxy")


# pytest-timeout's 600 s would stop a large run midway (and hypothesis then reports the
# interrupted example as flaky): about a second an object even on a busy machine.
@pytest.mark.timeout(max(600, EXAMPLES))
@pytest.mark.parametrize("kind", KINDS)
def test_schema_drawn_objects_render_and_pass_haproxy(kind: str, tmp_path: Path) -> None:
    strategies = SchemaStrategies.for_kind(kind)
    rendered: list[Rendered] = []
    tally = Tally()
    drawn = {"all": 0, "accepted": 0}
    started = time.monotonic()

    @settings(max_examples=EXAMPLES // len(KINDS), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much,
                                     HealthCheck.large_base_example])
    @given(strategies.objects())
    def one(obj: dict[str, Any]) -> None:
        drawn["all"] += 1
        assume(not strategies.validator.validate(obj))
        drawn["accepted"] += 1
        item = check_object(strategies.validator.default(obj), tally)
        if item is not None:
            rendered.append(item)

    one()
    generated = time.monotonic() - started
    failures = check_configs(rendered, haproxy_binaries(), tmp_path, tally)
    print(f"\n{kind}: {drawn['all']} drawn, {drawn['accepted']} accepted by the schema and "
          f"CEL rules, {tally.checked} rendered and checked, {len(rendered)} configs through "
          f"haproxy -c x{len(haproxy_binaries())}; known open classes: {tally.known or {}}; "
          f"{generated:.1f}s drawing and rendering, "
          f"{time.monotonic() - started - generated:.1f}s haproxy -c")
    if os.environ.get("ROUNDHOUSE_PROPERTY_SHOW_KNOWN"):
        for name, what in (tally.first or {}).items():
            print(f"=== first of {name}:\n{what[:3000]}")
    assert not failures, f"{len(failures)} configs failed haproxy -c:\n" + \
        "\n\n".join(failures[:3])
    # Enough objects got through all of it for the run to mean something.
    assert tally.checked >= EXAMPLES // len(KINDS) // 2, (drawn, tally)
