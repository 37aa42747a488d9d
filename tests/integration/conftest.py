"""Fixtures for integration tests against a real local control plane.

One ControlPlane (etcd, kube-apiserver, controller-manager, scheduler, kwok with
3 fake nodes; see e2e/cluster/controlplane.py) is started per session. Nothing
is skipped: if the binaries cannot be built or the cluster does not come up,
every test that needs it fails with the reason.
"""

from __future__ import annotations

import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from kubernetes import client
from kubernetes import config as kube_config

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from e2e.cluster.controlplane import ControlPlane, locate_binaries  # noqa: E402

from tests.integration.operator_process import OperatorProcess, running_operator  # noqa: E402

HERE = Path(__file__).resolve().parent


# Where the binaries are, or why they could not be built (see pytest_collection_finish).
_BINARIES = pytest.StashKey["Path | Exception"]()


def _ours(item: pytest.Item) -> bool:
    return Path(item.path).resolve().is_relative_to(HERE)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection looks at the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, so only mark the ones under this directory.
    for item in items:
        if _ours(item):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Locate (or build) the binaries once, outside any test.

    A cold build takes tens of minutes; inside the fixture it would count against
    the first test's pytest-timeout. Only runs when integration tests are selected.
    """
    config = session.config
    if config.option.collectonly or not any(_ours(i) for i in session.items):
        return
    try:
        config.stash[_BINARIES] = locate_binaries(lambda m: _write_terminal(config, m))
    except Exception as err:  # reported by the control_plane fixture as a test failure
        config.stash[_BINARIES] = err


def _write_terminal(config: pytest.Config, message: str) -> None:
    """Write straight to the terminal (past output capture) so progress is visible."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capman is None or reporter is None:
        print(f"[control-plane] {message}")
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(f"[control-plane] {message}")


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # pytest tears fixtures down on KeyboardInterrupt, so a SIGTERM'd run stops its cluster.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    found = request.config.stash.get(_BINARIES, None)
    if isinstance(found, Exception):
        pytest.fail(
            f"Kubernetes binaries unavailable ({type(found).__name__}): {found}", pytrace=False
        )
    cp = ControlPlane(
        controllers=True,
        nodes=3,
        bin_dir=found,  # None: ControlPlane locates them itself
        log=lambda m: _write_terminal(request.config, m),
    )
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        cp.start()
    except Exception as err:  # BinariesError, ControlPlaneError, NetworkGuardError, ...
        signal.signal(signal.SIGTERM, previous)
        pytest.fail(
            f"local control plane did not start ({type(err).__name__}): {err}", pytrace=False
        )
    version = cp.version.get("gitVersion", "?")
    _write_terminal(
        request.config, f"API server {version} at {cp.server}, ready in {cp.startup_seconds:.1f}s"
    )
    print(f"control plane: kube-apiserver {version} at {cp.server}")
    try:
        yield cp
    finally:
        cp.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """Admin (system:masters) ApiClient for the session's control plane."""
    api = kube_config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig))
    try:
        yield api
    finally:
        api.close()


def _namespace_name(node_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"it-{base}-{uuid.uuid4().hex[:6]}"


def _wait_default_service_account(core: client.CoreV1Api, namespace: str) -> None:
    # Pod admission needs the namespace's "default" SA, which the controller-manager adds.
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except client.ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (not awaited) afterwards."""
    core = client.CoreV1Api(kube)
    name = _namespace_name(request.node.name)
    core.create_namespace(
        {"metadata": {"name": name, "labels": {"roundhouse.dev/test": "integration"}}}
    )
    _wait_default_service_account(core, name)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except client.ApiException as err:
            if err.status != 404:
                raise


@pytest.fixture(scope="module")
def operator(control_plane: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    """The operator as a real process (install.yaml's ServiceAccount and RBAC), one per test
    module that asks for it, so a module's leftovers never meet another module's operator.
    It must never have been refused by RBAC: that would mean install.yaml misses a rule."""
    with running_operator(control_plane,
                          tmp_path_factory.mktemp("op") / "operator.log") as proc:
        yield proc
    assert not proc.forbidden_errors(), "the operator hit RBAC denials:\n" + "\n".join(
        proc.forbidden_errors()[:10])
