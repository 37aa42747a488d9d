"""The e2e suite on real Pods, here (`make test-e2e-pods`).

    python e2e/pods/run.py [pytest args...]

1. images: e2e/images/build.py builds (or reuses, cached by content) the operator image
   from the Dockerfile, HAProxy 3.4 under the chart's image name, and the echo backend;
2. a local control plane with a real kubelet node beside the kwok nodes
   (e2e/cluster/node.py: containerd, CNI bridge, kubelet, kube-proxy), the images
   imported into its containerd, the operator image also under a second tag for the
   upgrade test;
3. `helm install` of manifests/roundhouse into roundhouse-system (restricted Pod
   Security): the operator as real Pods, 2 replicas, leader election;
4. E2E_CLUSTER=kubeconfig E2E_PROXY_ACCESS=service pytest tests/e2e: the same
   assertions as `make test-e2e`, against the real proxy Deployment and echo Pods,
   clients through the proxy Service (kube-proxy), plus the proxy-HA tests;
5. on failure, logs, events and objects into _artifacts/pods; teardown always (nothing
   left: processes, mounts, iptables rules, routes, interfaces, sysctls).

Needs root. Knobs: ARTIFACTS (_artifacts/pods), IMAGE_TAG (e2e-pods); pytest arguments
replace the default `tests/e2e -q`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

from e2e.cluster.controlplane import ControlPlane  # noqa: E402

RELEASE = "roundhouse"
OPERATOR_NAMESPACE = "roundhouse-system"
CHART = ROOT / "manifests" / "roundhouse"
OPERATOR_REPOSITORY = "roundhouse"
ECHO_REPOSITORY = "roundhouse-echo"
UPGRADE_SUFFIX = "-upgrade"
DOCKER_LIBRARY = "docker.io/library/"  # how containerd names `roundhouse:<tag>`


def log(message: str) -> None:
    print(f"[e2e-pods {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def build_images(tag: str) -> list[Path]:
    """The image archives (docker-archive tars), built or reused by e2e/images/build.py."""
    log("images: operator (Dockerfile), haproxy:3.4, echo (cached by content)")
    out = run([sys.executable, str(ROOT / "e2e" / "images" / "build.py"), "--tag", tag],
              stdout=subprocess.PIPE).stdout
    archives = [Path(line.strip()) for line in out.splitlines() if line.strip()]
    missing = [str(a) for a in archives if not a.is_file()]
    if not archives or missing:
        raise SystemExit(f"e2e/images/build.py gave no usable archives: {missing or out!r}")
    return archives


def chart_haproxy_image() -> str:
    for line in (CHART / "values.yaml").read_text().splitlines():
        if line.strip().startswith("haproxyImage:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise SystemExit("manifests/roundhouse/values.yaml names no proxy.haproxyImage")


def helm_install(cp: ControlPlane, tag: str, extra: Sequence[str] = ()) -> None:
    """The chart into OPERATOR_NAMESPACE, as the e2e suite runs it; `extra`: more helm args."""
    kubectl = [cp.binary("kubectl"), "--kubeconfig", str(cp.admin_kubeconfig)]
    run([*kubectl, "create", "namespace", OPERATOR_NAMESPACE], stdout=subprocess.DEVNULL)
    # The namespace install.yaml creates: the chart must meet the restricted standard.
    run([*kubectl, "label", "namespace", OPERATOR_NAMESPACE,
         "pod-security.kubernetes.io/enforce=restricted",
         "pod-security.kubernetes.io/warn=restricted"], stdout=subprocess.DEVNULL)
    log(f"helm install {RELEASE} manifests/roundhouse (image {OPERATOR_REPOSITORY}:{tag})")
    run([cp.binary("helm"), "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
         "--kubeconfig", str(cp.admin_kubeconfig),
         "--set", f"image.repository={OPERATOR_REPOSITORY}", "--set", f"image.tag={tag}",
         "--set", "image.pullPolicy=Never",
         "--set", f"proxy.haproxyImage={chart_haproxy_image()}", *extra,
         "--wait", "--timeout", "300s"], stdout=subprocess.DEVNULL)
    run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s",
         "crd/loadbalancers.roundhouse.dev", "crd/reverseproxies.roundhouse.dev"],
        stdout=subprocess.DEVNULL)
    log("operator Pods:")
    run([*kubectl, "get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"])


@contextlib.contextmanager
def snapshots(cp: ControlPlane, artifacts: Path, every: float = 60.0) -> Iterator[None]:
    """`kubectl get pods -A -o wide` while the suite runs: the operator and the 2/2-container
    proxy Pods on the real node, kept in artifacts/pods-*.txt; the busiest one is printed."""
    stop = threading.Event()
    kubectl = [cp.binary("kubectl"), "--kubeconfig", str(cp.admin_kubeconfig)]
    best: list[str] = [""]

    def loop() -> None:
        n = 0
        while not stop.wait(every if n else 45.0):
            n += 1
            done = subprocess.run([*kubectl, "get", "pods", "-A", "-o", "wide"],
                                  capture_output=True, text=True, check=False)
            (artifacts / f"pods-{n:02d}.txt").write_text(done.stdout + done.stderr)
            if done.stdout.count("2/2") >= best[0].count("2/2"):
                best[0] = done.stdout

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        if best[0]:
            log("kubectl get pods -A -o wide, while the suite ran (most proxy Pods):")
            print(best[0], flush=True)


def collect(cp: ControlPlane, artifacts: Path) -> None:
    kubectl = [cp.binary("kubectl"), "--kubeconfig", str(cp.admin_kubeconfig)]
    wanted = {
        "nodes.txt": ["get", "nodes", "-o", "wide", "--show-labels"],
        "pods.txt": ["get", "pods", "-A", "-o", "wide"],
        "events.txt": ["get", "events", "-A", "--sort-by=.lastTimestamp"],
        "roundhouse-objects.yaml": ["get", "loadbalancers.roundhouse.dev,"
                                    "reverseproxies.roundhouse.dev", "-A", "-o", "yaml"],
        "operator-logs.txt": ["logs", "-n", OPERATOR_NAMESPACE, "-l",
                              f"app.kubernetes.io/instance={RELEASE}", "--all-containers",
                              "--prefix", "--tail=-1"],
    }
    for name, args in wanted.items():
        done = subprocess.run([*kubectl, *args], capture_output=True, text=True, check=False)
        (artifacts / name).write_text(done.stdout + done.stderr)
    log(f"logs, events and objects in {artifacts}")


def fresh_artifacts(default: Path) -> Path:
    """$ARTIFACTS (else `default`), created, without the files of an earlier run."""
    artifacts = Path(os.environ.get("ARTIFACTS", default)).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    for old in artifacts.glob("*"):
        if old.is_file():
            old.unlink()
    return artifacts


def main(argv: Sequence[str]) -> int:
    if os.geteuid() != 0:
        print("make test-e2e-pods: needs root (containerd, kubelet, CNI bridge, iptables)",
              file=sys.stderr)
        return 2
    tag = os.environ.get("IMAGE_TAG", "e2e-pods")
    artifacts = fresh_artifacts(ROOT / "_artifacts" / "pods")
    archives = build_images(tag)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    cp = ControlPlane(controllers=True, nodes=3, real_node=True, log=log)
    rc = 1
    try:
        cp.start()
        node = cp.real_node
        assert node is not None
        node.import_images(archives)
        # The upgrade test's "new" operator image: the same content under a second tag.
        node.ctr("images", "tag", "--force", f"{DOCKER_LIBRARY}{OPERATOR_REPOSITORY}:{tag}",
                 f"{DOCKER_LIBRARY}{OPERATOR_REPOSITORY}:{tag}{UPGRADE_SUFFIX}")
        helm_install(cp, tag)
        args = list(argv) or ["tests/e2e", "-q", "-p", "no:cacheprovider",
                              "-o", "testpaths=tests/e2e", "-rs"]
        env = {**os.environ, "E2E_CLUSTER": "kubeconfig", "E2E_PROXY_ACCESS": "service",
               "KUBECONFIG": str(cp.admin_kubeconfig),
               "E2E_ECHO_IMAGE": f"{ECHO_REPOSITORY}:{tag}",
               "E2E_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE, "E2E_OPERATOR_RELEASE": RELEASE,
               "E2E_UPGRADE_IMAGE_TAG": f"{tag}{UPGRADE_SUFFIX}", "E2E_ARTIFACTS": str(artifacts),
               "E2E_CHART": str(CHART), "HELM": cp.binary("helm"),
               "PATH": f"{cp.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        log(f"pytest {' '.join(args)} (E2E_CLUSTER=kubeconfig, E2E_PROXY_ACCESS=service)")
        with snapshots(cp, artifacts):
            rc = subprocess.run([sys.executable, "-m", "pytest", *args,
                                 f"--junitxml={artifacts / 'junit.xml'}"],
                                cwd=ROOT, env=env, check=False).returncode
        ha = artifacts / "proxy-ha.json"
        if ha.exists():
            log(f"proxy HA figures ({ha}):")
            print(ha.read_text(), flush=True)
        return rc
    finally:
        if rc != 0 and cp.workdir is not None:
            with contextlib.suppress(Exception):
                collect(cp, artifacts)
        cp.stop()
        log(f"done in {time.monotonic() - began:.0f}s (exit {rc})")
        summary = {"exit": rc, "seconds": round(time.monotonic() - began)}
        (artifacts / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
