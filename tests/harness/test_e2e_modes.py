"""The offline parts of the e2e suite's cluster switch, E2E_CLUSTER=local|kubeconfig.

- e2e/harness/modes.py: parsing, kubeconfig checks, the local_only / kubeconfig_only marks;
- tests/e2e under E2E_CLUSTER=kubeconfig: a missing kubeconfig or a bad mode stops pytest
  at once with one line (usage error), an unreachable API server fails the tests with
  one line, and the local-only tests are skipped with their reason;
- e2e/harness/proxy_pod.py: PodProxy's `kubectl exec` against a fake kubectl that runs
  the in-Pod script here, on a fake HAProxy master/stats socket;
- kube_backends.DeploymentBackends and PortForward.ensure();
- traffic.decode_seen_headers / websocket_roundtrip against both backends (the netns
  server script and the echo image's server), so the shared assertions hold for both.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any, cast

import pytest
from e2e.harness import kube_backends as kb
from e2e.harness import modes, traffic
from e2e.harness import proxy_pod as pp
from e2e.harness.netns import SERVER as NETNS_SERVER
from kubernetes import client

from tests.harness.test_kind_echo import start_echo, stop_echo

REPO = Path(__file__).resolve().parents[2]
NO_API = cast(client.ApiClient, None)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("E2E_CLUSTER", "KUBECONFIG")}
    return {**env, **extra}


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("value, mode", [(None, "local"), ("", "local"), ("  ", "local"),
                                         ("local", "local"), ("kubeconfig", "kubeconfig"),
                                         (" KubeConfig ", "kubeconfig")])
def test_parse_mode(value: str | None, mode: str) -> None:
    assert modes.parse_mode(value) == mode


@pytest.mark.parametrize("value", ["kind", "cluster", "locale", "1"])
def test_parse_mode_refuses_anything_else_naming_the_choices(value: str) -> None:
    with pytest.raises(modes.ModeError) as err:
        modes.parse_mode(value)
    assert repr(value) in str(err.value)
    assert "E2E_CLUSTER=local" in str(err.value) and "E2E_CLUSTER=kubeconfig" in str(err.value)


def test_current_mode_reads_the_environment() -> None:
    assert modes.current_mode({}) == "local"
    assert modes.current_mode({"E2E_CLUSTER": "kubeconfig"}) == "kubeconfig"


KUBECONFIG_YAML = textwrap.dedent("""\
    apiVersion: v1
    kind: Config
    clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
    users: [{name: u, user: {token: t}}]
    contexts: [{name: x, context: {cluster: c, user: u}}]
    current-context: x
    """)


def test_check_kubeconfig(tmp_path: Path) -> None:
    good = tmp_path / "kc"
    good.write_text(KUBECONFIG_YAML)
    assert modes.check_kubeconfig({"KUBECONFIG": str(good)}) == [good]
    # A list, as kubectl reads it: missing entries are fine while one exists.
    listed = f"{tmp_path / 'missing'}{os.pathsep}{good}"
    assert modes.check_kubeconfig({"KUBECONFIG": listed}) == [good]
    assert modes.validate({"E2E_CLUSTER": "kubeconfig", "KUBECONFIG": str(good)}) == \
        "kubeconfig"
    assert modes.validate({"KUBECONFIG": "/nonexistent"}) == "local"  # not looked at


def test_check_kubeconfig_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(modes.ModeError, match=r"KUBECONFIG \(/nonexistent\) is not a file"):
        modes.check_kubeconfig({"KUBECONFIG": "/nonexistent"})
    with pytest.raises(modes.ModeError, match=r"the default \(.*/\.kube/config\)"):
        modes.check_kubeconfig({"HOME": str(tmp_path)})
    bad = tmp_path / "bad"
    bad.write_text("- just a list\n")
    with pytest.raises(modes.ModeError, match="not a kubeconfig"):
        modes.check_kubeconfig({"KUBECONFIG": str(bad)})
    no_context = tmp_path / "nocontext"
    no_context.write_text(KUBECONFIG_YAML.replace("current-context: x", ""))
    with pytest.raises(modes.ModeError, match="no current-context"):
        modes.check_kubeconfig({"KUBECONFIG": str(no_context)})


def test_local_only_and_kubeconfig_only_marks() -> None:
    for mark, mode, skipped in [(modes.local_only, "local", False),
                                (modes.local_only, "kubeconfig", True),
                                (modes.kubeconfig_only, "local", True),
                                (modes.kubeconfig_only, "kubeconfig", False)]:
        decorator = mark("the reason", mode=mode)
        assert decorator.mark.name == "skipif"
        assert decorator.mark.args == (skipped,), (mark, mode)
        assert "the reason" in decorator.mark.kwargs["reason"]
    assert modes.local_only("x", mode="kubeconfig").mark.kwargs["reason"] == "local only: x"


def test_marks_follow_the_environment(tmp_path: Path) -> None:
    (tmp_path / "test_marks.py").write_text(textwrap.dedent("""\
        from e2e.harness.modes import kubeconfig_only, local_only

        @local_only("netns only")
        def test_local():
            pass

        @kubeconfig_only("kind only")
        def test_cluster():
            pass
        """))

    def run(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
             "-o", "addopts=", str(tmp_path / "test_marks.py")],
            capture_output=True, text=True, cwd=REPO, env=_env(E2E_CLUSTER=mode), timeout=120)
        return done.stdout

    assert "local only: netns only" not in run("local")
    assert "1 passed, 1 skipped" in run("local")
    out = run("kubeconfig")
    assert "local only: netns only" in out and "1 passed, 1 skipped" in out


# --------------------------------------------------------------------------- the suite


def _pytest_e2e(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider",
         "-o", "testpaths=tests/e2e", *args],
        capture_output=True, text=True, cwd=REPO, env=_env(**env), timeout=300)


def test_kubeconfig_mode_without_a_kubeconfig_stops_at_once() -> None:
    done = _pytest_e2e(E2E_CLUSTER="kubeconfig", KUBECONFIG="/nonexistent")
    out = done.stdout + done.stderr
    assert done.returncode == 4, out  # pytest's usage error: nothing collected or started
    assert "ERROR: E2E_CLUSTER=kubeconfig needs a kubeconfig, but KUBECONFIG " \
           "(/nonexistent) is not a file" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 3, out


def test_a_bad_mode_stops_at_once() -> None:
    done = _pytest_e2e(E2E_CLUSTER="kind")
    out = done.stdout + done.stderr
    assert done.returncode == 4, out
    assert "ERROR: E2E_CLUSTER='kind' is not a cluster mode" in out
    assert "Traceback" not in out


def test_kubeconfig_mode_collects_the_same_tests(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_YAML)
    local = _pytest_e2e("--collect-only")
    kube = _pytest_e2e("--collect-only", E2E_CLUSTER="kubeconfig", KUBECONFIG=str(kc))
    assert local.returncode == 0 and kube.returncode == 0, kube.stdout + kube.stderr
    ids = [line for line in local.stdout.splitlines() if "::" in line]
    assert len(ids) >= 20
    assert ids == [line for line in kube.stdout.splitlines() if "::" in line]


def test_kubeconfig_mode_unreachable_cluster_one_line_and_local_only_skips(
        tmp_path: Path) -> None:
    """Port 1 refuses: every test that needs the cluster errors with the same line (the
    session fixture's), the local-only ones are skipped with their reasons."""
    kc = tmp_path / "kc"
    kc.write_text(KUBECONFIG_YAML)
    done = _pytest_e2e("-rs", E2E_CLUSTER="kubeconfig", KUBECONFIG=str(kc))
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "the API server of" in out and "does not answer" in out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    local = [line for line in skipped if "local only: " in line]
    marked = sum(f.read_text().count("\n@local_only(")
                 for f in (REPO / "tests" / "e2e").glob("test_*.py"))
    assert marked >= 8 and len(local) == marked, skipped
    # The one other skip: the helm upgrade test, without a second operator image tag.
    assert [line for line in skipped if line not in local] == [
        line for line in skipped if "E2E_UPGRADE_IMAGE_TAG" in line] != [], skipped
    assert not any("test_proxy_ha" in line for line in local)
    assert "Traceback" not in out


# --------------------------------------------------------------------------- PodProxy


FAKE_KUBECTL = textwrap.dedent('''\
    #!{python}
    """A stand-in for `kubectl exec`: records argv, runs what follows `--` here, with
    the runtime directory argument pointed at a local one."""
    import os, subprocess, sys
    args = sys.argv[1:]
    with open({argfile!r}, "a") as f:
        f.write(repr(args) + "\\n")
    if os.environ.get("FAKE_KUBECTL_FAIL"):
        print("error: unable to upgrade connection: container not found", file=sys.stderr)
        sys.exit(1)
    cmd = args[args.index("--") + 1:]
    assert cmd[:2] == ["python", "-c"], cmd
    cmd = [{python!r}, "-c", cmd[2], {runtime!r}, *cmd[4:]]
    sys.exit(subprocess.run(cmd).returncode)
''')

SHOW_PROC = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
1               master          3 [failed: 0]   0d00h02m07s     3.2.4-98813a1
# workers
1271            worker          0               0d00h00m00s     3.2.4-98813a1
# old workers
1100            worker          1               0d00h00m10s     3.2.4-98813a1
# programs

"""


@contextlib.contextmanager
def unix_server(path: Path, answer: Any) -> Iterator[list[str]]:
    """Answers each one-command connection with answer(command); records commands."""
    seen: list[str] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                seen.append(data.decode().strip())
                conn.sendall(answer(data.decode().strip()).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)
        srv.close()


@pytest.fixture
def fake_pod(tmp_path: Path) -> Iterator[tuple[Path, Path, list[str], list[str]]]:
    runtime = Path(f"/tmp/rh-pp-{os.getpid()}-{id(tmp_path) % 10000}")  # short: AF_UNIX
    runtime.mkdir()
    (runtime / "haproxy.cfg").write_text("global\n  maxconn 4000\n")
    argfile = tmp_path / "args"
    argfile.write_text("")
    exe = tmp_path / "kubectl"
    exe.write_text(FAKE_KUBECTL.format(python=sys.executable, argfile=str(argfile),
                                       runtime=str(runtime)))
    exe.chmod(0o755)
    try:
        with unix_server(runtime / "master.sock", lambda c: SHOW_PROC) as master, \
                unix_server(runtime / "haproxy.sock", lambda c: f"answer to {c}\n") as stats:
            yield exe, argfile, master, stats
    finally:
        for f in runtime.iterdir():
            f.unlink()
        runtime.rmdir()


def test_pod_proxy_exec_command() -> None:
    proxy = pp.PodProxy(NO_API, "e2e-x", "web-lb", "web-lb-abc-1", kubeconfig="/tmp/kc",
                        kubectl="/bin/kubectl")
    cmd = proxy.exec_command("stats", "show info")
    assert cmd[:10] == ["/bin/kubectl", "--kubeconfig", "/tmp/kc", "exec", "--namespace",
                        "e2e-x", "web-lb-abc-1", "--container", "agent", "--"]
    assert cmd[10:12] == ["python", "-c"] and cmd[12] == pp.SCRIPT
    assert cmd[13:] == ["/var/run/roundhouse", "stats", "show info"]
    assert proxy.status_configmap == "web-lb-agents"
    # The script only needs what the operator image has: the agent's RuntimeClient.
    compile(pp.SCRIPT, "<proxy_pod.SCRIPT>", "exec")
    assert "from roundhouse.agent.runtime import RuntimeClient" in pp.SCRIPT


def test_pod_proxy_asks_haproxy_through_kubectl_exec(
        fake_pod: tuple[Path, Path, list[str], list[str]]) -> None:
    exe, argfile, master, stats = fake_pod
    proxy = pp.PodProxy(NO_API, "e2e-x", "web-lb", "web-lb-abc-1", kubectl=str(exe))
    assert proxy.show_proc() == (1, [1271], [1100])
    assert proxy.worker_pids() == [1271] and proxy.master_pid() == 1
    assert proxy.stats("show servers state") == "answer to show servers state\n"
    assert proxy.running_config() == "global\n  maxconn 4000\n"
    assert master == ["show proc", "show proc", "show proc"]
    assert stats == ["show servers state"]
    calls = [ast.literal_eval(line) for line in argfile.read_text().splitlines()]
    assert [c[c.index("--") + 5] for c in calls] == ["proc", "proc", "proc", "stats", "config"]
    assert all(c[:6] == ["exec", "--namespace", "e2e-x", "web-lb-abc-1", "--container",
                         "agent"] for c in calls)


def test_pod_proxy_reports_kubectl_failing(fake_pod: tuple[Path, Path, list[str], list[str]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    exe, _, _, _ = fake_pod
    monkeypatch.setenv("FAKE_KUBECTL_FAIL", "1")
    proxy = pp.PodProxy(NO_API, "e2e-x", "web-lb", "web-lb-abc-1", kubectl=str(exe))
    with pytest.raises(pp.PodProxyError, match="exited 1: error: unable to upgrade"):
        proxy.show_proc()


class FakeCore:
    def __init__(self) -> None:
        self.configmaps: dict[str, Any] = {}
        self.restarts = 0
        self.deleted: list[str] = []

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        if name not in self.configmaps:
            raise client.ApiException(status=404, reason="Not Found")
        return NS(data=self.configmaps[name])

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        return NS(status=NS(container_statuses=[
            NS(name="haproxy", restart_count=0, ready=True, state=NS(running=True)),
            NS(name="agent", restart_count=self.restarts, ready=True,
               state=NS(running=True))]))

    def delete_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> None:
        self.deleted.append(name)


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch) -> FakeCore:
    core = FakeCore()
    monkeypatch.setattr(pp, "core_api", lambda api: core)
    monkeypatch.setattr(kb, "core_api", lambda api: core)
    return core


def test_agent_state_is_the_agents_report(fake_core: FakeCore) -> None:
    proxy = pp.PodProxy(NO_API, "e2e-x", "web-lb", "web-lb-abc-1")
    assert proxy.agent_state() == {}  # no ConfigMap yet
    fake_core.configmaps["web-lb-agents"] = {"other-pod": "{}"}
    assert proxy.agent_state() == {}  # no report from this Pod yet
    report = {"configHash": "abc", "structureHash": "def", "error": None, "reloads": 2,
              "time": "2026-01-01T00:00:00Z"}
    fake_core.configmaps["web-lb-agents"]["web-lb-abc-1"] = json.dumps(report)
    assert proxy.agent_state() == report


def test_agent_starts_count_container_restarts(fake_core: FakeCore) -> None:
    fake_core.restarts = 4  # restarts before the test are not the test's
    proxy = pp.PodProxy(NO_API, "e2e-x", "web-lb", "web-lb-abc-1")
    assert proxy.agent_starts() == 1
    fake_core.restarts = 5
    assert proxy.agent_starts() == 2
    assert proxy.alive()


def test_deployment_backends_only_register_and_forget(fake_core: FakeCore) -> None:
    backends = kb.DeploymentBackends(NO_API, "e2e-x")
    backends.guard()
    backends.register("web-1", "10.244.1.5", "worker1")
    backends.register("api-1", "10.244.2.5")
    assert set(backends.backends) == {"web-1", "api-1"}
    assert backends.by_address()["10.244.1.5"].pod == "web-1"
    backends.check_routes()
    backends.remove("web-1")
    backends.close()
    assert backends.backends == {} and fake_core.deleted == []  # the Deployment's Pods


# --------------------------------------------------------------------------- PortForward


def test_port_forward_ensure_restarts_on_the_same_port(tmp_path: Path) -> None:
    argfile = tmp_path / "args"
    argfile.write_text("")
    exe = tmp_path / "kubectl"
    from tests.harness.test_kind_backends import FAKE_KUBECTL as FORWARD_KUBECTL
    exe.write_text(FORWARD_KUBECTL.format(python=sys.executable, argfile=str(argfile)))
    exe.chmod(0o755)
    pf = kb.PortForward("e2e-x", "svc/web-lb", 28443, kubectl=str(exe), timeout=20)
    try:
        port = pf.ensure()
        assert pf.ensure() == port and len(argfile.read_text().splitlines()) == 1
        assert pf.proc is not None
        pf.proc.kill()  # as kubectl does when its Pod goes
        pf.proc.wait(5)
        assert not pf.alive()
        assert pf.ensure() == port and pf.alive()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        lines = argfile.read_text().splitlines()
        assert len(lines) == 2 and all(line.endswith(f"svc/web-lb {port}:28443")
                                       for line in lines)
    finally:
        pf.stop()


def test_port_forward_restart_keeps_kubectl_running(tmp_path: Path) -> None:
    argfile = tmp_path / "args"
    argfile.write_text("")
    exe = tmp_path / "kubectl"
    from tests.harness.test_kind_backends import FAKE_KUBECTL as FORWARD_KUBECTL
    exe.write_text(FORWARD_KUBECTL.format(python=sys.executable, argfile=str(argfile)))
    exe.chmod(0o755)
    pf = kb.PortForward("e2e-x", "svc/web-rp", 28080, kubectl=str(exe), timeout=20,
                        restart=True)
    with pf as port:
        first = pf.proc
        assert first is not None
        first.kill()  # as kubectl does after a refused connection
        kb.wait_for(lambda: pf.restarts == 1 and pf.proc is not first and _accepts(port), 20,
                    "kubectl started again", 0.1)
        assert pf.ensure() == port
        last = pf.proc
    assert last is not None and last.poll() is not None, "stopped for good on exit"
    time.sleep(1.0)
    assert pf.restarts == 1 and len(argfile.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- traffic helpers


@contextlib.contextmanager
def netns_server_on_loopback(name: str) -> Iterator[int]:
    """The netns backends' server script, here on 127.0.0.1 (no namespace needed)."""
    port = kb.free_port()
    proc = subprocess.Popen([sys.executable, "-c", NETNS_SERVER, "127.0.0.1", str(port), name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kb.wait_for(lambda: _accepts(port), 15, "the netns server script listening", 0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(5)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def echo_image_server_on_loopback(name: str) -> Iterator[int]:
    e = start_echo(name)
    try:
        yield e.port
    finally:
        stop_echo(e)


@pytest.mark.parametrize("server", [netns_server_on_loopback, echo_image_server_on_loopback],
                         ids=["netns", "echo-image"])
def test_seen_headers_and_websocket_read_the_same_from_both_backends(server: Any) -> None:
    with server("web-7d9f8-abcde") as port:
        reply = traffic.request(port, host="shop.e2e.test", path="/v2/items?q=1",
                                headers={"X-Route": "api", "X-Forwarded-Proto": "http"})
        assert reply.status == 200 and reply.backend == "web-7d9f8-abcde"
        assert reply.seen("Path") == "/v2/items?q=1"
        seen = traffic.decode_seen_headers(reply)
        assert seen.get("x-route") == "api" and seen.get("X-Forwarded-Proto") == "http"
        assert "X-Drop" not in seen and "Path" not in seen and "Method" not in seen
        backend, echoed = traffic.websocket_roundtrip(port, "hello", host="shop.e2e.test",
                                                      path="/ws")
        assert backend == "web-7d9f8-abcde" and echoed == "hello", (backend, echoed)


def test_websocket_roundtrip_keeps_a_prefix_naming_another_backend() -> None:
    class FakeWS:
        headers = traffic.Headers([("X-Backend", "web-a")])

        def __enter__(self) -> FakeWS:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def send_text(self, text: str) -> None:
            self.text = text

        def recv_text(self) -> str:
            return f"web-b: {self.text}"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traffic.WebSocket, "connect", classmethod(lambda cls, *a, **k: FakeWS()))
        assert traffic.websocket_roundtrip(1, "hi", host="x") == ("web-a", "web-b: hi")
