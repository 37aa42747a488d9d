"""When only endpoints move, the reconciler renders the proxy ConfigMap alone and keeps the
other children as last applied (reconciler.Reconciler._desired). That is right only if
those children depend on endpoints through the config's structure hash and nothing else:
checked here for generated LoadBalancers and ReverseProxies, with endpoints flipped,
removed and added within the slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings

from roundhouse import resources
from roundhouse.graph import ClusterState, child_name
from roundhouse.model.cluster import EndpointSlice
from roundhouse.pipeline import Desired, complete
from roundhouse.render import objects
from tests.unit import rp_fixtures, test_render_property
from tests.unit.strategies import valid_loadbalancers, valid_reverseproxies

IMAGES = objects.ProxyImages()


def _endpoints_moved(cluster: ClusterState) -> ClusterState:
    """Each slice: its first endpoint's readiness flipped, its last one gone, a new one
    added (3 endpoints stay 3: within the 8 slots)."""
    moved = []
    for s in cluster.slices:
        first, *rest = s.endpoints
        flipped = (first[0], first[1], not first[2], not first[2], False, first[5])
        new = (f"{s.name}-new", "10.245.0.9", True, True, False, None)
        moved.append(dataclasses.replace(s, endpoints=(flipped, *rest[:-1], new)))
    assert all(isinstance(s, EndpointSlice) for s in moved)
    return dataclasses.replace(cluster, slices=moved)


def _others(desired: Desired, config_name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every child but the proxy ConfigMap."""
    return {(c["kind"], c["metadata"]["name"]): c for c in desired.children
            if (c["kind"], c["metadata"]["name"]) != ("ConfigMap", config_name)}


def _check(obj: dict[str, Any], cluster: ClusterState) -> None:
    model = resources.parse(obj["kind"], obj)
    config_name = child_name(obj["kind"], obj["metadata"]["name"])
    before = resources.desired(model, cluster, IMAGES)
    moved = _endpoints_moved(cluster)
    after = resources.desired(model, moved, IMAGES)
    config_only = resources.desired(model, moved, IMAGES, config_only=True)
    # The config-only render is the full render's proxy ConfigMap, nothing else.
    (config_map,) = config_only.children
    assert (config_map["kind"], config_map["metadata"]["name"]) == ("ConfigMap", config_name)
    assert config_map in after.children
    assert config_only.rendered == after.rendered
    # Completed, it is the full render, child for child (the reconciler's path when the
    # structure changed).
    assert complete(config_only, model, IMAGES).children == after.children
    if moved.slices != cluster.slices:
        # Not vacuous: endpoints moved, the config shows it...
        assert after.rendered.config_hash != before.rendered.config_hash
    # ...its structure stays (the agent applies it at run time)...
    assert after.rendered.structure_hash == before.rendered.structure_hash
    # ...and so every other child is exactly what it was.
    assert len(_others(after, config_name)) == len(after.children) - 1 == 7
    assert _others(after, config_name) == _others(before, config_name)


SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(valid_loadbalancers())
def test_loadbalancer_children_besides_the_config_ignore_endpoints(obj: dict[str, Any]) -> None:
    _check(obj, test_render_property.cluster_for(obj))


@SETTINGS
@given(valid_reverseproxies())
def test_reverseproxy_children_besides_the_config_ignore_endpoints(obj: dict[str, Any]) -> None:
    _check(obj, rp_fixtures.cluster_for(obj))
