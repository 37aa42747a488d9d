"""The kind echo backend (e2e/kind/echo/server.py), run for real on 127.0.0.1.

Each test starts server.py as a subprocess on random ports (it prints them as one JSON
line), then talks HTTP, HTTPS and WebSocket to it, and drives its control port.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import importlib.util
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "e2e" / "kind" / "echo" / "server.py"

def _load_server() -> Any:
    """server.py as a module (its WebSocket frame helpers), under a unique name."""
    spec = importlib.util.spec_from_file_location("roundhouse_kind_echo_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


echo = _load_server()

HOST = "127.0.0.1"


@dataclass
class Echo:
    proc: subprocess.Popen[str]
    port: int
    control_port: int

    def get(self, path: str = "/", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read().decode()
        finally:
            conn.close()

    def control(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(HOST, self.control_port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


def start_echo(name: str = "pod-a", env: dict[str, str] | None = None) -> Echo:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--bind", HOST, "--port", "0", "--control-port", "0",
         "--name", name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1",
             **(env or {})})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"server.py did not start: {err[-1000:]}")
    ports = json.loads(line)
    return Echo(proc, int(ports["port"]), int(ports["control_port"]))


def stop_echo(e: Echo) -> None:
    e.proc.terminate()
    try:
        e.proc.wait(10)
    except subprocess.TimeoutExpired:
        e.proc.kill()
        e.proc.wait(5)


@pytest.fixture
def echo_server() -> Iterator[Echo]:
    e = start_echo()
    try:
        yield e
    finally:
        stop_echo(e)


def test_get_answers_with_the_pod_name_and_what_it_saw(echo_server: Echo) -> None:
    status, headers, body = echo_server.get("/some/path?x=1",
                                            headers={"Host": "web.example",
                                                     "X-Forwarded-For": "10.0.0.7"})
    assert status == 200
    assert body == "pod-a\n"
    assert headers["X-Backend"] == "pod-a"
    assert headers["X-Seen-Path"] == "/some/path?x=1"
    assert headers["X-Seen-Method"] == "GET"
    assert headers["X-Seen-Host"] == "web.example"
    assert headers["X-Seen-X-Forwarded-For"] == "10.0.0.7"


def test_other_methods_are_echoed_too(echo_server: Echo) -> None:
    conn = http.client.HTTPConnection(HOST, echo_server.port, timeout=5)
    try:
        conn.request("POST", "/submit", body=b"x" * 100)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"pod-a\n")
        assert resp.getheader("X-Seen-Method") == "POST"
        # The body was drained: the same connection serves the next request.
        conn.request("HEAD", "/h")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        assert resp.getheader("X-Seen-Method") == "HEAD"
    finally:
        conn.close()


def test_body_length_and_digest_are_echoed_for_both_framings(echo_server: Echo) -> None:
    payload = bytes(range(256)) * 400  # 102,400 bytes
    conn = http.client.HTTPConnection(HOST, echo_server.port, timeout=5)
    try:
        conn.request("POST", "/sized", body=payload)
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("X-Seen-Body-Length") == str(len(payload))
        assert resp.getheader("X-Seen-Body-Sha256") == hashlib.sha256(payload).hexdigest()
        # Chunked, on the same connection: the framing was consumed exactly.
        conn.request("PUT", "/chunked", body=iter([payload[:1000], payload[1000:]]),
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("X-Seen-Body-Length") == str(len(payload))
        assert resp.getheader("X-Seen-Body-Sha256") == hashlib.sha256(payload).hexdigest()
        conn.request("GET", "/empty")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("X-Seen-Body-Length") == "0"
    finally:
        conn.close()


def test_pod_name_comes_from_the_environment() -> None:
    old = os.environ.get("POD_NAME")
    os.environ["POD_NAME"] = "web-7d9f"
    try:
        assert echo.parse_args([]).name == "web-7d9f"
        assert echo.parse_args([]).port == 8080
    finally:
        if old is None:
            del os.environ["POD_NAME"]
        else:
            os.environ["POD_NAME"] = old


def _ws_handshake(port: int, path: str = "/ws") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((HOST, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    assert rest == b""
    expected = base64.b64encode(hashlib.sha1((key + echo.WEBSOCKET_GUID).encode()).digest())
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101"), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert headers["sec-websocket-accept"] == expected.decode()
    assert headers["x-backend"] == "pod-a"
    return sock, head


def test_websocket_echo(echo_server: Echo) -> None:
    sock, _ = _ws_handshake(echo_server.port)
    stream = sock.makefile("rb")
    try:
        for opcode, payload in ((0x1, b"hello"), (0x2, bytes(range(256)) * 300),
                                (0x9, b"ping!")):
            sock.sendall(echo.encode_frame(True, opcode, payload, mask=os.urandom(4)))
            frame = echo.read_frame(stream)
            assert frame is not None
            fin, got_opcode, got = frame
            assert fin
            assert got_opcode == (0xA if opcode == 0x9 else opcode)
            assert got == payload
        sock.sendall(echo.encode_frame(True, 0x8, b"\x03\xe8", mask=os.urandom(4)))
        assert echo.read_frame(stream) == (True, 0x8, b"\x03\xe8")
        assert echo.read_frame(stream) is None  # and the server closes
    finally:
        stream.close()
        sock.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "echo.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("echo.test")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_from_cert_and_key_in_the_environment(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    e = start_echo("pod-tls", {"ECHO_TLS_CERT": str(cert), "ECHO_TLS_KEY": str(key)})
    try:
        ctx = ssl.create_default_context(cafile=str(cert))  # verifies echo.test
        raw = socket.create_connection((HOST, e.port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="echo.test") as tls:
            tls.sendall(b"GET /secure HTTP/1.1\r\nHost: echo.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"X-Seen-Path: /secure" in head
        assert body == b"pod-tls\n"
    finally:
        stop_echo(e)


def test_tls_needs_both_files() -> None:
    proc = subprocess.run([sys.executable, str(SERVER), "--tls-cert", "/x.crt"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "both a certificate and a key" in proc.stderr


def _refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_control_port_stops_and_starts_serving(echo_server: Echo) -> None:
    assert echo_server.control("GET", "/healthz")[0] == 200
    status, state = echo_server.control("POST", "/serving/stop")
    assert status == 200 and state["serving"] is False
    assert _eventually(lambda: _refused(echo_server.port)), "port still accepts"
    # The Pod stays Ready (as a killed netns server leaves the kwok Pod Ready).
    assert echo_server.control("GET", "/ready")[0] == 200
    status, state = echo_server.control("POST", "/serving/start")
    assert status == 200 and state["serving"] is True and state["port"] == echo_server.port
    assert echo_server.get("/")[2] == "pod-a\n"


def test_control_port_fails_and_passes_readiness(echo_server: Echo) -> None:
    assert echo_server.control("POST", "/readiness/fail")[1]["ready"] is False
    assert echo_server.control("GET", "/ready")[0] == 503
    assert echo_server.get("/")[0] == 200, "still serving while not ready"
    assert echo_server.control("POST", "/readiness/pass")[1]["ready"] is True
    assert echo_server.control("GET", "/ready")[0] == 200
    assert echo_server.control("POST", "/nope")[0] == 404


def test_sigterm_stops_it_promptly(echo_server: Echo) -> None:
    echo_server.proc.terminate()
    assert echo_server.proc.wait(10) == 0
