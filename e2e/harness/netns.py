"""Backends that really own kwok Pod IPs: one network namespace per Pod.

For every (pod name, pod IP):

    host                                   netns rhe2e-<id>-<n>
    veth rh<id><n>  10.250.0.1/32  <---->  eth0  <pod IP>/32
    route <pod IP>/32 dev rh<id><n>         route 10.250.0.1/32 dev eth0 (nothing else)

No default route inside the namespace and nothing forwarded by the host, so nothing
can leave the machine. `ip route add unreachable 10.250.0.0/16` is put in place first
(and removed again if we added it), and before the backend is used
`ip route get <pod IP>` must name its veth. The HTTP server inside answers every request
with the Pod name (and does no reverse DNS), reports what it saw in X-Seen-* headers and
echoes WebSocket messages; with `Backends.enable_tls` (or `add(..., tls=...)`) it also
serves the same over TLS on a second port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HOST_CIDR = "10.250.0.0/16"
HOST_ADDRESS = "10.250.0.1"
BACKEND_PORT = 8080
BACKEND_TLS_PORT = 8443

# The server run inside each namespace: argv = [ip, port, pod name] and, optionally,
# [tls_port, cert file, key file] for a second (TLS) listener with the same handler.
# Every method answers 200 with body "<pod name>\n" plus X-Seen-* headers describing the
# request as it arrived; `Upgrade: websocket` gets an RFC 6455 echo (text prefixed with
# "<pod name>: "). Stdlib only, threads, no reverse DNS.
SERVER = r'''
import base64, hashlib, http.server, json, socketserver, ssl, struct, sys, threading
ip, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = (name + "\n").encode()
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 1 << 24  # bounded: a runaway client cannot eat the host's memory
tls_ctx = None

def read_exact(f, n):
    data = f.read(n) if n else b""
    if data is None or len(data) < n:
        raise ConnectionError("connection closed mid-message")
    return data

def unmask(data, mask):
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]  # XOR as one big int: fast without numpy
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")

def read_frame(f):
    b0, b1 = read_exact(f, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(f, 8))[0]
    if n > MAX_MESSAGE:
        raise ConnectionError("websocket frame too large")
    mask = read_exact(f, 4) if b1 & 0x80 else None
    data = read_exact(f, n)
    return bool(b0 & 0x80), b0 & 0x0F, unmask(data, mask) if mask else data

def frame(opcode, data):  # server frames are never masked (RFC 6455 5.1)
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + data

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        if self.command == "GET" and "websocket" in self.headers.get("Upgrade", "").lower():
            return self.websocket()
        size, digest = self.read_body()  # drained, so keep-alive stays in sync
        self.send_seen(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Body-Length", str(size))
        self.send_header("X-Seen-Body-Sha256", digest)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_any

    def read_body(self):
        h, size = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                n = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                h.update(read_exact(self.rfile, n))
                size += n
                read_exact(self.rfile, 2)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                chunk = read_exact(self.rfile, min(left, 65536))
                h.update(chunk)
                size += len(chunk)
                left -= len(chunk)
        return size, h.hexdigest()

    def send_seen(self, status):
        self.send_response(status)
        self.send_header("X-Backend", name)
        self.send_header("X-Seen-Path", self.path)
        self.send_header("X-Seen-Method", self.command)
        self.send_header("X-Seen-Host", self.headers.get("Host", ""))
        seen = {}
        for k, v in self.headers.items():  # repeated headers: joined like RFC 9110 5.3
            seen[k] = seen[k] + ", " + v if k in seen else v
        raw = json.dumps(seen, separators=(",", ":")).encode()
        self.send_header("X-Seen-Headers", base64.urlsafe_b64encode(raw).decode())
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            self.send_header("X-Seen-TLS", conn.version() or "")
            self.send_header("X-Seen-SNI", getattr(conn, "seen_sni", None) or "")
            self.send_header("X-Seen-ALPN", conn.selected_alpn_protocol() or "")
        else:
            self.send_header("X-Seen-TLS", "none")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        if (not key or self.headers.get("Sec-WebSocket-Version", "") != "13"
                or "upgrade" not in self.headers.get("Connection", "").lower()):
            self.send_seen(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_seen(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        proto = self.headers.get("Sec-WebSocket-Protocol")
        if proto:
            self.send_header("Sec-WebSocket-Protocol", proto.split(",")[0].strip())
        self.end_headers()
        self.close_connection = True  # after the echo loop the connection is done
        kind, parts = 0, []
        while True:
            fin, op, data = read_frame(self.rfile)
            if op == 8:  # close: answer with the same status code, then hang up
                self.wfile.write(frame(8, data[:2]))
                return
            if op == 9:
                self.wfile.write(frame(10, data))
                continue
            if op == 10:
                continue
            if op in (1, 2):
                kind, parts = op, [data]
            elif op == 0 and kind:
                parts.append(data)
            else:  # unknown opcode or a stray continuation: protocol error
                self.wfile.write(frame(8, struct.pack("!H", 1002)))
                return
            if sum(len(p) for p in parts) > MAX_MESSAGE:
                self.wfile.write(frame(8, struct.pack("!H", 1009)))
                return
            if fin:
                msg = b"".join(parts)
                if kind == 1:
                    msg = (name + ": ").encode() + msg
                self.wfile.write(frame(kind, msg))
                kind, parts = 0, []

    def address_string(self):  # never a reverse DNS lookup
        return self.client_address[0]
    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    def handle_error(self, request, client_address):
        # e.g. the proxy resetting an idle keep-alive connection: not news. Anything
        # else (a bug in here) goes to the log in one line.
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            print("backend error:", type(err).__name__, err, flush=True)
    def server_bind(self):  # HTTPServer.server_bind calls getfqdn(): skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = ip, self.server_address[1]

class TLSServer(Server):
    def get_request(self):
        conn, addr = self.socket.accept()
        # Handshake later, in the request's thread: a slow client must not block accept().
        return tls_ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr
    def finish_request(self, request, client_address):
        request.settimeout(10)  # a stuck handshake must not pin its thread forever
        request.do_handshake()
        request.settimeout(None)
        super().finish_request(request, client_address)

def remember_sni(sock, server_name, context):
    sock.seen_sni = server_name  # read back by the handler (X-Seen-SNI)

if len(sys.argv) >= 7:
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    tls_ctx.load_cert_chain(sys.argv[5], sys.argv[6])
    tls_ctx.set_alpn_protocols(["http/1.1"])  # no h2 here: say so if asked
    tls_ctx.sni_callback = remember_sni
    tls_server = TLSServer((ip, int(sys.argv[4])), Handler)
    threading.Thread(target=tls_server.serve_forever, daemon=True).start()

Server((ip, port), Handler).serve_forever()
'''


class NetnsError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _unreachable_present(cidr: str) -> bool:
    out = ip("route", "show", "type", "unreachable").stdout
    return any(line.split()[:2] == ["unreachable", cidr] for line in out.splitlines())


@dataclass
class Backend:
    pod: str
    address: str
    netns: str
    host_veth: str
    port: int = BACKEND_PORT
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tls_port: int | None = None  # the server's second, TLS, listener (None: plain only)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def route_device(self) -> str:
        """The device `ip route get <pod IP>` picks on the host."""
        fields = ip("route", "get", self.address).stdout.split()
        return fields[fields.index("dev") + 1] if "dev" in fields else ""

    def check_route(self) -> None:
        out = ip("route", "get", self.address).stdout.strip()
        fields = out.split()
        if "dev" not in fields or fields[fields.index("dev") + 1] != self.host_veth:
            raise NetnsError(f"{self.address} is not routed to {self.host_veth}: {out!r}")
        if "via" in fields:
            raise NetnsError(f"{self.address} goes through a gateway: {out!r}")


@dataclass
class Backends:
    """Namespaces + veths + routes + servers for some Pods. Use as a context manager."""

    log_dir: Path
    ident: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    backends: dict[str, Backend] = field(default_factory=dict)  # by pod name
    _added_guard: bool = False
    _counter: int = 0
    # (cert PEM, key PEM) every later add() serves over TLS too; see enable_tls().
    _tls_default: tuple[str, str] | None = None
    _tls_port: int = BACKEND_TLS_PORT

    def __enter__(self) -> Backends:
        self.guard()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def guard(self) -> None:
        if not _unreachable_present(HOST_CIDR):
            ip("route", "add", "unreachable", HOST_CIDR)
            self._added_guard = True

    def enable_tls(self, cert_pem: str, key_pem: str, port: int = BACKEND_TLS_PORT) -> None:
        """Backends added from now on also serve TLS on `port` with this chain/key.

        `cert_pem` may hold the leaf followed by intermediates. Per Pod: add(..., tls=).
        """
        if port == BACKEND_PORT:
            raise NetnsError(f"TLS port {port} is the plain HTTP port")
        self._tls_default = (cert_pem, key_pem)
        self._tls_port = port

    def add(self, pod: str, address: str, *, tls: tuple[str, str] | None = None) -> Backend:
        """A namespace owning `address` with an HTTP server answering `pod`.

        `tls`: (cert PEM, key PEM) for this Pod's TLS listener; default: enable_tls()'s.
        """
        if pod in self.backends:
            raise NetnsError(f"backend {pod} exists")
        if not address.startswith("10.244."):
            raise NetnsError(f"{address} is not a pod address (10.244.0.0/16)")
        self.guard()
        n = self._counter
        self._counter += 1
        b = Backend(pod, address, f"rhe2e-{self.ident}-{n}", f"rh{self.ident}{n}")
        self.backends[pod] = b
        try:
            ip("netns", "add", b.netns)
            ip("link", "add", b.host_veth, "type", "veth", "peer", "name", "eth0",
               "netns", b.netns)
            ip("-n", b.netns, "link", "set", "lo", "up")
            ip("-n", b.netns, "addr", "add", f"{address}/32", "dev", "eth0")
            ip("-n", b.netns, "link", "set", "eth0", "up")
            ip("-n", b.netns, "route", "add", f"{HOST_ADDRESS}/32", "dev", "eth0",
               "scope", "link")
            ip("addr", "add", f"{HOST_ADDRESS}/32", "dev", b.host_veth)
            ip("link", "set", b.host_veth, "up")
            ip("route", "add", f"{address}/32", "dev", b.host_veth, "src", HOST_ADDRESS)
            b.check_route()
            routes = ip("-n", b.netns, "route", "show").stdout
            if "default" in routes:
                raise NetnsError(f"{b.netns} has a default route: {routes!r}")
            b.log_path = self.log_dir / f"backend-{pod}.log"
            pair = tls or self._tls_default
            if pair is not None:
                self._write_tls_files(b, *pair)
            self.start_server(pod)
        except BaseException:
            self.remove(pod)
            raise
        return b

    def start_server(self, pod: str) -> None:
        """(Re)start the HTTP server in `pod`'s namespace; returns once it accepts."""
        b = self.backends[pod]
        assert b.log_path is not None
        with b.log_path.open("ab") as log:
            b.proc = subprocess.Popen(
                self.server_command(b),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"})
        self._wait_listening(b)

    @staticmethod
    def server_command(b: Backend) -> list[str]:
        """`ip netns exec` of SERVER for `b`: [ip, port, pod] (+ [tls port, cert, key])."""
        cmd = ["ip", "netns", "exec", b.netns, sys.executable, "-c", SERVER, b.address,
               str(b.port), b.pod]
        if b.tls_port is not None:
            if b.tls_cert is None or b.tls_key is None:
                raise NetnsError(f"backend {b.pod} has a TLS port but no certificate files")
            cmd += [str(b.tls_port), str(b.tls_cert), str(b.tls_key)]
        return cmd

    def _write_tls_files(self, b: Backend, cert_pem: str, key_pem: str) -> None:
        """Put `b`'s chain and key into the log dir (0600: the key is a secret)."""
        b.tls_cert = self.log_dir / f"backend-{b.pod}-tls.crt"
        b.tls_key = self.log_dir / f"backend-{b.pod}-tls.key"
        _write_private(b.tls_cert, cert_pem)
        _write_private(b.tls_key, key_pem)
        b.tls_port = self._tls_port

    def stop_server(self, pod: str) -> None:
        """Kill the server (the Pod's IP stays, connections are refused)."""
        b = self.backends[pod]
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait(5)

    def add_all(self, pods: Iterable[tuple[str, str]]) -> list[Backend]:
        return [self.add(pod, address) for pod, address in pods]

    @staticmethod
    def _wait_listening(b: Backend, timeout: float = 15.0) -> None:
        """Until every listener (plain, and TLS if any) accepts; the server must not exit."""
        b.check_route()
        deadline = time.monotonic() + timeout
        ports = [b.port] if b.tls_port is None else [b.port, b.tls_port]
        for port in ports:
            while True:
                if b.proc is not None and b.proc.poll() is not None:
                    log = b.log_path.read_text(errors="replace") if b.log_path else ""
                    raise NetnsError(f"backend server for {b.pod} exited: {log[-500:]}")
                try:
                    with socket.create_connection((b.address, port), timeout=1.0):
                        break
                except OSError as err:
                    if time.monotonic() > deadline:
                        raise NetnsError(f"backend {b.pod} at {b.address}:{port}: {err}") from err
                    time.sleep(0.05)

    def check_routes(self) -> None:
        for b in self.backends.values():
            b.check_route()

    def remove(self, pod: str) -> None:
        b = self.backends.pop(pod, None)
        if b is None:
            return
        if b.proc is not None and b.proc.poll() is None:
            b.proc.terminate()
            try:
                b.proc.wait(5)
            except subprocess.TimeoutExpired:
                b.proc.kill()
                b.proc.wait(5)
        # Any process still inside (e.g. the server if `ip netns exec` forked) is ours.
        pids = ip("netns", "pids", b.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        ip("route", "del", f"{b.address}/32", "dev", b.host_veth, check=False)
        ip("link", "del", b.host_veth, check=False)  # takes the peer with it
        ip("netns", "del", b.netns, check=False)

    def close(self) -> None:
        for pod in list(self.backends):
            self.remove(pod)
        if self._added_guard:
            ip("route", "del", "unreachable", HOST_CIDR, check=False)
            self._added_guard = False

    def by_address(self) -> dict[str, Backend]:
        return {b.address: b for b in self.backends.values()}


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had wider permissions
        f.write(text)


def leftovers() -> list[str]:
    """Namespaces a killed (SIGKILL) run left behind: every `rhe2e-*` one."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("rhe2e-")]


def remove_leftovers() -> list[str]:
    """Delete every `rhe2e-*` namespace, killing its processes (veth + route go with it).

    Only for manual cleanup after a killed run: it also removes a running session's.
    """
    removed = []
    for ns in leftovers():
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    return removed


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="e2e backend namespaces")
    parser.add_argument("--remove-leftovers", action="store_true",
                        help="delete every rhe2e-* namespace (after a killed run)")
    if parser.parse_args().remove_leftovers:
        print("removed:", " ".join(remove_leftovers()) or "nothing")
    else:
        print("\n".join(leftovers()) or "no rhe2e-* namespaces")
