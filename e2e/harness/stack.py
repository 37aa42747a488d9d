"""The whole local stack in one context manager, for the demo and the benchmarks:
control plane, install.yaml, the operator, and one LoadBalancer `web` over
network-namespace backends with its proxy stand-in, Ready before it is yielded."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from e2e.cluster.controlplane import ControlPlane
from kubernetes import client
from kubernetes import config as kube_config
from tests.e2e.conftest import Env, make_env
from tests.integration.operator_process import condition, get_lb, running_operator, wait_for


@contextlib.contextmanager
def local_stack(work: Path, log: Callable[[str], None], ready_timeout: float = 120.0,
                **spec: Any) -> Iterator[tuple[ControlPlane, client.ApiClient, Env]]:
    cp = ControlPlane(controllers=True, nodes=3, log=log)
    try:
        cp.start()
        with running_operator(cp, work / "operator.log", tail=0), \
                kube_config.new_client_from_config(config_file=str(cp.admin_kubeconfig)) as api:
            env = make_env(api, cp, work, **spec)
            try:
                wait_for(lambda: condition(get_lb(api, env.namespace, "web"), "Ready").get(
                    "status") == "True", ready_timeout, "LoadBalancer Ready")
                yield cp, api, env
            finally:
                env.close()
    finally:
        cp.stop()
