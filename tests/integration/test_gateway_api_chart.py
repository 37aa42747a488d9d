"""The chart with gatewayAPI.enabled, installed by the real helm on a fresh real API server.

A private control plane (etcd + kube-apiserver only), not the session's: this must be a
first install, on an API server that has never seen the Gateway API CRDs, and the CRDs
(kept by helm on uninstall, guarded by upstream's ValidatingAdmissionPolicy) must not
outlive this module in a cluster other tests share. Proves that
- `helm install` succeeds: the vendored CRDs become Established; the GatewayClass, whose
  CRD the same release creates, is left out (helm maps every object before creating
  any) and NOTES.txt says so; the next `helm upgrade` creates it;
- the ClusterRole lets the operator's ServiceAccount read the four kinds and write the
  status of three, and nothing more (the authorizer asked, then real requests as it);
- upstream's safe-upgrades policy is in force; `helm uninstall` leaves the CRDs and the
  users' Gateways and routes (helm.sh/resource-policy: keep), not the class.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.controlplane import ControlPlane
from kubernetes import client
from kubernetes import config as kube_config

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "manifests" / "roundhouse"
VENDORED = CHART / "crds-gateway-api"
GROUP = "gateway.networking.k8s.io"
CONTROLLER = "roundhouse.dev/gateway-controller"
RELEASE, NAMESPACE, SA = "roundhouse", "roundhouse-system", "roundhouse"
OPERATOR = f"system:serviceaccount:{NAMESPACE}:{SA}"
TEAM = "team-a"
KEEP = "helm.sh/resource-policy"
READ_KINDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")
STATUS_KINDS = ("gatewayclasses", "gateways", "httproutes")
SECRET_LIMIT = 1024 * 1024  # a Secret's data, where helm keeps each release revision
CONDITION = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "test",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}


def vendored_crds() -> list[str]:
    return [d["metadata"]["name"] for p in sorted(VENDORED.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text())
            if d and d["kind"] == "CustomResourceDefinition"]


class Cluster:
    def __init__(self, cp: ControlPlane, home: Path) -> None:
        self.cp = cp
        self.env = {**os.environ, "KUBECONFIG": str(cp.admin_kubeconfig),
                    "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data"),
                    # helm's discovery cache (cli-runtime), out of ~/.kube/cache
                    "KUBECACHEDIR": str(home / "kube-cache")}
        for key in ("HELM_NAMESPACE", "HELM_KUBECONTEXT", "HELM_DRIVER"):
            self.env.pop(key, None)
        self.install: subprocess.CompletedProcess[str] | None = None

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.cp.binary("helm"), *args], capture_output=True, text=True,
                              check=False, timeout=300, env=self.env)

    def kubectl_as(self, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.cp.binary("kubectl"), "--kubeconfig", str(kubeconfig),
                               *args], capture_output=True, text=True, check=False,
                              timeout=120)

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.cp.kubectl("get", *args, "-o", "json").stdout)
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cp = ControlPlane(controllers=False, nodes=0, log=lambda m: print(f"[gateway-api] {m}"))
    cp.start()
    try:
        c = Cluster(cp, tmp_path_factory.mktemp("helm"))
        c.install = c.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           "--create-namespace", "--set", "gatewayAPI.enabled=true",
                           "--set", "replicas=1")
        yield c
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> Cluster:
    assert cluster.install is not None
    assert cluster.install.returncode == 0, (
        f"helm install failed:\n{cluster.install.stdout}{cluster.install.stderr}")
    return cluster


@pytest.fixture(scope="module")
def upgraded(installed: Cluster) -> Cluster:
    """One more `helm upgrade`, as NOTES.txt asks: the API is served now."""
    upgrade = installed.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE,
                             "--reuse-values")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "NOT created yet" not in upgrade.stdout
    return installed


@pytest.fixture(scope="module")
def operator_kubeconfig(installed: Cluster) -> Path:
    return installed.cp.kubeconfig_for_service_account(NAMESPACE, SA)


@pytest.fixture(scope="module")
def gateway_objects(upgraded: Cluster) -> Cluster:
    """A Gateway of the chart's class, an HTTPRoute on it and a ReferenceGrant, as a user
    (the admin) creates them."""
    cp = upgraded.cp
    cp.kubectl("create", "namespace", TEAM)
    objects = [
        {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
         "metadata": {"name": "gw", "namespace": TEAM},
         "spec": {"gatewayClassName": "roundhouse",
                  "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute",
         "metadata": {"name": "web", "namespace": TEAM},
         "spec": {"parentRefs": [{"name": "gw"}],
                  "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}},
        {"apiVersion": f"{GROUP}/v1", "kind": "ReferenceGrant",
         "metadata": {"name": "from-team-b", "namespace": TEAM},
         "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "team-b"}],
                  "to": [{"group": "", "kind": "Service"}]}},
    ]
    path = Path(cp.workdir_path) / "gateway-objects.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    cp.kubectl("apply", "--server-side", "-f", str(path))
    return upgraded


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def allowed(kube: client.ApiClient, verb: str, resource: str, namespace: str = "",
            subresource: str = "", group: str = GROUP) -> bool:
    """The real RBAC authorizer's answer for the operator's ServiceAccount."""
    review = client.AuthorizationV1Api(kube).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": OPERATOR,
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                            "system:authenticated"],
                 "resourceAttributes": {"group": group, "version": "v1", "verb": verb,
                                        "resource": resource, "subresource": subresource,
                                        "namespace": namespace}}})
    return bool(review.status.allowed)


@pytest.fixture(scope="module")
def admin(installed: Cluster) -> Iterator[client.ApiClient]:
    api = kube_config.new_client_from_config(config_file=str(installed.cp.admin_kubeconfig))
    try:
        yield api
    finally:
        api.close()


# --------------------------------------------------------------------------- install


def test_first_install_establishes_the_crds_and_defers_the_class(installed: Cluster) -> None:
    cp = installed.cp
    names = vendored_crds()
    assert len(names) >= 7
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               *[f"crd/{n}" for n in names])
    for name in names:
        crd = installed.get("crd", name)
        assert crd["metadata"]["annotations"][KEEP] == "keep", name
        assert crd["metadata"]["annotations"][f"{GROUP}/channel"] == "standard", name
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        vap = installed.get(kind, f"safe-upgrades.{GROUP}")
        assert vap["metadata"]["annotations"][KEEP] == "keep"
    # The class waits for the next upgrade, and the user is told.
    assert installed.get("gatewayclasses")["items"] == []
    assert installed.install is not None
    assert 'The GatewayClass "roundhouse" is NOT created yet' in installed.install.stdout
    assert f"helm upgrade {RELEASE} " in installed.install.stdout
    hooks = installed.helm("get", "hooks", RELEASE, "--namespace", NAMESPACE)
    assert hooks.returncode == 0 and not hooks.stdout.strip(), hooks.stdout
    deployment = installed.get("deployment", RELEASE, "--namespace", NAMESPACE)
    assert "--gateway-api" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_next_upgrade_creates_the_class(upgraded: Cluster) -> None:
    gc = upgraded.get("gatewayclass", "roundhouse")
    assert gc["spec"]["controllerName"] == CONTROLLER
    assert gc["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    manifest = upgraded.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE)
    assert "GatewayClass" in [d["kind"] for d in yaml.safe_load_all(manifest.stdout) if d]


def test_release_fits_a_secret(installed: Cluster) -> None:
    """helm keeps each revision, chart files (the CRDs) and manifest included, gzipped in
    one Secret. Fail well before the limit: upstream's CRDs grow with each release."""
    secrets = installed.get("secret", "-l", f"owner=helm,name={RELEASE}",
                            "--namespace", NAMESPACE)["items"]
    assert secrets
    for secret in secrets:
        size = len(base64.b64decode(secret["data"]["release"]))
        print(f"{secret['metadata']['name']}: {size} bytes of {SECRET_LIMIT}")
        assert size < 0.8 * SECRET_LIMIT, f"a revision takes {size} bytes of a Secret's 1 MiB"


# --------------------------------------------------------------------------- RBAC


def test_the_authorizer_grants_reads_and_status_writes_only(installed: Cluster,
                                                          admin: client.ApiClient) -> None:
    # The authorizer reads RBAC from its own cache, which follows helm's writes a moment
    # later (this test may run right after the install).
    wait_for(lambda: allowed(admin, "get", READ_KINDS[0]), 30, "the chart's ClusterRole in force")
    for namespace in ("", TEAM):  # cluster-wide (the operator's watches) and one namespace
        for kind in READ_KINDS:
            for verb in ("get", "list", "watch"):
                assert allowed(admin, verb, kind, namespace), (verb, kind, namespace)
            for verb in ("create", "update", "patch", "delete", "deletecollection"):
                assert not allowed(admin, verb, kind, namespace), (verb, kind, namespace)
        for kind in STATUS_KINDS:
            for verb in ("get", "patch", "update"):
                assert allowed(admin, verb, kind, namespace, "status"), (verb, kind)
            assert not allowed(admin, "create", kind, namespace, "status"), kind
        assert not allowed(admin, "patch", "referencegrants", namespace, "status")
        for kind in ("grpcroutes", "tlsroutes", "tcproutes", "udproutes", "listenersets",
                     "backendtlspolicies"):
            assert not allowed(admin, "list", kind, namespace), kind
    # The CRDs themselves: read (kopf's discovery), never written.
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(admin, verb, "customresourcedefinitions",
                           group="apiextensions.k8s.io"), verb


def test_operator_identity_reads_and_writes_status_for_real(
        gateway_objects: Cluster, operator_kubeconfig: Path) -> None:
    c = gateway_objects

    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return c.kubectl_as(operator_kubeconfig, *args)

    for kind in READ_KINDS:
        listed = as_operator("get", f"{kind}.{GROUP}", "--all-namespaces", "-o", "name")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip(), f"the operator lists no {kind}"
    # A watch is served (kubectl ends it after the request timeout, exit 0 or 1 quietly).
    watched = as_operator("get", f"gateways.{GROUP}", "--all-namespaces", "--watch",
                          "--request-timeout=2s")
    assert "forbidden" not in watched.stderr.lower(), watched.stderr

    def patch_status(kind: str, name: str, status: dict[str, Any], *ns: str) -> None:
        result = as_operator("patch", f"{kind}.{GROUP}", name, *ns, "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": status}))
        assert result.returncode == 0, f"status of {kind}/{name}: {result.stderr}"

    patch_status("gatewayclasses", "roundhouse", {"conditions": [CONDITION]})
    patch_status("gateways", "gw", {"conditions": [CONDITION]}, "-n", TEAM)
    patch_status("httproutes", "web", {"parents": [
        {"parentRef": {"name": "gw"}, "controllerName": CONTROLLER,
         "conditions": [CONDITION]}]}, "-n", TEAM)
    gw = c.get(f"gateways.{GROUP}", "gw", "-n", TEAM)
    assert gw["status"]["conditions"][0]["message"] == "test"

    def refused(*args: str) -> None:
        result = as_operator(*args)
        assert result.returncode != 0, f"{args} was allowed"
        assert "forbidden" in result.stderr.lower(), result.stderr

    spec_patch = json.dumps({"spec": {"listeners": [
        {"name": "http", "port": 8080, "protocol": "HTTP"}]}})
    refused("patch", f"gateways.{GROUP}", "gw", "-n", TEAM, "--type=merge", "-p", spec_patch)
    gw["spec"]["listeners"][0]["port"] = 8080
    path = Path(c.cp.workdir_path) / "gw-update.json"
    path.write_text(json.dumps(gw))
    refused("replace", "-f", str(path))  # an update of the spec
    refused("delete", f"gateways.{GROUP}", "gw", "-n", TEAM, "--wait=false")
    refused("delete", f"httproutes.{GROUP}", "web", "-n", TEAM, "--wait=false")
    refused("label", f"referencegrants.{GROUP}", "from-team-b", "-n", TEAM, "x=y")
    refused("patch", f"gatewayclasses.{GROUP}", "roundhouse", "--type=merge", "-p",
            json.dumps({"spec": {"description": "taken over"}}))
    refused("create", "-f", str(Path(c.cp.workdir_path) / "gateway-objects.yaml"))
    refused("get", f"grpcroutes.{GROUP}", "--all-namespaces")
    assert c.get(f"gateways.{GROUP}", "gw", "-n", TEAM)["spec"]["listeners"][0]["port"] == 80


# --------------------------------------------------------------------------- upstream's VAP


def test_safe_upgrades_policy_refuses_experimental_or_older_crds(installed: Cluster) -> None:
    """Upstream's ValidatingAdmissionPolicy, installed with the CRDs, is in force: the
    experimental channel over the standard one, or a bundle older than v1.5, is refused
    (dry run: the admission chain runs, nothing is stored)."""
    crd = f"crd/httproutes.{GROUP}"

    def refused_with(annotation: str, message: str) -> bool:
        result = installed.cp.kubectl("annotate", crd, annotation, "--overwrite",
                                      "--dry-run=server", check=False)
        if result.returncode == 0:
            return False  # the policy is not loaded yet
        assert message in result.stderr, result.stderr
        return True

    wait_for(lambda: refused_with(f"{GROUP}/channel=experimental",
                                  "Installing experimental CRDs on top of standard channel"),
             60, "the safe-upgrades policy to refuse the experimental channel")
    assert refused_with(f"{GROUP}/bundle-version=v1.4.1", "with version before v1.5.0")
    # What the chart itself sends passes: the same annotations, a harmless change.
    ok = installed.cp.kubectl("annotate", crd, "example.com/note=x", "--dry-run=server",
                              check=False)
    assert ok.returncode == 0, ok.stderr


# --------------------------------------------------------------------------- upgrade, uninstall


def test_uninstall_keeps_the_crds_and_the_gateways(gateway_objects: Cluster) -> None:
    """Last in this module: it uninstalls the release."""
    c = gateway_objects
    uninstall = c.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    assert uninstall.returncode == 0, uninstall.stderr
    assert "kept due to the resource policy" in uninstall.stdout
    cp = c.cp
    assert cp.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    for name in vendored_crds():
        assert cp.kubectl("get", "crd", name, check=False).returncode == 0, name
    assert cp.kubectl("get", "validatingadmissionpolicy", f"safe-upgrades.{GROUP}",
                      check=False).returncode == 0
    # The users' objects survive; the class was the release's and goes with it.
    assert c.get(f"gateways.{GROUP}", "gw", "-n", TEAM)["spec"]["gatewayClassName"] == \
        "roundhouse"
    assert c.get(f"httproutes.{GROUP}", "web", "-n", TEAM)
    assert c.get(f"referencegrants.{GROUP}", "from-team-b", "-n", TEAM)
    assert c.get("gatewayclasses")["items"] == []
