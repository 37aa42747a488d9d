"""Slow senders are cut by timeouts.request; old workers drain for timeouts.drain.

(a) Clients that send a request body at 1 byte per second get 408 within
timeouts.request (plus a margin), while ordinary requests and a 5 MB upload paced to take
longer than timeouts.request all pass at the same time: only the headers and the body's
first 8 KiB have to arrive in time.

(b) A WebSocket opened before a structural reload keeps working on the old worker for
longer than the old fixed 60 s, and is closed when timeouts.drain runs out.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from e2e.harness import traffic
from tests.e2e.conftest import Env
from tests.integration.operator_process import wait_for

REQUEST_TIMEOUT_S = 3
CLIENT_TIMEOUT_S = 6
MARGIN_S = 1.5  # scheduling on a loaded 2-core machine; HAProxy's timers are exact
SLOW_CLIENTS = 5
UPLOAD_BYTES = 5 * 1024 * 1024
UPLOAD_SECONDS = 6.0  # twice timeouts.request: the upload as a whole may take longer
DRAIN_S = 75


def haproxy_major_minor(env: Env) -> tuple[int, int]:
    assert env.proxy is not None
    found = re.search(r"^Version:\s*(\d+)\.(\d+)", env.proxy.stats("show info"), re.MULTILINE)
    assert found, "show info has no Version"
    return int(found.group(1)), int(found.group(2))


@dataclass
class SlowSender:
    """POSTs a 1,000-byte body at 1 byte per second. `stop_after_answer`: stop sending
    once an answer came (what a real client does); else keep trickling (an attacker)."""

    port: int
    stop_after_answer: bool
    max_seconds: float
    answer: bytes = b""
    answered_at: float | None = None  # seconds after the headers were sent
    closed_at: float | None = None
    error: str | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"POST /slow HTTP/1.1\r\nHost: slow.e2e.test\r\n"
                             b"Content-Type: application/octet-stream\r\n"
                             b"Content-Length: 1000\r\n\r\n")
                start = time.monotonic()
                sock.settimeout(1.0)
                while (now := time.monotonic() - start) < self.max_seconds:
                    if self.answered_at is None or not self.stop_after_answer:
                        try:
                            sock.sendall(b"x")
                        except OSError:
                            self.closed_at = now
                            return
                    try:
                        chunk = sock.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        self.closed_at = time.monotonic() - start
                        return
                    if not chunk:
                        self.closed_at = time.monotonic() - start
                        return
                    if self.answered_at is None:
                        self.answered_at = time.monotonic() - start
                    self.answer += chunk
        except OSError as err:
            self.error = f"{type(err).__name__}: {err}"


def paced_upload(port: int, size: int, seconds: float) -> tuple[int, dict[str, str], float]:
    """POST `size` bytes spread evenly over `seconds` (64 KiB at a time, the first chunk
    at once); (status, the backend's X-Seen-* headers, the time it took)."""
    body = bytes(range(256)) * (size // 256)
    chunk = 64 * 1024
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: upload.e2e.test\r\nConnection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i, offset in enumerate(range(0, len(body), chunk)):
            due = start + seconds * offset / len(body)
            if i and (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            sock.sendall(body[offset:offset + chunk])
        answer = b""
        while data := sock.recv(65536):
            answer += data
    took = time.monotonic() - start
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in head[1:] if ":" in line)}
    assert headers.get("x-seen-body-sha256", hashlib.sha256(body).hexdigest()) == \
        hashlib.sha256(body).hexdigest(), "the backend saw another body"
    return status, headers, took


def test_slow_senders_get_408_while_normal_traffic_and_uploads_pass(
        env_factory: Callable[..., Env]) -> None:
    env = env_factory(timeouts={"request": f"{REQUEST_TIMEOUT_S}s",
                                "client": f"{CLIENT_TIMEOUT_S}s"})
    traffic.wait_for_backends(env.port, set(env.backends.backends), timeout=60)
    version = haproxy_major_minor(env)
    config = env.proxy.running_config()
    assert f"timeout http-request {REQUEST_TIMEOUT_S}s" in config
    assert f"wait-for-body time {REQUEST_TIMEOUT_S}s at-least 8192" in config

    # Most stop sending once answered, as clients do; two keep trickling regardless.
    senders = [SlowSender(env.port, stop_after_answer=i >= 2, max_seconds=30)
               for i in range(SLOW_CLIENTS)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
    upload: list[tuple[int, dict[str, str], float]] = []
    uploader = threading.Thread(
        target=lambda: upload.append(paced_upload(env.port, UPLOAD_BYTES, UPLOAD_SECONDS)),
        daemon=True)
    for t in threads:
        t.start()
    uploader.start()
    statuses: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < UPLOAD_SECONDS + 2:  # ordinary requests meanwhile
        statuses.append(traffic.request(env.port, path="/normal").status)
        time.sleep(0.1)
    quick = traffic.request(env.port, method="POST", path="/quick", body=b"y" * 100_000)
    uploader.join(30)
    for t in threads:
        t.join(40)

    for s in senders:
        print(f"slow sender (stop after answer: {s.stop_after_answer}): answer "
              f"{s.answer[:30]!r} at {s.answered_at}, closed at {s.closed_at}, {s.error}")
    print(f"HAProxy {version}; {len(statuses)} normal requests {set(statuses)}; "
          f"upload {upload[0][0] if upload else None} in "
          f"{upload[0][2] if upload else 0:.1f} s; quick POST {quick.status}")

    assert statuses and set(statuses) == {200}, statuses
    assert quick.status == 200 and quick.seen("Body-Length") == "100000", quick
    assert upload, "the paced upload did not finish"
    status, seen, took = upload[0]
    assert status == 200 and seen.get("x-seen-body-length") == str(UPLOAD_BYTES), (status, seen)
    assert took > REQUEST_TIMEOUT_S + 1, f"the upload took only {took:.1f} s"
    for s in senders:
        assert s.error is None, s.error
        assert s.answer.startswith(b"HTTP/1.1 408"), s.answer[:100]
        assert s.answered_at is not None
        assert REQUEST_TIMEOUT_S - 0.5 <= s.answered_at <= REQUEST_TIMEOUT_S + MARGIN_S
        if version < (3, 0):
            # 2.6 closes the connection with the 408.
            assert s.closed_at is not None and s.closed_at <= REQUEST_TIMEOUT_S + MARGIN_S, s
        elif s.stop_after_answer:
            # 3.x reads what is left of the announced body after its 408 (so the client
            # reads the answer rather than a reset): a client that stops sending is
            # closed once it has been silent for timeouts.client.
            assert s.closed_at is not None, s
            assert s.closed_at <= s.answered_at + CLIENT_TIMEOUT_S + MARGIN_S, s
        else:
            # ...but one that keeps trickling holds the connection until its announced
            # body is complete (1,000 bytes at 1 byte/s here, beyond max_seconds): the
            # gap README documents. This tells us if a new HAProxy changes it.
            assert s.closed_at is None or s.closed_at > REQUEST_TIMEOUT_S + CLIENT_TIMEOUT_S


def test_websocket_outlives_a_reload_for_the_drain_period(
        env_factory: Callable[..., Env]) -> None:
    env = env_factory(timeouts={"drain": f"{DRAIN_S}s"})
    proxy = env.proxy
    assert proxy is not None
    traffic.wait_for_backends(env.port, set(env.backends.backends), timeout=60)
    assert f"hard-stop-after {DRAIN_S}s" in proxy.running_config()
    wait_for(lambda: proxy.agent_state().get("configHash") == env.config_hash(), 30,
             "agent caught up")
    _, workers_before, _ = proxy.show_proc()
    reloads = int(proxy.agent_state().get("reloads") or 0)

    with traffic.WebSocket.connect(env.port, host="ws.e2e.test", timeout=10) as ws:
        ws.send_text("before")
        assert ws.recv_text().endswith("before")
        env.patch_lb({"timeouts": {"drain": f"{DRAIN_S}s", "server": "49s"}})  # structural
        wait_for(lambda: int(proxy.agent_state().get("reloads") or 0) > reloads, 60,
                 "the reload")
        reloaded = time.monotonic()
        _, workers_after, old = proxy.show_proc()
        assert set(workers_after).isdisjoint(workers_before), (workers_before, workers_after)
        assert set(workers_before) <= set(old), "the old worker is not draining"

        alive_until = closed_after = None
        while (since := time.monotonic() - reloaded) < DRAIN_S + 15:
            try:
                ws.send_text(f"at {since:.0f}")
                echoed = ws.recv_text()
                assert echoed.endswith(f"at {since:.0f}"), echoed
                alive_until = since
            except (OSError, traffic.WebSocketError):
                closed_after = time.monotonic() - reloaded
                break
            time.sleep(1.0 if since > DRAIN_S - 10 else 5.0)
        print(f"WebSocket: echoed {alive_until:.1f} s after the reload, closed after "
              f"{closed_after} s (drain {DRAIN_S} s)")
    assert alive_until is not None and alive_until > 65, alive_until
    assert closed_after is not None, f"still open {DRAIN_S + 15} s after the reload"
    assert DRAIN_S - 2 <= closed_after <= DRAIN_S + 5, closed_after
    wait_for(lambda: not set(workers_before) & set(proxy.show_proc()[2]), 10,
             "the old worker gone")
    assert traffic.request(env.port).status == 200
