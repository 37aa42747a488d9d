"""Which cluster the e2e suite (tests/e2e) runs against: `E2E_CLUSTER=local|kubeconfig`.

- local (the default): the local control plane (kube-apiserver + kwok nodes, started by
  the fixtures), backends in network namespaces (netns.py) and a local HAProxy + agent
  standing in for the proxy Pod (proxy.py). Needs root.
- kubeconfig: the cluster $KUBECONFIG names, with the operator already installed (as
  e2e/kind/run.sh does with Helm): real proxy Pods (proxy_pod.py) and echo backend Pods
  (kube_backends.py). Nothing runs locally but kubectl port-forward / exec; no root.

The same tests, with the same assertions, run in both modes. A test that only makes
sense locally is marked `@local_only("why")` (skipped, with the reason, in kubeconfig
mode); one that needs a real cluster, `@kubeconfig_only("why")`.

Pure: no cluster, no processes. Validation raises ModeError with a message meant for the
user; tests/e2e/conftest.py turns it into a pytest usage error before collection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

ENV = "E2E_CLUSTER"
LOCAL = "local"
KUBECONFIG = "kubeconfig"
MODES = (LOCAL, KUBECONFIG)


class ModeError(ValueError):
    """A bad E2E_CLUSTER or an unusable kubeconfig; the message says what to do."""


def parse_mode(value: str | None) -> str:
    """`None` or "" -> local; otherwise exactly one of MODES (surrounding blanks and case
    forgiven), else ModeError naming the valid values."""
    if value is None or not value.strip():
        return LOCAL
    mode = value.strip().lower()
    if mode not in MODES:
        raise ModeError(f"{ENV}={value!r} is not a cluster mode: use {ENV}=local (the "
                        f"default: local control plane, needs root) or {ENV}=kubeconfig "
                        f"(the cluster $KUBECONFIG names, operator installed)")
    return mode


def current_mode(environ: Mapping[str, str] | None = None) -> str:
    """The mode the environment asks for (ModeError if it names none)."""
    return parse_mode((os.environ if environ is None else environ).get(ENV))


def _mode_or_raw(environ: Mapping[str, str]) -> str:
    try:
        return current_mode(environ)
    except ModeError:
        return str(environ.get(ENV))  # validate() in pytest_configure reports it


# The session's mode. An invalid value is kept as is (so importing this never fails);
# tests/e2e/conftest.py validates it before anything is collected.
MODE = _mode_or_raw(os.environ)


def is_local(mode: str | None = None) -> bool:
    return (MODE if mode is None else mode) == LOCAL


def kubeconfig_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """$KUBECONFIG's entries (os.pathsep-separated, as kubectl reads it), else
    ~/.kube/config."""
    env = os.environ if environ is None else environ
    raw = env.get("KUBECONFIG", "")
    entries = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    return entries or [Path(env.get("HOME") or Path.home()) / ".kube" / "config"]


def check_kubeconfig(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The kubeconfig files that exist (at least one, each a readable YAML mapping with a
    current context), else ModeError saying which were looked at."""
    env = os.environ if environ is None else environ
    paths = kubeconfig_paths(env)
    found = [p for p in paths if p.is_file()]
    source = "KUBECONFIG" if env.get("KUBECONFIG", "").strip() else "the default"
    if not found:
        raise ModeError(f"{ENV}=kubeconfig needs a kubeconfig, but {source} "
                        f"({os.pathsep.join(map(str, paths))}) is not a file: set KUBECONFIG "
                        f"to the cluster's (e2e/kind/run.sh does; `make e2e-kind`)")
    import yaml  # a dependency of the kubernetes client

    current = None
    for path in found:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ModeError(f"{ENV}=kubeconfig: cannot read kubeconfig {path}: {err}") from err
        if not isinstance(data, dict):
            raise ModeError(f"{ENV}=kubeconfig: {path} is not a kubeconfig (no mapping)")
        current = current or data.get("current-context")
    if not current:
        raise ModeError(f"{ENV}=kubeconfig: no current-context in "
                        f"{os.pathsep.join(map(str, found))}")
    return found


def validate(environ: Mapping[str, str] | None = None) -> str:
    """The mode, checked: kubeconfig mode also needs a usable kubeconfig."""
    mode = current_mode(environ)
    if mode == KUBECONFIG:
        check_kubeconfig(environ)
    return mode


def local_only(reason: str, mode: str | None = None) -> pytest.MarkDecorator:
    """Skip in kubeconfig mode: the test drives something only the local harness has
    (a netns server process, the local agent, local files)."""
    return pytest.mark.skipif(not is_local(mode), reason=f"local only: {reason}")


def kubeconfig_only(reason: str, mode: str | None = None) -> pytest.MarkDecorator:
    """Skip in local mode: the test needs a real cluster (kubelets, kube-proxy, real
    proxy Pods)."""
    return pytest.mark.skipif(
        (MODE if mode is None else mode) != KUBECONFIG,
        reason=f"needs a real cluster: {ENV}=kubeconfig (make e2e-kind): {reason}")
