"""spec.accessLog in haproxy.cfg: the lines per mode, and what a real HAProxy (each binary
of the unit tier) writes to stdout for each mode."""

from __future__ import annotations

import http.client
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roundhouse.graph import ClusterState, build_loadbalancer_graph, build_reverseproxy_graph
from roundhouse.model import parse_loadbalancer, parse_reverseproxy
from roundhouse.render.haproxy import RenderOptions, render_haproxy, status_port
from tests.unit.cluster_fixtures import endpoint, endpoint_slice, service, state
from tests.unit.conftest import HaproxyCheck, lb_object
from tests.unit.rp_fixtures import cluster_for, rp_object

MIXED = [{"name": "http", "port": 80}, {"name": "pg", "port": 5432, "protocol": "TCP"},
         {"name": "tls", "port": 443, "protocol": "TLSPassthrough"}]


def frontends(config: str) -> dict[str, list[str]]:
    out = {}
    for block in config.split("\n\n"):
        lines = [x.strip() for x in block.strip().splitlines()]
        if lines and lines[0].startswith("frontend fe_"):
            out[lines[0].split()[1]] = lines[1:]
    return out


def lb_config(**spec: Any) -> str:
    return render_haproxy(build_loadbalancer_graph(
        parse_loadbalancer(lb_object(**spec)), state(2))).config


def test_all_by_default_with_the_operators_fields() -> None:
    fes = frontends(lb_config(listeners=MIXED))
    assert 'log-format "%ci:%cp %Ts.%ms %ft - %b/%s %Tq/%Tw/%Tc/%Tr/%Ta %ST %B %tsc ' \
        '%{+Q}r"' in fes["fe_http"]
    for name in ("fe_pg", "fe_tls"):
        assert 'log-format "%ci:%cp %Ts.%ms %ft - %b/%s %Tw/%Tc/%Tt %B %ts"' in fes[name]
    for lines in fes.values():
        assert not any("set-log-level" in x or x == "no log" for x in lines), lines
        # HAProxy's own formats are replaced, not added to.
        assert not any(x in ("option httplog", "option tcplog") for x in lines), lines


def test_sampled_silences_all_but_one_in_n_and_keeps_server_errors() -> None:
    fes = frontends(lb_config(listeners=MIXED, accessLog={"mode": "Sampled"}))
    assert "http-response set-log-level silent if !{ status ge 500 } { rand(100) gt 0 }" \
        in fes["fe_http"]
    for name in ("fe_pg", "fe_tls"):
        rule = "tcp-request content set-log-level silent if { rand(100) gt 0 }"
        assert rule in fes[name]
        # Before TLSPassthrough's accept rule: an accepted connection skips the rest.
        accept = [i for i, x in enumerate(fes[name]) if "content accept" in x]
        assert all(fes[name].index(rule) < i for i in accept), fes[name]
    custom = frontends(lb_config(accessLog={"mode": "Sampled", "sampleOneIn": 7}))
    assert any("{ rand(7) gt 0 }" in x for x in custom["fe_http"])


def test_disabled_writes_no_log_line_on_any_listener() -> None:
    fes = frontends(lb_config(listeners=MIXED, accessLog={"mode": "Disabled"}))
    for lines in fes.values():
        assert "no log" in lines
        assert not any(x.startswith("log-format") for x in lines), lines


def test_a_reverseproxy_logs_the_route_that_matched() -> None:
    obj = rp_object(accessLog={"mode": "All"})
    config = render_haproxy(build_reverseproxy_graph(parse_reverseproxy(obj),
                                                     cluster_for(obj))).config
    assert '%ft %[var(txn.rh_route)] %b/%s ' in config


@pytest.mark.parametrize("access_log", [{}, {"mode": "Sampled", "sampleOneIn": 1_000_000},
                                        {"mode": "Disabled"}], ids=["all", "sampled", "disabled"])
def test_every_mode_passes_haproxy_check(access_log: dict[str, Any],
                                         haproxy_check: HaproxyCheck) -> None:
    graph = build_loadbalancer_graph(parse_loadbalancer(lb_object(
        listeners=MIXED, accessLog=access_log,
        limits={"maxConnectionsPerClient": 5,
                "requestRatePerClient": {"requests": 50, "period": "10s"}})), state(2))
    result = haproxy_check(graph)
    assert result.returncode == 0, result.stdout + result.stderr
    obj = rp_object(accessLog=access_log)
    result = haproxy_check(build_reverseproxy_graph(parse_reverseproxy(obj), cluster_for(obj)))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------- a real HAProxy's stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def origin(haproxy_binary: str) -> Iterator[int]:
    """A backend answering 500 on /err and 200 elsewhere."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "origin.cfg"
        cfg.write_text(f"""defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend origin
    bind 127.0.0.1:{port}
    http-request return status 500 if {{ path /err }}
    http-request return status 200 content-type text/plain string ok
""")
        proc = subprocess.Popen([haproxy_binary, "-db", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def logged_lines(binary: str, origin: int, access_log: dict[str, Any]) -> list[str]:
    """Run the rendered config, send 200 requests answered 200 and 5 answered 500 through
    it, and return the access-log lines it printed."""
    listen = free_port()
    lb = parse_loadbalancer(lb_object(listeners=[{"name": "http", "port": listen}],
                                      backends=[{"service": "web", "port": 80}],
                                      accessLog=access_log))
    cluster = ClusterState({"web": service()}, [endpoint_slice(
        "web", [endpoint("web-1", "127.0.0.1")], port=origin)])
    graph = build_loadbalancer_graph(lb, cluster)
    with tempfile.TemporaryDirectory() as tmp:
        config = render_haproxy(graph, RenderOptions(runtime_dir=tmp, cert_dir=tmp,
                                                     bind_address="127.0.0.1")).config
        # The status port is fixed; another test or a proxy may hold it on this machine.
        config = config.replace(f"127.0.0.1:{status_port(graph)}", f"127.0.0.1:{free_port()}")
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config)
        proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            wait_listening(listen)
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
            for i in range(205):
                conn.request("GET", "/err" if i % 41 == 40 else f"/ok?i={i}")
                response = conn.getresponse()
                response.read()
                assert response.status == (500 if i % 41 == 40 else 200)
            conn.close()
            time.sleep(0.3)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    return [line for line in out.splitlines() if " fe_http " in line]


def test_a_real_haproxy_logs_what_each_mode_says(haproxy_binary: str, origin: int) -> None:
    every = logged_lines(haproxy_binary, origin, {})
    assert len(every) == 205, every[:3]
    fields = every[0].split()
    assert fields[0].startswith("127.0.0.1:") and fields[2:4] == ["fe_http", "-"], fields
    assert fields[4].startswith("be_http/") and len(fields[5].split("/")) == 5, fields
    assert fields[6] == "200" and fields[7].isdigit() and fields[8] == "----", fields
    assert every[0].endswith('"GET /ok?i=0 HTTP/1.1"'), every[0]
    # One in a million: of 200 successes, almost surely none; every 500 is kept.
    sampled = logged_lines(haproxy_binary, origin, {"mode": "Sampled",
                                                    "sampleOneIn": 1_000_000})
    assert [line.split()[6] for line in sampled] == ["500"] * 5, sampled
    assert logged_lines(haproxy_binary, origin, {"mode": "Disabled"}) == []


def test_probes_and_scrapes_are_not_logged() -> None:
    config = lb_config()
    status = config[config.index("frontend roundhouse_status"):config.index("frontend fe_")]
    assert "    no log\n" in status
