"""The operator against a real kube-apiserver, controllers and kwok nodes.

It runs as a real process with the ServiceAccount and RBAC from manifests/install.yaml
(not as admin), so any permission the manifests forgot fails these tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from roundhouse.render import payload
from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    PLURALS,
    OperatorProcess,
    condition,
    create_lb,
    create_obj,
    custom,
    get_lb,
    get_obj,
    many_endpoints,
    sample_app,
    service_without_selector,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment",
               "PodDisruptionBudget", "Service")


def lb_body(name: str = "web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": name},
        "spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                 "backends": [{"service": "web", "port": "http"}]},
    }
    body["spec"].update(spec)
    return body


def children(kube: client.ApiClient, namespace: str, owner: str) -> dict[str, dict[str, Any]]:
    selector = f"roundhouse.dev/owner-name={owner}"
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    rbac, policy = client.RbacAuthorizationV1Api(kube), client.PolicyV1Api(kube)
    found: dict[str, dict[str, Any]] = {}
    for kind, lister in (
        ("ServiceAccount", core.list_namespaced_service_account),
        ("ConfigMap", core.list_namespaced_config_map),
        ("Service", core.list_namespaced_service),
        ("Secret", core.list_namespaced_secret),
        ("Deployment", apps.list_namespaced_deployment),
        ("Role", rbac.list_namespaced_role),
        ("RoleBinding", rbac.list_namespaced_role_binding),
        ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget),
    ):
        for item in lister(namespace, label_selector=selector).items:
            found[f"{kind}/{item.metadata.name}"] = kube.sanitize_for_serialization(item)
    return found


def server_states(kube: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    cm = client.CoreV1Api(kube).read_namespaced_config_map(f"{name}-lb", namespace)
    state = json.loads(cm.data["servers.json"])
    return {s["endpoint"]: s["state"] for s in state["pools"]["be_http"] if s["endpoint"]}


def report_as_agents(kube: client.ApiClient, namespace: str, name: str) -> None:
    """Stand in for the proxies' agents (real ones run in the e2e tier): report the
    ConfigMap's current config hash for every proxy Pod."""
    core = client.CoreV1Api(kube)
    cm = core.read_namespaced_config_map(f"{name}-lb", namespace)
    digest = cm.metadata.annotations["roundhouse.dev/config-hash"]
    pods = core.list_namespaced_pod(namespace,
                                    label_selector=f"app.kubernetes.io/instance={name}-lb").items
    data = {p.metadata.name: json.dumps({"configHash": digest, "error": None}) for p in pods}
    core.patch_namespaced_config_map(f"{name}-lb-agents", namespace, {"data": data})


def test_every_example_reconciles_into_owned_children(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    docs = [d for p in examples for d in yaml.safe_load_all(p.read_text())
            if d and d.get("kind") in PLURALS]
    assert sum(d["kind"] == "LoadBalancer" for d in docs) >= 4
    assert sum(d["kind"] == "ReverseProxy" for d in docs) >= 2
    for body in docs:
        kind, suffix = body["kind"], "lb" if body["kind"] == "LoadBalancer" else "rp"
        created = create_obj(kube, namespace, body)
        name, uid = created["metadata"]["name"], created["metadata"]["uid"]
        # Every expected child, not a count: with two issued Secrets a count of 8 can be
        # reached before the last child (the Service) is applied.
        secrets = {f"Secret/{name}-{suffix}-tls", f"Secret/{name}-{suffix}-ca"} \
            if _issues_certificate(body) else set()

        def complete(n: str = name, want: set[str] = secrets) -> dict[str, Any] | None:
            c = children(kube, namespace, n)
            ok = set(CHILD_KINDS) <= {key.split("/")[0] for key in c} and want <= set(c)
            return c if ok else None

        found = wait_for(complete, 60, f"children of {kind} {name}")
        assert f"Deployment/{name}-{suffix}" in found
        for obj in found.values():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                kind, name, uid, True)
        accepted = wait_for(lambda n=name, p=PLURALS[kind]: condition(
            get_obj(kube, namespace, n, p), "Accepted"), 30, f"{name} status")
        assert accepted["status"] == "True", accepted
        assert secrets <= set(found), secrets


def _issues_certificate(body: dict[str, Any]) -> bool:
    spec = body["spec"]
    if body["kind"] == "ReverseProxy":
        return any("tls" in h and not h["tls"].get("secretName") for h in spec["hosts"])
    return any(li.get("protocol") == "HTTPS" and not (li.get("tls") or {}).get("secretName")
               for li in spec["listeners"])


def test_spec_update_updates_children_and_delete_collects_them(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body())
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    wait_for(lambda: apps.read_namespaced_deployment("web-lb", namespace), 60, "proxy Deployment")
    before = core.read_namespaced_config_map("web-lb", namespace).data["haproxy.cfg"]
    custom(kube).patch_namespaced_custom_object(
        "roundhouse.dev", "v1alpha1", namespace, "loadbalancers", "web",
        {"spec": {"proxy": {"replicas": 3}, "timeouts": {"server": "7s"}}})
    wait_for(lambda: apps.read_namespaced_deployment("web-lb", namespace).spec.replicas == 3,
             30, "replicas 3")
    after = wait_for(lambda: (d := core.read_namespaced_config_map(
        "web-lb", namespace).data["haproxy.cfg"]) != before and d, 30, "new haproxy.cfg")
    assert "timeout server 7s" in after
    lb = wait_for(lambda: (o := get_lb(kube, namespace, "web")).get("status", {}).get(
        "observedGeneration") == 2 and o, 30, "observedGeneration 2")
    assert condition(lb, "Accepted")["observedGeneration"] == 2
    # No finalizer (no handler needs one): the delete is immediate, even with the
    # operator down, and the operator forgets the resource on its DELETED event.
    assert not lb["metadata"].get("finalizers"), lb["metadata"].get("finalizers")
    custom(kube).delete_namespaced_custom_object("roundhouse.dev", "v1alpha1", namespace,
                                                 "loadbalancers", "web")
    wait_for(lambda: not custom(kube).list_namespaced_custom_object(
        "roundhouse.dev", "v1alpha1", namespace, "loadbalancers")["items"], 10,
        "the LoadBalancer gone")
    wait_for(lambda: f"LoadBalancer {namespace}/web deleted" in operator.log(), 30,
             "the operator to forget it")
    wait_for(lambda: not children(kube, namespace, "web"), 90,
             "garbage collection of every child")


def test_readiness_drives_server_state_and_status(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace, replicas=3)
    create_lb(kube, namespace, lb_body())
    # The address follows the proxy Service's own event, possibly one reconcile later.
    lb = wait_for(lambda: (o := get_lb(kube, namespace, "web")).get("status", {}).get(
        "backends") == {"ready": 3, "total": 3} and o["status"].get("address") and o, 90,
        "backends 3/3 and an address")
    assert lb["status"]["backendSummary"] == "3/3"
    assert lb["status"]["address"].startswith("10.96.")
    assert condition(lb, "Programmed")["status"] == "False"  # no agent has reported yet
    wait_for(lambda: client.AppsV1Api(kube).read_namespaced_deployment(
        "web-lb", namespace).status.ready_replicas == 2, 60, "2 ready proxy replicas")
    report_as_agents(kube, namespace, "web")
    lb = wait_for(lambda: (o := get_lb(kube, namespace, "web")) and condition(
        o, "Ready").get("status") == "True" and o, 30, "Ready=True")
    assert condition(lb, "Programmed")["reason"] == "Programmed"

    core = client.CoreV1Api(kube)
    pod = core.list_namespaced_pod(namespace, label_selector="app=web").items[0]
    log_before = len(operator.log())
    core.patch_namespaced_pod(pod.metadata.name, namespace,
                              {"metadata": {"annotations": {"kwok.x-k8s.io/status": "custom"}}})
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    wait_for(lambda: get_lb(kube, namespace, "web")["status"]["backends"] == {
        "ready": 2, "total": 3}, 30, "backends 2/3")
    states = server_states(kube, namespace, "web")
    assert states[f"web/{pod.metadata.name}:8080"] == "maint"
    assert sorted(states.values()) == ["maint", "ready", "ready"]
    # A new config hash is waiting for the agents: Programmed goes back to Pending.
    lb = get_lb(kube, namespace, "web")
    assert condition(lb, "Programmed")["reason"] == "Pending"
    # The flip changed only the proxy ConfigMap, so that is the one write it cost.
    writes = [line.split(" applied ", 1)[1].split(" of ")[0]
              for line in operator.log()[log_before:].splitlines()
              if " applied " in line and f"of LoadBalancer {namespace}/web " in line]
    assert writes and set(writes) == {"ConfigMap web-lb"}, writes


def test_a_child_deleted_by_hand_is_written_again_at_once(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """Not at the next resync (minutes): the child's own DELETED event re-applies it."""
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body())
    core = client.CoreV1Api(kube)
    api = {"ConfigMap": (core.read_namespaced_config_map, core.delete_namespaced_config_map),
           "Service": (core.read_namespaced_service, core.delete_namespaced_service)}
    uids = {kind: wait_for(lambda r=read: r("web-lb", namespace), 60, f"{kind} web-lb"
                           ).metadata.uid for kind, (read, _) in api.items()}
    for _, delete in api.values():
        delete("web-lb", namespace)
    for kind, (read, _) in api.items():
        def recreated(read: Any = read, kind: str = kind) -> bool:
            try:
                return bool(read("web-lb", namespace).metadata.uid != uids[kind])
            except client.ApiException as err:
                if err.status == 404:
                    return False
                raise
        wait_for(recreated, 20, f"{kind} web-lb written again")
    cm = core.read_namespaced_config_map("web-lb", namespace)
    assert "haproxy.cfg" in cm.data and "servers.json" in cm.data


def test_a_child_the_api_server_refuses_is_reported_and_retried(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """A ResourceQuota allowing no PodDisruptionBudget: the API server refuses that child.
    Status and an Event carry its message; once the quota goes, the retry succeeds."""
    core, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
    core.create_namespaced_resource_quota(namespace, {
        "metadata": {"name": "no-pdbs"},
        "spec": {"hard": {"count/poddisruptionbudgets.policy": "0"}}})
    # Quota admission refuses everything it counts until the controller filled in status.
    wait_for(lambda: (core.read_namespaced_resource_quota("no-pdbs", namespace).status.hard
                      or None), 30, "the quota's status")
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body())
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "Programmed"))
                   .get("reason") == "ApplyFailed" and c, 60, "Programmed=False/ApplyFailed")
    assert bad["status"] == "False"
    assert "PodDisruptionBudget 'web-lb'" in bad["message"], bad
    assert "exceeded quota: no-pdbs" in bad["message"], bad
    assert condition(get_lb(kube, namespace, "web"), "Ready")["reason"] == "ApplyFailed"
    wait_for(lambda: any(e.reason == "ApplyFailed" and e.type == "Warning"
                         and "exceeded quota" in e.message
                         for e in core.list_namespaced_event(
                             namespace, field_selector="involvedObject.name=web").items),
             30, "an ApplyFailed Warning Event")
    core.delete_namespaced_resource_quota("no-pdbs", namespace)
    wait_for(lambda: policy.read_namespaced_pod_disruption_budget("web-lb", namespace), 60,
             "the PodDisruptionBudget, on kopf's retry")
    wait_for(lambda: condition(get_lb(kube, namespace, "web"), "Programmed").get(
        "reason") != "ApplyFailed", 30, "Programmed no longer ApplyFailed")


def test_thousands_of_endpoints_fit_in_the_configmap_compressed(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """4,000 endpoints: 8,192 slots, over 1.5 MB as plain text, so more than the API
    server stores. The ConfigMap carries them gzipped, and readiness still flows."""
    core = client.CoreV1Api(kube)
    service_without_selector(kube, namespace, "big")
    many_endpoints(kube, namespace, "big", 4000)
    create_lb(kube, namespace, lb_body(backends=[{"service": "big", "port": "http"}]))
    wait_for(lambda: get_lb(kube, namespace, "web").get("status", {}).get("backends") == {
        "ready": 4000, "total": 4000}, 120, "backends 4000/4000")

    def files() -> dict[str, str]:
        cm = core.read_namespaced_config_map("web-lb", namespace)
        return payload.decode(kube.sanitize_for_serialization(cm))
    cm = core.read_namespaced_config_map("web-lb", namespace)
    assert not cm.data and set(cm.binary_data) == {"haproxy.cfg.gz", "servers.json.gz"}
    pool = json.loads(files()["servers.json"])["pools"]["be_http"]
    assert len(pool) == 8192 and sum(1 for s in pool if s["endpoint"]) == 4000
    assert "server srv8192 " in files()["haproxy.cfg"]
    # One endpoint turns NotReady: its slot goes to maint, the others keep theirs.
    slots = {s["endpoint"]: s["slot"] for s in pool if s["endpoint"]}
    many_endpoints(kube, namespace, "big", 4000, not_ready={17})
    wait_for(lambda: get_lb(kube, namespace, "web")["status"]["backends"] == {
        "ready": 3999, "total": 4000}, 60, "backends 3999/4000")
    after = json.loads(files()["servers.json"])["pools"]["be_http"]
    assert {s["endpoint"]: s["slot"] for s in after if s["endpoint"]} == slots
    assert [s["endpoint"] for s in after if s["state"] == "maint" and s["endpoint"]] == [
        "big/big-17:8080"]


def test_missing_service_is_reported_and_recovers_on_its_own(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    create_lb(kube, namespace, lb_body())
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "BackendsHealthy"))
                   .get("status") == "False" and c, 60, "BackendsHealthy=False")
    assert bad["reason"] == "BackendNotFound"
    assert "Service 'web' not found" in bad["message"] and "spec.backends[0]" in bad["message"]
    # kopf posts Events from a queue, shortly after the status write.
    wait_for(lambda: any(e.reason == "BackendNotFound" and e.type == "Warning"
                         for e in client.CoreV1Api(kube).list_namespaced_event(
                             namespace, field_selector="involvedObject.name=web").items),
             30, "a BackendNotFound Warning Event")
    sample_app(kube, namespace)
    wait_for(lambda: condition(get_lb(kube, namespace, "web"), "BackendsHealthy").get(
        "status") == "True", 60, "recovery once the Service exists")


def test_unresolvable_port_name_is_a_clear_condition(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    sample_app(kube, namespace)
    create_lb(kube, namespace, lb_body(backends=[{"service": "web", "port": "grpc"}]))
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "BackendsHealthy"))
                   .get("reason") == "PortNotFound" and c, 60, "PortNotFound")
    assert "has no port 'grpc'" in bad["message"] and "http=80" in bad["message"]


def test_missing_user_secret_is_reported_and_recovers(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str,
        tmp_path: Path) -> None:
    sample_app(kube, namespace)
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP", "redirectToHTTPS": True},
                 {"name": "https", "port": 443, "protocol": "HTTPS",
                  "tls": {"secretName": "my-cert"}}]
    create_lb(kube, namespace, lb_body(listeners=listeners))
    bad = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "TLSReady"))
                   .get("status") == "False" and c, 60, "TLSReady=False")
    assert bad["reason"] == "SecretNotFound" and "'my-cert'" in bad["message"]
    # Its redirect would point at nothing: the status says the HTTP listener answers 503.
    assert "spec.listeners[0].redirectToHTTPS: HTTPS listener 'https' is down" in bad["message"]
    # The HTTP listener keeps working meanwhile: only the HTTPS one is left out.
    cfg = client.CoreV1Api(kube).read_namespaced_config_map("web-lb", namespace).data[
        "haproxy.cfg"]
    assert "frontend fe_http" in cfg and "frontend fe_https" not in cfg
    assert "http-request return status 503" in cfg and "redirect scheme" not in cfg

    import base64
    import datetime as dt

    from roundhouse import tls
    now = dt.datetime.now(dt.UTC)
    pair = tls.issue_serving(tls.issue_ca("user-ca", now), ("web.example.test",), now)
    client.CoreV1Api(kube).create_namespaced_secret(namespace, {
        "metadata": {"name": "my-cert"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(pair.cert_pem.encode()).decode(),
                 "tls.key": base64.b64encode(pair.key_pem.encode()).decode()}})
    good = wait_for(lambda: (c := condition(get_lb(kube, namespace, "web"), "TLSReady"))
                    .get("status") == "True" and c, 60, "TLSReady=True after the Secret appears")
    assert "my-cert" in good["message"]
    cfg = client.CoreV1Api(kube).read_namespaced_config_map("web-lb", namespace).data[
        "haproxy.cfg"]
    assert "frontend fe_https" in cfg and "crt my-cert.pem" in cfg
    assert "http-request redirect scheme https code 301" in cfg
    assert "return status 503" not in cfg
    role = client.RbacAuthorizationV1Api(kube).read_namespaced_role("web-lb", namespace)
    assert any(r.resources == ["secrets"] and r.resource_names == ["my-cert"] for r in role.rules)


def test_invalid_spec_is_rejected_by_the_api_server_before_the_operator(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    with pytest.raises(client.ApiException) as err:
        create_lb(kube, namespace, lb_body(algorithm="fastest"))
    assert err.value.status == 422
    assert "spec.algorithm" in err.value.body and "Unsupported value" in err.value.body


def test_operator_holds_the_leader_lease(operator: OperatorProcess,
                                         kube: client.ApiClient) -> None:
    lease = wait_for(lambda: client.CoordinationV1Api(kube).read_namespaced_lease(
        "roundhouse-operator", OPERATOR_NAMESPACE), 30, "leader Lease")
    assert lease.spec.holder_identity
    assert lease.spec.lease_duration_seconds == 15


def _allowed(kube: client.ApiClient, user: str, namespace: str, verb: str, resource: str,
             name: str) -> bool:
    """The real API server's RBAC authorizer answers for `user` (a SubjectAccessReview)."""
    review = client.AuthorizationV1Api(kube).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{namespace}"],
                 "resourceAttributes": {"namespace": namespace, "verb": verb,
                                        "resource": resource, "name": name}}})
    return bool(review.status.allowed)


def test_each_proxy_reads_only_its_own_config_and_keys(
        operator: OperatorProcess, kube: client.ApiClient, namespace: str) -> None:
    """Why every resource has its own ServiceAccount, Role and RoleBinding (3 of the 8
    children, written once): the Role names that resource's ConfigMaps and Secrets. One
    Role per namespace would have to name every proxy's, and a proxy could then read
    another's private keys. Asked of the real API server's authorizer."""
    import base64
    import datetime as dt

    from roundhouse import tls
    sample_app(kube, namespace)
    now = dt.datetime.now(dt.UTC)
    ca = tls.issue_ca("user-ca", now)
    for name in ("web", "api"):
        pair = tls.issue_serving(ca, (f"{name}.example.test",), now)
        client.CoreV1Api(kube).create_namespaced_secret(namespace, {
            "metadata": {"name": f"{name}-cert"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(pair.cert_pem.encode()).decode(),
                     "tls.key": base64.b64encode(pair.key_pem.encode()).decode()}})
        create_lb(kube, namespace, lb_body(name, listeners=[
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"secretName": f"{name}-cert"}}]))
    rbac = client.RbacAuthorizationV1Api(kube)
    for name in ("web", "api"):
        wait_for(lambda name=name: any(r.resources == ["secrets"]
                                       for r in rbac.read_namespaced_role(
                                           f"{name}-lb", namespace).rules),
                 60, f"the Role of {name} naming its Secret")
    web = f"system:serviceaccount:{namespace}:web-lb"
    # Its own: the config, the certificate, its agents' reports. Waited for: the
    # RoleBinding is applied after the Role, and the authorizer reads both from its cache.
    for verb, resource, name in (("get", "configmaps", "web-lb"),
                                 ("watch", "configmaps", "web-lb"),
                                 ("get", "secrets", "web-cert"),
                                 ("patch", "configmaps", "web-lb-agents")):
        def allowed(verb: str = verb, resource: str = resource, name: str = name) -> bool:
            return _allowed(kube, web, namespace, verb, resource, name)
        wait_for(allowed, 30, f"web-lb allowed to {verb} {resource} {name}")
    # Another proxy's, in the same namespace: nothing.
    assert not _allowed(kube, web, namespace, "get", "secrets", "api-cert")
    assert not _allowed(kube, web, namespace, "get", "configmaps", "api-lb")
    assert not _allowed(kube, web, namespace, "patch", "configmaps", "api-lb-agents")
    # Nor anything it was not given: the backends' Secrets, writes to its own config.
    assert not _allowed(kube, web, namespace, "list", "secrets", "")
    assert not _allowed(kube, web, namespace, "patch", "configmaps", "web-lb")
