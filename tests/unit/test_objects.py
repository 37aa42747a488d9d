"""render/objects.py: the children's shape, ownership and security defaults."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse.graph import ClusterState, issued_secret_name
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import TLSSecret
from roundhouse.pipeline import desired_for_loadbalancer
from roundhouse.render import payload
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service, state
from tests.unit.conftest import lb_object

CONFIGMAP_LIMIT = 1024 * 1024  # what the API server stores in one object


def children(**spec: Any) -> dict[str, dict[str, Any]]:
    name = issued_secret_name("LoadBalancer", "web")
    cluster = state(3, secrets={name: TLSSecret(name, True, True, "f"),
                                "mine": TLSSecret("mine", True, True, "g")})
    desired = desired_for_loadbalancer(parse_loadbalancer(lb_object(**spec)), cluster)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in desired.children}


def test_every_child_is_owned_by_the_loadbalancer() -> None:
    objs = children()
    assert set(objs) == {"ServiceAccount/web-lb", "Role/web-lb", "RoleBinding/web-lb",
                         "ConfigMap/web-lb", "ConfigMap/web-lb-agents", "Deployment/web-lb",
                         "PodDisruptionBudget/web-lb", "Service/web-lb"}
    for obj in objs.values():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
                       "name": "web", "uid": "uid-1", "controller": True,
                       "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "roundhouse"


def test_deployment_is_hardened_and_highly_available() -> None:
    dep = children()["Deployment/web-lb"]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        # A crash's last log lines become the termination message the status quotes.
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    haproxy = pod["containers"][0]
    assert haproxy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8404}
    assert "-W" in haproxy["args"] and "-S" in haproxy["args"]
    # The shared runtime socket directory is in both containers.
    mounts = {c["name"]: {m["mountPath"] for m in c["volumeMounts"]} for c in pod["containers"]}
    assert "/var/run/roundhouse" in mounts["haproxy"] & mounts["agent"]


def test_config_hash_is_not_in_the_pod_template() -> None:
    """A config change must never roll the proxy Pods: the agent reloads hitlessly."""
    a = children()["Deployment/web-lb"]
    b = children(timeouts={"server": "7s"})["Deployment/web-lb"]
    assert a["spec"]["template"] == b["spec"]["template"]
    assert a["metadata"]["annotations"] != b["metadata"]["annotations"]


def test_adding_a_listener_does_not_roll_the_proxy_pods() -> None:
    """Listener ports are not containerPorts: a new listener is a reload, not a rollout."""
    one = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    two = [*one, {"name": "https", "port": 443, "protocol": "HTTPS"},
           {"name": "pg", "port": 5432, "protocol": "TCP"}]
    a = children(listeners=one)
    b = children(listeners=two)
    assert a["Deployment/web-lb"]["spec"]["template"] == b["Deployment/web-lb"]["spec"][
        "template"]
    assert len(b["Service/web-lb"]["spec"]["ports"]) == 3  # the Service still has them all


def test_pdb_never_allows_losing_more_than_one() -> None:
    pdb = children()["PodDisruptionBudget/web-lb"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == \
        children()["Deployment/web-lb"]["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(("spec", "secrets"), [
    ({}, None),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}]}, ["web-lb-tls"]),
    ({"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS",
                     "tls": {"secretName": "mine"}}]}, ["mine"]),
])
def test_agent_role_is_least_privilege(spec: dict[str, Any], secrets: list[str] | None) -> None:
    rules = children(**spec)["Role/web-lb"]["rules"]
    for rule in rules:
        assert rule.get("resourceNames"), f"an unnamed rule grants too much: {rule}"
        assert "*" not in rule["verbs"] and rule["resources"] != ["*"]
    secret_rules = [r for r in rules if r["resources"] == ["secrets"]]
    if secrets is None:
        assert secret_rules == []
    else:
        assert secret_rules[0]["resourceNames"] == secrets
        assert set(secret_rules[0]["verbs"]) <= {"get", "list", "watch"}


def test_service_exposes_each_listener() -> None:
    svc = children(listeners=[{"name": "http", "port": 80, "protocol": "HTTP"},
                              {"name": "pg", "port": 5432, "protocol": "TCP"}],
                   proxy={"serviceType": "NodePort"})["Service/web-lb"]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 80), ("pg", 5432)]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["externalTrafficPolicy"] == "Cluster"


@pytest.mark.parametrize("spec", [
    {"sessionPersistence": {"type": "SourceIP"}},
    {"limits": {"maxConnectionsPerClient": 10}},
    {"limits": {"requestRatePerClient": {"requests": 100}}},
])
def test_client_addresses_are_kept_when_something_keys_on_them(spec: dict[str, Any]) -> None:
    """SourceIP stickiness and per-client limits see the client, not a node's SNAT."""
    svc = children(**spec)["Service/web-lb"]
    assert svc["spec"]["externalTrafficPolicy"] == "Local"


def test_user_settings_reach_the_pods() -> None:
    pod = children(proxy={"replicas": 4, "nodeSelector": {"role": "edge"},
                          "tolerations": [{"key": "edge", "operator": "Exists"}],
                          "resources": {"limits": {"cpu": "2"}}})["Deployment/web-lb"]
    assert pod["spec"]["replicas"] == 4
    tpl = pod["spec"]["template"]["spec"]
    assert tpl["nodeSelector"] == {"role": "edge"}
    assert tpl["tolerations"] == [{"key": "edge", "operator": "Exists"}]
    assert tpl["containers"][0]["resources"] == {"limits": {"cpu": "2"}}


def test_configmap_carries_config_and_server_state() -> None:
    cm = children()["ConfigMap/web-lb"]
    assert cm["data"]["haproxy.cfg"].startswith("# Rendered by Roundhouse")
    assert '"configHash"' in cm["data"]["servers.json"]
    ann = cm["metadata"]["annotations"]
    assert set(ann) == {"roundhouse.dev/config-hash", "roundhouse.dev/structure-hash"}


def _big_cluster(n: int) -> ClusterState:
    """Service web with n ready endpoints, in EndpointSlices of 100 as the controller cuts them."""
    eps = [endpoint(f"web-{i}", f"10.{244 + i // 65536}.{i // 256 % 256}.{i % 256}")
           for i in range(n)]
    slices = [endpoint_slice("web", eps[i:i + 100], name=f"web-{i // 100}")
              for i in range(0, n, 100)]
    return ClusterState({"web": service()}, slices)


def test_a_large_configmap_is_compressed_and_decodes_to_the_render() -> None:
    """At 20,000 endpoints (32,768 slots) the plain files are over 5 MB, five times what
    the API server stores in one object: gzipped they fit, and read back unchanged."""
    model = parse_loadbalancer(lb_object())
    desired = desired_for_loadbalancer(model, _big_cluster(20_000))
    cm = next(o for o in desired.children if o["kind"] == "ConfigMap"
              and o["metadata"]["name"] == "web-lb")
    assert "data" not in cm and set(cm["binaryData"]) == {"haproxy.cfg.gz", "servers.json.gz"}
    files = payload.decode(cm)
    assert files == {"haproxy.cfg": desired.rendered.config,
                     "servers.json": desired.rendered.server_state_json()}
    plain = sum(len(t.encode()) for t in files.values())
    stored = payload.stored_size({}, cm["binaryData"])
    assert plain > 5 * CONFIGMAP_LIMIT and stored < CONFIGMAP_LIMIT // 2, (plain, stored)
    # Deterministic: the same render is the same object (server-side apply stays a no-op).
    again = desired_for_loadbalancer(model, _big_cluster(20_000))
    assert next(o for o in again.children if o["kind"] == "ConfigMap"
                and o["metadata"]["name"] == "web-lb") == cm


def test_a_small_configmap_stays_plain_text() -> None:
    cm = children()["ConfigMap/web-lb"]
    assert "binaryData" not in cm
    assert payload.decode(cm) == cm["data"]


def test_source_ranges_keep_the_client_address_and_reach_a_load_balancer_service() -> None:
    svc = children(allowedSourceRanges=["203.0.113.0/24"],
                   proxy={"serviceType": "LoadBalancer"})["Service/web-lb"]["spec"]
    assert svc["externalTrafficPolicy"] == "Local"
    assert svc["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    node_port = children(allowedSourceRanges=["203.0.113.0/24"],
                         proxy={"serviceType": "NodePort"})["Service/web-lb"]["spec"]
    assert node_port["externalTrafficPolicy"] == "Local"
    assert "loadBalancerSourceRanges" not in node_port
    assert "loadBalancerSourceRanges" not in children(
        proxy={"serviceType": "LoadBalancer"})["Service/web-lb"]["spec"]
