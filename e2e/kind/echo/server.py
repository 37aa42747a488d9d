#!/usr/bin/env python3
"""Echo backend for the kind e2e suite. Standard library only.

Every request on the main port (HTTP, or HTTPS when a certificate is given) is answered
with the Pod's name as the body (one line) and as `X-Backend`, and with what the server
saw in response headers: `X-Seen-Path` (with the query), `X-Seen-Method`, and one
`X-Seen-<Header>` per request header (so `X-Seen-Host`, `X-Seen-X-Forwarded-For`, ...),
plus `X-Seen-Body-Length` and `X-Seen-Body-Sha256` of the request body.
`Upgrade: websocket` requests get an RFC 6455 echo: every data frame comes back as is,
pings get pongs, a close is answered with a close.

A second, plain-HTTP control port (never behind the Service) lets tests steer the Pod
through the API server's pod proxy:

    GET  /healthz          200 while the process runs (liveness)
    GET  /ready            200, or 503 after POST /readiness/fail (the readiness probe)
    POST /readiness/pass   /readiness/fail
    POST /serving/stop     close the main listening socket: connections are refused
    POST /serving/start    listen again
    GET  /state            {"name", "port", "serving", "ready"} as JSON

Configuration (flags override the environment):

    POD_NAME           the name answered (downward API); default: the hostname
    ECHO_BIND          address to bind, default 0.0.0.0
    ECHO_PORT          main port, default 8080 (0: any free port)
    ECHO_CONTROL_PORT  control port, default 8081 (0: any free port, -1: none)
    ECHO_TLS_CERT      PEM certificate (chain) file; with ECHO_TLS_KEY: serve HTTPS
    ECHO_TLS_KEY       PEM private key file

Once both ports listen, one JSON line goes to stdout: {"port": N, "control_port": M}.
Nothing is written to disk, so a read-only root filesystem is fine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
from types import FrameType
from typing import Any

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_FRAME = 1 << 20  # larger frames close the connection (1009: message too big)
MAX_SEEN_HEADERS = 32
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
              "proxy-connection"}


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:  # HTTPServer.server_bind calls getfqdn(): skip it
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client or proxy resetting an idle connection is not news


class State:
    """What the control port changes; shared by both servers."""

    def __init__(self, name: str, bind: str, port: int,
                 tls: ssl.SSLContext | None) -> None:
        self.name = name
        self.bind = bind
        self.port = port
        self.tls = tls
        self.ready = True
        self.lock = threading.Lock()
        self.server: Server | None = None
        self.thread: threading.Thread | None = None

    def start_serving(self) -> None:
        with self.lock:
            if self.server is not None:
                return
            server = Server((self.bind, self.port), EchoHandler)
            if self.tls is not None:
                server.socket = self.tls.wrap_socket(server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
            server.state = self  # type: ignore[attr-defined]
            self.port = server.server_port  # resolves port 0 once; reused on restart
            self.server = server
            self.thread = threading.Thread(target=server.serve_forever, args=(0.1,),
                                           name="echo", daemon=True)
            self.thread.start()

    def stop_serving(self) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()  # the port is closed: new connections are refused

    @property
    def serving(self) -> bool:
        return self.server is not None


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "roundhouse-echo"
    sys_version = ""

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[attr-defined, no-any-return]

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10.0)
            try:
                self.connection.do_handshake()
            finally:
                self.connection.settimeout(None)

    def address_string(self) -> str:  # never a reverse DNS lookup
        return str(self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        size, digest = self._read_body()  # drained so the connection can be reused
        body = (self.state.name + "\n").encode()
        self.send_response(200)
        self._echo_headers()
        self.send_header("X-Seen-Body-Length", str(size))
        self.send_header("X-Seen-Body-Sha256", digest)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def _read_body(self) -> tuple[int, str]:
        """Reads the request body (Content-Length or chunked): its size and SHA-256."""
        digest, size = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                n = int(line.split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunk = read_exact(self.rfile, n) or b""
                digest.update(chunk)
                size += len(chunk)
                read_exact(self.rfile, 2)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                chunk = read_exact(self.rfile, min(left, 65536))
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                left -= len(chunk)
        return size, digest.hexdigest()

    def _echo_headers(self) -> None:
        self.send_header("X-Backend", self.state.name)
        self.send_header("X-Seen-Path", self.path)
        self.send_header("X-Seen-Method", self.command)
        seen = 0
        for key, value in self.headers.items():
            if key.lower() in HOP_BY_HOP or key.lower().startswith("sec-websocket"):
                continue
            if seen >= MAX_SEEN_HEADERS:
                break
            self.send_header(f"X-Seen-{key}", value.replace("\r", " ").replace("\n", " "))
            seen += 1

    # ------------------------------------------------------------------ WebSocket

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if not key or "upgrade" not in self.headers.get("Connection", "").lower():
            self.send_error(400, "bad WebSocket handshake")
            return
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self._echo_headers()
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = read_frame(self.rfile)
            if frame is None:
                return
            fin, opcode, payload = frame
            if len(payload) > MAX_FRAME:
                self._send_frame(True, 0x8, struct.pack("!H", 1009))
                return
            if opcode == 0x8:  # close: answer with the same status
                self._send_frame(True, 0x8, payload[:2])
                return
            if opcode == 0x9:  # ping
                self._send_frame(True, 0xA, payload)
            elif opcode in (0x0, 0x1, 0x2):  # continuation, text, binary: echoed as is
                self._send_frame(fin, opcode, payload)

    def _send_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        self.wfile.write(encode_frame(fin, opcode, payload))
        self.wfile.flush()


def read_exact(stream: Any, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(stream: Any) -> tuple[bool, int, bytes] | None:
    """One frame (unmasked if the client masked it); None at end of stream."""
    head = read_exact(stream, 2)
    if head is None:
        return None
    fin, opcode = bool(head[0] & 0x80), head[0] & 0x0F
    masked, length = bool(head[1] & 0x80), head[1] & 0x7F
    if length == 126:
        ext = read_exact(stream, 2)
        if ext is None:
            return None
        length = struct.unpack("!H", ext)[0]
    elif length == 127:
        ext = read_exact(stream, 8)
        if ext is None:
            return None
        length = struct.unpack("!Q", ext)[0]
    if length > MAX_FRAME:
        return fin, opcode, b"\0" * (MAX_FRAME + 1)  # caller closes; payload not read
    mask = read_exact(stream, 4) if masked else b""
    if mask is None:
        return None
    payload = read_exact(stream, length) if length else b""
    if payload is None:
        return None
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload


def encode_frame(fin: bool, opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A frame; servers send unmasked ones, clients pass a 4-byte `mask`."""
    first = (0x80 if fin else 0) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + payload
    return header + payload


# ---------------------------------------------------------------------- control port


class ControlHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "roundhouse-echo-control"
    sys_version = ""

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return str(self.client_address[0])

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _snapshot(self) -> dict[str, Any]:
        s = self.state
        return {"name": s.name, "port": s.port, "serving": s.serving, "ready": s.ready}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, {"ok": True})
        elif path == "/ready":
            self._reply(200 if self.state.ready else 503, self._snapshot())
        elif path == "/state":
            self._reply(200, self._snapshot())
        else:
            self._reply(404, {"error": f"no such path: {path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0].rstrip("/")
        actions = {
            "/readiness/pass": lambda: setattr(self.state, "ready", True),
            "/readiness/fail": lambda: setattr(self.state, "ready", False),
            "/serving/start": self.state.start_serving,
            "/serving/stop": self.state.stop_serving,
        }
        action = actions.get(path)
        if action is None:
            self._reply(404, {"error": f"no such action: {path}"})
            return
        action()
        self._reply(200, self._snapshot())


# ---------------------------------------------------------------------- main


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="echo backend for the kind e2e suite")
    parser.add_argument("--name", default=env.get("POD_NAME") or socket.gethostname())
    parser.add_argument("--bind", default=env.get("ECHO_BIND", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env.get("ECHO_PORT", "8080")))
    parser.add_argument("--control-port", type=int,
                        default=int(env.get("ECHO_CONTROL_PORT", "8081")))
    parser.add_argument("--tls-cert", default=env.get("ECHO_TLS_CERT", ""))
    parser.add_argument("--tls-key", default=env.get("ECHO_TLS_KEY", ""))
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("TLS needs both a certificate and a key (ECHO_TLS_CERT, ECHO_TLS_KEY)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # PID 1 in a container gets no default SIGTERM action: handle it (before the
    # ports are announced, so a SIGTERM right after that is handled too).
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    state = State(args.name, args.bind, args.port, tls)
    state.start_serving()
    control: Server | None = None
    if args.control_port >= 0:
        control = Server((args.bind, args.control_port), ControlHandler)
        control.state = state  # type: ignore[attr-defined]
        threading.Thread(target=control.serve_forever, args=(0.1,), name="control",
                         daemon=True).start()
    print(json.dumps({"port": state.port,
                      "control_port": control.server_port if control else None}), flush=True)

    stop.wait()
    state.stop_serving()
    if control is not None:
        control.shutdown()
        control.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
