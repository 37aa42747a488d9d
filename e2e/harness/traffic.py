"""Bounded HTTP clients against the proxy on 127.0.0.1 (never anything else)."""

from __future__ import annotations

import collections
import http.client
import ssl
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class Reply:
    backend: str | None  # the body's first line (the backend's Pod name); None on failure
    status: int = 0
    error: str | None = None
    cookie: str | None = None  # Set-Cookie, if any
    at: float = 0.0  # time.monotonic() when the answer arrived


def get(port: int, *, host: str = HOST, path: str = "/", timeout: float = 5.0,
        headers: dict[str, str] | None = None, tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None) -> Reply:
    """One request on a fresh connection (so every request is balanced anew)."""
    assert host in ("127.0.0.1", "localhost"), "traffic only to loopback"
    conn: http.client.HTTPConnection
    if tls is not None and server_hostname:
        # SNI and the verified name differ from the loopback address we connect to.
        conn = _SNIConnection(host, port, timeout=timeout, context=tls,
                              server_hostname=server_hostname)
    elif tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        backend = body.splitlines()[0].strip() if resp.status == 200 and body else None
        return Reply(backend, resp.status, None if resp.status == 200 else f"HTTP {resp.status}",
                     resp.getheader("Set-Cookie"), time.monotonic())
    except (OSError, http.client.HTTPException) as err:
        return Reply(None, 0, f"{type(err).__name__}: {err}", None, time.monotonic())
    finally:
        conn.close()


class _SNIConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext,
                 server_hostname: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context
        self._sni = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._sni)


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
