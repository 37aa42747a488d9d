"""More traffic through the real data plane: TCP, TLS passthrough, algorithms, user TLS
Secrets, draining and a rejected config.

Same set-up as test_traffic.py (operator -> ConfigMap -> agent -> HAProxy -> backends,
locally or on a real cluster); every request goes to 127.0.0.1:env.local_port(<listener
port>), bounded loops only.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import traffic
from e2e.harness.modes import is_local
from e2e.harness.netns import SERVER, Backends
from kubernetes import client
from tests.e2e.conftest import (
    BACKEND_SNI,
    CLIENT_ADDRESS_ONLY_LOCAL,
    HTTPS_PORT,
    LISTENER_PORT,
    TLS_BACKENDS_ONLY_LOCAL,
    Env,
    add_https_port,
    ca_secret,
    local_only,
    set_ready,
    tls_serving_backends,
)
from tests.integration.operator_process import condition, get_lb, wait_for

from roundhouse import tls as rtls

TCP_PORT = LISTENER_PORT + 2

# -- a TLS-serving backend variant ---------------------------------------------------------

# The harness's server, with the listening socket wrapped in TLS (cert/key from argv[4:6]).
TLS_SERVER = SERVER.replace(
    "Server((ip, port), Handler).serve_forever()",
    "import ssl\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[4], sys.argv[5])\n"
    "srv = Server((ip, port), Handler)\n"
    "srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
    "srv.serve_forever()\n")
assert TLS_SERVER != SERVER


class TLSBackends(Backends):
    """Backends whose servers speak TLS with a certificate (CN = Pod name) from `ca`."""

    ca: rtls.KeyPair
    serials: dict[str, int]

    def start_server(self, pod: str) -> None:
        b = self.backends[pod]
        assert b.log_path is not None
        if not hasattr(self, "serials"):
            self.serials = {}
        pair = rtls.issue_serving(self.ca, (pod,), dt.datetime.now(dt.UTC))
        crt = self.log_dir / f"backend-{pod}.crt"
        key = self.log_dir / f"backend-{pod}.key"
        crt.write_text(pair.cert_pem)
        key.write_text(pair.key_pem)
        key.chmod(0o600)
        self.serials[pod] = pair.certificate.serial_number
        with b.log_path.open("ab") as log:
            b.proc = subprocess.Popen(
                ["ip", "netns", "exec", b.netns, sys.executable, "-c", TLS_SERVER, b.address,
                 str(b.port), pod, str(crt), str(key)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"})
        self._wait_listening(b)


# -- helpers ----------------------------------------------------------------------------------

def raw_get(port: int, timeout: float = 5.0) -> str | None:
    """An HTTP request over a plain socket; the answering backend (body) or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        return None
    return body.decode().strip() or None


def tls_secret(core: client.CoreV1Api, namespace: str, name: str, crt: str, key: str) -> None:
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(crt.encode()).decode(),
                 "tls.key": base64.b64encode(key.encode()).decode()}})


# -- 1. TCP -------------------------------------------------------------------------------------

def test_tcp_listener_reaches_and_spreads_over_backends(env_factory: Callable[..., Env]) -> None:
    env = env_factory(listeners=[{"name": "tcp", "port": TCP_PORT, "protocol": "TCP"}])
    everyone = set(env.backends.backends)
    assert env.proxy is not None
    assert "mode tcp" in env.proxy.running_config()
    port = env.local_port(TCP_PORT)
    seen = wait_for(lambda: (c := collections.Counter(raw_get(port) for _ in range(20)))
                    and set(c) == everyone and c, 90, "all backends over TCP")
    counts = collections.Counter(raw_get(port) for _ in range(300))
    print(f"TCP 300 raw requests: {dict(counts)} (first batch {dict(seen)})")
    assert None not in counts, counts
    assert set(counts) == everyone
    for pod, n in counts.items():
        assert 80 <= n <= 120, f"{pod} got {n} of 300: {dict(counts)}"


# -- 2. TLS passthrough --------------------------------------------------------------------------

@local_only("every backend needs its own certificate (CN = its Pod name), served by a "
            "netns.Backends subclass; the echo Deployment mounts one Secret for all Pods")
def test_tls_passthrough_shows_the_backends_certificate(env_factory: Callable[..., Env],
                                                        tmp_path: Path) -> None:
    ca = rtls.issue_ca("e2e backend CA", dt.datetime.now(dt.UTC))
    backends = TLSBackends(tmp_path)
    backends.ca = ca
    env = env_factory(servers=backends, listeners=[
        {"name": "pass", "port": HTTPS_PORT, "protocol": "TLSPassthrough"}])
    everyone = set(env.backends.backends)
    ctx = ssl.create_default_context(cadata=ca.cert_pem)
    ctx.check_hostname = False  # the SNI/name differs per backend: check CN/serial below
    port = env.local_port(HTTPS_PORT)

    def one() -> tuple[str | None, int | None, str | None]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="web.e2e.test") as s:
                cert = s.getpeercert()
                der = s.getpeercert(binary_form=True)
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except (OSError, ssl.SSLError):
            return None, None, None
        cn = dict(x[0] for x in cert["subject"]).get("commonName")
        from cryptography import x509
        serial = x509.load_der_x509_certificate(der).serial_number
        return cn, serial, data.partition(b"\r\n\r\n")[2].decode().strip() or None

    wait_for(lambda: {one()[2] for _ in range(20)} == everyone, 90,
             "every TLS backend through the passthrough listener")
    results = [one() for _ in range(60)]
    by = collections.Counter(r[2] for r in results)
    print(f"passthrough 60 handshakes: {dict(by)}; serials {env.backends.serials}")  # type: ignore[attr-defined]
    assert set(by) == everyone, by
    for cn, serial, body in results:
        # The certificate is the backend's own (CN = Pod, serial issued for that Pod), and
        # the bytes behind it come from that same backend: HAProxy did not terminate TLS.
        assert cn == body, (cn, body)
        assert serial == env.backends.serials[body], (body, serial)  # type: ignore[attr-defined]
    # A client that does not trust the backend CA fails: nobody else presented a cert.
    bad = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        bad.wrap_socket(raw, server_hostname="web.e2e.test")


# -- 3. algorithms -------------------------------------------------------------------------------

def test_leastconn_avoids_the_busy_backend(env_factory: Callable[..., Env]) -> None:
    env = env_factory(algorithm="leastconn",
                    listeners=[{"name": "tcp", "port": TCP_PORT, "protocol": "TCP"}])
    everyone = set(env.backends.backends)
    assert env.proxy is not None
    assert "balance leastconn" in env.proxy.running_config()
    port = env.local_port(TCP_PORT)
    wait_for(lambda: {raw_get(port) for _ in range(20)} == everyone, 90, "all backends")
    victim = sorted(everyone)[0]
    held: list[socket.socket] = []

    def keepalive_request(s: socket.socket) -> str | None:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        for _ in range(100):  # bounded
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    return body.decode().strip() or None
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
        return None

    try:
        # Long-running connections (HTTP/1.1 keep-alive over TCP mode): open 9 (leastconn
        # gives each backend 3), then close those that landed elsewhere: only `victim` is busy.
        opened: list[tuple[socket.socket, str | None]] = []
        for _ in range(9):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened.append((s, keepalive_request(s)))
        spread_held = collections.Counter(b for _, b in opened)
        print(f"leastconn: 9 concurrent long connections: {dict(spread_held)}")
        assert spread_held == {b: 3 for b in everyone}, spread_held
        for s, b in opened:
            if b == victim:
                held.append(s)
            else:
                s.close()
        time.sleep(0.3)
        counts = collections.Counter(raw_get(port) for _ in range(60))
        print(f"leastconn: {victim} holds {len(held)} connections; 60 new: {dict(counts)}")
        assert None not in counts, counts
        assert victim not in counts, counts
        assert set(counts) == everyone - {victim}
        # The held connections still work (they were long-running, not dead).
        assert all(keepalive_request(s) == victim for s in held)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    counts = collections.Counter(raw_get(port) for _ in range(30))
    print(f"leastconn after release: {dict(counts)}")
    assert set(counts) == everyone, counts


def test_source_algorithm_pins_one_client_address(env_factory: Callable[..., Env]) -> None:
    env = env_factory(algorithm="source")
    assert env.proxy is not None
    assert "balance source" in env.proxy.running_config()
    everyone = set(env.backends.backends)
    # All backends must be in the server list before we trust the hash.
    wait_for(lambda: env.proxy is not None and all(
        b.address in env.proxy.stats("show servers state") for b in env.backends.backends.values()),
        90, "all servers in HAProxy")
    wait_for(lambda: traffic.get(env.port).error is None, 60, "first answer")
    time.sleep(1.0)
    counts = traffic.spread(env.port, 100)
    print(f"source: 100 requests from 127.0.0.1: {dict(counts)} of {sorted(everyone)}")
    assert "<error>" not in counts, counts
    assert len(counts) == 1 and set(counts) <= everyone, counts


# -- 4. user TLS Secret --------------------------------------------------------------------------

def test_https_with_user_provided_secret(env_factory: Callable[..., Env]) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = rtls.issue_ca("e2e user CA", now)
    pair = rtls.issue_serving(ca, ("user.e2e.test",), now)

    def before(env: Env) -> None:
        tls_secret(client.CoreV1Api(env.kube), env.namespace, "user-tls", pair.cert_pem,
                   pair.key_pem)

    env = env_factory(before=before, listeners=[
        {"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"},
        {"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS",
         "tls": {"secretName": "user-tls"}}])
    everyone = set(env.backends.backends)
    ctx = ssl.create_default_context(cadata=ca.cert_pem)
    tls_port = env.local_port(HTTPS_PORT)
    wait_for(lambda: traffic.get(tls_port, tls=ctx, server_hostname="user.e2e.test")
             .error is None, 90, "HTTPS with the user certificate")
    counts = traffic.spread(tls_port, 30, tls=ctx, server_hostname="user.e2e.test")
    print(f"user-secret HTTPS 30 requests: {dict(counts)}")
    assert set(counts) == everyone, counts
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="user.e2e.test") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509
    assert x509.load_der_x509_certificate(der).serial_number == pair.certificate.serial_number
    # Not the operator's own issued certificate: a default trust store rejects it.
    wrong = traffic.get(tls_port, tls=ssl.create_default_context(),
                        server_hostname="user.e2e.test")
    assert wrong.error and "CERTIFICATE_VERIFY_FAILED" in wrong.error, wrong
    other = traffic.get(tls_port, tls=ctx, server_hostname="other.e2e.test")
    assert other.error and "CERTIFICATE_VERIFY_FAILED" in other.error, other


# -- 5. draining ---------------------------------------------------------------------------------

@local_only("needs a deleted Pod that stays Ready and keeps serving (kwok status + a "
            "finalizer); a real echo Pod stops serving on SIGTERM")
def test_draining_backend_keeps_cookie_clients_only(env_factory: Callable[..., Env]) -> None:
    env = env_factory(sessionPersistence={"type": "Cookie", "cookieName": "RH_E2E",
                                        "maxAge": "1h"})
    everyone = set(env.backends.backends)
    traffic.wait_for_backends(env.port, everyone, timeout=90)
    core = client.CoreV1Api(env.kube)
    victim = sorted(everyone)[0]
    cookie = None
    for _ in range(60):
        r = traffic.get(env.port)
        if r.backend == victim and r.cookie:
            cookie = r.cookie.split(";")[0].strip()
            break
    assert cookie, f"no cookie from {victim}"
    # A finalizer keeps the deleted Pod around: deletionTimestamp set (terminating), and
    # its Ready condition (status taken over from kwok) stays True -> serving.
    core.patch_namespaced_pod(victim, env.namespace, {"metadata": {
        "finalizers": ["roundhouse.dev/e2e-hold"]}})

    def release() -> None:
        with contextlib.suppress(client.ApiException):
            core.patch_namespaced_pod(victim, env.namespace, {"metadata": {"finalizers": None}})
    env.cleanups.append(release)
    set_ready(env.kube, env.namespace, victim, True)
    core.delete_namespaced_pod(victim, env.namespace, grace_period_seconds=600)
    disc = client.DiscoveryV1Api(env.kube)

    def conditions() -> dict[str, Any] | None:
        for sl in disc.list_namespaced_endpoint_slice(
                env.namespace, label_selector="kubernetes.io/service-name=web").items:
            for ep in sl.endpoints or []:
                if ep.target_ref and ep.target_ref.name == victim:
                    c = ep.conditions
                    return {"ready": c.ready, "serving": c.serving, "terminating": c.terminating}
        return None
    published = wait_for(lambda: (c := conditions()) and c["terminating"] and c, 60,
                         "EndpointSlice publishing the terminating endpoint")
    print(f"EndpointSlice for {victim}: {published}")
    assert published == {"ready": False, "serving": True, "terminating": True}, published
    # The Deployment replaces it: give the new Pod a backend, keep the victim's.
    new = env.sync_backends(3, prune=False)
    assert env.proxy is not None
    wait_for(lambda: all(traffic.get(env.port).backend != victim for _ in range(12)),
             60, "victim drained")
    traffic.wait_for_backends(env.port, set(new), timeout=60)
    counts = traffic.spread(env.port, 60)
    pinned = collections.Counter(traffic.get(env.port, headers={"Cookie": cookie}).backend
                                 for _ in range(20))
    print(f"draining {victim}: 60 new requests {dict(counts)}; 20 with its cookie "
          f"{dict(pinned)}")
    assert victim not in counts and "<error>" not in counts, counts
    assert set(counts) == set(new), counts
    assert pinned == {victim: 20}, pinned


# -- 6. bad input: a Secret the operator can judge, and one only HAProxy refuses ---------------

def weak_rsa_pair(name: str) -> tuple[str, str]:
    """A self-signed 1024-bit RSA certificate: well-formed, key matching, but refused by
    OpenSSL's default security level (2) when HAProxy loads it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(65537, 1024)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def test_bad_user_secrets_never_reach_the_serving_proxy(env_factory: Callable[..., Env]) -> None:
    """1. tls.key does not match tls.crt: the operator says so (TLSReady) and leaves the
    listener out, so nothing changes on the proxy. 2. A weak (1024-bit RSA) certificate
    that only HAProxy refuses: the agent keeps the old config serving and reports why,
    and the operator says Programmed=False/ConfigRejected."""
    now = dt.datetime.now(dt.UTC)
    ca = rtls.issue_ca("e2e user CA", now)
    one = rtls.issue_serving(ca, ("user.e2e.test",), now)
    two = rtls.issue_serving(ca, ("user.e2e.test",), now)
    env = env_factory()
    everyone = set(env.backends.backends)
    traffic.wait_for_backends(env.port, everyone, timeout=90)
    proxy = env.proxy
    assert proxy is not None
    core = client.CoreV1Api(env.kube)
    wait_for(lambda: condition(get_lb(env.kube, env.namespace, "web"), "Programmed")
             .get("status") == "True", 60, "Programmed=True before")
    old_hash = proxy.agent_state().get("configHash")
    procs = proxy.show_proc()[:2]
    https = [{"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"},
             {"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS",
              "tls": {"secretName": "bad-tls"}}]

    # 1. Mismatched pair: caught by the operator.
    tls_secret(core, env.namespace, "bad-tls", one.cert_pem, two.key_pem)
    env.patch_lb({"listeners": https})
    tls_ready = wait_for(lambda: (c := condition(get_lb(env.kube, env.namespace, "web"),
                                                 "TLSReady")).get("status") == "False" and c,
                         60, "TLSReady=False")
    assert tls_ready["reason"] == "InvalidSecret", tls_ready
    assert "tls.key does not match the certificate in tls.crt" in tls_ready["message"]
    assert "spec.listeners[1].tls" in tls_ready["message"]
    assert "PRIVATE KEY" not in str(get_lb(env.kube, env.namespace, "web")["status"])
    # The listener is left out, so the proxy's config did not change at all.
    assert set(traffic.spread(env.port, 30)) == everyone
    assert proxy.agent_state().get("configHash") == old_hash
    assert proxy.show_proc()[:2] == procs

    # 2. A weak certificate: only HAProxy can tell; the old config keeps serving.
    weak_crt, weak_key = weak_rsa_pair("user.e2e.test")
    core.replace_namespaced_secret("bad-tls", env.namespace, {
        "metadata": {"name": "bad-tls"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(weak_crt.encode()).decode(),
                 "tls.key": base64.b64encode(weak_key.encode()).decode()}})

    def report() -> dict[str, Any]:
        cm = core.read_namespaced_config_map("web-lb-agents", env.namespace)
        return dict(json.loads((cm.data or {}).get(proxy.pod_name, "{}")))
    with traffic.Load(env.port, connections=3, max_seconds=180) as load:
        rep = wait_for(lambda: (r := report()).get("error") and r, 90,
                       "the agent reporting an error")
        time.sleep(2.0)
    print(f"agent report: {rep}")
    print(f"traffic during: {load.ok} ok, {len(load.failures)} failed {load.failures[:3]}")
    assert not load.failures, load.failures[:5]
    assert load.ok > 0
    assert set(traffic.spread(env.port, 30)) == everyone
    assert proxy.agent_state().get("configHash") == old_hash
    # The HAProxy that serves is the old one. A failed reload through the master (what
    # the agent does where it has no haproxy binary to check with, as in the proxy Pod)
    # leaves it listed among the old workers on 3.x: still the same processes.
    master, workers, old = proxy.show_proc()
    assert master == procs[0] and set(procs[1]) <= {*workers, *old}, (procs, workers, old)
    assert rep.get("configHash") == old_hash, rep
    assert traffic.get(env.local_port(HTTPS_PORT),
                       tls=ssl.create_default_context(cadata=weak_crt),
                       server_hostname="user.e2e.test").error is not None
    # `haproxy -c` names the cause; a proxy image without the haproxy binary in the agent
    # container learns it from the refused reload, worded by the master.
    error = str(rep.get("error"))
    why = "unable to load SSL certificate" if is_local() else "kept the previous"
    assert why in error, rep
    programmed = wait_for(lambda: (c := condition(get_lb(env.kube, env.namespace, "web"),
                                                  "Programmed")).get("reason")
                          == "ConfigRejected" and c, 30, "Programmed=False/ConfigRejected")
    assert programmed["status"] == "False"
    assert why in programmed["message"], programmed
    tls_now = condition(get_lb(env.kube, env.namespace, "web"), "TLSReady")
    assert tls_now["status"] == "True", tls_now  # a well-formed pair: the proxy decides


# -- 7. re-encryption to the backends (LoadBalancer upstreamTLS) --------------------------------

@local_only(TLS_BACKENDS_ONLY_LOCAL)
def test_loadbalancer_reencrypts_verifies_and_waits_for_its_ca(
        env_factory: Callable[..., Env], tmp_path: Path) -> None:
    """HTTPS in, TLS out: the backends see TLS with the configured SNI and are checked over
    TLS; without the CA Secret nothing is sent unverified (503, TLSReady=False), and it
    recovers by itself when the Secret appears; a CA that did not sign them: 503."""
    tls = tls_serving_backends(tmp_path)
    env = env_factory(
        replicas=2, servers=tls.servers, before=lambda e: add_https_port(e.kube, e.namespace),
        backends=[{"service": "web", "port": "https"}],
        upstreamTLS={"caSecretName": "lb-backend-ca", "sni": BACKEND_SNI},
        healthCheck={"type": "HTTP", "path": "/", "interval": "500ms"})
    # No CA yet: TLSReady=False naming the field, and no request reaches a backend.
    tls_ready = wait_for(lambda: (c := condition(get_lb(env.kube, env.namespace, "web"),
                                                 "TLSReady")).get("reason") == "SecretNotFound"
                         and c, 60, "TLSReady=False/SecretNotFound")
    assert tls_ready["status"] == "False" and "spec.upstreamTLS.caSecretName" in tls_ready[
        "message"], tls_ready
    wait_for(lambda: traffic.request(env.port).status == 503, 60, "503 without the CA")
    # The CA appears: the operator re-reconciles on the Secret watch, traffic flows over TLS.
    ca_secret(client.CoreV1Api(env.kube), env.namespace, "lb-backend-ca", tls.ca.cert_pem)
    reply = wait_for(lambda: (r := traffic.request(env.port)).status == 200 and r, 90,
                     "traffic once the CA Secret exists")
    assert reply.seen("TLS") not in (None, "none"), reply.headers
    assert reply.seen("SNI") == BACKEND_SNI, reply.headers
    counts = traffic.spread(env.port, 30)
    print(f"re-encrypted, 30 requests: {dict(counts)}")
    assert set(counts) == set(env.backends.backends), counts
    wait_for(lambda: condition(get_lb(env.kube, env.namespace, "web"), "TLSReady")
             .get("status") == "True", 60, "TLSReady=True")
    # A CA that did not sign the backends' certificate: never sent, 503.
    ca_secret(client.CoreV1Api(env.kube), env.namespace, "lb-backend-ca", tls.other_ca.cert_pem,
              create=False)
    wait_for(lambda: traffic.request(env.port).status == 503, 60, "503 with the wrong CA")
    assert sum(traffic.request(env.port).status != 503 for _ in range(20)) == 0


# -- 8. per-client limits ----------------------------------------------------------------------

def test_request_rate_per_client_answers_429_then_recovers(
        env_factory: Callable[..., Env]) -> None:
    """10 requests per 3 s from one client: a burst of 16 gets its first 10 through and
    429 + Retry-After for the rest; once the window has passed, requests pass again."""
    env = env_factory(replicas=2, limits={"maxConnections": 4000,
                                          "requestRatePerClient": {"requests": 10,
                                                                   "period": "3s"}})
    wait_for(lambda: traffic.request(env.port).status == 200, 90, "traffic")
    time.sleep(6.5)  # two whole windows: HAProxy's rate also weighs the previous one
    burst = [traffic.request(env.port) for _ in range(16)]
    statuses = [r.status for r in burst]
    print(f"burst of 16 at 10/3s: {statuses}")
    assert statuses[:10] == [200] * 10, statuses
    # At most one more can pass, if the burst straddled a window boundary.
    assert statuses.count(200) <= 11 and set(statuses[11:]) == {429}, statuses
    refused = burst[-1]
    assert refused.headers.get("Retry-After") == "3", refused.headers
    assert "Too Many Requests" in refused.body
    time.sleep(6.5)
    assert [traffic.request(env.port).status for _ in range(5)] == [200] * 5


def _current_connections(env: Env) -> int:
    """CurrConns of `show info`: the connections HAProxy holds now."""
    for line in env.proxy.stats("show info").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CurrConns":
            return int(value.strip() or 0)
    return 0


@local_only("holds idle TCP connections open to the proxy; through kubectl port-forward "
            "each is a stream of one forwarding connection, and a refused one is the "
            "forward's error, not the client's")
def test_connections_per_client_are_capped(env_factory: Callable[..., Env]) -> None:
    env = env_factory(replicas=2, limits={"maxConnections": 4000,
                                          "maxConnectionsPerClient": 3})
    wait_for(lambda: traffic.get(env.port).error is None, 90, "traffic")
    assert env.proxy is not None
    # The probe's connection counts for this client until HAProxy has seen it close: on a
    # loaded machine it may see the next three first, and refuse the third as a fourth.
    wait_for(lambda: _current_connections(env) == 0, 15, "HAProxy done with the probes")
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection(("127.0.0.1", env.port), 5))
                for _ in range(3)]
        # HAProxy counts them when it accepts them: wait for that, not a fixed pause
        # (0.3 s was not enough on a loaded machine).
        wait_for(lambda: _current_connections(env) >= 3, 15, "HAProxy holding the three")
        fourth = traffic.get(env.port)
        print(f"a 4th connection while 3 are open: {fourth.error}")
        assert fourth.error is not None and fourth.status == 0, fourth
        idle[0].close()
        again = wait_for(lambda: (r := traffic.get(env.port)).error is None and r, 10,
                         "a connection once one of the three closed")
        assert again.backend in env.backends.backends


@local_only(CLIENT_ADDRESS_ONLY_LOCAL)
def test_allowed_source_ranges_refuse_other_clients(env_factory: Callable[..., Env]) -> None:
    """127.0.0.1/32 allowed: a client from 127.0.0.1 is served, one from 127.0.0.2 is
    refused as it connects (no HTTP answer at all). Widening the list to 127.0.0.0/8 is a
    hitless reload, after which the second client is served too."""
    env = env_factory(replicas=2, allowedSourceRanges=["127.0.0.1/32"])
    wait_for(lambda: traffic.get(env.port).error is None, 90, "traffic from 127.0.0.1")
    refused = traffic.request(env.port, source="127.0.0.2")
    print(f"from 127.0.0.2: {refused.error}")
    assert refused.status == 0 and refused.error is not None, refused
    assert refused.backend is None
    assert env.proxy is not None
    reloads = env.proxy.agent_state().get("reloads")
    load = traffic.Load(env.port, connections=4, max_seconds=60).start()
    try:
        env.patch_lb({"allowedSourceRanges": ["127.0.0.0/8"]})
        served = wait_for(lambda: (r := traffic.request(env.port, source="127.0.0.2"))
                          .status == 200 and r, 60, "127.0.0.2 served once allowed")
    finally:
        load.stop()
    assert served.backend in env.backends.backends
    # The new worker serves before the agent records the reload (its state file is
    # cleared while a reload runs): wait for the record of the current config.
    wait_for(lambda: env.proxy.agent_state().get("configHash") == env.config_hash(), 30,
             "the agent's record of the new config")
    assert env.proxy.agent_state().get("reloads") == (reloads or 0) + 1
    assert not load.failures, load.failures[:5]
