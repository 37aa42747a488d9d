"""The e2e backend server (e2e/harness/netns.py SERVER) against the e2e clients
(e2e/harness/traffic.py), on 127.0.0.1 without network namespaces: each side tests the
other. Ports are free ones picked at run time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e.harness import traffic
from e2e.harness.netns import SERVER, Backend, Backends, NetnsError

POD = "pod-a"
NAME = "backend.test"  # the name in the backend certificate


# -- fixtures --------------------------------------------------------------------------------

@dataclass
class Certs:
    ca_pem: str
    cert_pem: str
    key_pem: str
    cert_der: bytes
    cert_file: Path
    key_file: Path

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA and a serving certificate for NAME and 127.0.0.1 (a proper chain,
    so strict verification modes accept it too)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(_name("e2e test CA")).issuer_name(
        _name("e2e test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(NAME)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert_pem = leaf.public_bytes(pem).decode()
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    d = tmp_path_factory.mktemp("certs")
    (d / "tls.crt").write_text(cert_pem)
    (d / "tls.key").write_text(key_pem)
    return Certs(ca.public_bytes(pem).decode(), cert_pem, key_pem,
                 leaf.public_bytes(serialization.Encoding.DER), d / "tls.crt", d / "tls.key")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(program: str, args: list[str], ports: list[int]) -> subprocess.Popen[bytes]:
    """Run `program` like Backends does (minus the netns); return once all `ports` accept."""
    proc = subprocess.Popen([sys.executable, "-c", program, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    for port in ports:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"server exited {proc.returncode}: {out}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"nothing listens on {port}"
                time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Running:
    port: int
    tls_port: int


@pytest.fixture(scope="module")
def server(certs: Certs) -> Iterator[Running]:
    """One server with both listeners: argv = [ip, port, pod, tls_port, cert, key]."""
    port, tls_port = free_port(), free_port()
    proc = start(SERVER, ["127.0.0.1", str(port), POD, str(tls_port), str(certs.cert_file),
                          str(certs.key_file)], [port, tls_port])
    yield Running(port, tls_port)
    stop(proc)


# -- plain HTTP --------------------------------------------------------------------------------

def test_the_old_three_argument_form_still_serves_the_pod_name() -> None:
    port = free_port()
    proc = start(SERVER, ["127.0.0.1", str(port), POD], [port])
    try:
        r = traffic.get(port)
        assert (r.backend, r.status, r.error, r.body) == (POD, 200, None, f"{POD}\n")
        assert r.headers["X-Backend"] == POD
        assert r.seen("TLS") == "none"
    finally:
        stop(proc)


def test_get_reports_path_method_and_host(server: Running) -> None:
    r = traffic.request(server.port, host="app.e2e.test", path="/a/b?x=1&y=%20z")
    assert (r.status, r.error, r.body, r.backend) == (200, None, f"{POD}\n", POD)
    assert r.headers["x-backend"] == r.headers["X-BACKEND"] == POD  # any case
    assert r.seen("Path") == "/a/b?x=1&y=%20z"
    assert r.seen("Method") == "GET"
    assert r.seen("Host") == "app.e2e.test"
    assert r.headers["Content-Type"] == "text/plain"


def test_default_host_header_is_the_address_and_port(server: Running) -> None:
    assert traffic.request(server.port).seen("Host") == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_read_the_body_and_answer_the_same(server: Running, method: str) -> None:
    payload = b"x" * 100_000 + b"end"
    r = traffic.request(server.port, method=method, path="/items/7", body=payload)
    assert (r.status, r.body) == (200, f"{POD}\n")
    assert r.seen("Method") == method
    assert r.seen("Path") == "/items/7"
    assert r.seen("Body-Length") == str(len(payload))
    assert r.seen("Body-Sha256") == hashlib.sha256(payload).hexdigest()


def test_bodies_are_drained_so_keep_alive_stays_in_sync(server: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        answers = []
        for method, body, chunked in [("POST", b"a" * 5000, False), ("GET", None, False),
                                      ("PUT", [b"ab", b"cde"], True), ("DELETE", None, False)]:
            conn.request(method, "/k", body=body, encode_chunked=chunked)
            resp = conn.getresponse()
            answers.append((resp.status, resp.read(), resp.getheader("X-Seen-Method"),
                            resp.getheader("X-Seen-Body-Length")))
        assert answers == [(200, f"{POD}\n".encode(), "POST", "5000"),
                           (200, f"{POD}\n".encode(), "GET", "0"),
                           (200, f"{POD}\n".encode(), "PUT", "5"),
                           (200, f"{POD}\n".encode(), "DELETE", "0")]
    finally:
        conn.close()


def test_head_has_headers_but_no_body(server: Running) -> None:
    r = traffic.request(server.port, method="HEAD", path="/h")
    assert (r.status, r.body) == (200, "")
    assert r.headers["Content-Length"] == str(len(f"{POD}\n"))
    assert r.backend == POD  # from X-Backend: there is no body line
    assert r.seen("Method") == "HEAD"


def test_seen_headers_round_trip(server: Running) -> None:
    sent = {"X-Test-One": "a b", "X-Quote": 'he said "hi", then: left', "X-Latin": "café",
            "Authorization": "Bearer t0k3n==", "X-Forwarded-For": "192.0.2.1"}
    r = traffic.request(server.port, host="hdr.e2e.test", headers=sent)
    seen = traffic.decode_seen_headers(r)
    for name, value in sent.items():
        assert seen[name] == value
        assert seen[name.lower()] == value  # case-insensitive lookups
    assert seen["Host"] == "hdr.e2e.test"
    assert seen["connection"] == "close"
    assert isinstance(seen, dict)
    # The raw header value decodes too (padding optional), and a reply without it is an error.
    assert traffic.decode_seen_headers(r.headers["X-Seen-Headers"].rstrip("=")) == seen
    with pytest.raises(ValueError, match="no X-Seen-Headers"):
        traffic.decode_seen_headers(traffic.Reply(None, 0, "refused"))


def test_get_keeps_its_old_contract(server: Running) -> None:
    r = traffic.get(server.port, path="/x", headers={"Host": "old.e2e.test"})
    assert (r.backend, r.status, r.error, r.cookie) == (POD, 200, None, None)
    assert r.seen("Host") == "old.e2e.test"
    assert traffic.spread(server.port, 5) == {POD: 5}
    refused = traffic.get(free_port(), timeout=1)
    assert refused.backend is None and refused.status == 0
    assert refused.error and "ConnectionRefused" in refused.error


# -- WebSocket -------------------------------------------------------------------------------

def test_websocket_echo_prefixes_the_pod_name(server: Running) -> None:
    assert traffic.websocket_echo(server.port, "hello", host="ws.e2e.test",
                                  path="/chat?room=1") == f"{POD}: hello"


def test_websocket_frames_sizes_ping_and_close(server: Running) -> None:
    with traffic.WebSocket.connect(server.port, host="ws.e2e.test", path="/live") as ws:
        assert ws.status == 101
        assert ws.headers["X-Backend"] == POD
        assert ws.headers.get("X-Seen-Path") == "/live"
        assert ws.headers.get("X-Seen-Host") == "ws.e2e.test"
        for text in ["", "ü" * 100, "m" * 70_000]:  # 7-bit, 16-bit and 64-bit lengths
            ws.send_text(text)
            assert ws.recv_text() == f"{POD}: {text}"
        blob = bytes(range(256)) * 300
        ws.send_binary(blob)
        assert ws.recv() == (traffic.WebSocket.BINARY, blob)  # binary: no prefix
        assert ws.ping(b"are you there") == b"are you there"
        assert ws.close(4000) == 4000  # the server echoes the status code


def test_websocket_without_key_is_refused(server: Running) -> None:
    r = traffic.request(server.port, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert r.status == 400


def test_websocket_client_checks_the_accept_header() -> None:
    """A fake server answering 101 with a wrong Sec-WebSocket-Accept."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with pytest.raises(traffic.WebSocketError, match="Sec-WebSocket-Accept"):
            traffic.websocket_echo(listener.getsockname()[1], "x", host="fake", timeout=2)
        t.join(5)


# -- TLS ---------------------------------------------------------------------------------------

def test_tls_listener_serves_the_same_with_a_verified_certificate(server: Running,
                                                                  certs: Certs) -> None:
    r = traffic.request(server.tls_port, method="POST", host=NAME, path="/secure?q=1",
                        body=b"hello", tls=certs.client())
    assert (r.status, r.error, r.body, r.backend) == (200, None, f"{POD}\n", POD)
    assert r.peer_cert_der == certs.cert_der
    assert r.peer_cert is not None and ("DNS", NAME) in r.peer_cert["subjectAltName"]
    assert r.tls_version in ("TLSv1.2", "TLSv1.3")
    assert r.seen("TLS") == r.tls_version
    assert r.seen("SNI") == NAME  # SNI defaults to the Host header's name
    assert (r.seen("Path"), r.seen("Method"), r.seen("Body-Length")) == ("/secure?q=1",
                                                                          "POST", "5")
    # The plain listener of the same process is unaffected.
    assert traffic.get(server.port).backend == POD


def test_tls_sni_and_name_check_follow_server_hostname(server: Running, certs: Certs) -> None:
    r = traffic.request(server.tls_port, host="other.e2e.test", tls=certs.client(),
                        server_hostname=NAME)
    assert (r.status, r.seen("SNI"), r.seen("Host")) == (200, NAME, "other.e2e.test")
    wrong = traffic.request(server.tls_port, host="other.e2e.test", tls=certs.client())
    assert wrong.status == 0 and wrong.error and "certificate" in wrong.error.lower()
    untrusted = traffic.get(server.tls_port, tls=ssl.create_default_context(),
                            server_hostname=NAME)
    assert untrusted.error is not None
    # The old get() over TLS (what the passthrough e2e tests use) still works.
    assert traffic.get(server.tls_port, tls=certs.client(), server_hostname=NAME).backend == POD


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused(server: Running, certs: Certs) -> None:
    ctx = certs.client()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    assert traffic.request(server.tls_port, host=NAME, tls=ctx).error is not None


def test_websocket_over_tls(server: Running, certs: Certs) -> None:
    assert traffic.websocket_echo(server.tls_port, "secure", host=NAME,
                                  tls=certs.client()) == f"{POD}: secure"


def test_alpn_against_the_backend_is_http1_and_the_context_is_left_clean(
        server: Running, certs: Certs) -> None:
    ctx = certs.client()
    assert traffic.negotiated_alpn(server.tls_port, NAME, ctx) in (None, "http/1.1")
    after = traffic.request(server.tls_port, host=NAME, tls=ctx)
    assert after.status == 200 and after.alpn is None and after.seen("ALPN") == ""


def test_alpn_helper_reports_h2_and_clears_the_offer(certs: Certs) -> None:
    """Against a TLS server that does speak h2: the helper sees it, and the context it
    borrowed offers nothing afterwards."""
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(certs.cert_file, certs.key_file)
    srv_ctx.set_alpn_protocols(["h2", "http/1.1"])
    picked: list[str | None] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with srv_ctx.wrap_socket(conn, server_side=True) as s:
                    picked.append(s.selected_alpn_protocol())

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        port = listener.getsockname()[1]
        ctx = certs.client()
        assert traffic.negotiated_alpn(port, NAME, ctx) == "h2"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=NAME) as s:
            assert s.selected_alpn_protocol() is None
        t.join(5)
    assert picked == ["h2", None]


def test_the_tls_server_variant_of_the_e2e_tests_still_works(certs: Certs) -> None:
    """tests/e2e/test_more_traffic.py wraps SERVER's last line (argv: 5 arguments)."""
    line = "Server((ip, port), Handler).serve_forever()"
    assert SERVER.count(line) == 1
    program = SERVER.replace(line, "import ssl\n"
                             "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
                             "ctx.load_cert_chain(sys.argv[4], sys.argv[5])\n"
                             "srv = Server((ip, port), Handler)\n"
                             "srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
                             "srv.serve_forever()\n")
    port = free_port()
    proc = start(program, ["127.0.0.1", str(port), POD, str(certs.cert_file),
                           str(certs.key_file)], [port])
    try:
        r = traffic.get(port, tls=certs.client(), server_hostname=NAME)
        assert (r.backend, r.error) == (POD, None)
        assert r.seen("TLS") in ("TLSv1.2", "TLSv1.3")
    finally:
        stop(proc)


# -- Backends (no namespaces: only the files and the command line) --------------------------

def test_backends_tls_files_are_private_and_passed_to_the_server(tmp_path: Path,
                                                                 certs: Certs) -> None:
    backends = Backends(tmp_path)
    with pytest.raises(NetnsError):
        backends.enable_tls(certs.cert_pem, certs.key_pem, port=8080)
    backends.enable_tls(certs.cert_pem, certs.key_pem, port=9443)
    plain = Backend("pod-p", "10.244.0.4", "rhe2e-x-0", "rhx0")
    assert Backends.server_command(plain)[-3:] == ["10.244.0.4", "8080", "pod-p"]
    b = Backend("pod-t", "10.244.0.5", "rhe2e-x-1", "rhx1")
    backends._write_tls_files(b, certs.cert_pem, certs.key_pem)
    assert b.tls_cert is not None and b.tls_key is not None and b.tls_port == 9443
    for path in (b.tls_cert, b.tls_key):
        assert path.parent == tmp_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b.tls_cert.read_text() == certs.cert_pem
    assert b.tls_key.read_text() == certs.key_pem
    cmd = Backends.server_command(b)
    assert cmd[:4] == ["ip", "netns", "exec", "rhe2e-x-1"]
    assert cmd[-6:] == ["10.244.0.5", "8080", "pod-t", "9443", str(b.tls_cert),
                        str(b.tls_key)]
