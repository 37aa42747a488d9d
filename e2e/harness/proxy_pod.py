"""A real proxy Pod, seen through the methods tests call on proxy.ProxyStandIn
(E2E_CLUSTER=kubeconfig).

The proxy Pod runs `haproxy` and `roundhouse agent` in two containers that share the
runtime emptyDir (/var/run/roundhouse: haproxy.cfg, master.sock, haproxy.sock,
agent-state.json). The agent's image has Python and the roundhouse package, so
`kubectl exec -c agent <pod> -- python -c SCRIPT <runtime dir> <op> [arg]` asks HAProxy
with the agent's own RuntimeClient, exactly as the stand-in does through its temp dir:

- show_proc()        `show proc` on the master socket: (master, workers, old workers)
- stats(command)     one command on the stats socket
- running_config()   the haproxy.cfg HAProxy runs
- agent_state()      the agent's report in the `<name>-agents` ConfigMap (key: Pod name):
                     configHash, structureHash, error, reloads (what agent-state.json
                     holds for the stand-in), {} if none yet
- logs()             the agent and haproxy containers' logs, through the API
- restart_agent()    SIGTERM to the agent (PID 1 of its container): the kubelet restarts
                     the container, HAProxy keeps running; agent_starts() counts them

Pure apart from `kubectl` and the API: command construction is unit-tested against a
fake kubectl (tests/harness/test_e2e_modes.py).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from e2e.harness.kube_backends import core_api, find_kubectl, pod_ready, wait_for
from kubernetes import client

RUNTIME_DIR = "/var/run/roundhouse"  # the proxy Deployment's runtime emptyDir
AGENT_CONTAINER = "agent"
HAPROXY_CONTAINER = "haproxy"

# Run inside the agent container: argv = [runtime dir, op, arg?]. Standard library and
# the agent's own RuntimeClient only; prints one answer on stdout.
SCRIPT = r'''
import json, os, signal, sys
from pathlib import Path
from roundhouse.agent.runtime import RuntimeClient
runtime, op = Path(sys.argv[1]), sys.argv[2]
rt = RuntimeClient(runtime)
if op == "proc":
    t = rt.show_proc()
    print(json.dumps([t.master_pid, list(t.workers), list(t.old_workers)]))
elif op == "stats":
    sys.stdout.write(rt.command(sys.argv[3]))
elif op == "config":
    sys.stdout.write((runtime / "haproxy.cfg").read_text())
elif op == "stop-agent":
    os.kill(1, signal.SIGTERM)
    print("ok")
else:
    sys.exit("unknown op " + op)
'''


class PodProxyError(RuntimeError):
    pass


@dataclass
class PodProxy:
    """The proxy Pod `pod_name` of the Deployment `name` (`<lb>-lb` / `<rp>-rp`)."""

    api: client.ApiClient
    namespace: str
    name: str
    pod_name: str
    kubeconfig: str | None = None
    kubectl: str | None = None
    timeout: float = 30.0
    runtime_dir: str = RUNTIME_DIR
    _restarts_at_start: int | None = field(default=None, repr=False)

    @property
    def status_configmap(self) -> str:
        return f"{self.name}-agents"

    # -- kubectl exec ------------------------------------------------------------------

    def exec_command(self, op: str, *args: str) -> list[str]:
        """`kubectl exec` of SCRIPT in the agent container of this Pod."""
        cmd = [self.kubectl or find_kubectl()]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        return [*cmd, "exec", "--namespace", self.namespace, self.pod_name,
                "--container", AGENT_CONTAINER, "--",
                "python", "-c", SCRIPT, self.runtime_dir, op, *args]

    def _exec(self, op: str, *args: str) -> str:
        cmd = self.exec_command(op, *args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as err:
            raise PodProxyError(f"kubectl exec {op} in {self.namespace}/{self.pod_name}: no "
                                f"answer within {self.timeout}s") from err
        if done.returncode != 0:
            raise PodProxyError(f"kubectl exec {op} in {self.namespace}/{self.pod_name} "
                                f"exited {done.returncode}: {done.stderr.strip()[-800:]}")
        return done.stdout

    # -- what the tests ask ----------------------------------------------------------------

    def show_proc(self) -> tuple[int, list[int], list[int]]:
        """(master pid, current workers, old workers) from `show proc`."""
        master, workers, old = json.loads(self._exec("proc"))
        return int(master), [int(p) for p in workers], [int(p) for p in old]

    def master_pid(self) -> int:
        return self.show_proc()[0]

    def worker_pids(self) -> list[int]:
        return self.show_proc()[1]

    def stats(self, command: str) -> str:
        return self._exec("stats", command)

    def running_config(self) -> str:
        return self._exec("config")

    def agent_state(self) -> dict[str, Any]:
        """The agent's last report (configHash, error, reloads, ...), {} if none."""
        try:
            cm = core_api(self.api).read_namespaced_config_map(self.status_configmap,
                                                                self.namespace)
        except client.ApiException as err:
            if err.status == 404:
                return {}
            raise
        raw = (cm.data or {}).get(self.pod_name)
        if not raw:
            return {}
        try:
            return dict(json.loads(raw))
        except ValueError:
            return {}

    # -- the agent container -------------------------------------------------------------

    def _pod(self) -> Any:
        return core_api(self.api).read_namespaced_pod(self.pod_name, self.namespace)

    def agent_restarts(self) -> int:
        for status in self._pod().status.container_statuses or []:
            if status.name == AGENT_CONTAINER:
                return int(status.restart_count or 0)
        return 0

    def agent_starts(self) -> int:
        """Agent container starts since this object was made (1 + its restarts)."""
        if self._restarts_at_start is None:
            self._restarts_at_start = self.agent_restarts()
        return 1 + self.agent_restarts() - self._restarts_at_start

    def agent_running(self) -> bool:
        for status in self._pod().status.container_statuses or []:
            if status.name == AGENT_CONTAINER:
                return bool(status.ready and status.state and status.state.running)
        return False

    def restart_agent(self, timeout: float = 120.0) -> None:
        """SIGTERM the agent; returns once the kubelet restarted its container."""
        starts = self.agent_starts()
        deadline = time.monotonic() + timeout
        # Sent again while the container has not restarted: on a real node a `kubectl
        # exec` can end before its process ran (seen here: no "signal 15" in the log).
        while True:
            with contextlib.suppress(PodProxyError):  # the container may go before
                self._exec("stop-agent")               # kubectl exec reports back
            try:
                wait_for(lambda: self.agent_starts() > starts and self.agent_running(),
                         min(20.0, max(1.0, deadline - time.monotonic())),
                         f"the agent container of {self.pod_name} restarted")
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def alive(self) -> bool:
        statuses = self._pod().status.container_statuses or []
        return bool(statuses) and all(s.ready for s in statuses)

    def logs(self, lines: int = 40) -> str:
        out = []
        for container in (AGENT_CONTAINER, HAPROXY_CONTAINER):
            try:
                text = core_api(self.api).read_namespaced_pod_log(
                    self.pod_name, self.namespace, container=container, tail_lines=lines)
            except client.ApiException as err:
                text = f"(no log: {err.status} {err.reason})"
            out.append(f"---- {self.pod_name}/{container} ----\n{text}")
        return "\n".join(out)

    def stop(self) -> None:
        """Nothing to stop: the Deployment owns the Pod (deleted with the namespace)."""


def wait_pod_proxy(api: client.ApiClient, namespace: str, name: str,
                   timeout: float = 180.0, **kw: Any) -> PodProxy:
    """The PodProxy of the one ready Pod of Deployment `name` (e2e resources use
    proxy.replicas 1), once its agent reached HAProxy (the Pod is Ready)."""
    selector = f"app.kubernetes.io/instance={name}"

    def ready_pod() -> Any:
        pods = core_api(api).list_namespaced_pod(namespace, label_selector=selector).items
        ready = [p for p in pods if p.metadata.deletion_timestamp is None
                 and p.status.phase == "Running" and pod_ready(p)]
        return ready[0] if len(ready) == 1 else None

    pod = wait_for(ready_pod, timeout, f"one ready {name} proxy Pod")
    proxy = PodProxy(api, namespace, name, pod.metadata.name, **kw)
    proxy.agent_starts()  # the baseline for restart counting
    deadline = time.monotonic() + timeout
    while True:  # HAProxy answering on its master socket through the agent container
        try:
            if proxy.worker_pids():
                return proxy
            problem = "no HAProxy worker yet"
        except PodProxyError as err:
            problem = str(err)
        if time.monotonic() > deadline:
            raise PodProxyError(f"{namespace}/{proxy.pod_name}: {problem}")
        time.sleep(1.0)
