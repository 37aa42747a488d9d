"""An HTTP listener that redirects to HTTPS while the HTTPS listener is down (its Secret is
missing, so the listener is left out): the HTTP listener answers 503 with the reason,
never a 301 to a port nothing listens on, and TLSReady says which listener and why."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from roundhouse.graph import ProxyGraph, build_loadbalancer_graph
from roundhouse.graph.reverseproxy import build_reverseproxy_graph
from roundhouse.model import parse_loadbalancer, parse_reverseproxy
from roundhouse.model.cluster import TLSSecret
from roundhouse.placeholder_certificates import write_placeholder_certificates
from roundhouse.render.haproxy import RenderOptions, render_haproxy, status_port
from tests.unit.cluster_fixtures import state
from tests.unit.conftest import HaproxyCheck, lb_object
from tests.unit.rp_fixtures import rp_object

LISTENERS = [{"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"secretName": "web-tls"}},
             {"name": "http", "port": 80, "protocol": "HTTP", "redirectToHTTPS": True}]
SECRET = {"web-tls": TLSSecret("web-tls", True, True, "fingerprint")}


def lb_graph(secrets: dict[str, TLSSecret]) -> ProxyGraph:
    # A small maxconn: HAProxy must not need more file descriptors than a test may open.
    obj = lb_object(listeners=LISTENERS, limits={"maxConnections": 100})
    return build_loadbalancer_graph(parse_loadbalancer(obj), state(2, secrets=secrets))


def rp_graph(secrets: dict[str, TLSSecret]) -> ProxyGraph:
    obj = rp_object(listeners=[{"name": "http", "port": 80, "redirectToHTTPS": True},
                               {"name": "https", "port": 443, "protocol": "HTTPS"}],
                    hosts=[{"hostname": "www.example.com", "tls": {"secretName": "web-tls"},
                            "routes": [{"name": "web",
                                        "backends": [{"service": "web", "port": 80}]}]}])
    return build_reverseproxy_graph(parse_reverseproxy(obj), state(2, secrets=secrets))


@pytest.mark.parametrize("build", [lb_graph, rp_graph], ids=["LoadBalancer", "ReverseProxy"])
def test_redirect_listener_answers_503_while_https_is_down(build: Any,
                                                           haproxy_check: HaproxyCheck) -> None:
    graph = build({})
    assert [f.name for f in graph.frontends] == ["fe_http"]  # the HTTPS listener is out
    [http] = graph.frontends
    assert http.redirect_https_port is None
    assert http.unavailable and "HTTPS listener https is down" in http.unavailable
    tls = [p for p in graph.problems if p.condition == "TLSReady"]
    assert [p.reason for p in tls] == ["SecretNotFound", "RedirectTargetDown"]
    assert "listener 'http' answers 503 instead of redirecting" in tls[1].message
    assert tls[1].message.startswith("spec.listeners[")
    config = render_haproxy(graph).config
    assert "http-request return status 503" in config
    assert "http-request redirect" not in config.split("frontend fe_http")[1]
    assert haproxy_check(graph).returncode == 0


@pytest.mark.parametrize("build", [lb_graph, rp_graph], ids=["LoadBalancer", "ReverseProxy"])
def test_redirect_comes_back_with_the_certificate(build: Any) -> None:
    graph = build(SECRET)
    http = next(f for f in graph.frontends if f.name == "fe_http")
    assert http.redirect_https_port == 443 and http.unavailable is None
    assert not [p for p in graph.problems if p.condition == "TLSReady"]
    assert "http-request redirect scheme https code 301" in render_haproxy(graph).config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int) -> tuple[int, str, dict[str, str]]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    # No proxy from the environment: the request must go to 127.0.0.1 only.
    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 10
    while True:
        try:
            with opener.open(f"http://127.0.0.1:{port}/x", timeout=2) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("secrets,expect", [({}, 503), (SECRET, 301)],
                         ids=["https-down", "https-up"])
def test_real_haproxy_answers_what_the_status_says(haproxy_binary: str,
                                                   secrets: dict[str, TLSSecret],
                                                   expect: int) -> None:
    graph = lb_graph(secrets)
    http_port, https_port, status = _free_port(), _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        write_placeholder_certificates(
            Path(tmp), [c.file for c in graph.certificates if c.kind == "pair"], [])
        config = render_haproxy(graph, RenderOptions(runtime_dir=tmp, cert_dir=tmp,
                                                     bind_address="127.0.0.1")).config
        config = (config.replace(f"127.0.0.1:{status_port(graph)}\n", f"127.0.0.1:{status}\n")
                  .replace("127.0.0.1:80\n", f"127.0.0.1:{http_port}\n")
                  .replace("127.0.0.1:443 ", f"127.0.0.1:{https_port} "))
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config)
        proc = subprocess.Popen([haproxy_binary, "-db", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            code, body, headers = _get(http_port)
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
    assert code == expect, (body, stderr.decode())
    if expect == 503:
        assert "HTTPS listener https is down" in body
    else:
        assert headers["location"].startswith("https://")
