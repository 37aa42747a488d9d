"""e2e/harness/service_relay.py: the relay that lets loopback-only test clients reach a
proxy Service's ClusterIP (the real-Pods tier). Offline: a server on 127.0.0.1 stands in
for the Service."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from e2e.harness.service_relay import (
    PORT_FORWARD,
    SERVICE,
    RouteError,
    ServiceRelay,
    check_local_route,
    proxy_access,
)


@pytest.fixture
def upper_server() -> Iterator[int]:
    """Reads until the client half-closes, answers the bytes upper-cased, closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()


def test_relay_copies_both_ways_and_passes_the_half_close(upper_server: int) -> None:
    with ServiceRelay("127.0.0.1", upper_server) as port:
        for word in (b"hello", b"x" * 200_000):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(word)
                sock.shutdown(socket.SHUT_WR)  # the server answers only after EOF
                got = b""
                while chunk := sock.recv(65536):
                    got += chunk
            assert got == word.upper()


def test_relay_resets_the_client_when_nothing_listens() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    port_nobody = dead.getsockname()[1]
    dead.close()
    # The reset shows at connect() or at the first read.
    with ServiceRelay("127.0.0.1", port_nobody, connect_timeout=1.0) as port, \
            pytest.raises(ConnectionResetError), \
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while sock.recv(1024):
            pass


def test_addresses_routed_through_a_gateway_are_refused() -> None:
    check_local_route("127.0.0.1")  # local: fine
    # TEST-NET-2 has no local route here: only the default route, which leaves the
    # machine. `ip route get` only computes; nothing is sent.
    with pytest.raises(RouteError, match="not routed locally"):
        check_local_route("198.51.100.7")
    with pytest.raises(ValueError):
        check_local_route("example.com")  # names are never resolved


def test_proxy_access_values() -> None:
    assert proxy_access({}) == PORT_FORWARD
    assert proxy_access({"E2E_PROXY_ACCESS": " Service "}) == SERVICE
    with pytest.raises(ValueError, match="port-forward, service"):
        proxy_access({"E2E_PROXY_ACCESS": "nodeport"})
