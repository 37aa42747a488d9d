"""The proxy Pod stand-in: the real `roundhouse agent` and a real `haproxy -W`.

The operator renders paths under /var/run/roundhouse (RenderOptions defaults:
runtime socket there, crt-base /var/run/roundhouse/certs) and the Deployment mounts an
emptyDir there. Here a private mount namespace plays that emptyDir: a holder process
(`unshare --mount`) mounts a small tmpfs over /run (= /var/run) and bind-mounts a temp
dir of ours at /run/roundhouse; the agent and HAProxy join it with `nsenter --mount`.
So the host's /run is never touched, several stand-ins could run at once, and the
harness reads the same files (and talks to master.sock) through the temp dir.

Network: HAProxy stays in the host's network namespace (the rendered config binds
`:<port>`, all addresses), so tests connect to 127.0.0.1:<listener port>; it reaches
the backends through the per-Pod veths of netns.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from roundhouse.agent.runtime import RuntimeAPIError, RuntimeClient

REPO = Path(__file__).resolve().parents[2]
RUNTIME_DIR = "/var/run/roundhouse"  # what the operator renders into haproxy.cfg

# Inside the private mount namespace: hide the host's /run, put our dir at /run/roundhouse.
_HOLDER = r'''
set -e
run=$(readlink -f /var/run)
mount --make-rprivate /
mount -t tmpfs -o size=16m,mode=755 roundhouse-e2e "$run"
mkdir -p "$run/roundhouse"
mount --bind "$1" "$run/roundhouse"
echo ready
exec sleep 1000000
'''


class ProxyError(RuntimeError):
    pass


def _raise_fd_limit() -> None:
    """HAProxy wants ~2 FDs per maxconn (default 10000 connections); a container
    runtime gives 1048576, this shell may give far less. We are root: raise it."""
    for limit in (1048576, 262144, 65536):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return
        except (ValueError, OSError):
            continue


class ProxyStandIn:
    """`roundhouse agent` + `haproxy -W -db -S .../master.sock -f .../haproxy.cfg`.

    kubeconfig: the proxy's ServiceAccount (`<lb>-lb`), so the agent's Role is tested.
    pod_name: a real (kwok) proxy Pod of Deployment `<lb>-lb`: the operator only counts
    reports from ready proxy Pods.
    """

    def __init__(self, *, namespace: str, configmap: str, status_configmap: str,
                 pod_name: str, kubeconfig: str | Path, log_dir: Path,
                 haproxy_bin: str | None = None) -> None:
        self.namespace = namespace
        self.configmap = configmap
        self.status_configmap = status_configmap
        self.pod_name = pod_name
        self.kubeconfig = str(kubeconfig)
        self.log_dir = Path(log_dir)
        # E2E_HAPROXY: another HAProxy (make test-e2e-lts: the LTS branch the manifests run).
        haproxy_bin = haproxy_bin or os.environ.get("E2E_HAPROXY") or "haproxy"
        self.haproxy_bin = shutil.which(haproxy_bin) or haproxy_bin
        self.dir = Path(tempfile.mkdtemp(prefix="roundhouse-e2e-proxy-"))
        os.chmod(self.dir, 0o755)
        # The agent's own Runtime API client, on the sockets in our side of the mount.
        self.runtime = RuntimeClient(self.dir)
        self.holder: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None

    # -- paths -------------------------------------------------------------------------

    @property
    def master_socket(self) -> Path:
        return self.dir / "master.sock"

    @property
    def stats_socket(self) -> Path:
        return self.dir / "haproxy.sock"

    @property
    def agent_log(self) -> Path:
        return self.log_dir / f"agent-{self.pod_name}.log"

    @property
    def haproxy_log(self) -> Path:
        return self.log_dir / f"haproxy-{self.pod_name}.log"

    # -- lifecycle -----------------------------------------------------------------------

    def _nsenter(self, *argv: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "--mount", "--", *argv]

    def _agent_argv(self, *extra: str) -> list[str]:
        return self._nsenter(
            sys.executable, "-m", "roundhouse.cli", "agent",
            "--configmap", self.configmap, "--status-configmap", self.status_configmap,
            "--runtime-dir", RUNTIME_DIR, "--namespace", self.namespace,
            "--pod-name", self.pod_name, "--kubeconfig", self.kubeconfig,
            "--metrics-port", "0", "--haproxy-bin", self.haproxy_bin, *extra)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 60.0) -> ProxyStandIn:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER,
             "holder", str(self.dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline().decode().strip()
        if line != "ready":
            err = self.holder.stderr.read().decode() if self.holder.stderr else ""
            raise ProxyError(f"mount namespace holder failed: {line!r} {err}")
        # The init container: config + certificates in place before HAProxy starts.
        with self.agent_log.open("ab") as log:
            once = subprocess.run(self._agent_argv("--once", "--once-timeout", str(timeout)),
                                  stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                  cwd=REPO, timeout=timeout + 30, check=False)
        if once.returncode != 0:
            raise ProxyError(f"agent --once failed (exit {once.returncode}):\n"
                             + self.agent_log.read_text(errors="replace")[-2000:])
        with self.haproxy_log.open("ab") as log:
            self.haproxy = subprocess.Popen(
                self._nsenter(self.haproxy_bin, "-W", "-db", "-S", f"{RUNTIME_DIR}/master.sock",
                              "-f", f"{RUNTIME_DIR}/haproxy.cfg"),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                preexec_fn=_raise_fd_limit)
        self.wait_haproxy(timeout=30)
        with self.agent_log.open("ab") as log:
            self.agent = subprocess.Popen(self._agent_argv(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self._env(), cwd=REPO)
        self.wait_agent_up(1, timeout)

    def agent_starts(self) -> int:
        """How many agent processes reached HAProxy (their log line; wording may change)."""
        text = self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""
        return text.count("HAProxy is up")

    def wait_agent_up(self, starts: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.agent_starts() < starts:
            if self.agent is None or self.agent.poll() is not None:
                raise ProxyError("agent exited:\n" + self.logs())
            if time.monotonic() > deadline:
                raise ProxyError("agent did not reach HAProxy:\n" + self.logs())
            time.sleep(0.1)

    def restart_agent(self) -> None:
        """Stop the agent (SIGTERM) and start a new one: HAProxy keeps running."""
        starts = self.agent_starts()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(20)
        with self.agent_log.open("ab") as log:
            self.agent = subprocess.Popen(self._agent_argv(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self._env(), cwd=REPO)
        self.wait_agent_up(starts + 1)

    def wait_haproxy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise ProxyError(f"haproxy exited ({self.haproxy.returncode}):\n"
                                 + self.haproxy_log.read_text(errors="replace")[-2000:])
            try:
                if self.worker_pids():
                    return
            except (OSError, RuntimeAPIError):
                pass
            if time.monotonic() > deadline:
                raise ProxyError("haproxy master socket not answering:\n"
                                 + self.haproxy_log.read_text(errors="replace")[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        workers = self._all_workers()
        for proc in (self.agent, self.haproxy):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()  # haproxy -W: SIGTERM stops master and workers
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # Every env binds the same host port (SO_REUSEPORT): a worker outliving its master
        # would take a share of the next test's connections. Gone before the next starts.
        _wait_gone(workers, 10)
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()  # the mount namespace goes with its last process
            self.holder.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _all_workers(self) -> list[int]:
        """The current and old workers' pids, when the master still answers."""
        if self.haproxy is None or self.haproxy.poll() is not None:
            return []
        try:
            _, workers, old = self.show_proc()
        except (OSError, RuntimeAPIError):
            return []
        return [*workers, *old]

    def __enter__(self) -> ProxyStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------

    def show_proc(self) -> tuple[int, list[int], list[int]]:
        """(master pid, current workers, old workers) from `show proc`."""
        table = self.runtime.show_proc()
        return table.master_pid, list(table.workers), list(table.old_workers)

    def master_pid(self) -> int:
        return self.show_proc()[0]

    def worker_pids(self) -> list[int]:
        return self.show_proc()[1]

    def stats(self, command: str) -> str:
        return self.runtime.command(command)

    def agent_state(self) -> dict[str, Any]:
        """What the agent last applied (agent-state.json), {} if none."""
        try:
            return dict(json.loads((self.dir / "agent-state.json").read_text()))
        except (OSError, ValueError):
            return {}

    def running_config(self) -> str:
        return (self.dir / "haproxy.cfg").read_text()

    def alive(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.agent, self.haproxy))

    def logs(self, lines: int = 40) -> str:
        out = []
        for path in (self.agent_log, self.haproxy_log):
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"---- {path.name} ----\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait for HAProxy processes to exit; SIGKILL those still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _haproxy_running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_haproxy_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)


def _haproxy_running(pid: int) -> bool:
    """An HAProxy process, alive and not a zombie (a pid reused since is not ours)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    name, _, rest = stat.partition("(")[2].rpartition(")")
    return name.startswith("haproxy") and rest.split()[:1] != ["Z"]
