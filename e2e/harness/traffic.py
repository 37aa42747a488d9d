"""Bounded HTTP clients against the proxy on 127.0.0.1 (never anything else).

- get / spread / wait_for_backends / Load: which backend answers (body = Pod name).
- request: any method, Host, headers, body, TLS (+ the peer certificate); the backend's
  X-Seen-* headers say how the request arrived (decode_seen_headers for all headers).
- WebSocket / websocket_echo: a minimal RFC 6455 client.
- negotiated_alpn: which protocol a TLS listener picks when offered h2 and http/1.1.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import ipaddress
import json
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

HOST = "127.0.0.1"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3

_T = TypeVar("_T")


class Headers(dict[str, str]):
    """Header name -> value. Names keep the case they arrived in, lookups ignore it;
    a repeated header's values are joined with ", " (RFC 9110 5.3)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        self._names: dict[str, str] = {}  # lower-case name -> the stored name
        for name, value in pairs:
            old = self.get(name)
            self[name] = value if old is None else f"{old}, {value}"

    def _key(self, name: str) -> str:
        return self._names.get(name.lower(), name)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(self._key(name))

    def __setitem__(self, name: str, value: str) -> None:
        stored = self._names.setdefault(name.lower(), name)
        super().__setitem__(stored, value)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(self._names.pop(name.lower(), name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._names

    @overload
    def get(self, name: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str | _T, /) -> str | _T: ...
    def get(self, name: str, default: object = None, /) -> object:
        return super().get(self._key(name), default)


@dataclass
class Reply:
    backend: str | None  # the body's first line (the backend's Pod name); None on failure
    status: int = 0
    error: str | None = None
    cookie: str | None = None  # Set-Cookie, if any
    at: float = 0.0  # time.monotonic() when the answer arrived
    body: str = ""
    headers: Headers = field(default_factory=Headers)
    # TLS only: the server's certificate (DER always; parsed only if the context verified
    # it, as ssl.SSLSocket.getpeercert() gives), the protocol version and ALPN choice.
    peer_cert_der: bytes | None = None
    peer_cert: dict[str, Any] | None = None
    tls_version: str | None = None
    alpn: str | None = None

    def seen(self, what: str) -> str | None:
        """The backend's X-Seen-<what> header, e.g. seen("Path"), seen("Host")."""
        return self.headers.get(f"X-Seen-{what}")


def request(port: int, *, method: str = "GET", host: str | None = None, path: str = "/",
            headers: dict[str, str] | None = None, body: bytes | str | None = None,
            tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
            timeout: float = 5.0, address: str = HOST, source: str | None = None) -> Reply:
    """One request on a fresh connection to `address`:`port` (loopback only), from
    `source` when given (another loopback address, e.g. 127.0.0.2: a second client).

    `host`: the Host header (default: http.client's "<address>:<port>"; a "Host" in
    `headers` wins). TLS: SNI and the name checked are `server_hostname`, else `host`
    (without a port), else `address`. `error` is None whenever an HTTP answer came back,
    whatever its status; it names the failure otherwise (refused, reset, bad certificate).
    """
    assert address in ("127.0.0.1", "localhost"), "traffic only to loopback"
    assert source is None or ipaddress.ip_address(source).is_loopback, "from loopback only"
    bind = (source, 0) if source else None
    hdrs = {"Connection": "close"}
    if host is not None:
        hdrs["Host"] = host
    hdrs.update(headers or {})
    conn: http.client.HTTPConnection
    if tls is not None:
        sni = server_hostname or (_hostname(host) if host else address)
        conn = _SNIConnection(address, port, timeout=timeout, context=tls, server_hostname=sni,
                              source_address=bind)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout, source_address=bind)
    der: bytes | None = None
    parsed: dict[str, Any] | None = None
    version = alpn = None
    try:
        conn.connect()
        if isinstance(conn.sock, ssl.SSLSocket):
            # Now: with "Connection: close" http.client drops the socket in getresponse().
            der = conn.sock.getpeercert(binary_form=True)
            parsed = conn.sock.getpeercert() or None
            version, alpn = conn.sock.version(), conn.sock.selected_alpn_protocol()
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        got = Headers(resp.getheaders())
        backend = None
        if resp.status == 200:  # HEAD has no body: the header names the backend then
            backend = text.splitlines()[0].strip() if text else got.get("X-Backend")
        return Reply(backend, resp.status, None, got.get("Set-Cookie"), time.monotonic(),
                     text, got, der, parsed, version, alpn)
    except (OSError, http.client.HTTPException) as err:
        return Reply(None, 0, f"{type(err).__name__}: {err}", None, time.monotonic(),
                     peer_cert_der=der, peer_cert=parsed, tls_version=version, alpn=alpn)
    finally:
        conn.close()


def get(port: int, *, host: str = HOST, path: str = "/", timeout: float = 5.0,
        headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None) -> Reply:
    """One GET on a fresh connection (so every request is balanced anew).

    `host` is where to connect (loopback); `error` is set for anything but a 200.
    """
    r = request(port, address=host, path=path, timeout=timeout, headers=headers, tls=tls,
                server_hostname=server_hostname or host)
    if r.error is None and r.status != 200:
        r.error = f"HTTP {r.status}"
    return r


# X-Seen-* headers that describe the request, not one of its headers.
_SEEN_META = {"path", "method", "tls", "sni", "alpn", "body-length", "body-sha256",
              "headers"}


def decode_seen_headers(reply: Reply | str) -> Headers:
    """The request headers the backend saw, case-insensitive: its X-Seen-Headers (the
    netns backends send them all in one), else its X-Seen-<Header> headers (the echo
    image, e2e/kind/echo, sends one per request header)."""
    raw = reply.headers.get("X-Seen-Headers") if isinstance(reply, Reply) else reply
    if raw is None and isinstance(reply, Reply):
        pairs = [(name[len("X-Seen-"):], value) for name, value in reply.headers.items()
                 if name.lower().startswith("x-seen-")
                 and name[len("X-Seen-"):].lower() not in _SEEN_META]
        if pairs:
            return Headers(pairs)
    if raw is None:
        assert isinstance(reply, Reply)
        raise ValueError(f"no X-Seen-Headers in the reply (HTTP {reply.status}, "
                         f"error {reply.error}, headers {dict(reply.headers)})")
    data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))  # padding optional
    seen: dict[str, str] = json.loads(data)
    return Headers(seen.items())


def _hostname(host: str) -> str:
    """"name:port" / "[v6]:port" -> the name alone (for SNI)."""
    if host.startswith("["):
        return host[1:host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _SNIConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext,
                 server_hostname: str, source_address: tuple[str, int] | None = None) -> None:
        super().__init__(host, port, timeout=timeout, context=context,
                         source_address=source_address)
        self._tls = context
        self._sni = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._sni)


# -- WebSocket ---------------------------------------------------------------------------

class WebSocketError(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client (masked frames, no extensions). Use as a context manager.

    recv() answers pings by itself and returns whole messages: (opcode, payload) with
    opcode TEXT, BINARY, PONG or CLOSE.
    """

    CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
    MAX_MESSAGE = 1 << 24  # bounded, like the server

    def __init__(self, sock: socket.socket, status: int, headers: Headers,
                 buffered: bytes = b"") -> None:
        self.sock = sock
        self.status = status  # 101
        self.headers = headers  # the handshake answer's, e.g. X-Backend, X-Seen-Path
        self._buf = bytearray(buffered)
        self.closed = False

    @classmethod
    def connect(cls, port: int, *, host: str, path: str = "/",
                tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                timeout: float = 5.0, headers: dict[str, str] | None = None,
                address: str = HOST) -> WebSocket:
        """Open a connection and do the handshake; WebSocketError unless 101 + a valid
        Sec-WebSocket-Accept. `host` is the Host header; TLS SNI as in request()."""
        assert address in ("127.0.0.1", "localhost"), "traffic only to loopback"
        raw = socket.create_connection((address, port), timeout=timeout)
        sock: socket.socket = raw
        try:
            if tls is not None:
                sock = tls.wrap_socket(raw, server_hostname=server_hostname or _hostname(host))
            key = base64.b64encode(os.urandom(16)).decode()
            hdrs = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade",
                    "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **(headers or {})}
            lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in hdrs.items())]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head, rest = _read_head(sock)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            parts = status_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            pairs = (line.split(":", 1) for line in header_lines if ":" in line)
            got = Headers((name.strip(), value.strip()) for name, value in pairs)
            if status != 101:
                raise WebSocketError(f"handshake answered {status_line!r}: {dict(got)}")
            want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if got.get("Sec-WebSocket-Accept") != want:
                raise WebSocketError(f"Sec-WebSocket-Accept {got.get('Sec-WebSocket-Accept')!r}"
                                     f" != {want!r}")
            if (got.get("Upgrade") or "").lower() != "websocket":
                raise WebSocketError(f"Upgrade: {got.get('Upgrade')!r}")
            return cls(sock, status, got, rest)
        except BaseException:
            sock.close()
            raise

    def send(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as every client frame must be."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + _xor(payload, mask))

    def send_text(self, text: str) -> None:
        self.send(self.TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self.send(self.BINARY, data)

    def recv(self) -> tuple[int, bytes]:
        """The next whole message (fragments joined); pings are answered, not returned."""
        kind, parts = 0, list[bytes]()
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            if n > self.MAX_MESSAGE:
                raise WebSocketError(f"frame of {n} bytes")
            mask = self._read(4) if b1 & 0x80 else b""
            data = self._read(n)
            if mask:  # servers must not mask, but reading it costs nothing
                data = _xor(data, mask)
            op = b0 & 0x0F
            if op == self.PING:
                self.send(self.PONG, data)
            elif op in (self.PONG, self.CLOSE):
                if op == self.CLOSE:
                    self.closed = True
                return op, data
            elif op in (self.TEXT, self.BINARY) or (op == self.CONT and kind):
                if op != self.CONT:
                    kind, parts = op, []
                parts.append(data)
                if b0 & 0x80:
                    return kind, b"".join(parts)
            else:
                raise WebSocketError(f"unexpected opcode {op}")

    def recv_text(self) -> str:
        op, data = self.recv()
        if op != self.TEXT:
            raise WebSocketError(f"expected a text message, got opcode {op}: {data[:100]!r}")
        return data.decode()

    def ping(self, payload: bytes = b"rh") -> bytes:
        """Send a ping and return the pong's payload."""
        self.send(self.PING, payload)
        while True:
            op, data = self.recv()
            if op == self.PONG:
                return data
            if op == self.CLOSE:
                raise WebSocketError("closed while waiting for a pong")

    def close(self, code: int = 1000) -> int | None:
        """Close handshake (bounded by the socket timeout); the peer's status code."""
        if self.sock.fileno() < 0:
            return None
        echoed: int | None = None
        try:
            if not self.closed:
                self.send(self.CLOSE, struct.pack("!H", code))
                while True:
                    op, data = self.recv()
                    if op == self.CLOSE:
                        echoed = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                        break
        except (OSError, WebSocketError):
            pass  # the peer may hang up without a close frame; we are closing anyway
        finally:
            self.sock.close()
        return echoed

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise WebSocketError("connection closed")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


def websocket_echo(port: int, message: str, *, host: str, path: str = "/",
                   tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                   timeout: float = 5.0) -> str:
    """Handshake, one masked text frame, the echoed text (the backend's "<pod>: message")."""
    with WebSocket.connect(port, host=host, path=path, tls=tls,
                           server_hostname=server_hostname, timeout=timeout) as ws:
        ws.send_text(message)
        return ws.recv_text()


def websocket_roundtrip(port: int, message: str, *, host: str, path: str = "/",
                        tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                        timeout: float = 5.0) -> tuple[str | None, str]:
    """Handshake and one text message: (the backend that took the upgrade, its
    X-Backend; the echoed text). The netns backends prefix the echo with "<pod>: ", the
    echo image does not: a prefix naming that same backend is removed, any other stays
    (so it cannot match `message`)."""
    with WebSocket.connect(port, host=host, path=path, tls=tls,
                           server_hostname=server_hostname, timeout=timeout) as ws:
        backend = ws.headers.get("X-Backend")
        ws.send_text(message)
        echoed = ws.recv_text()
    if backend and echoed.startswith(f"{backend}: "):
        echoed = echoed[len(backend) + 2:]
    return backend, echoed


def _read_head(sock: socket.socket, limit: int = 65536) -> tuple[bytes, bytes]:
    """Bytes up to the blank line ending an HTTP head, and whatever came after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise WebSocketError(f"connection closed during the handshake: {buf[:200]!r}")
        buf += chunk
        if len(buf) > limit:
            raise WebSocketError("handshake answer too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _xor(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]  # one big-int XOR: fast for large payloads
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


# -- ALPN ----------------------------------------------------------------------------------

_ALPN_LOCK = threading.Lock()


def negotiated_alpn(port: int, server_hostname: str, tls_context: ssl.SSLContext, *,
                    timeout: float = 5.0, address: str = HOST) -> str | None:
    """TLS handshake offering ["h2", "http/1.1"]; the protocol the server picked (None:
    no ALPN). Raises on handshake failure (e.g. ssl.SSLCertVerificationError).

    ALPN is a context setting: it is set for this handshake only and cleared afterwards,
    so do not share `tls_context` with concurrent requests during the call (an h2 offer
    would break http.client's HTTP/1.1 on those).
    """
    assert address in ("127.0.0.1", "localhost"), "traffic only to loopback"
    with _ALPN_LOCK:
        tls_context.set_alpn_protocols(["h2", "http/1.1"])
        try:
            with socket.create_connection((address, port), timeout=timeout) as raw, \
                    tls_context.wrap_socket(raw, server_hostname=server_hostname) as s:
                return s.selected_alpn_protocol()
        finally:
            tls_context.set_alpn_protocols([])  # back to offering nothing


def spread(port: int, n: int, **kw: object) -> collections.Counter[str]:
    """`n` requests (bounded), counted by answering backend; failures count as '<error>'."""
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = get(port, **kw)  # type: ignore[arg-type]
        counts[r.backend or "<error>"] += 1
    return counts


def wait_for_backends(port: int, expected: set[str], timeout: float = 60.0,
                      batch: int = 20) -> collections.Counter[str]:
    """Poll (bounded) until a batch of requests is answered by exactly `expected`."""
    deadline = time.monotonic() + timeout
    last: collections.Counter[str] = collections.Counter()
    while time.monotonic() < deadline:
        last = spread(port, batch, timeout=2.0)
        if set(last) == expected:
            return last
        time.sleep(0.2)
    raise AssertionError(f"backends never became {sorted(expected)}: last {dict(last)}")


@dataclass
class Load:
    """`connections` threads sending requests in a loop until stop(); counts everything.

    Each thread keeps one request in flight on a fresh connection. Bounded by
    `max_seconds` even if stop() is never called.
    """

    port: int
    connections: int = 20
    max_seconds: float = 300.0
    timeout: float = 5.0
    pause: float = 0.0
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    by_backend: collections.Counter[str] = field(default_factory=collections.Counter)
    replies: list[Reply] = field(default_factory=list)
    keep_replies: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.connections):
            t = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            r = get(self.port, timeout=self.timeout)
            with self._lock:
                if r.error is None:
                    self.ok += 1
                    self.by_backend[r.backend or ""] += 1
                else:
                    self.failures.append((r.at, r.error))
                if self.keep_replies:
                    self.replies.append(r)
            if self.pause:
                time.sleep(self.pause)

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, len(self.failures)
