"""Gateway API conformance (v1.6.3, profile GATEWAY-HTTP) against Roundhouse on real Pods.

    python e2e/conformance/run.py [suite flags...]      # `make conformance`

1. builds (or reuses, cached by version) the upstream suite binary and the two images
   its base manifests run (echo-basic, coredns), offline (e2e/conformance/build.py),
   and the operator and HAProxy images as `make test-e2e-pods` does (e2e/images);
2. the real-Pods tier's cluster (e2e/cluster: control plane, kubelet node, kube-proxy),
   its routes and guards unchanged, the kubelet's maxPods raised;
3. imports the images under the names the manifests use, applies the Gateway API CRDs
   (the chart's vendored copy, else the module's config/crd/standard), `helm install`s
   manifests/roundhouse with gatewayAPI.enabled=true (and small Gateway proxies, if the
   chart has values for them), checks that this host reaches a ClusterIP through
   kube-proxy and not by the default route (the suite talks to Gateway addresses from
   here), and makes sure the GatewayClass `roundhouse` exists (created here only as a
   fallback, for a chart without it);
4. runs `conformance.test -test.run ^TestConformance$` with KUBECONFIG set, output in
   ARTIFACTS/conformance.log, each test's PASS/FAIL on stderr, the report written to
   conformance/reports/v1.6.3/roundhouse.yaml (ARTIFACTS/roundhouse.yaml for a run
   narrowed by -run-test/-skip-tests); a Gateway address outside this machine's test
   ranges stops it;
5. on failure, logs, events and the Gateway API objects into ARTIFACTS; teardown always.

Arguments are the suite's own flags, after the defaults (a repeated flag wins), e.g.
`-run-test HTTPRouteSimpleSameNamespace`. Exit code: the suite's. Knobs (environment):
ARTIFACTS (_artifacts/conformance), IMAGE_TAG (e2e-pods: the operator image the pods
tier builds), SUPPORTED_FEATURES (the core and the claimed extended features), CONFORMANCE_REPORT,
CONFORMANCE_CONTACT, CONFORMANCE_URL, CONFORMANCE_TIMEOUT (the suite's -test.timeout,
90m), HELM_SET (more `--set k=v`, space separated), NODE_MAX_PODS (110),
CHART_INSTALLS_CRDS=1 (the chart, not this runner, installs the CRDs), and
CONFORMANCE_FAKE_ACCEPT=1: this runner marks the GatewayClass Accepted itself, so the
suite gets as far as its base manifests without the operator's Gateway support (checks
this harness only; the report then goes to ARTIFACTS). Needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

from e2e.cluster import netguard, nodenet  # noqa: E402
from e2e.cluster.controlplane import ControlPlane  # noqa: E402
from e2e.cluster.processes import clean_env  # noqa: E402
from e2e.conformance import build  # noqa: E402
from e2e.pods import run as pods  # noqa: E402

GATEWAY_API_VERSION = build.GATEWAY_API_VERSION
# The chart's vendored standard-channel CRDs; the module's config/crd/standard without it.
CHART_GATEWAY_CRDS = pods.CHART / "crds-gateway-api"
GATEWAY_CLASS = "roundhouse"
CONTROLLER_NAME = "roundhouse.dev/gateway-controller"
PROFILES = "GATEWAY-HTTP"
CORE_FEATURES = "Gateway,HTTPRoute,ReferenceGrant"  # GATEWAY-HTTP's core features
# What Roundhouse claims: the core, and every extended feature whose tests pass here
# (README "Gateway API"); the report lists the rest as unsupported.
EXTENDED_FEATURES = (
    "GatewayHTTPListenerIsolation", "GatewayPort8080",
    "HTTPRoute303RedirectStatusCode", "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode", "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteHostRewrite", "HTTPRouteMethodMatching", "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort", "HTTPRoutePathRedirect", "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect", "HTTPRouteQueryParamMatching",
    "HTTPRouteResponseHeaderModification", "HTTPRouteSchemeRedirect",
)
SUPPORTED_FEATURES = ",".join((CORE_FEATURES, *EXTENDED_FEATURES))
REPORT = ROOT / "conformance" / "reports" / GATEWAY_API_VERSION / "roundhouse.yaml"
ORGANIZATION = PROJECT = "roundhouse"
PROJECT_URL = "https://github.com/roundhouse-dev/roundhouse"
CONTACT = f"{PROJECT_URL}/issues"
BASE_NAMESPACES = ("gateway-conformance-infra", "gateway-conformance-app-backend",
                   "gateway-conformance-web-backend")
PROXY_SELECTOR = "app.kubernetes.io/name=roundhouse-proxy"
# The one node has 2 CPUs: a LoadBalancer's default proxy (2 x 120m) for each of the
# ~25 Gateways that exist at once (4 base, the rest from parallel tests) would not fit.
GATEWAY_PROXY_REPLICAS = 1
GATEWAY_PROXY_REQUESTS = {"cpu": "10m", "memory": "32Mi"}
KWOK_NODES = 3  # as the pods tier; tainted, nothing runs there
# The kubelet's 60 is short: 23 base Pods, the operator, and the proxies of every Gateway
# that the suite's parallel tests create at once.
NODE_MAX_PODS = 110
# A Gateway address the suite may connect to from this host: the ranges the cluster guards
# (unreachable routes, the node's bridge and Service discard device) and loopback.
LOCAL_NETWORKS = tuple(ipaddress.ip_network(c)
                       for c in (*netguard.GUARDED_CIDRS, "127.0.0.0/8"))
# Narrowed runs write no report into the repository.
NARROWING_FLAGS = frozenset({"run-test", "skip-tests", "test.run"})
TEST2JSON_MARKER = "\x16"  # starts the framing lines of -test.v=test2json
_RESULT = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (TestConformance(?:/\S+)?) \(([\d.]+)s\)")
# testify's failure block: "\tError:      \t<text>", continued by "\t            \t<text>".
_FIELD = re.compile(r"^\s+(Error Trace|Error|Test|Messages):\s*(.*?)\s*$")
_CONTINUED = re.compile(r"^ *\t +\t\s*(.*\S)")


def log(message: str) -> None:
    print(f"[conformance {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure pieces


def flag_names(args: Sequence[str]) -> set[str]:
    """The names of the Go flags in `args` (`-a`, `--a`, `-a=v`)."""
    return {a.lstrip("-").split("=", 1)[0] for a in args if a.startswith("-") and a != "-"}


def narrowed(args: Sequence[str]) -> bool:
    """True when the suite flags select only part of the suite."""
    return bool(flag_names(args) & NARROWING_FLAGS)


def report_path(args: Sequence[str], artifacts: Path, override: str | None,
                fake_accept: bool) -> Path:
    """The repository's report for a full run; ARTIFACTS' for a partial or faked one."""
    if override:
        return Path(override).resolve()
    if narrowed(args) or fake_accept:
        return artifacts / "roundhouse.yaml"
    return REPORT


def suite_args(*, report: Path, version: str, features: str, timeout: str,
               extra: Sequence[str], gateway_class: str = GATEWAY_CLASS,
               contact: str = CONTACT, url: str = PROJECT_URL,
               fake_accept: bool = False) -> list[str]:
    """conformance.test's command line: ours first, then `extra` (a repeated flag wins)."""
    args = [
        # test2json framing: each test's result as it ends, not all at the end under the
        # one top-level test (go.dev/issue/29811); run_suite drops the ^V markers.
        "-test.run=^TestConformance$", "-test.v=test2json", f"-test.timeout={timeout}",
        f"-gateway-class={gateway_class}", f"-conformance-profiles={PROFILES}",
        f"-supported-features={features}", f"-report-output={report}",
        f"-organization={ORGANIZATION}", f"-project={PROJECT}", f"-url={url}",
        f"-version={version}", f"-contact={contact}",
        # The cluster goes away anyway; kept, the base objects are there for `collect`.
        "-cleanup-base-resources=false",
    ]
    if fake_accept:  # nothing programs the Gateways: fail soon after the Pods are ready
        args.append("-timeout-config-overrides=NamespacesMustBeReady:150")
    return [*args, *extra]


def project_version(pyproject: Path) -> str:
    data = tomllib.loads(pyproject.read_text())
    return str(data["project"]["version"])


def chart_gateway_values(values_yaml: str) -> dict[str, Any] | None:
    """The chart's `gatewayAPI` values, or None for a chart that has none."""
    values = yaml.safe_load(values_yaml) or {}
    section = values.get("gatewayAPI")
    return section if isinstance(section, dict) else None


def helm_gateway_args(values: Mapping[str, Any] | None, *, chart_installs_crds: bool,
                      gateway_class: str = GATEWAY_CLASS) -> list[str]:
    """`--set` arguments for the chart's Gateway API values (none if it has none)."""
    if values is None:
        return []
    sets = ["gatewayAPI.enabled=true"]
    if "installCRDs" in values:
        sets.append(f"gatewayAPI.installCRDs={str(chart_installs_crds).lower()}")
    gateway_class_values = values.get("gatewayClass")
    if isinstance(gateway_class_values, Mapping):
        if "create" in gateway_class_values:
            sets.append("gatewayAPI.gatewayClass.create=true")
        if "name" in gateway_class_values:
            sets.append(f"gatewayAPI.gatewayClass.name={gateway_class}")
    proxy = values.get("proxy")
    if isinstance(proxy, Mapping):  # small proxies: every Gateway's fit on the one node
        if "replicas" in proxy:
            sets.append(f"gatewayAPI.proxy.replicas={GATEWAY_PROXY_REPLICAS}")
        if "resources" in proxy:
            sets += [f"gatewayAPI.proxy.resources.requests.{k}={v}"
                     for k, v in GATEWAY_PROXY_REQUESTS.items()]
    return [arg for value in sets for arg in ("--set", value)]


def crds_dir(chart_crds: Path, module_crds: Path) -> Path:
    """The chart's vendored CRDs if the chart has them, else the module's."""
    if chart_crds.is_dir() and any(chart_crds.glob("*.yaml")):
        return chart_crds
    return module_crds


def crd_names_and_bundles(texts: Sequence[str]) -> tuple[list[str], set[str]]:
    """The CRDs' names and their gateway.networking.k8s.io/bundle-version annotations."""
    names, bundles = [], set()
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                meta = doc.get("metadata") or {}
                names.append(str(meta["name"]))
                bundle = (meta.get("annotations") or {}).get(
                    "gateway.networking.k8s.io/bundle-version")
                if bundle:
                    bundles.add(str(bundle))
    return names, bundles


def base_deployments(manifests_yaml: str) -> list[tuple[str, str]]:
    """(namespace, name) of every Deployment in the suite's base manifests."""
    return [(d["metadata"]["namespace"], d["metadata"]["name"])
            for d in yaml.safe_load_all(manifests_yaml)
            if isinstance(d, dict) and d.get("kind") == "Deployment"]


def address_is_local(value: str, kind: str | None = None) -> bool:
    """May the suite connect to this Gateway address without leaving the machine?"""
    if kind not in (None, "IPAddress"):
        return False  # a hostname would be resolved by this host's DNS
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in network for network in LOCAL_NETWORKS)


def route_device(ip_route_get: str) -> str | None:
    """The `dev` of `ip route get` output (None for an unreachable route)."""
    match = re.search(r"\bdev (\S+)", ip_route_get)
    return match.group(1) if match else None


@dataclass
class Progress:
    """The suite's test results as `go test -v` prints them, top-level tests only."""

    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=3))
    _field: str | None = None

    def feed(self, line: str) -> str | None:
        """Record `line`; return what to show on stderr, if anything."""
        if self._error_block(line):
            return None
        if "Test Setup:" in line or line.startswith(("panic:", "FAIL", "PASS", "ok ")):
            return line.strip()
        result = _RESULT.match(line)
        if not result:
            return None
        status, test, seconds = result.groups()
        if test == "TestConformance":
            why = f"; {' | '.join(self.errors)}" if status == "FAIL" and self.errors else ""
            return f"{status} TestConformance ({seconds}s): {self.summary()}{why}"
        name = test.removeprefix("TestConformance/")
        if "/" in name:
            return None  # a step inside a test
        if status == "SKIP":
            self.skipped.append(name)
            return None  # unsupported features: dozens of them
        if status == "PASS":
            self.passed.append(name)
            return f"PASS {name} ({seconds}s)"
        self.failed.append(name)
        why = f": {' | '.join(self.errors)}" if self.errors else ""
        self.errors.clear()
        return f"FAIL {name} ({seconds}s){why}"

    def _error_block(self, line: str) -> bool:
        """Collect testify's Error (and Messages) text; True if `line` belonged to it."""
        if labelled := _FIELD.match(line):
            self._field, text = labelled.groups()
            if self._field == "Error":
                self.errors.append(text)
            elif self._field == "Messages" and text and self.errors:
                self.errors[-1] = f"{self.errors[-1]} ({text})"[:400]
            return True
        if self._field and (continued := _CONTINUED.match(line)):
            if self._field == "Error" and self.errors:
                self.errors[-1] = f"{self.errors[-1]} {continued.group(1)}"[:400]
            return True
        self._field = None
        return False

    def summary(self) -> str:
        return (f"{len(self.passed)} passed, {len(self.failed)} failed, "
                f"{len(self.skipped)} skipped")


class Phases:
    """Wall time of each phase, for the log and summary.json."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        log(f"== {name}")
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)
            log(f"== {name}: {self.seconds[name]:.1f}s")


# --------------------------------------------------------------------------- cluster steps


def check_host_reaches_cluster_ip(cp: ControlPlane) -> None:
    """The suite connects from here to Gateway addresses, i.e. ClusterIPs: they must go
    through kube-proxy's DNAT on this host, never by the default route."""
    address = cp.first_service_ip  # the `kubernetes` Service
    route = " ".join(subprocess.run(["ip", "route", "get", address], capture_output=True,
                                    text=True, check=False).stdout.split()[:3])
    default = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                             text=True, check=False).stdout
    default_dev = route_device(default)
    if route_device(route) != nodenet.DISCARD or route_device(route) == default_dev:
        raise SystemExit(f"ip route get {address}: {route!r}: not via {nodenet.DISCARD}")
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    context.load_cert_chain(cp.pki_dir / "admin.crt", cp.pki_dir / "admin.key")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    deadline = time.monotonic() + 60  # kube-proxy's first sync may still be under way
    while True:
        try:
            with opener.open(f"https://{address}/version", timeout=5) as resp:
                version = json.load(resp)["gitVersion"]
            break
        except OSError as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"this host cannot reach ClusterIP {address}:443: {err}") from err
            time.sleep(1)
    log(f"host -> ClusterIP {address}:443 ({route}; kube-proxy DNAT): {version}")


def import_images(cp: ControlPlane, operator_archives: Sequence[Path],
                  images: Sequence[build.Image]) -> None:
    node = cp.real_node
    assert node is not None
    node.import_images([*operator_archives, *(i.archive for i in images)])
    for image in images:
        for alias in image.aliases:
            node.ctr("images", "tag", "--force", image.name, alias)
    present = set(node.images())
    wanted = {n for i in images for n in (i.name, *i.aliases)}
    if wanted - present:
        raise SystemExit(f"images missing from the node after import: {wanted - present}")
    log(f"node images for the suite: {', '.join(sorted(wanted))}")


def install_crds(cp: ControlPlane, directory: Path) -> None:
    files = sorted(directory.glob("*.yaml"))
    names, bundles = crd_names_and_bundles([f.read_text() for f in files])
    if bundles != {GATEWAY_API_VERSION}:
        log(f"WARNING: {directory} has bundle-version {sorted(bundles)}, the suite wants "
            f"{GATEWAY_API_VERSION} (it refuses to run on a mismatch)")
    log(f"Gateway API CRDs from {directory}: {len(names)} CRDs + "
        f"{len(files) - len(names)} other file(s)")
    # Server-side: the HTTPRoute CRD is too big for client-side apply's annotation.
    cp.kubectl("apply", "--server-side", "--field-manager=roundhouse-conformance",
               *(a for f in files for a in ("-f", str(f))))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               *(f"crd/{n}" for n in names))


def ensure_gateway_class(cp: ControlPlane) -> str:
    """The chart's GatewayClass; created here only if the chart made none. Returns who."""
    found = cp.kubectl("get", "gatewayclass", GATEWAY_CLASS, "-o", "json", check=False)
    if found.returncode == 0:
        controller = json.loads(found.stdout)["spec"]["controllerName"]
        if controller != CONTROLLER_NAME:
            log(f"WARNING: GatewayClass {GATEWAY_CLASS} names {controller}, not "
                f"{CONTROLLER_NAME}")
        log(f"GatewayClass {GATEWAY_CLASS} (from the chart): controllerName {controller}")
        return "chart"
    log(f"FALLBACK: the chart made no GatewayClass {GATEWAY_CLASS} (no gatewayAPI values "
        f"yet?): creating it with controllerName {CONTROLLER_NAME}")
    manifest = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": GATEWAY_CLASS},
                "spec": {"controllerName": CONTROLLER_NAME,
                         "description": "created by e2e/conformance/run.py (fallback)"}}
    path = cp.workdir_path / "gatewayclass.json"
    path.write_text(json.dumps(manifest))
    cp.kubectl("apply", "-f", str(path))
    return "runner"


def fake_accept(cp: ControlPlane) -> None:
    generation = json.loads(cp.kubectl("get", "gatewayclass", GATEWAY_CLASS, "-o",
                                       "json").stdout)["metadata"]["generation"]
    condition = {"type": "Accepted", "status": "True", "reason": "Accepted",
                 "message": "faked by e2e/conformance/run.py (CONFORMANCE_FAKE_ACCEPT=1)",
                 "observedGeneration": generation,
                 "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cp.kubectl("patch", "gatewayclass", GATEWAY_CLASS, "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": {"conditions": [condition]}}))
    log(f"CONFORMANCE_FAKE_ACCEPT=1: GatewayClass {GATEWAY_CLASS} marked Accepted by this "
        "runner; the run checks the harness, not Roundhouse")


class Watcher:
    """While the suite runs: stops it if a Gateway reports an address off this machine,
    logs how many Gateways are Programmed, and reports when the base manifests'
    Deployments are all Ready (and that this host reaches one of their ClusterIPs)."""

    def __init__(self, cp: ControlPlane, deployments: Sequence[tuple[str, str]],
                 stop_suite: Any) -> None:
        self.cp = cp
        self.wanted = set(deployments)
        self.stop_suite = stop_suite
        self.started = time.monotonic()
        self.base_ready_seconds: float | None = None
        self.violation: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._last_ready = -1
        self._last_gateways = (-1, -1)
        self._last_class = ""

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(15)

    def _json(self, *args: str) -> dict[str, Any]:
        done = self.cp.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else {"items": []}

    def _loop(self) -> None:
        while not self._done.wait(2.0):
            with contextlib.suppress(Exception):  # a hiccup: try again next round
                self._check_gateway_class()
            with contextlib.suppress(Exception):
                self._check_gateways()
            if self.base_ready_seconds is None and not self._done.is_set():
                with contextlib.suppress(Exception):
                    self._check_base()

    def _check_gateway_class(self) -> None:
        found = self._json("gatewayclass", GATEWAY_CLASS)
        conditions = (found.get("status") or {}).get("conditions") or []
        accepted: dict[str, Any] = next(
            (c for c in conditions if c.get("type") == "Accepted"), {})
        state = (f"Accepted={accepted.get('status', '?')} ({accepted.get('reason', '')}, "
                 f"observedGeneration {accepted.get('observedGeneration', '?')} of "
                 f"{(found.get('metadata') or {}).get('generation', '?')})")
        if state != self._last_class:
            self._last_class = state
            log(f"GatewayClass {GATEWAY_CLASS}: {state}")

    def _check_gateways(self) -> None:
        gateways = self._json("gateways.gateway.networking.k8s.io", "-A")["items"]
        programmed = sum(any(c.get("type") == "Programmed" and c.get("status") == "True"
                             for c in (g.get("status") or {}).get("conditions") or [])
                         for g in gateways)
        if (len(gateways), programmed) != self._last_gateways:
            self._last_gateways = (len(gateways), programmed)
            log(f"Gateways: {programmed}/{len(gateways)} Programmed")
        for gateway in gateways:
            for address in (gateway.get("status") or {}).get("addresses") or []:
                value, kind = str(address.get("value", "")), address.get("type")
                if not address_is_local(value, kind):
                    meta = gateway["metadata"]
                    self.violation = (f"Gateway {meta['namespace']}/{meta['name']} reports "
                                      f"address {kind or 'IPAddress'} {value!r}, outside "
                                      "this machine's test ranges: suite stopped")
                    log(f"STOP: {self.violation}")
                    self.stop_suite()
                    self._done.set()
                    return

    def _check_base(self) -> None:
        ready = set()
        for deployment in self._json("deployments", "-A")["items"]:
            meta, status = deployment["metadata"], deployment.get("status") or {}
            key = (meta["namespace"], meta["name"])
            want = deployment["spec"].get("replicas", 1)
            if key in self.wanted and status.get("readyReplicas", 0) >= want:
                ready.add(key)
        if len(ready) != self._last_ready:
            self._last_ready = len(ready)
            log(f"base manifests: {len(ready)}/{len(self.wanted)} Deployments ready")
        if ready == self.wanted:
            self.base_ready_seconds = round(time.monotonic() - self.started, 1)
            log(f"base manifests: every Deployment ready {self.base_ready_seconds:.0f}s "
                "after the suite started")
            self._echo_from_host()

    def _echo_from_host(self) -> None:
        """GET an echo-basic Service's ClusterIP from this host, as the suite will."""
        service = json.loads(self.cp.kubectl("get", "service", "-n", BASE_NAMESPACES[0],
                                             "infra-backend-v1", "-o", "json").stdout)
        address, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{address}:{port}/conformance-check", timeout=5) as r:
                echoed = json.load(r)
            log(f"host -> echo-basic ClusterIP {address}:{port}: pod {echoed.get('pod')}, "
                f"path {echoed.get('path')}")
        except OSError as err:
            log(f"WARNING: host -> echo-basic ClusterIP {address}:{port} failed: {err}")


def run_suite(binary: Path, args: Sequence[str], env: Mapping[str, str], log_file: Path,
              cp: ControlPlane, deployments: Sequence[tuple[str, str]],
              progress: Progress) -> tuple[int, Watcher]:
    """conformance.test, its output in `log_file`, PASS/FAIL lines on stderr."""
    log(f"{binary.name} {' '.join(args)}")
    proc = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=dict(env), cwd=log_file.parent, bufsize=1)
    try:
        with log_file.open("w") as out, Watcher(cp, deployments, proc.terminate) as watcher:
            stream: IO[str] | None = proc.stdout
            assert stream is not None
            for raw in stream:
                line = raw.replace(TEST2JSON_MARKER, "")
                out.write(line)
                out.flush()
                shown = progress.feed(line.rstrip("\n"))
                if shown:
                    log(shown)
            rc = proc.wait()
        if watcher.violation:
            return 3, watcher
        return rc, watcher
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summarize_report(report: Path) -> dict[str, Any]:
    data = yaml.safe_load(report.read_text()) or {}
    summary = {}
    for profile in data.get("profiles") or []:
        core = profile.get("core") or {}
        summary[profile.get("name", "?")] = {"result": core.get("result"),
                                             **(core.get("statistics") or {})}
    return summary


def collect_gateway_api(cp: ControlPlane, artifacts: Path) -> None:
    """Besides e2e/pods/run.py's collect: Gateway API objects, base Pods, proxy logs."""
    wanted = {
        "gateway-api-objects.yaml": ["get", "gatewayclasses,gateways,httproutes,"
                                    "referencegrants", "-A", "-o", "yaml"],
        "deployments.txt": ["get", "deployments", "-A", "-o", "wide"],
        **{f"describe-{ns}.txt": ["describe", "pods", "-n", ns] for ns in BASE_NAMESPACES},
    }
    for name, args in wanted.items():
        done = cp.kubectl(*args, check=False)
        (artifacts / name).write_text(done.stdout + done.stderr)
    listed = cp.kubectl("get", "pods", "-A", "-l", PROXY_SELECTOR, "-o",
                        "jsonpath={range .items[*]}{.metadata.namespace}{'\\n'}{end}",
                        check=False).stdout
    logs = []
    for namespace in sorted(set(listed.split())):
        done = cp.kubectl("logs", "-n", namespace, "-l", PROXY_SELECTOR, "--all-containers",
                          "--prefix", "--tail=-1", check=False)
        logs.append(f"===== {namespace}\n{done.stdout}{done.stderr}")
    (artifacts / "proxy-logs.txt").write_text("\n".join(logs) or "no proxy Pods\n")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def main(argv: Sequence[str]) -> int:
    if os.geteuid() != 0:
        print("make conformance: needs root (containerd, kubelet, CNI bridge, iptables)",
              file=sys.stderr)
        return 2
    extra = list(argv)
    tag = os.environ.get("IMAGE_TAG", "e2e-pods")
    artifacts = pods.fresh_artifacts(ROOT / "_artifacts" / "conformance")
    fake = _env_flag("CONFORMANCE_FAKE_ACCEPT")
    chart_installs_crds = _env_flag("CHART_INSTALLS_CRDS")
    report = report_path(extra, artifacts, os.environ.get("CONFORMANCE_REPORT"), fake)
    phases = Phases()
    began = time.monotonic()
    with phases("build: suite, echo-basic, coredns"):
        suite = build.build_all()
    with phases("build: operator, haproxy, echo images"):
        archives = pods.build_images(tag)
    base_yaml = (suite.conformance_dir / "base" / "manifests.yaml").read_text()
    gateway_values = chart_gateway_values((pods.CHART / "values.yaml").read_text())
    helm_args = helm_gateway_args(gateway_values, chart_installs_crds=chart_installs_crds)
    helm_args += [a for kv in os.environ.get("HELM_SET", "").split() for a in ("--set", kv)]
    log(f"chart values: {' '.join(helm_args[1::2]) or 'none for the Gateway API'}")
    if gateway_values is None:
        log("WARNING: manifests/roundhouse has no gatewayAPI values yet: installed without "
            "them; the GatewayClass comes from this runner's fallback")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    max_pods = int(os.environ.get("NODE_MAX_PODS", NODE_MAX_PODS))
    cp = ControlPlane(controllers=True, nodes=KWOK_NODES, real_node=True, log=log,
                      real_node_max_pods=max_pods)
    rc = 1
    progress = Progress()
    summary: dict[str, Any] = {}
    try:
        with phases("cluster up (control plane + real node)"):
            cp.start()
        with phases("import images"):
            import_images(cp, archives, suite.images)
        if gateway_values is None or not chart_installs_crds:
            with phases("Gateway API CRDs"):
                install_crds(cp, crds_dir(CHART_GATEWAY_CRDS, suite.crds_dir))
        with phases("helm install"):
            pods.helm_install(cp, tag, helm_args)
        check_host_reaches_cluster_ip(cp)
        summary["gatewayclass_from"] = ensure_gateway_class(cp)
        if fake:
            fake_accept(cp)
        args = suite_args(report=report, version=project_version(ROOT / "pyproject.toml"),
                          features=os.environ.get("SUPPORTED_FEATURES", SUPPORTED_FEATURES),
                          timeout=os.environ.get("CONFORMANCE_TIMEOUT", "90m"), extra=extra,
                          contact=os.environ.get("CONFORMANCE_CONTACT", CONTACT),
                          url=os.environ.get("CONFORMANCE_URL", PROJECT_URL), fake_accept=fake)
        report.parent.mkdir(parents=True, exist_ok=True)
        suite_started = time.time()
        env = {**clean_env(), "KUBECONFIG": str(cp.admin_kubeconfig)}
        with phases("suite"), pods.snapshots(cp, artifacts):
            rc, watcher = run_suite(suite.binary, args, env, artifacts / "conformance.log", cp,
                                    base_deployments(base_yaml), progress)
        if watcher.base_ready_seconds is not None:
            phases.seconds["base manifests ready (from suite start)"] = (
                watcher.base_ready_seconds)
        log(f"suite exit {rc}: {progress.summary()}"
            + (f"; failed: {', '.join(progress.failed)}" if progress.failed else ""))
        if report.exists() and report.stat().st_mtime >= suite_started - 1:  # not an old one
            report.chmod(0o644)  # the suite writes 0600
            summary["report"] = str(report)
            summary["profiles"] = summarize_report(report)
            if report.parent != artifacts:
                shutil.copy(report, artifacts / report.name)
            log(f"report {report}: {summary['profiles']}")
        return rc
    finally:
        if rc != 0 and cp.workdir is not None:
            for collector in (pods.collect, collect_gateway_api):
                with contextlib.suppress(Exception):
                    collector(cp, artifacts)
        with phases("teardown"):
            cp.stop()
        for name, seconds in phases.seconds.items():
            log(f"  {seconds:7.1f}s  {name}")
        log(f"done in {time.monotonic() - began:.0f}s (exit {rc})")
        summary.update(exit=rc, seconds=round(time.monotonic() - began), phases=phases.seconds,
                       passed=progress.passed, failed=progress.failed,
                       skipped=len(progress.skipped))
        (artifacts / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
