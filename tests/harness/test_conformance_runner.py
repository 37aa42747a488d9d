"""The Gateway API conformance runner's pure pieces (e2e/conformance): the suite's command
line, where the report goes, the chart values it sets, the CRDs it applies, the image names
it builds, the address guard and the progress it prints. `make conformance` runs them."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from e2e.cluster import netguard, nodenet
from e2e.cluster.node import MAX_PODS, kubelet_config
from e2e.conformance import build
from e2e.conformance.run import (
    CHART_GATEWAY_CRDS,
    CONTROLLER_NAME,
    CORE_FEATURES,
    GATEWAY_CLASS,
    NODE_MAX_PODS,
    REPORT,
    ROOT,
    TEST2JSON_MARKER,
    Progress,
    address_is_local,
    base_deployments,
    chart_gateway_values,
    crd_names_and_bundles,
    crds_dir,
    flag_names,
    helm_gateway_args,
    narrowed,
    project_version,
    report_path,
    route_device,
    suite_args,
)

ARTIFACTS = Path("/tmp/artifacts")


def test_suite_args_name_the_class_profile_features_report_and_implementation() -> None:
    args = suite_args(report=REPORT, version="1.2.3", features=CORE_FEATURES, timeout="90m",
                      extra=[])
    assert args[:2] == ["-test.run=^TestConformance$", "-test.v=test2json"]
    assert f"-gateway-class={GATEWAY_CLASS}" in args
    assert "-conformance-profiles=GATEWAY-HTTP" in args
    assert "-supported-features=Gateway,HTTPRoute,ReferenceGrant" in args
    assert f"-report-output={REPORT}" in args
    assert "-version=1.2.3" in args
    assert "-cleanup-base-resources=false" in args  # kept for the logs; the cluster goes
    # The suite refuses to write a report unless every implementation field is set.
    for name in ("organization", "project", "url", "version", "contact"):
        assert any(a.startswith(f"-{name}=") and len(a) > len(name) + 2 for a in args), name


def test_extra_args_come_last_so_a_repeated_flag_wins() -> None:
    extra = ["-run-test", "HTTPRouteSimpleSameNamespace", "-supported-features=Gateway"]
    args = suite_args(report=REPORT, version="1", features=CORE_FEATURES, timeout="1m",
                      extra=extra)
    assert args[-3:] == extra
    assert "-timeout-config-overrides=NamespacesMustBeReady:150" not in args


def test_faked_acceptance_shortens_the_wait_for_never_programmed_gateways() -> None:
    args = suite_args(report=REPORT, version="1", features=CORE_FEATURES, timeout="1m",
                      extra=["-debug"], fake_accept=True)
    assert args[-2:] == ["-timeout-config-overrides=NamespacesMustBeReady:150", "-debug"]


def test_flag_names_and_narrowed_runs() -> None:
    assert flag_names(["-run-test", "X", "--skip-tests=A,B", "-debug", "-", "value"]) == {
        "run-test", "skip-tests", "debug"}
    assert narrowed(["-run-test", "HTTPRouteSimpleSameNamespace"])
    assert narrowed(["-skip-tests=HTTPRouteCORS"])
    assert narrowed(["-test.run=^TestConformance$/HTTPRoute"])
    assert not narrowed(["-debug", "-supported-features=Gateway,HTTPRoute"])
    assert not narrowed([])


def test_only_a_full_unfaked_run_writes_the_repository_report() -> None:
    assert report_path([], ARTIFACTS, None, fake_accept=False) == REPORT
    assert REPORT == ROOT / "conformance" / "reports" / "v1.6.3" / "roundhouse.yaml"
    assert report_path(["-run-test", "X"], ARTIFACTS, None, fake_accept=False) == (
        ARTIFACTS / "roundhouse.yaml")
    assert report_path([], ARTIFACTS, None, fake_accept=True) == ARTIFACTS / "roundhouse.yaml"
    assert report_path(["-run-test", "X"], ARTIFACTS, "/tmp/r.yaml", fake_accept=True) == (
        Path("/tmp/r.yaml"))


def test_version_is_the_projects() -> None:
    assert project_version(ROOT / "pyproject.toml").count(".") == 2


def test_helm_args_for_a_chart_without_gateway_values_are_none() -> None:
    values = chart_gateway_values("replicas: 2\nproxy:\n  haproxyImage: haproxy:3.4\n")
    assert values is None
    assert helm_gateway_args(values, chart_installs_crds=False) == []


def test_helm_args_set_only_the_keys_the_chart_has() -> None:
    assert helm_gateway_args({"enabled": False}, chart_installs_crds=False) == [
        "--set", "gatewayAPI.enabled=true"]
    values = chart_gateway_values(
        "gatewayAPI:\n  enabled: false\n  installCRDs: true\n"
        "  gatewayClass:\n    create: false\n    name: other\n")
    assert helm_gateway_args(values, chart_installs_crds=False) == [
        "--set", "gatewayAPI.enabled=true", "--set", "gatewayAPI.installCRDs=false",
        "--set", "gatewayAPI.gatewayClass.create=true",
        "--set", f"gatewayAPI.gatewayClass.name={GATEWAY_CLASS}"]
    assert "gatewayAPI.installCRDs=true" in helm_gateway_args(values, chart_installs_crds=True)


def test_helm_args_make_gateway_proxies_small_when_the_chart_lets_them() -> None:
    values = {"enabled": False, "proxy": {"replicas": 2, "resources": {}, "serviceType": "x"}}
    args = helm_gateway_args(values, chart_installs_crds=False)
    assert args[2:] == ["--set", "gatewayAPI.proxy.replicas=1",
                        "--set", "gatewayAPI.proxy.resources.requests.cpu=10m",
                        "--set", "gatewayAPI.proxy.resources.requests.memory=32Mi"]


def test_the_charts_values_if_any_are_understood() -> None:
    values = chart_gateway_values((ROOT / "manifests" / "roundhouse" / "values.yaml").read_text())
    args = helm_gateway_args(values, chart_installs_crds=False)
    assert args == [] or args[:2] == ["--set", "gatewayAPI.enabled=true"]


def test_crds_come_from_the_chart_when_it_vendors_them(tmp_path: Path) -> None:
    chart, module = tmp_path / "chart-crds", tmp_path / "module-crds"
    assert crds_dir(chart, module) == module
    chart.mkdir()
    assert crds_dir(chart, module) == module  # empty: not vendored yet
    (chart / "gateway.networking.k8s.io_gateways.yaml").write_text("kind: X\n")
    assert crds_dir(chart, module) == chart
    assert CHART_GATEWAY_CRDS == ROOT / "manifests" / "roundhouse" / "crds-gateway-api"


def test_crd_names_and_bundle_versions() -> None:
    crd = ("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n"
           "  name: {name}\n  annotations:\n"
           "    gateway.networking.k8s.io/bundle-version: v1.6.3\n"
           "    gateway.networking.k8s.io/channel: standard\n")
    vap = ("apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\n"
           "metadata:\n  name: safe-upgrades.gateway.networking.k8s.io\n---\n"
           "kind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: b\n")
    names, bundles = crd_names_and_bundles(
        [crd.format(name="gateways.gateway.networking.k8s.io"),
         crd.format(name="httproutes.gateway.networking.k8s.io") + "---\n", vap])
    assert names == ["gateways.gateway.networking.k8s.io",
                     "httproutes.gateway.networking.k8s.io"]
    assert bundles == {"v1.6.3"}


def test_base_deployments() -> None:
    text = ("kind: Namespace\nmetadata: {name: a}\n---\n"
            "kind: Deployment\nmetadata: {name: web, namespace: a}\n---\n"
            "kind: Service\nmetadata: {name: web, namespace: a}\n---\n"
            "kind: Deployment\nmetadata: {name: coredns, namespace: b}\n")
    assert base_deployments(text) == [("a", "web"), ("b", "coredns")]


@pytest.mark.parametrize(("value", "kind", "local"), [
    (nodenet.FIRST_SERVICE_IP, None, True),           # a ClusterIP of the real-node cluster
    ("10.96.200.17", "IPAddress", True),
    (nodenet.NODE_ADDRESS, "IPAddress", True),        # a nodePort on the node's bridge
    ("10.244.200.9", "IPAddress", True),              # a Pod
    ("127.0.0.1", "IPAddress", True),
    ("10.97.0.1", "IPAddress", False),                # private, but not guarded here
    ("192.168.1.10", "IPAddress", False),
    ("8.8.8.8", "IPAddress", False),
    ("gateway.example.com", "Hostname", False),       # resolved by this host's DNS
    ("10.96.128.5", "Hostname", False),
    ("10.96.128.5", "example.com/custom", False),
    ("not-an-ip", None, False),
])
def test_address_guard(value: str, kind: str | None, local: bool) -> None:
    assert address_is_local(value, kind) is local


def test_address_guard_covers_what_netguard_guards() -> None:
    for cidr in netguard.GUARDED_CIDRS:
        assert address_is_local(cidr.split("/")[0])


def test_route_device() -> None:
    assert route_device("10.96.128.1 dev rhdiscard0 src 192.0.2.2 uid 0\n    cache") == (
        nodenet.DISCARD)
    assert route_device("default via 172.17.0.1 dev eth0 proto static") == "eth0"
    assert route_device("unreachable 10.96.0.1 uid 0\n    cache <rejected>") is None


SUITE_OUTPUT = """\
=== RUN   TestConformance
    suite.go:389: 2026-12-03T12:31:58Z: Test Setup: Ensuring GatewayClass has been accepted
=== RUN   TestConformance/HTTPRouteSimpleSameNamespace
=== RUN   TestConformance/HTTPRouteSimpleSameNamespace/0_request_to_'/'
    --- PASS: TestConformance/HTTPRouteSimpleSameNamespace/0_request_to_'/' (0.10s)
    --- PASS: TestConformance/HTTPRouteSimpleSameNamespace (3.02s)
=== RUN   TestConformance/HTTPRouteCORS
    --- SKIP: TestConformance/HTTPRouteCORS (0.00s)
=== RUN   TestConformance/HTTPRouteExactPathMatching
    helpers.go:1: waiting
        \tError Trace:\tsigs.k8s.io/gateway-api/conformance/utils/http/http.go:1
        \t            \t\t\t\tsigs.k8s.io/gateway-api/conformance/tests/x.go:2
        \tError:      \tReceived unexpected error:
        \t            \tcontext deadline exceeded
        \tTest:       \tTestConformance/HTTPRouteExactPathMatching
        \tMessages:   \tGateway never programmed
    --- FAIL: TestConformance/HTTPRouteExactPathMatching (60.00s)
--- FAIL: TestConformance (70.00s)
FAIL
"""


def test_progress_shows_setup_and_results_and_counts_skips() -> None:
    progress = Progress()
    shown = [s for line in SUITE_OUTPUT.splitlines() if (s := progress.feed(line))]
    assert shown == [
        "suite.go:389: 2026-12-03T12:31:58Z: Test Setup: Ensuring GatewayClass has been accepted",
        "PASS HTTPRouteSimpleSameNamespace (3.02s)",
        "FAIL HTTPRouteExactPathMatching (60.00s): Received unexpected error: context deadline "
        "exceeded (Gateway never programmed)",
        "FAIL TestConformance (70.00s): 1 passed, 1 failed, 1 skipped",
        "FAIL",
    ]
    assert (progress.passed, progress.failed, progress.skipped) == (
        ["HTTPRouteSimpleSameNamespace"], ["HTTPRouteExactPathMatching"], ["HTTPRouteCORS"])


def test_progress_reads_test2json_framing() -> None:
    progress = Progress()
    framed = ["\x16=== RUN   TestConformance/A", "\x16--- PASS: TestConformance/A (1.50s)",
              "\x16=== NAME  TestConformance", "\x16--- PASS: TestConformance (2.00s)",
              "\x16=== NAME  ", "\x16PASS"]
    shown = [s for line in framed if (s := progress.feed(line.replace(TEST2JSON_MARKER, "")))]
    assert shown == ["PASS A (1.50s)", "PASS TestConformance (2.00s): 1 passed, 0 failed, "
                     "0 skipped", "PASS"]


def test_progress_explains_a_setup_failure() -> None:
    progress = Progress()
    lines = ["        \tError:      \tReceived unexpected error:",
             "        \t            \tcontext deadline exceeded",
             "        \tTest:       \tTestConformance",
             "        \tMessages:   \terror waiting for namespaces to be ready",
             "--- FAIL: TestConformance (154.50s)"]
    shown = [s for line in lines if (s := progress.feed(line))]
    assert shown == ["FAIL TestConformance (154.50s): 0 passed, 0 failed, 0 skipped; Received "
                     "unexpected error: context deadline exceeded (error waiting for namespaces "
                     "to be ready)"]


def test_gateway_class_constants_match_the_chart_when_it_has_them() -> None:
    values = chart_gateway_values((ROOT / "manifests" / "roundhouse" / "values.yaml").read_text())
    if values is None:
        pytest.skip("the chart has no gatewayAPI values yet")
    assert values["gatewayClass"]["name"] == GATEWAY_CLASS
    template = ROOT / "manifests" / "roundhouse" / "templates" / "gatewayclass.yaml"
    assert f"controllerName: {CONTROLLER_NAME}" in template.read_text()


# --------------------------------------------------------------------------- build.py


def test_manifest_images_and_tags() -> None:
    texts = ["spec:\n  containers:\n    - image: registry.k8s.io/gateway-api/echo-basic:v1.5.1\n"
             "    - name: x\n      image: \"registry.k8s.io/coredns/coredns:v1.12.2\"\n",
             "      image: registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.3\n"
             "      # image: commented/out:1\n"]
    images = build.manifest_images(texts)
    assert images == {"registry.k8s.io/gateway-api/echo-basic:v1.5.1",
                      "registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.3",
                      "registry.k8s.io/coredns/coredns:v1.12.2"}
    assert build.tags_of(images, build.ECHO_BASIC_REPO) == ["v1.5.1", "v1.6.0-dev.3"]
    assert build.tags_of(images, build.COREDNS_REPO) == ["v1.12.2"]


def test_file_capability_is_what_setcap_cap_net_bind_service_ep_writes() -> None:
    # getfattr -n security.capability of `setcap cap_net_bind_service=+ep`: 0x0100000200040000
    # followed by three zero words (VFS_CAP_REVISION_2 | EFFECTIVE, permitted bit 10).
    data = build.file_capability(build.CAP_NET_BIND_SERVICE)
    assert data == bytes.fromhex("01000002" "00040000" "00000000" "00000000" "00000000")
    assert struct.unpack("<5I", build.file_capability(40))[3] == 1 << 8  # a high capability


def test_go_env_is_local_static_and_uses_the_projects_caches(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GOPATH", "GOCACHE", "GOFLAGS", "GOWORK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOFLAGS", "-mod=vendor")
    env = build.go_env(tmp_path)
    assert env["GOTOOLCHAIN"] == "local" and env["CGO_ENABLED"] == "0"
    assert env["GOWORK"] == "off" and env["GOFLAGS"] == "-buildvcs=false"
    assert env["GOPATH"] == str(tmp_path / "gopath")
    assert env["GOCACHE"] == str(tmp_path / "gobuild")


def test_the_node_takes_more_pods_only_when_asked() -> None:
    def config(**max_pods: int) -> dict[str, Any]:
        return kubelet_config(address="10.244.200.1", ca_file=Path("/ca"), pki=Path("/pki"),
                              containerd_socket=Path("/c.sock"), resolv_conf=Path("/r"),
                              pod_logs=Path("/logs"), healthz_port=1, **max_pods)

    assert config()["maxPods"] == MAX_PODS == 60  # the pods tier's
    assert config(max_pods=NODE_MAX_PODS)["maxPods"] == NODE_MAX_PODS
    assert NODE_MAX_PODS > 23 + 2 + 25  # base Pods, operator, a proxy per Gateway at once
