"""Traffic through the real data plane: operator -> ConfigMap -> agent -> HAProxy -> backends.

Every request goes to 127.0.0.1:env.local_port(<listener port>) and is answered by a
backend with its Pod name. Locally (E2E_CLUSTER=local) that is HAProxy on the host and an
HTTP server in the network namespace that owns the kwok Pod's IP; on a real cluster
(E2E_CLUSTER=kubeconfig) a port-forward to the proxy Pod and echo Pods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e.harness import modes, traffic
from e2e.harness.service_relay import SERVICE, proxy_access
from kubernetes import client
from tests.e2e.conftest import (
    BULK_BACKENDS,
    HTTPS_PORT,
    LISTENER_PORT,
    Env,
    bulk_endpoints,
    measure,
)
from tests.integration.operator_process import condition, get_lb, wait_for


def _ready_env(env_factory: Callable[..., Env], **spec: Any) -> Env:
    env = env_factory(**spec)
    expected = set(env.backends.backends)
    traffic.wait_for_backends(env.port, expected, timeout=90)
    return env


def test_round_robin_spreads_over_every_ready_backend(env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    counts = traffic.spread(env.port, 300)
    print(f"300 requests: {dict(counts)}")
    assert "<error>" not in counts, counts
    assert set(counts) == set(env.backends.backends)
    for pod, n in counts.items():
        assert 80 <= n <= 120, f"{pod} got {n} of 300: {dict(counts)}"


def test_not_ready_backend_stops_getting_traffic_without_reload(
        env_factory: Callable[..., Env]) -> None:
    """Each backend in turn: NotReady -> no new requests within 1 s; Ready -> back.

    Times are measured from the Pod status change (env.set_ready: the patch locally; on a
    real cluster, the EndpointSlice showing the kubelet's report, since the EndpointSlice
    controller's delay is the cluster's) to the last (first) reply from that backend,
    with 3 clients sending requests back to back.
    """
    env = _ready_env(env_factory)
    proxy = env.proxy
    assert proxy is not None
    master, workers, _ = proxy.show_proc()
    reloads = proxy.agent_state().get("reloads")
    everyone = set(env.backends.backends)
    timings: list[tuple[str, float, float]] = []

    load = traffic.Load(env.port, connections=3, keep_replies=True, max_seconds=180).start()
    try:
        for victim in sorted(everyone):
            time.sleep(1.0)
            t0 = env.set_ready(victim, False)
            time.sleep(3.0)
            t_back = time.monotonic()
            env.set_ready(victim, True)
            back = measure(lambda v=victim, t=t_back: any(
                r.backend == v and r.at > t for r in list(load.replies)), 30,
                f"{victim} answering again")
            down = [r for r in list(load.replies) if t0 <= r.at < t_back]
            gone = max((r.at for r in down if r.backend == victim), default=t0) - t0
            timings.append((victim, gone, back))
            late = [r for r in down if r.at > t0 + 1.0 and r.backend == victim]
            assert not late, f"{victim} still answered {len(late)} request(s) 1 s after NotReady"
            assert {r.backend for r in down if r.at > t0 + 1.0} == everyone - {victim}
    finally:
        load.stop()
    for victim, gone, back in timings:
        print(f"{victim}: NotReady -> last request after {gone * 1000:.0f} ms; "
              f"Ready -> first request after {back * 1000:.0f} ms")
    print(f"{len(load.replies)} replies, {len(load.failures)} failures")
    assert not load.failures, load.failures[:5]
    # Endpoint readiness is runtime state: no reload, same master, same worker.
    assert proxy.show_proc()[:2] == (master, workers)
    assert proxy.agent_state().get("reloads") == reloads
    counts = traffic.spread(env.port, 30)
    assert set(counts) == everyone, counts


def test_thousands_of_endpoints_reach_haproxy_through_a_compressed_configmap(
        env_factory: Callable[..., Env]) -> None:
    """4,000 more endpoints, NotReady, in a second Service: 8,192 slots, more text than a
    ConfigMap holds, so it travels gzipped. The agent reads it, HAProxy runs every slot,
    and the three real backends still turn NotReady and back at run time."""
    env = _ready_env(env_factory, before=bulk_endpoints(4000), backends=BULK_BACKENDS)
    proxy = env.proxy
    assert proxy is not None
    cm = client.CoreV1Api(env.kube).read_namespaced_config_map("web-lb", env.namespace)
    assert not cm.data and set(cm.binary_data) == {"haproxy.cfg.gz", "servers.json.gz"}
    digest = cm.metadata.annotations["roundhouse.dev/config-hash"]
    wait_for(lambda: proxy.agent_state().get("configHash") == digest, 60, "agent on the config")
    state = proxy.stats("show servers state be_http").splitlines()
    slots = [f for line in state if len(f := line.split()) > 6 and f[0] != "#"]
    assert len(slots) == 8192, len(slots)
    # srv_op_state (column 6) is 2, running, for the three real backends only: the 4,000
    # NotReady ones and the free slots are in maintenance.
    assert sum(1 for f in slots if f[5] == "2") == 3, [f[:7] for f in slots if f[5] == "2"]
    master, workers, _ = proxy.show_proc()
    reloads = proxy.agent_state().get("reloads")
    victim = sorted(env.backends.backends)[0]
    t0 = env.set_ready(victim, False)
    measure(lambda: all(traffic.get(env.port).backend != victim for _ in range(6)),
            30, f"{victim} out of rotation")
    out = time.monotonic() - t0
    env.set_ready(victim, True)
    traffic.wait_for_backends(env.port, set(env.backends.backends), timeout=30)
    print(f"8,192 slots: {victim} out of rotation {out * 1000:.0f} ms after NotReady")
    assert proxy.show_proc()[:2] == (master, workers)
    assert proxy.agent_state().get("reloads") == reloads


def test_status_ready_and_programmed_through_the_real_agent_report(
        env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    assert env.proxy is not None
    lb = wait_for(lambda: (o := get_lb(env.kube, env.namespace, "web")) and condition(
        o, "Ready").get("status") == "True" and o, 60, "Ready=True")
    assert condition(lb, "Programmed")["status"] == "True"
    assert condition(lb, "Programmed")["reason"] == "Programmed"
    core = client.CoreV1Api(env.kube)
    cm = core.read_namespaced_config_map("web-lb", env.namespace)
    digest = cm.metadata.annotations["roundhouse.dev/config-hash"]
    reports = core.read_namespaced_config_map("web-lb-agents", env.namespace).data or {}
    report = json.loads(reports[env.proxy.pod_name])
    assert report["configHash"] == digest and report["error"] is None, report
    assert env.proxy.agent_state()["configHash"] == digest
    assert lb["status"]["backends"] == {"ready": 3, "total": 3}


def test_default_max_connections_start_under_the_sandbox_open_files_limit(
        env_factory: Callable[..., Env]) -> None:
    """This machine's RLIMIT_NOFILE is 20000 and cannot be raised: a global maxconn of
    10000 (20041 FDs) made HAProxy refuse to start on a real node here. It serves now,
    and the status names the connections it really accepts."""
    env = _ready_env(env_factory, limits={"maxConnections": 10_000})
    assert env.proxy is not None
    assert "<error>" not in traffic.spread(env.port, 30)
    lb = wait_for(lambda: (o := get_lb(env.kube, env.namespace, "web")) and condition(
        o, "Programmed").get("reason") == "ConnectionLimitReduced" and o, 60,
        "Programmed=True/ConnectionLimitReduced")
    programmed = condition(lb, "Programmed")
    assert programmed["status"] == "True"
    report = json.loads(client.CoreV1Api(env.kube).read_namespaced_config_map(
        "web-lb-agents", env.namespace).data[env.proxy.pod_name])
    assert 9_000 < report["maxconn"] < 10_000 and report["ulimitN"] <= 20_000, report
    assert f"{env.proxy.pod_name} at most {report['maxconn']} (open-files limit " \
           f"{report['ulimitN']})" in programmed["message"], programmed
    ready = condition(lb, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ConnectionLimitReduced")


def _cookie(reply: traffic.Reply) -> str:
    assert reply.cookie, f"no Set-Cookie from {reply.backend}"
    return reply.cookie.split(";")[0].strip()


def _pinned(port: int, cookie: str, n: int = 10) -> set[str | None]:
    return {traffic.get(port, headers={"Cookie": cookie}).backend for _ in range(n)}


def test_cookie_persistence_across_scaling(env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory, sessionPersistence={
        "type": "Cookie", "cookieName": "RH_E2E", "maxAge": "1h"})

    def collect(wanted: set[str]) -> dict[str, str]:
        cookies: dict[str, str] = {}
        for _ in range(20 * len(wanted)):  # bounded: round robin visits each soon
            r = traffic.get(env.port)
            if r.backend in wanted and r.backend not in cookies:
                cookies[r.backend] = _cookie(r)
            if set(cookies) == wanted:
                return cookies
        raise AssertionError(f"no cookie from {wanted - set(cookies)}")

    assert env.proxy is not None
    procs = env.proxy.show_proc()[:2]
    cookies = collect(set(env.backends.backends))
    for backend, cookie in cookies.items():
        assert _pinned(env.port, cookie) == {backend}, (backend, cookie)

    env.scale(5)
    five = env.sync_backends(5)
    traffic.wait_for_backends(env.port, set(five), timeout=60)
    for backend, cookie in cookies.items():
        assert _pinned(env.port, cookie) == {backend}, f"{backend} lost its clients at 5"
    cookies.update(collect(set(five) - set(cookies)))
    assert len(cookies) == 5

    env.scale(2)
    two = env.sync_backends(2, prune=False)
    traffic.wait_for_backends(env.port, set(two), timeout=60)
    env.prune(two)
    for backend, cookie in cookies.items():
        got = _pinned(env.port, cookie)
        if backend in two:
            assert got == {backend}, f"{backend} lost its clients at 2: {got}"
        else:
            # Its Pod is going: while it drains (a real Pod serves through its preStop
            # pause) its clients may still reach it; then they are redispatched to a live
            # one. Never an error (None).
            assert None not in got and got <= {*two, backend}, (
                f"client of gone {backend} got {got}")
    # Scaling only moves servers between slots: run time, no reload.
    assert env.proxy.show_proc()[:2] == procs
    print(f"cookies held over 3 -> 5 -> 2 for {sorted(two)}; HAProxy {procs} not reloaded")


def _slots(proxy: Any, backend: str = "be_http") -> int:
    state = proxy.stats(f"show servers state {backend}").splitlines()
    return sum(1 for line in state if len(f := line.split()) > 6 and f[0] != "#")


def test_scaling_out_and_in_never_reloads(env_factory: Callable[..., Env]) -> None:
    """4 -> 8 -> 2 -> 0 -> 3 -> 40 Pods. 8 and 40 endpoints outgrow the pre-allocated
    slots (8 -> 16 -> 64): the agent adds those servers through the Runtime API, so no
    step reloads (the agent's reload count, HAProxy's master and worker PIDs), and after
    each step the traffic reaches exactly the ready Pods (none at 0: 503)."""
    env = _ready_env(env_factory, replicas=4)
    proxy = env.proxy
    assert proxy is not None
    procs = proxy.show_proc()[:2]
    reloads = proxy.agent_state().get("reloads")
    steps: list[str] = []
    for n in (8, 2, 0, 3, 40):
        t0 = time.monotonic()
        env.scale(n)
        if n:
            pods = set(env.sync_backends(n, timeout=180.0, prune=False))
            counts = traffic.wait_for_backends(env.port, pods, timeout=120, batch=3 * n)
        else:
            wait_for(lambda: not env.pods(), 120, "no web Pods")
            pods = set()
            measure(lambda: traffic.get(env.port).status == 503, 60, "503 with no endpoints")
            counts = traffic.spread(env.port, 10)
            assert set(counts) == {"<error>"}, counts
        env.prune(pods)
        took = time.monotonic() - t0
        answering = f"{len(counts)} Pods answering" if pods else "503 only"
        steps.append(f"{n} Pods ({_slots(proxy)} slots): {took:.1f} s, {answering}")
        # Exactly the ready set, a batch of 3 requests per Pod (round robin: each one).
        assert set(counts) == (pods or {"<error>"}), (n, dict(counts))
        assert proxy.show_proc()[:2] == procs, f"HAProxy reloaded at {n} Pods"
        assert proxy.agent_state().get("reloads") == reloads, f"agent reloaded at {n} Pods"
    assert _slots(proxy) == 64
    print("; ".join(steps) + f"; HAProxy {procs} never reloaded")


def test_https_with_operator_issued_certificate(env_factory: Callable[..., Env]) -> None:
    import base64
    import ssl

    env = _ready_env(env_factory, listeners=[
        {"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"},
        {"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS",
         "tls": {"dnsNames": ["web.e2e.test"]}}])
    tls_port = env.local_port(HTTPS_PORT)
    secret = client.CoreV1Api(env.kube).read_namespaced_secret("web-lb-tls", env.namespace)
    ca = base64.b64decode(secret.data["ca.crt"]).decode()
    ctx = ssl.create_default_context(cadata=ca)
    counts: dict[str, int] = {}
    for _ in range(30):
        r = traffic.get(tls_port, tls=ctx, server_hostname="web.e2e.test")
        assert r.error is None, r.error
        counts[r.backend or ""] = counts.get(r.backend or "", 0) + 1
    assert set(counts) == set(env.backends.backends), counts
    wrong = traffic.get(tls_port, tls=ctx, server_hostname="other.e2e.test")
    assert wrong.error and "CERTIFICATE_VERIFY_FAILED" in wrong.error, wrong
    untrusted = traffic.get(tls_port, tls=ssl.create_default_context(),
                            server_hostname="web.e2e.test")
    assert untrusted.error and "CERTIFICATE_VERIFY_FAILED" in untrusted.error, untrusted


def test_structural_changes_under_load_lose_nothing(env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    proxy = env.proxy
    assert proxy is not None
    master, workers, _ = proxy.show_proc()
    reloads = int(proxy.agent_state().get("reloads") or 0)
    changes, seconds = 50, []
    with traffic.Load(env.port, connections=20, max_seconds=600) as load:
        time.sleep(1.0)
        previous = env.config_hash()
        for i in range(changes):
            start = time.monotonic()
            env.patch_lb({"timeouts": {"server": f"{31 + i}s"}})
            digest = wait_for(lambda p=previous: (h := env.config_hash()) != p and h, 30,
                              f"config hash after change {i}", interval=0.05)
            wait_for(lambda d=digest: proxy.agent_state().get("configHash") == d, 30,
                     f"agent applying change {i}", interval=0.05)
            seconds.append(time.monotonic() - start)
            previous = digest
        time.sleep(1.0)
        ok, failed = load.snapshot()
    now_master, now_workers, _ = proxy.show_proc()
    done = int(proxy.agent_state().get("reloads") or 0) - reloads
    print(f"{changes} structural changes, {done} reloads, patch->applied median "
          f"{sorted(seconds)[len(seconds) // 2] * 1000:.0f} ms, max {max(seconds) * 1000:.0f} "
          f"ms; {ok} requests ok, {failed} failed: {load.failures[:5]}")
    assert failed == 0, load.failures[:10]
    assert ok > changes * 20
    assert done == changes
    assert now_master == master and now_workers != workers
    assert f"timeout server {31 + changes - 1}s" in proxy.running_config()


@pytest.mark.skipif(
    not modes.is_local() and proxy_access() == SERVICE,
    reason="through the Service: while its agent container restarts, Kubernetes counts the "
           "proxy Pod NotReady (every container counts), so with the suite's one proxy "
           "replica the Service has no endpoint for that moment; port-forward (kind) and the "
           "local tier reach HAProxy directly, and 2+ replicas (the default) keep serving")
def test_agent_restart_adopts_the_running_config_without_reload(
        env_factory: Callable[..., Env]) -> None:
    env = _ready_env(env_factory)
    proxy = env.proxy
    assert proxy is not None
    wait_for(lambda: proxy.agent_state().get("configHash") == env.config_hash(), 30,
             "agent caught up")
    procs, reloads = proxy.show_proc()[:2], proxy.agent_state().get("reloads")
    with traffic.Load(env.port, connections=5, max_seconds=120) as load:
        proxy.restart_agent()
        time.sleep(3.0)
        env.scale(4)  # the new agent still applies changes (at run time)
        four = env.sync_backends(4)
        traffic.wait_for_backends(env.port, set(four), timeout=60)
    assert not load.failures, load.failures[:5]
    assert proxy.show_proc()[:2] == procs
    assert proxy.agent_state().get("reloads") == reloads
    assert proxy.agent_starts() == 2


def test_certificate_rotation_is_hot_swapped(env_factory: Callable[..., Env]) -> None:
    import base64
    import ssl

    env = _ready_env(env_factory, listeners=[
        {"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"},
        {"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS",
         "tls": {"dnsNames": ["web.e2e.test"]}}])
    tls_port = env.local_port(HTTPS_PORT)
    proxy = env.proxy
    assert proxy is not None
    core = client.CoreV1Api(env.kube)

    def served_cert() -> bytes:
        import socket
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="web.e2e.test") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der
        return der

    secret = core.read_namespaced_secret("web-lb-tls", env.namespace)
    old_der = served_cert()
    old_pem = base64.b64decode(secret.data["tls.crt"]).decode()
    assert ssl.DER_cert_to_PEM_cert(old_der).split("-----")[2].split() == \
        old_pem.split("-----")[2].split()
    procs = proxy.show_proc()[:2]
    core.delete_namespaced_secret("web-lb-tls", env.namespace)
    new = wait_for(lambda: (s := core.read_namespaced_secret("web-lb-tls", env.namespace))
                   and s.data["tls.crt"] != secret.data["tls.crt"] and s, 60,
                   "a re-issued certificate")
    new_pem = base64.b64decode(new.data["tls.crt"]).decode()
    wait_for(lambda: ssl.DER_cert_to_PEM_cert(served_cert()).split("-----")[2].split()
             == new_pem.split("-----")[2].split(), 60, "HAProxy serving the new certificate")
    print("proxy logs:\n" + proxy.logs())
    ca = base64.b64decode(new.data["ca.crt"]).decode()
    r = traffic.get(tls_port, tls=ssl.create_default_context(cadata=ca),
                    server_hostname="web.e2e.test")
    assert r.error is None, r.error
    print(f"HAProxy before {procs}, after {proxy.show_proc()[:2]}")
    assert proxy.show_proc()[:2] == procs  # set/commit ssl cert: no reload


def test_health_check_takes_a_dead_backend_out_and_back(
        env_factory: Callable[..., Env]) -> None:
    """The Pod stays Ready; only HAProxy's own HTTP check sees its server die."""
    env = _ready_env(env_factory, healthCheck={
        "type": "HTTP", "path": "/healthz", "expectStatus": 200, "interval": "500ms",
        "rise": 2, "fall": 2})
    proxy = env.proxy
    assert proxy is not None
    victim = sorted(env.backends.backends)[0]
    everyone = set(env.backends.backends)
    with traffic.Load(env.port, connections=3, keep_replies=True, max_seconds=120) as load:
        time.sleep(1.0)
        t0 = time.monotonic()
        env.backends.stop_server(victim)
        time.sleep(4.0)
        t1 = time.monotonic()
        env.backends.start_server(victim)
        back = measure(lambda: any(r.backend == victim and r.at > t1
                                   for r in list(load.replies)), 30, f"{victim} back")
    down = [r for r in load.replies if t0 + 2.5 < r.at < t1]
    print(f"dead server out, back {back * 1000:.0f} ms after restart; "
          f"{len(load.failures)} failures: {load.failures[:3]}")
    assert down and {r.backend for r in down} == everyone - {victim}
    # A request the server was answering when killed is lost (502, "SH--" in the log:
    # already sent, not retried), at most one per client. Every later one is refused
    # at connect and redispatched (option redispatch + retries): no failure.
    assert len(load.failures) <= 3, load.failures
    assert all(at < t0 + 0.5 for at, _ in load.failures), (t0, load.failures)


def test_http_redirect_to_https_keeps_port_path_and_query(
        env_factory: Callable[..., Env]) -> None:
    import http.client

    tls_port = HTTPS_PORT
    redirect_port = LISTENER_PORT + 1
    env = _ready_env(env_factory, listeners=[
        {"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"},
        {"name": "redirect", "port": redirect_port, "protocol": "HTTP",
         "redirectToHTTPS": True},
        {"name": "https", "port": tls_port, "protocol": "HTTPS",
         "tls": {"dnsNames": ["web.e2e.test"]}}])
    # The Host header names the listener port, as a client of the proxy would.
    conn = http.client.HTTPConnection("127.0.0.1", env.local_port(redirect_port), timeout=5)
    try:
        conn.request("GET", "/a/b?x=1&y=2", headers={"Host": f"web.e2e.test:{redirect_port}"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert env.proxy is not None
    print(f"{resp.status} Location: {resp.getheader('Location')}")
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://web.e2e.test:{tls_port}/a/b?x=1&y=2"
