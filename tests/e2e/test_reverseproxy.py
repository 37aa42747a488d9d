"""ReverseProxy through the real data plane: operator -> ConfigMap -> agent -> HAProxy ->
backends (network namespaces locally, echo Pods on a real cluster), with real HTTP, TLS
and WebSocket traffic; listener ports are reached at env.local_port(<port>).

Every backend answers with its Pod name; a Pod of app `api` is named `api-<hash>-<id>`,
so `app_of(reply)` tells which Service a request reached.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from e2e.harness import traffic
from kubernetes import client
from tests.e2e.conftest import (
    BACKEND_SNI,
    CLIENT_ADDRESS_ONLY_LOCAL,
    HTTPS_PORT,
    LISTENER_PORT,
    TLS_BACKENDS_ONLY_LOCAL,
    Env,
    add_https_port,
    ca_secret,
    local_only,
    tls_serving_backends,
)
from tests.integration.operator_process import condition, get_rp, wait_for

from roundhouse import tls as rtls

TABLE = Path(__file__).resolve().parents[1] / "cases" / "routing-table.yaml"


def app_of(reply: traffic.Reply) -> str:
    """`api-7d9f8-abcde` -> `api` (Deployment Pods: <deployment>-<hash>-<suffix>)."""
    return reply.body.strip().rsplit("-", 2)[0] if reply.status == 200 else f"<{reply.status}>"


def route(name: str, service: str | None = None, path: str = "/", kind: str = "Prefix",
          **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "match": {"path": {"type": kind, "value": path}}}
    if service:
        r["backends"] = [{"service": service, "port": "http"}]
    r.update(extra)
    return r


def rp(name: str, hosts: list[dict[str, Any]], https: bool = False,
       **spec: Any) -> dict[str, Any]:
    listeners = [{"name": "http", "port": LISTENER_PORT, "protocol": "HTTP"}]
    if https:
        listeners.append({"name": "https", "port": HTTPS_PORT, "protocol": "HTTPS"})
    body: dict[str, Any] = {
        "apiVersion": "roundhouse.dev/v1alpha1", "kind": "ReverseProxy",
        "metadata": {"name": name},
        "spec": {"listeners": listeners, "hosts": hosts, "proxy": {"replicas": 1},
                 "limits": {"maxConnections": 4000}},  # the sandbox's file descriptor cap
    }
    body["spec"].update(spec)
    return body


def wait_served(env: Env, host: str, path: str = "/", **kw: Any) -> traffic.Reply:
    return wait_for(lambda: (r := traffic.request(env.port, host=host, path=path, **kw))
                    .status == 200 and r, 90, f"{host}{path} served")


def user_secret(core: client.CoreV1Api, namespace: str, name: str,
                pair: rtls.KeyPair) -> None:
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": name}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": base64.b64encode(pair.cert_pem.encode()).decode(),
                 "tls.key": base64.b64encode(pair.key_pem.encode()).decode()}})


# ---------------------------------------------------------------------- the table


def _table() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TABLE.read_text())
    return data


def test_routing_table_through_real_haproxy(rp_env_factory: Callable[..., Env]) -> None:
    """The same request -> backend table the unit tier checks, here through HAProxy."""
    table = _table()
    body = dict(table["reverseproxy"])
    spec = dict(body["spec"])
    assert all(li.get("protocol", "HTTP") == "HTTP" for li in spec["listeners"]), \
        "the table is for one plain HTTP listener"
    spec["listeners"] = [{**spec["listeners"][0], "port": LISTENER_PORT}]
    spec.update({"proxy": {"replicas": 1}, "limits": {"maxConnections": 4000}})
    body = {**body, "metadata": {"name": "table"}, "spec": spec}
    services = sorted({str(b["service"]) for h in spec["hosts"] for r in h["routes"]
                       for b in r.get("backends") or []}
                      | ({spec["defaultBackend"]["service"]} if spec.get("defaultBackend")
                         else set()))
    env = rp_env_factory({s: 1 for s in services}, body)
    first = table["cases"][0]
    wait_for(lambda: traffic.request(env.port, host=first["host"], path=first["path"]).status
             not in (502, 503, 0), 90, "the table's proxy serving")
    wrong = []
    for case in table["cases"]:
        reply = traffic.request(env.port, host=case["host"], path=case["path"],
                                method=case.get("method", "GET"),
                                headers=case.get("headers") or {})
        expect = str(case["expect"])
        if expect.startswith("redirect:"):
            got = f"redirect:{reply.headers.get('Location')}" if 300 <= reply.status < 400 \
                else f"<{reply.status}>"
        elif expect == "404":
            got = "404" if reply.status == 404 else app_of(reply)
        else:
            got = app_of(reply)
        if got != expect:
            wrong.append(f"{case}: got {got}")
    print(f"{len(table['cases'])} cases through HAProxy, {len(wrong)} wrong")
    assert len(table["cases"]) >= 30
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------ hosts, paths, headers, canary


def test_host_path_header_routing_canary_weights_and_redirect(
        rp_env_factory: Callable[..., Env]) -> None:
    body = rp("shop", [
        {"hostname": "shop.e2e.test", "routes": [
            route("old", path="/old", kind="Exact",
                  redirect={"path": "/new", "statusCode": 301}),
            {"name": "beta", "backends": [{"service": "api", "port": "http"}],
             "match": {"path": {"type": "Prefix", "value": "/"},
                       "headers": [{"name": "X-Env", "value": "beta"}]}},
            route("api", "api", "/api", rewrite={"pathPrefix": "/v2"},
                  requestHeaders={"set": {"X-Route": "api"}, "remove": ["X-Drop"]},
                  responseHeaders={"set": {"X-Served-By": "roundhouse"}}),
            {"name": "canary", "match": {"path": {"type": "Prefix", "value": "/canary"}},
             "backends": [{"service": "web", "port": "http", "weight": 80},
                          {"service": "canary", "port": "http", "weight": 20}]},
            route("web", "web"),
        ]},
        {"hostname": "*.admin.e2e.test", "routes": [route("all", "admin")]},
    ])
    env = rp_env_factory({"web": 2, "api": 2, "canary": 1, "admin": 1}, body)
    wait_served(env, "shop.e2e.test")
    # Host and path.
    assert app_of(traffic.request(env.port, host="shop.e2e.test", path="/x")) == "web"
    assert app_of(traffic.request(env.port, host="shop.e2e.test", path="/api/items")) == "api"
    assert app_of(traffic.request(env.port, host="shop.e2e.test", path="/apix")) == "web"
    assert app_of(traffic.request(env.port, host="eu.admin.e2e.test:28080")) == "admin"
    assert traffic.request(env.port, host="admin.e2e.test").status == 404
    assert traffic.request(env.port, host="other.e2e.test").status == 404
    # Same path prefix: the route with a header match comes first.
    assert app_of(traffic.request(env.port, host="shop.e2e.test", path="/x",
                                  headers={"X-Env": "beta"})) == "api"
    # Rewrite and request/response headers.
    reply = traffic.request(env.port, host="shop.e2e.test", path="/api/items?q=1",
                            headers={"X-Drop": "secret"})
    seen = traffic.decode_seen_headers(reply)
    assert reply.seen("Path") == "/v2/items?q=1", reply.headers
    assert seen.get("X-Route") == "api" and "X-Drop" not in seen, seen
    assert reply.headers.get("X-Served-By") == "roundhouse"
    # Forwarding headers, set by the proxy (a client's own X-Forwarded-For is not trusted
    # as the last hop).
    assert seen.get("X-Forwarded-Proto") == "http", seen
    assert seen.get("X-Forwarded-For", "").split(",")[-1].strip() == env.client_address, seen
    assert "for=" in seen.get("Forwarded", "") and "proto=http" in seen["Forwarded"], seen
    # Redirect keeps the query string.
    moved = traffic.request(env.port, host="shop.e2e.test", path="/old?a=b")
    assert moved.status == 301, moved
    assert moved.headers.get("Location", "").endswith("/new?a=b"), moved.headers
    # Canary: 80/20 over 1,000 requests, within +-5 percentage points.
    counts = collections.Counter(
        app_of(traffic.request(env.port, host="shop.e2e.test", path="/canary"))
        for _ in range(1000))
    print(f"canary split over 1000 requests: {dict(counts)}")
    assert set(counts) == {"web", "canary"}, counts
    assert 150 <= counts["canary"] <= 250, counts
    # WebSocket upgrade through the proxy, echoed by a web backend.
    backend, echoed = traffic.websocket_roundtrip(env.port, "hello", host="shop.e2e.test",
                                                  path="/ws")
    assert backend and backend.startswith("web-") and echoed == "hello", (backend, echoed)
    ready = wait_for(lambda: (c := condition(get_rp(env.kube, env.namespace, "shop"),
                                             "Ready")).get("status") == "True" and c, 60,
                     "Ready=True")
    assert ready["reason"] == "Ready"


# -------------------------------------------------------------- SNI, HSTS, h2, redirect


def test_each_hostname_gets_its_own_certificate_with_hsts_and_h2(
        rp_env_factory: Callable[..., Env]) -> None:
    now = dt.datetime.now(dt.UTC)
    user_ca = rtls.issue_ca("e2e user CA", now)
    user_pair = rtls.issue_serving(user_ca, ("user.e2e.test",), now)
    body = rp("sni", [
        {"hostname": "issued.e2e.test", "tls": {}, "routes": [route("all", "web")]},
        {"hostname": "user.e2e.test", "tls": {"secretName": "user-tls"},
         "routes": [route("all", "web")]},
    ], https=True, hsts={"maxAge": "8760h", "includeSubdomains": True})
    body["spec"]["listeners"][0]["redirectToHTTPS"] = True
    env = rp_env_factory({"web": 2}, body, before=lambda e: user_secret(
        client.CoreV1Api(e.kube), e.namespace, "user-tls", user_pair))
    core = client.CoreV1Api(env.kube)
    issued_ca = wait_for(lambda: core.read_namespaced_secret("sni-rp-tls", env.namespace),
                         60, "the issued Secret").data["ca.crt"]
    issued_ctx = ssl.create_default_context(cadata=base64.b64decode(issued_ca).decode())
    user_ctx = ssl.create_default_context(cadata=user_ca.cert_pem)
    https_port = env.local_port(HTTPS_PORT)
    a = wait_for(lambda: (r := traffic.request(https_port, host="issued.e2e.test",
                                               tls=issued_ctx)).status == 200 and r, 90,
                 "issued.e2e.test over HTTPS")
    b = wait_for(lambda: (r := traffic.request(https_port, host="user.e2e.test",
                                               tls=user_ctx)).status == 200 and r, 90,
                 "user.e2e.test over HTTPS")
    assert a.peer_cert is not None and b.peer_cert is not None
    a_names = {v for k, v in a.peer_cert.get("subjectAltName", ()) if k == "DNS"}
    b_names = {v for k, v in b.peer_cert.get("subjectAltName", ()) if k == "DNS"}
    assert "issued.e2e.test" in a_names and "user.e2e.test" not in a_names
    assert b_names == {"user.e2e.test"}
    # The wrong CA for a hostname fails the handshake: each name has its own certificate.
    wrong = traffic.request(https_port, host="user.e2e.test", tls=issued_ctx)
    assert wrong.error is not None
    # HSTS on HTTPS responses only; HTTP answers with a 301 to HTTPS.
    assert a.headers.get("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"
    plain = traffic.request(env.local_port(LISTENER_PORT), host="user.e2e.test",
                            path="/p?q=1")
    assert plain.status == 301, plain
    assert plain.headers.get("Location") == f"https://user.e2e.test:{HTTPS_PORT}/p?q=1" or \
        plain.headers.get("Location", "").startswith("https://user.e2e.test"), plain.headers
    assert "Strict-Transport-Security" not in plain.headers
    # The backend is told the original scheme.
    assert traffic.decode_seen_headers(a).get("X-Forwarded-Proto") == "https"
    # HTTP/2 offered by ALPN on the TLS listener, and WebSocket over TLS.
    assert traffic.negotiated_alpn(https_port, "issued.e2e.test", issued_ctx) == "h2"
    backend, echoed = traffic.websocket_roundtrip(
        https_port, "over tls", host="issued.e2e.test",
        tls=ssl.create_default_context(cadata=base64.b64decode(issued_ca).decode()))
    assert backend and echoed == "over tls", (backend, echoed)


# ------------------------------------------------------------------- upstream TLS


@local_only(TLS_BACKENDS_ONLY_LOCAL)
def test_reencryption_verifies_the_backend_and_refuses_a_wrong_ca(
        rp_env_factory: Callable[..., Env], tmp_path: Path) -> None:
    tls = tls_serving_backends(tmp_path)

    def before(env: Env) -> None:
        add_https_port(env.kube, env.namespace)
        ca_secret(client.CoreV1Api(env.kube), env.namespace, "backend-ca", tls.ca.cert_pem)

    body = rp("secure", [{"hostname": "secure.e2e.test", "routes": [
        {"name": "all", "backends": [{"service": "web", "port": "https"}]}]}],
        upstreamTLS={"caSecretName": "backend-ca", "sni": BACKEND_SNI})
    env = rp_env_factory({"web": 2}, body, backends=tls.servers, before=before)
    reply = wait_served(env, "secure.e2e.test")
    assert reply.seen("TLS") not in (None, "none"), reply.headers  # the backend saw TLS
    assert reply.seen("SNI") == BACKEND_SNI, reply.headers
    pods = {app_of(traffic.request(env.port, host="secure.e2e.test")) for _ in range(10)}
    assert pods == {"web"}
    # A CA that did not sign the backends' certificate: the proxy refuses to send.
    ca_secret(client.CoreV1Api(env.kube), env.namespace, "backend-ca", tls.other_ca.cert_pem,
               create=False)
    refused = wait_for(lambda: (r := traffic.request(env.port, host="secure.e2e.test"))
                       .status == 503 and r, 60, "503 once the CA does not match")
    assert refused.status == 503
    failures = sum(traffic.request(env.port, host="secure.e2e.test").status != 503
                   for _ in range(20))
    assert failures == 0


def test_a_route_to_a_missing_service_answers_503_not_another_route(
        rp_env_factory: Callable[..., Env]) -> None:
    body = rp("gaps", [{"hostname": "gaps.e2e.test", "routes": [
        route("ghost", "ghost", "/ghost"), route("web", "web")]}])
    env = rp_env_factory({"web": 1}, body)
    wait_served(env, "gaps.e2e.test")
    ghost = traffic.request(env.port, host="gaps.e2e.test", path="/ghost/x")
    assert ghost.status == 503, ghost
    status = condition(get_rp(env.kube, env.namespace, "gaps"), "BackendsHealthy")
    assert status["reason"] == "BackendNotFound" and "ghost" in status["message"]


@local_only(CLIENT_ADDRESS_ONLY_LOCAL)
def test_a_route_with_source_ranges_answers_403_to_other_clients(
        rp_env_factory: Callable[..., Env]) -> None:
    """/admin only for 127.0.0.1/32: the client at 127.0.0.2 gets 403 there and is
    served everywhere else; 127.0.0.1 is served on both."""
    body = rp("guarded", [{"hostname": "guarded.e2e.test", "routes": [
        route("admin", "admin", "/admin", allowedSourceRanges=["127.0.0.1/32"]),
        route("web", "web")]}])
    env = rp_env_factory({"web": 1, "admin": 1}, body)
    wait_served(env, "guarded.e2e.test", "/admin/users")
    other = {path: traffic.request(env.port, host="guarded.e2e.test", path=path,
                                   source="127.0.0.2") for path in ("/admin/users", "/")}
    print({p: r.status for p, r in other.items()})
    assert other["/admin/users"].status == 403, other["/admin/users"]
    assert app_of(other["/"]) == "web"
    assert app_of(traffic.request(env.port, host="guarded.e2e.test",
                                  path="/admin/users")) == "admin"
