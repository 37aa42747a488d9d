"""The install manifests: the Helm chart manifests/roundhouse and manifests/install.yaml.

No cluster needed. Checks that install.yaml is the chart's rendering (render.sh --check),
carries the CRDs exactly as crds/ has them, runs every container hardened, and that the
operator's ClusterRole is least-privilege yet covers every permission the operator hands
to the agents' Roles (RBAC refuses to grant what the granter does not hold).
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from roundhouse.graph import ClusterState
from roundhouse.model import parse_loadbalancer
from roundhouse.model.cluster import TLSSecret, parse_endpoint_slice, parse_service
from roundhouse.pipeline import desired_for_loadbalancer

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "manifests" / "roundhouse"
INSTALL = REPO / "manifests" / "install.yaml"
RENDER = REPO / "manifests" / "render.sh"
CRDS = REPO / "crds"
NAMESPACE = "roundhouse-system"

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

ALL_RW = ("get", "list", "watch", "create", "patch", "update", "delete")
READ = ("get", "list", "watch")
EXPECTED_CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    ("roundhouse.dev", "loadbalancers"): {"get", "list", "watch", "patch", "update"},
    ("roundhouse.dev", "reverseproxies"): {"get", "list", "watch", "patch", "update"},
    ("roundhouse.dev", "loadbalancers/status"): {"get", "patch", "update"},
    ("roundhouse.dev", "reverseproxies/status"): {"get", "patch", "update"},
    ("", "services"): set(ALL_RW),
    ("", "configmaps"): set(ALL_RW),
    ("", "secrets"): set(ALL_RW),
    ("", "serviceaccounts"): set(ALL_RW),
    ("", "pods"): set(READ),
    ("", "namespaces"): set(READ),
    ("", "events"): {"create", "patch"},
    ("discovery.k8s.io", "endpointslices"): set(READ),
    ("apps", "deployments"): set(ALL_RW),
    ("policy", "poddisruptionbudgets"): set(ALL_RW),
    ("rbac.authorization.k8s.io", "roles"): set(ALL_RW),
    ("rbac.authorization.k8s.io", "rolebindings"): set(ALL_RW),
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): set(READ),
}
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


# --------------------------------------------------------------------------- helpers


@functools.cache
def helm_binary() -> str:
    """The helm that e2e/cluster/build-binaries.sh builds and caches (a warm cache: ~1 s)."""
    result = subprocess.run([str(REPO / "e2e" / "cluster" / "build-binaries.sh")],
                            capture_output=True, text=True, check=False, timeout=3600)
    assert result.returncode == 0, f"build-binaries.sh failed:\n{result.stderr[-4000:]}"
    helm = Path(result.stdout.strip().splitlines()[-1]) / "helm"
    assert os.access(helm, os.X_OK), f"no helm at {helm}"
    return str(helm)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False,
                          timeout=120)


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


@functools.cache
def _install_docs() -> tuple[dict[str, Any], ...]:
    return tuple(load_all(INSTALL.read_text()))


@pytest.fixture
def docs() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_install_docs()))  # a private copy for each test


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def cluster_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "ClusterRole")


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def operator_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment", "roundhouse")


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in POD_TEMPLATE_KINDS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield (f"CronJob/{d['metadata']['name']}",
                   d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def effective_setting(key: str, container_sc: dict[str, Any], pod_sc: dict[str, Any]) -> Any:
    """A container's security setting: its own if set, else the Pod's."""
    return container_sc[key] if key in container_sc else pod_sc.get(key)


def https_loadbalancer(tls: dict[str, Any] | None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "https", "port": 443, "protocol": "HTTPS"}
    if tls is not None:
        listener["tls"] = tls
    return {
        "apiVersion": "roundhouse.dev/v1alpha1",
        "kind": "LoadBalancer",
        "metadata": {"name": "shop", "namespace": "team-a", "uid": "uid-rbac", "generation": 1},
        "spec": {
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                           "redirectToHTTPS": True}, listener],
            "backends": [{"service": "web", "port": 80}],
        },
    }


def cluster_with_secrets(*secrets: str) -> ClusterState:
    svc = parse_service({"metadata": {"name": "web"},
                         "spec": {"clusterIP": "10.96.0.10",
                                  "ports": [{"name": "http", "port": 80}]}})
    eps = parse_endpoint_slice({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "name": "web-1"}}],
    })
    assert eps is not None
    return ClusterState({"web": svc}, [eps],
                        {s: TLSSecret(s, True, True, f"fp-{s}") for s in secrets})


def resource_of(obj: dict[str, Any]) -> tuple[str, str]:
    """(apiGroup, plural) of an object; every kind the operator creates pluralises with 's'."""
    api_version = obj["apiVersion"]
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group, obj["kind"].lower() + "s"


# --------------------------------------------------------------------------- install.yaml


def test_install_yaml_parses_into_named_objects(docs: list[dict[str, Any]]) -> None:
    assert docs, "install.yaml is empty"
    seen: set[tuple[str, str, str]] = set()
    for d in docs:
        assert isinstance(d, dict), f"not an object: {d!r}"
        assert d.get("apiVersion") and d.get("kind"), f"no apiVersion/kind: {d!r}"[:200]
        key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        assert key not in seen, f"{key} appears twice"
        seen.add(key)


def test_install_yaml_creates_its_namespace_first(docs: list[dict[str, Any]]) -> None:
    assert docs[0]["kind"] == "Namespace", "the Namespace must come first for kubectl apply"
    assert docs[0]["metadata"]["name"] == NAMESPACE
    # Everything it runs meets the restricted Pod Security Standard, so it may enforce it.
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Namespace") == 1
    # CRDs right after it: the API must know the kinds before anything uses them.
    n_crds = kinds.count("CustomResourceDefinition")
    assert kinds[1:1 + n_crds] == ["CustomResourceDefinition"] * n_crds


def test_namespaced_objects_live_in_the_release_namespace(docs: list[dict[str, Any]]) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleBinding"}
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] in cluster_scoped:
            assert ns is None, f"{d['kind']} {d['metadata']['name']} is cluster-scoped"
        else:
            assert ns == NAMESPACE, f"{d['kind']} {d['metadata']['name']} is in {ns!r}"


def test_install_yaml_carries_the_crds_exactly(docs: list[dict[str, Any]]) -> None:
    expected = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in load_all(path.read_text()):
            if crd.get("kind") == "CustomResourceDefinition":
                expected[crd["metadata"]["name"]] = crd
    assert set(expected) == {"loadbalancers.roundhouse.dev", "reverseproxies.roundhouse.dev"}
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert set(rendered) == set(expected)
    for name, crd in expected.items():
        assert rendered[name] == crd, f"install.yaml's {name} differs from crds/"


def test_chart_crds_are_byte_identical_copies() -> None:
    sources = sorted(p.name for p in CRDS.glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copies == sources, "run manifests/render.sh to sync the chart's crds/"
    for name in sources:
        assert (CHART / "crds" / name).read_bytes() == (CRDS / name).read_bytes(), (
            f"manifests/roundhouse/crds/{name} is stale: run manifests/render.sh")


def test_install_yaml_is_the_charts_rendering() -> None:
    """render.sh --check: install.yaml and the chart's crds/ are up to date."""
    result = subprocess.run(["bash", str(RENDER), "--check"], capture_output=True, text=True,
                            check=False, timeout=300, env={**os.environ, "HELM": helm_binary()})
    assert result.returncode == 0, (
        "manifests/install.yaml is not what the chart renders; run manifests/render.sh\n"
        f"{result.stdout}{result.stderr[-8000:]}")


# --------------------------------------------------------------------------- the chart


def test_helm_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "roundhouse"
    assert chart["version"] == "0.1.0"
    assert str(chart["appVersion"]) == "0.1.0"


def test_chart_does_not_create_the_namespace() -> None:
    result = helm("template", "roundhouse", str(CHART), "--namespace", "elsewhere")
    assert result.returncode == 0, result.stderr
    rendered = load_all(result.stdout)
    assert not [d for d in rendered if d["kind"] == "Namespace"]
    for d in rendered:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "elsewhere", d["kind"]
    binding = only(rendered, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "elsewhere"


def test_single_replica_has_no_disruption_budget() -> None:
    result = helm("template", "roundhouse", str(CHART), "--namespace", NAMESPACE,
                  "--set", "replicas=1")
    assert result.returncode == 0, result.stderr
    rendered = load_all(result.stdout)
    assert operator_deployment(rendered)["spec"]["replicas"] == 1
    assert not [d for d in rendered if d["kind"] == "PodDisruptionBudget"]


def test_chart_values_overrides_render() -> None:
    result = helm("template", "roundhouse", str(CHART), "--namespace", NAMESPACE,
                  "--set", "image.repository=registry.example/rh/roundhouse",
                  "--set", "image.tag=1.2.3", "--set", "proxy.haproxyImage=haproxy:3.4.4",
                  "--set", "priorityClassName=system-cluster-critical",
                  "--set", "nodeSelector.role=infra")
    assert result.returncode == 0, result.stderr
    spec = operator_deployment(load_all(result.stdout))["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "registry.example/rh/roundhouse:1.2.3"
    assert env["ROUNDHOUSE_AGENT_IMAGE"] == "registry.example/rh/roundhouse:1.2.3"
    assert env["ROUNDHOUSE_HAPROXY_IMAGE"] == "haproxy:3.4.4"
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"role": "infra"}


@pytest.mark.parametrize("bad", ["replicas=0", "image.pullPolicy=Sometimes", "unknownKey=1",
                                 "resources.limits.memory=lots", "proxy.haproxyImage="])
def test_values_schema_rejects_bad_values(bad: str) -> None:
    result = helm("template", "roundhouse", str(CHART), "--set", bad)
    assert result.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in result.stderr, result.stderr


# --------------------------------------------------------------------------- RBAC


def test_cluster_role_has_no_wildcards(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in d["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{d['kind']} wildcard in {field}"
                assert not any("*" in v for v in rule.get(field, [])), (d["kind"], rule)
            assert "nonResourceURLs" not in rule, rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_cluster_role_grants_exactly_the_listed_rules(docs: list[dict[str, Any]]) -> None:
    actual: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in grants(cluster_role(docs)["rules"]):
        actual.setdefault((group, resource), set()).add(verb)
    assert actual == EXPECTED_CLUSTER_RULES


def test_secrets_get_only_the_listed_verbs(docs: list[dict[str, Any]]) -> None:
    secret_verbs = {v for g, r, v in grants(cluster_role(docs)["rules"])
                    if g == "" and r == "secrets"}
    assert secret_verbs == set(ALL_RW)
    # ... and nowhere else: no Role in the chart touches Secrets.
    for d in docs:
        if d["kind"] == "Role":
            assert not [r for r in d["rules"] if "secrets" in r.get("resources", [])]


def test_cluster_role_serves_the_crds(docs: list[dict[str, Any]]) -> None:
    granted = grants(cluster_role(docs)["rules"])
    for crd in (d for d in docs if d["kind"] == "CustomResourceDefinition"):
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for verb in ("get", "list", "watch", "patch"):
            assert (group, plural, verb) in granted, (group, plural, verb)
        if any("status" in (v.get("subresources") or {}) for v in crd["spec"]["versions"]):
            assert (group, f"{plural}/status", "patch") in granted, plural


def test_bindings_tie_the_roles_to_the_operator(docs: list[dict[str, Any]]) -> None:
    sa = only(docs, "ServiceAccount")
    assert sa["metadata"]["name"] == "roundhouse"
    subject = {"kind": "ServiceAccount", "name": "roundhouse", "namespace": NAMESPACE}
    crb = only(docs, "ClusterRoleBinding")
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": cluster_role(docs)["metadata"]["name"]}
    assert crb["subjects"] == [subject]
    role = only(docs, "Role")
    rb = only(docs, "RoleBinding")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": role["metadata"]["name"]}
    assert rb["subjects"] == [subject]
    deployment = operator_deployment(docs)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "roundhouse"


def test_leader_election_role_is_leases_only_in_the_release_namespace(
        docs: list[dict[str, Any]]) -> None:
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role["rules"]) == {
        ("coordination.k8s.io", "leases", v)
        for v in ("get", "list", "watch", "create", "update", "patch")}


@pytest.mark.parametrize("tls", [None, {"secretName": "shop-cert"}],
                         ids=["issued-certificate", "user-secret"])
def test_cluster_role_covers_the_agent_role(docs: list[dict[str, Any]],
                                             tls: dict[str, Any] | None) -> None:
    """RBAC escalation check: the operator can only create a Role whose every
    permission it holds itself (it has no 'escalate' verb)."""
    lb = parse_loadbalancer(https_loadbalancer(tls))
    secret = "shop-cert" if tls else "shop-lb-tls"
    desired = desired_for_loadbalancer(lb, cluster_with_secrets(secret))
    roles = [c for c in desired.children if c["kind"] == "Role"]
    assert len(roles) == 1
    role_grants = grants(roles[0]["rules"])
    # The agent must read the certificate's Secret (so this case is really exercised).
    assert ("", "secrets", "get") in role_grants
    assert [r["resourceNames"] for r in roles[0]["rules"] if "secrets" in r["resources"]] \
        == [[secret]]
    missing = role_grants - grants(cluster_role(docs)["rules"])
    assert not missing, f"the operator cannot grant what it lacks: {sorted(missing)}"


def test_cluster_role_covers_every_child_the_operator_applies(
        docs: list[dict[str, Any]]) -> None:
    granted = grants(cluster_role(docs)["rules"])
    lb = parse_loadbalancer(https_loadbalancer(None))
    desired = desired_for_loadbalancer(lb, cluster_with_secrets("shop-lb-tls"))
    kinds = set()
    for child in desired.children:
        group, resource = resource_of(child)
        kinds.add(child["kind"])
        # Server-side apply is a PATCH that creates when absent; reconciles read and watch.
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert (group, resource, verb) in granted, (child["kind"], group, resource, verb)
    assert {"Role", "RoleBinding", "Deployment", "Service"} <= kinds
    # Issued certificates are Secrets the operator writes.
    assert ("", "secrets", "create") in granted


# --------------------------------------------------------------------------- workloads


def test_every_container_is_hardened(docs: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(docs))
    assert specs, "install.yaml runs no Pods?"
    for where, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        containers = spec.get("initContainers", []) + spec["containers"]
        for c in containers:
            sc = c.get("securityContext") or {}
            name = f"{where} container {c['name']}"

            assert effective_setting("runAsNonRoot", sc, pod_sc) is True, f"{name}: runAsNonRoot"
            uid = effective_setting("runAsUser", sc, pod_sc)
            assert uid is not None and uid != 0, f"{name}: needs a numeric non-root runAsUser"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation"
            assert sc.get("privileged") in (None, False), f"{name}: privileged"
            assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{name}: drop ALL"
            assert not (sc.get("capabilities") or {}).get("add"), f"{name}: adds capabilities"
            seccomp = effective_setting("seccompProfile", sc, pod_sc) or {}
            assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault"
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where


def test_operator_pod_security_context(docs: list[dict[str, Any]]) -> None:
    spec = operator_deployment(docs)["spec"]["template"]["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"}}
    # A read-only root: /tmp is a writable emptyDir.
    container = spec["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_operator_deployment_runs_with_leader_election(docs: list[dict[str, Any]]) -> None:
    deployment = operator_deployment(docs)
    assert deployment["spec"]["replicas"] == 2
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["image"] == "roundhouse:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == ["run", "--leader-election-namespace=$(POD_NAMESPACE)",
                                 "--liveness=http://0.0.0.0:8080/healthz",
                                 "--metrics-port=9100"]
    assert any(a.startswith("--leader-election-namespace") for a in container["args"])
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["ROUNDHOUSE_HAPROXY_IMAGE"]["value"] == "haproxy:3.4"
    assert env["ROUNDHOUSE_AGENT_IMAGE"]["value"] == container["image"]


def test_operator_probes_ports_and_resources(docs: list[dict[str, Any]]) -> None:
    spec = operator_deployment(docs)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9100}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == 8080
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "512Mi"}}
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pod_labels = operator_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    selector = anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


def test_disruption_budget_selects_the_operator(docs: list[dict[str, Any]]) -> None:
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = operator_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_operator_args_are_accepted_by_the_cli(docs: list[dict[str, Any]]) -> None:
    """The flags the Deployment passes exist in `roundhouse run`."""
    args = operator_deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    exe = Path(sys.executable).parent / "roundhouse"
    result = subprocess.run([str(exe), "run", "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert args[0] == "run"
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert flag in result.stdout, f"`roundhouse run` has no {flag}"
