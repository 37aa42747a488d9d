"""The agent against a real HAProxy (master-worker), with real HTTP(S) traffic. Loopback only.

Each test starts its own HAProxy and backends (tests/unit/agent_harness.py) and kills
HAProxy's whole process group afterwards.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import stat
import threading
import time
from collections.abc import Callable

import pytest

from roundhouse.agent.agent import Agent, DesiredState
from roundhouse.agent.loop import run, wait_for_haproxy
from roundhouse.agent.metrics import AgentMetrics
from roundhouse.agent.runtime import RuntimeClient
from roundhouse.agent.source import Source
from roundhouse.render.structure import config_hash
from tests.unit.agent_harness import (
    Backend,
    Cert,
    ClientLoop,
    FakeAPI,
    HAProxy,
    configmap_for,
    issue_cert,
    rig,
    served_serial,
)

# Each test runs its own HAProxy for a second or less; the whole file takes seconds.
pytestmark = pytest.mark.timeout(30)

RELOADS = "roundhouse_agent_reloads_total"
COMMANDS = "roundhouse_agent_runtime_commands_total"
REJECTED = "roundhouse_agent_rejected_configs_total"


def test_traffic_spreads_over_ready_backends(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        hits = r.spread(30)
        assert set(hits) == {"a", "b", "c"}
        assert min(hits.values()) >= 5, hits


def test_not_ready_endpoint_goes_to_maint_at_run_time(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        r.spread(6)
        slot = r.scenario.slot_of("b")
        r.scenario.not_ready.add("b")
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime", result
        assert result.commands == (f"set server be_http/{slot} state maint",)
        assert r.haproxy.worker() == worker  # no reload
        before = r.scenario.backends["b"].hits
        hits = r.spread(30)
        assert "b" not in hits and set(hits) == {"a", "c"}
        assert r.scenario.backends["b"].hits == before
        assert r.metric(COMMANDS) == 1
        assert r.metric(RELOADS, reason="structure") == 0
        assert r.agent.status().reloads == 0 and r.agent.status().error is None

        # ...and back to ready, still at run time.
        r.scenario.not_ready.clear()
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime"
        assert result.commands == (f"set server be_http/{slot} weight 256",
                                   f"set server be_http/{slot} state ready")
        assert set(r.spread(30)) == {"a", "b", "c"}
        assert r.haproxy.worker() == worker


def test_new_endpoint_fills_a_free_slot_without_reload(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        r.scenario.backends["d"] = Backend("d")
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime", result
        slot = r.scenario.slot_of("d")
        port = r.scenario.backends["d"].port
        # Weights are rescaled per ready endpoint count; all four slots get touched.
        assert f"set server be_http/{slot} addr 127.0.0.1 port {port}" in result.commands
        assert f"set server be_http/{slot} state ready" in result.commands
        assert r.haproxy.worker() == worker
        hits = r.spread(40)
        assert set(hits) == {"a", "b", "c", "d"}, hits
        assert r.metric(RELOADS, reason="structure") == 0

        # Removing an endpoint frees its slot, again at run time.
        r.scenario.backends.pop("a").stop()
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime", result
        assert set(r.spread(30)) == {"b", "c", "d"}
        assert r.haproxy.worker() == worker


def test_structural_change_reloads_without_failed_requests(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r, ClientLoop(r.scenario.port) as client:
        client.wait_for(20)
        workers = [r.haproxy.worker()]
        for i, seconds in enumerate((41, 42, 43)):
            r.scenario.timeouts = {"client": f"{seconds}s"}
            result = r.agent.apply(r.scenario.desired())
            assert result.action == "reload", result
            assert result.reason.startswith("structure changed:")
            assert f"timeout client {seconds}s" in result.reason
            assert result.worker is not None and result.worker not in workers
            workers.append(r.haproxy.worker())
            assert workers[-1] == result.worker
            assert r.metric(RELOADS, reason="structure") == i + 1
            client.wait_for(20)
        assert client.failures == [], client.failures[:5]
        assert client.ok >= 60
        assert r.agent.status().reloads == 3
        assert f"timeout client {seconds}s" in (r.scenario.runtime_dir / "haproxy.cfg").read_text()


def _with_bogus_directive(desired: DesiredState) -> DesiredState:
    config = desired.config.replace("defaults\n", "defaults\n    bogus-directive on\n", 1)
    return dataclasses.replace(desired, config=config,
                               servers={**desired.servers, "configHash": config_hash(config)})


def test_invalid_config_is_not_applied(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        cfg = r.scenario.runtime_dir / "haproxy.cfg"
        running = cfg.read_text()
        r.scenario.timeouts = {"client": "44s"}
        bad = _with_bogus_directive(r.scenario.desired())
        result = r.agent.apply(bad)
        assert result.action == "rejected"
        assert result.error and "bogus-directive" in result.error
        assert r.agent.status().error == result.error
        assert r.metric(REJECTED) == 1
        assert cfg.read_text() == running  # the candidate never replaced the running file
        assert r.haproxy.worker() == worker
        assert set(r.spread(9)) == {"a", "b", "c"}
        # The same bad state again: not re-checked, not re-counted.
        assert r.agent.apply(bad).action == "rejected"
        assert r.metric(REJECTED) == 1
        # A good one afterwards applies and clears the error.
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "reload"
        assert r.agent.status().error is None


def test_invalid_config_without_haproxy_c_is_rolled_back(haproxy_binary: str) -> None:
    """The agent image has no haproxy binary: the failed reload is the check."""
    with rig(haproxy_binary, agent_binary="/nonexistent/haproxy") as r:
        assert r.agent.haproxy is None
        worker = r.haproxy.worker()
        cfg = r.scenario.runtime_dir / "haproxy.cfg"
        running = cfg.read_text()
        r.scenario.timeouts = {"client": "44s"}
        result = r.agent.apply(_with_bogus_directive(r.scenario.desired()))
        assert result.action == "rejected", result
        assert result.error and "reload failed" in result.error
        assert cfg.read_text() == running  # restored for the next (re)start
        assert r.haproxy.worker() == worker  # the old worker keeps serving
        assert set(r.spread(9)) == {"a", "b", "c"}
        # An agent (re)started now finds HAProxy up, though 3.x lists that worker as old.
        fresh = Agent(r.scenario.runtime_dir, haproxy_bin="/nonexistent/haproxy",
                      metrics=AgentMetrics())
        assert fresh.client.wait_until_up(timeout=5).serving == (worker,)
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "reload", result
        assert r.haproxy.worker() != worker
        assert set(r.spread(9)) == {"a", "b", "c"}


def test_certificate_rotation_is_hot_swapped(haproxy_binary: str) -> None:
    with rig(haproxy_binary, https=True) as r:
        assert isinstance(r.scenario.cert, Cert)
        assert served_serial(r.scenario.port) == r.scenario.cert.serial
        worker = r.haproxy.worker()
        r.scenario.cert = issue_cert()
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime", result
        assert result.commands == ()
        assert "web-tls.pem rotated" in result.reason
        assert served_serial(r.scenario.port) == r.scenario.cert.serial
        assert r.haproxy.worker() == worker
        assert r.metric(RELOADS, reason="certificate") == 0
        assert r.metric(COMMANDS) == 1
        pem = r.scenario.runtime_dir / "certs" / "web-tls.pem"
        assert pem.read_text().startswith(r.scenario.cert.crt.strip())
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert set(r.spread(6)) == {"a", "b", "c"}


def test_restarted_agent_adopts_the_running_state(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        r.scenario.not_ready.add("c")
        assert r.agent.apply(r.scenario.desired()).action == "runtime"
        fresh = Agent(r.scenario.runtime_dir, haproxy_bin=haproxy_binary,
                      metrics=AgentMetrics())
        assert fresh.applied is not None
        assert fresh.apply(r.scenario.desired()).action == "none"
        status = fresh.status()
        assert status.config_hash == r.agent.status().config_hash
        # A record that no longer matches the files means a recovery reload.
        (r.scenario.runtime_dir / "agent-state.json").unlink()
        again = Agent(r.scenario.runtime_dir, haproxy_bin=haproxy_binary,
                      metrics=AgentMetrics())
        result = again.apply(r.scenario.desired())
        assert result.action == "reload" and result.reason.startswith("recovery")
        assert again.metrics.registry.get_sample_value(RELOADS, {"reason": "recovery"}) == 1
        assert r.haproxy.worker() != worker
        assert set(r.spread(9)) == {"a", "b"}


def test_servers_json_as_received_is_kept_and_adopted_after_a_restart(
        haproxy_binary: str) -> None:
    """servers.json from the ConfigMap is written as it came (not encoded again), and a
    restarted agent adopts those files without a reload."""
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        r.scenario.not_ready.add("c")
        plain = r.scenario.desired()
        text = json.dumps(plain.servers, indent=1) + "\n"  # not the canonical form
        received = DesiredState(plain.config, plain.servers, plain.certificates, text)
        assert r.agent.apply(received).action == "runtime"
        assert (r.scenario.runtime_dir / "servers.json").read_text() == text + "\n"
        fresh = Agent(r.scenario.runtime_dir, haproxy_bin=haproxy_binary,
                      metrics=AgentMetrics())
        assert fresh.applied is not None
        assert fresh.apply(received).action == "none"
        assert fresh.apply(plain).action == "none"  # same servers, another text
        assert r.haproxy.worker() == worker
        assert set(r.spread(9)) == {"a", "b"}


def test_runtime_update_is_much_faster_than_a_reload(haproxy_binary: str) -> None:
    with rig(haproxy_binary) as r:
        r.scenario.not_ready.add("a")
        start = time.monotonic()
        runtime = r.agent.apply(r.scenario.desired())
        runtime_s = time.monotonic() - start
        r.scenario.timeouts = {"client": "45s"}
        start = time.monotonic()
        reload = r.agent.apply(r.scenario.desired())
        reload_s = time.monotonic() - start
        assert (runtime.action, reload.action) == ("runtime", "reload")
        print(f"\nruntime update: {runtime_s * 1000:.1f} ms; "
              f"validated reload: {reload_s * 1000:.1f} ms")
        assert runtime_s < reload_s


def test_haproxy_down_is_retried_not_rejected(haproxy_binary: str) -> None:
    """HAProxy away (restarting, or not up yet when the agent starts): an error, then success."""
    with rig(haproxy_binary) as r:
        r.haproxy.stop()
        r.scenario.not_ready.add("a")
        desired = r.scenario.desired()
        start = time.monotonic()
        result = r.agent.apply(desired)
        assert result.action == "error" and "cannot reach HAProxy" in (result.error or "")
        assert time.monotonic() - start < 2
        assert r.metric(REJECTED) == 0
        # HAProxy comes back (from the files on disk) while the agent waits for it.
        timer = threading.Timer(0.3, lambda: setattr(
            r, "haproxy", HAProxy(haproxy_binary, r.scenario.runtime_dir)))
        timer.start()
        assert wait_for_haproxy(r.agent, threading.Event(), timeout=10)
        timer.join()
        result = r.agent.apply(desired)
        assert result.action == "runtime", result
        assert set(r.spread(9)) == {"b", "c"}


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_loop_applies_watched_changes_and_reports(haproxy_binary: str) -> None:
    """ConfigMap events in (a fake API), HAProxy changes out, status JSON reported."""
    with rig(haproxy_binary) as r:
        first = r.scenario.desired()
        api = FakeAPI(configmap_for(first, "1"))
        stop = threading.Event()
        loop = threading.Thread(target=run, args=(r.agent, Source(
            api, "ns", "web-lb", "web-lb-agents", "pod-1"), stop), daemon=True)
        loop.start()
        try:
            _eventually(lambda: (api.status() or {}).get("configHash") == first.config_hash)
            worker = r.haproxy.worker()
            r.scenario.not_ready.add("a")
            second = r.scenario.desired()
            api.events.put({"type": "MODIFIED", "object": configmap_for(second, "2")})
            _eventually(lambda: (api.status() or {}).get("configHash") == second.config_hash)
            assert set(r.spread(9)) == {"b", "c"}
            r.scenario.timeouts = {"client": "46s"}
            third = r.scenario.desired()
            api.events.put({"type": "MODIFIED", "object": configmap_for(third, "3")})
            _eventually(lambda: (api.status() or {}).get("reloads") == 1)
            status = api.status() or {}
            assert status["configHash"] == third.config_hash and status["error"] is None
            assert status["structureHash"] == third.structure_hash
            assert r.haproxy.worker() != worker
            bad = _with_bogus_directive(third)
            api.events.put({"type": "MODIFIED", "object": configmap_for(bad, "4")})
            _eventually(lambda: bool((api.status() or {}).get("error")))
            status = api.status() or {}
            assert "bogus-directive" in status["error"]
            assert bad.config_hash != third.config_hash
            assert status["configHash"] == third.config_hash  # still the applied one
        finally:
            stop.set()
            loop.join(5)


# -- the open-files limit of the node ----------------------------------------------------------

DEFAULT_MAX_CONNECTIONS = 10_000  # spec.limits.maxConnections when omitted


def test_default_spec_starts_under_a_20000_open_files_limit(haproxy_binary: str) -> None:
    """The wall a real node showed: a global maxconn 10000 needs 20041 FDs and HAProxy
    refused to start. Rendered now, HAProxy derives maxconn from the limit, serves, and
    the agent reports what it got, below what the spec asked."""
    with rig(haproxy_binary, max_connections=DEFAULT_MAX_CONNECTIONS, nofile=20_000) as r:
        assert set(r.spread(6)) == {"a", "b", "c"}
        limits = r.agent.refresh_limits()
        assert limits is not None
        assert 19_900 <= limits.open_files <= 20_000  # 2.6's worker keeps one for itself
        assert 9_000 < limits.max_connections < DEFAULT_MAX_CONNECTIONS
        assert limits.max_sockets <= 20_000
        body = r.agent.status().to_dict()
        assert (body["maxconn"], body["ulimitN"]) == (limits.max_connections,
                                                      limits.open_files)


def test_low_open_files_limit_gives_a_proportionally_lower_maxconn(haproxy_binary: str) -> None:
    with rig(haproxy_binary, max_connections=DEFAULT_MAX_CONNECTIONS, nofile=1024) as r:
        assert set(r.spread(3)) == {"a", "b", "c"}
        limits = r.agent.refresh_limits()
        assert limits is not None and 1000 <= limits.open_files <= 1024
        assert 256 < limits.max_connections < 512


def test_enough_open_files_give_at_least_the_spec_maxconn(haproxy_binary: str) -> None:
    """fd-hard-limit caps the derived maxconn near the spec, never below it."""
    with rig(haproxy_binary, max_connections=2_000, nofile=20_000) as r:
        limits = r.agent.refresh_limits()
        assert limits is not None
        assert limits.open_files < 20_000  # capped by fd-hard-limit, not the node's limit
        assert 2_000 <= limits.max_connections <= 2_600


def test_loop_reports_the_limits_haproxy_runs_with(haproxy_binary: str) -> None:
    with rig(haproxy_binary, max_connections=DEFAULT_MAX_CONNECTIONS, nofile=4096) as r:
        desired = r.scenario.desired()
        api = FakeAPI(configmap_for(desired, "1"))
        stop = threading.Event()
        loop = threading.Thread(target=run, args=(r.agent, Source(
            api, "ns", "web-lb", "web-lb-agents", "pod-1"), stop), daemon=True)
        loop.start()
        try:
            _eventually(lambda: 4000 <= (api.status() or {}).get("ulimitN", 0) <= 4096)
            status = api.status() or {}
            assert 1000 < status["maxconn"] < 2048 and status["maxsock"] <= 4096
        finally:
            stop.set()
            loop.join(5)


def _cookie_request(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """One request on a fresh connection: (the backend's name, the RH_SESSION it set)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        headers = {"Connection": "close"} | ({"Cookie": f"RH_SESSION={cookie}"} if cookie else {})
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        set_cookie = resp.getheader("Set-Cookie") or ""
        value = set_cookie.split(";")[0].removeprefix("RH_SESSION=") if set_cookie else None
        return body, value or None
    finally:
        conn.close()


def _cookies(port: int, names: set[str]) -> dict[str, str]:
    """The cookie each backend's server hands out (round robin reaches every one)."""
    seen: dict[str, str] = {}
    for _ in range(3 * len(names)):
        name, cookie = _cookie_request(port)
        assert cookie, f"{name} set no cookie"
        seen[name] = cookie.split("|")[0]  # the server part (the rest is a date)
        if set(seen) == names:
            break
    assert set(seen) == names, sorted(names - set(seen))
    return seen


def test_scaling_past_the_slots_adds_servers_at_run_time(haproxy_binary: str) -> None:
    """3 -> 9 -> 40 endpoints grows the slots 8 -> 16 -> 64: every new server is added
    through the Runtime API (`add server`, health checks enabled), with no reload, the
    same worker, traffic on every endpoint, and the cookie each server hands out is the
    one a reload of the written config gives it (ids too), so sessions stay pinned."""
    spec = {"sessionPersistence": {"type": "Cookie"},
            "healthCheck": {"type": "HTTP", "interval": "500ms"},
            "limits": {"maxConnections": 1000, "maxConnectionsPerServer": 100}}
    with rig(haproxy_binary, spec=spec) as r:
        procs = r.haproxy.client.show_proc()
        worker = r.haproxy.worker()
        assert len(r.scenario.previous["be_http"]) == 8
        for n, slots in ((9, 16), (40, 64)):
            new = slots - len(r.scenario.previous["be_http"])
            for i in range(len(r.scenario.backends), n):
                r.scenario.backends[f"b{i:02d}"] = Backend(f"b{i:02d}")
            result = r.agent.apply(r.scenario.desired())
            assert result.action == "runtime", result
            assert len(r.scenario.previous["be_http"]) == slots
            adds = [c for c in result.commands if c.startswith("add server")]
            assert len(adds) == new, adds
            assert all(" check " in c for c in adds)
            assert sum(c.startswith("enable health") for c in result.commands) == new
            assert result.reason.endswith(f"{new} server slot(s) added")
            print(f"\n{slots} slots: {new} servers added at run time in "
                  f"{result.seconds * 1000:.0f} ms ({len(result.commands)} commands)")
            assert r.haproxy.worker() == worker
            assert r.haproxy.client.show_proc().master_pid == procs.master_pid
            assert r.metric(RELOADS, reason="structure") == 0
            assert r.metric(RELOADS, reason="fallback") == 0
            assert r.agent.status().reloads == 0
            assert set(r.spread(3 * n)) == set(r.scenario.backends)
        # The written config holds every server the running worker has, with its id.
        written = (r.scenario.runtime_dir / "haproxy.cfg").read_text()
        assert written == r.scenario.desired().config
        running = {s.server: s for s in r.haproxy.client.servers_state("be_http")}
        assert [s for s, _ in sorted(running.items(), key=lambda kv: kv[1].id)] == list(
            r.scenario.previous["be_http"])
        names = set(r.scenario.backends)
        cookies = _cookies(r.scenario.port, names)
        assert len(set(cookies.values())) == len(names)
        # A health check that fails takes an added server out, as for a configured one.
        gone = r.scenario.slot_of("b30")
        r.scenario.backends["b30"].stop()
        deadline = time.monotonic() + 10
        while "b30" in {_cookie_request(r.scenario.port)[0] for _ in range(60)}:
            assert time.monotonic() < deadline, "added server b30 still gets traffic"
        del r.scenario.backends["b30"]
        names.discard("b30")
        # A reload (a structural change) rebuilds the servers from the written config:
        # the same ids, addresses and cookies (b30's endpoint is gone: its slot is free).
        r.scenario.timeouts = {"client": "41s"}
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "reload", result
        assert r.haproxy.worker() != worker
        after = {s.server: s for s in r.haproxy.client.servers_state("be_http")}
        assert {k: (s.id, s.address, s.port) for k, s in after.items() if k != gone} == {
            k: (s.id, s.address, s.port) for k, s in running.items() if k != gone}
        assert after[gone].port == 1
        assert _cookies(r.scenario.port, names) == {k: v for k, v in cookies.items()
                                                    if k in names}
        # ...and a client pinned before the reload stays on its server.
        for name in ("a", "b05", "b39"):
            assert _cookie_request(r.scenario.port, cookies[name])[0] == name


@pytest.mark.parametrize("algorithm", ["leastconn", "source", "random", "first"])
def test_every_rendered_algorithm_takes_added_servers(haproxy_binary: str,
                                                      algorithm: str) -> None:
    """HAProxy adds servers only to backends with a dynamic algorithm; each one the CRD
    offers is one (source and random are rendered with consistent hashing)."""
    spec = {"algorithm": algorithm,
            "limits": {"maxConnections": 1000, "maxConnectionsPerServer": 10}}
    with rig(haproxy_binary, spec=spec) as r:
        worker = r.haproxy.worker()
        for i in range(3, 9):
            r.scenario.backends[f"b{i}"] = Backend(f"b{i}")
        result = r.agent.apply(r.scenario.desired())
        assert result.action == "runtime", result
        assert r.haproxy.worker() == worker
        ids = {s.server: s.id for s in r.haproxy.client.servers_state("be_http")}
        assert ids == {f"srv{i}": i for i in range(1, 17)}
        for name in ("a", "b8"):  # a configured server, an added one: both take traffic
            r.scenario.not_ready = set(r.scenario.backends) - {name}
            assert r.agent.apply(r.scenario.desired()).action == "runtime"
            assert set(r.spread(4)) == {name}
        assert r.agent.status().reloads == 0


def test_setting_a_server_to_the_address_it_has_is_accepted(haproxy_binary: str) -> None:
    """The agent may set a slot to the address it already has (its view was stale).
    2.6 and 3.2 answer "no need to change ...", 3.4 "nothing changed": neither is an
    error, or the agent would fall back to a reload (seen once on 3.4, scaling 0 -> 3)."""
    with rig(haproxy_binary) as r:
        worker = r.haproxy.worker()
        runtime = RuntimeClient(r.haproxy.runtime_dir)
        state = next(s for s in runtime.servers_state("be_http") if s.port != 1)
        runtime.server_command(
            f"set server be_http/{state.server} addr {state.address} port {state.port}")
        free = next(s for s in runtime.servers_state("be_http") if s.port == 1)
        runtime.server_command(f"set server be_http/{free.server} addr 127.0.0.1 port 1")
        assert r.haproxy.worker() == worker
