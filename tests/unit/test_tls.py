"""tls.py: a real CA, real serving certificates, real verification, renewal decisions."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest

from roundhouse import tls

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> tls.KeyPair:
    return tls.issue_ca("test-ca", NOW)


def test_serving_certificate_verifies_against_its_ca_in_a_real_handshake(
        ca: tls.KeyPair, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    live_ca = tls.issue_ca("live", now)
    pair = tls.issue_serving(live_ca, ("web-lb.default.svc", "localhost"), now)
    (tmp_path / "c.pem").write_text(pair.cert_pem)
    (tmp_path / "k.pem").write_text(pair.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            s.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cadata=live_ca.cert_pem)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        s.send(b"x")
    thread.join(5)
    listener.close()


def test_certificate_names_and_lifetime(ca: tls.KeyPair) -> None:
    pair = tls.issue_serving(ca, ("a.example", "10.0.0.1"), NOW)
    assert pair.not_after - NOW == tls.CERT_LIFETIME
    assert tls.renewal_reason(pair, ca, ("a.example", "10.0.0.1"), NOW) is None


@pytest.mark.parametrize(("days_later", "due"), [(0, False), (59, False), (61, True), (95, True)])
def test_renewal_window(ca: tls.KeyPair, days_later: int, due: bool) -> None:
    pair = tls.issue_serving(ca, ("a",), NOW)
    reason = tls.renewal_reason(pair, ca, ("a",), NOW + dt.timedelta(days=days_later))
    assert (reason is not None) == due


def test_changed_names_or_foreign_issuer_need_a_new_certificate(ca: tls.KeyPair) -> None:
    pair = tls.issue_serving(ca, ("a",), NOW)
    assert tls.renewal_reason(pair, ca, ("a", "b"), NOW) == "DNS names changed"
    other = tls.issue_ca("other", NOW)
    assert "not issued by" in (tls.renewal_reason(pair, other, ("a",), NOW) or "")
    assert tls.renewal_reason(None, ca, ("a",), NOW) == "no certificate yet"
    assert tls.renewal_reason(tls.KeyPair("garbage", ""), ca, ("a",), NOW) is not None


def test_long_names_fit_in_the_common_name() -> None:
    long_ns = "n" * 63
    ca = tls.issue_ca(f"roundhouse {long_ns}/some-loadbalancer", NOW)
    pair = tls.issue_serving(ca, (f"web-lb.{long_ns}.svc.cluster.local", f"web-lb.{long_ns}"), NOW)
    assert tls.renewal_reason(pair, ca, (f"web-lb.{long_ns}.svc.cluster.local",
                                         f"web-lb.{long_ns}"), NOW) is None
