"""agent/plan.py: what it takes to get from the applied state to the desired one (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from roundhouse.agent.plan import (
    Added,
    Plan,
    PlanError,
    Slot,
    Snapshot,
    decide,
    parse_pools,
    slot_commands,
    structure,
)
from roundhouse.graph import build_loadbalancer_graph, build_reverseproxy_graph
from roundhouse.model import parse_loadbalancer, parse_reverseproxy
from roundhouse.render.haproxy import render_haproxy, server_line
from roundhouse.render.structure import config_hash, structure_hash
from tests.unit.cluster_fixtures import endpoint, state
from tests.unit.conftest import lb_object
from tests.unit.rp_fixtures import rp_object

FREE = Slot(None, None, None, 0, "maint")


def ready(addr: str = "10.0.0.1", port: int = 8080, weight: int = 256,
          ep: str = "web/web-1:8080") -> Slot:
    return Slot(ep, addr, port, weight, "ready")


def drain(addr: str = "10.0.0.1", weight: int = 256) -> Slot:
    return Slot("web/web-1:8080", addr, 8080, weight, "drain")


def maint(addr: str = "10.0.0.1") -> Slot:
    return Slot("web/web-1:8080", addr, 8080, 256, "maint")


def line(slot: str, s: Slot) -> str:
    if s.endpoint is None:
        return f"    server {slot} 127.0.0.1:1 disabled\n"
    host = f"[{s.address}]" if s.address and ":" in s.address else s.address
    text = f"    server {slot} {host}:{s.port} weight {0 if s.state == 'drain' else s.weight}"
    return text + (" disabled\n" if s.state == "maint" else "\n")


def snap(*slots: Slot, timeout: str = "50s", certs: dict[str, str] | None = None,
         backend: str = "be_http", extra: dict[str, tuple[Slot, ...]] | None = None,
         options: str = "", defaults: str = "") -> Snapshot:
    pools = {backend: slots, **(extra or {})}
    cfg = f"global\n    master-worker\ndefaults\n    timeout client {timeout}\n{defaults}"
    for name, ss in pools.items():
        cfg += f"\nbackend {name}\n    balance roundrobin\n"
        cfg += f"    default-server {options}\n" if options else ""
        cfg += "".join(line(f"srv{i}", s) for i, s in enumerate(ss, 1))
    return Snapshot(cfg, {name: {f"srv{i}": s for i, s in enumerate(ss, 1)}
                          for name, ss in pools.items()}, certs or {})


S = "set server be_http/srv1"
HC = "check inter 2s rise 2 fall 3 maxconn 100 ssl verify required ca-file ca.pem sni str(web)"

CASES: list[tuple[str, Snapshot | None, Snapshot, Plan]] = [
    ("identical", snap(ready(), FREE), snap(ready(), FREE), Plan("none")),
    ("endpoint renamed, same address", snap(ready()), snap(ready(ep="web/web-9:8080")),
     Plan("none")),
    ("no record", None, snap(ready()), Plan(
        "reload", reason="recovery: no record of the configuration HAProxy runs",
        category="recovery")),
    ("timeout", snap(ready(), timeout="50s"), snap(ready(), timeout="5s"), Plan(
        "reload", reason="structure changed: -timeout client 50s, +timeout client 5s",
        category="structure")),
    ("more slots: added free at run time", snap(ready()), snap(ready(), FREE), Plan(
        "runtime", ("add server be_http/srv2 127.0.0.1:1 id 2",),
        reason="1 server slot(s) added", added=(Added("be_http", "srv2", 2),))),
    ("more slots, filled", snap(ready(), FREE), snap(ready(), ready("10.0.0.2"), FREE,
                                                     maint("10.0.0.4")),
     Plan("runtime", ("set server be_http/srv2 addr 10.0.0.2 port 8080",
                      "set server be_http/srv2 weight 256", "set server be_http/srv2 state ready",
                      "add server be_http/srv3 127.0.0.1:1 id 3",
                      "add server be_http/srv4 127.0.0.1:1 id 4",
                      "set server be_http/srv4 addr 10.0.0.4 port 8080"),
          reason="1 server slot(s) changed; 2 server slot(s) added",
          added=(Added("be_http", "srv3", 3), Added("be_http", "srv4", 4)))),
    ("more slots with health checks: default-server passed whole, checks enabled",
     snap(ready(), options=HC), snap(ready(), ready("10.0.0.2"), options=HC),
     Plan("runtime", (f"add server be_http/srv2 127.0.0.1:1 id 2 {HC}",
                      "enable health be_http/srv2",
                      "set server be_http/srv2 addr 10.0.0.2 port 8080",
                      "set server be_http/srv2 weight 256", "set server be_http/srv2 state ready"),
          reason="1 server slot(s) added",
          added=(Added("be_http", "srv2", 2, tuple(HC.split())),))),
    ("more slots in two backends", snap(ready(), extra={"be_tcp": (FREE,)}),
     snap(ready(), FREE, extra={"be_tcp": (FREE, FREE)}),
     Plan("runtime", ("add server be_http/srv2 127.0.0.1:1 id 2",
                      "add server be_tcp/srv2 127.0.0.1:1 id 2"),
          reason="2 server slot(s) added",
          added=(Added("be_http", "srv2", 2), Added("be_tcp", "srv2", 2)))),
    ("more slots and a structural change", snap(ready()), snap(ready(), FREE, timeout="5s"),
     Plan("reload", reason="structure changed: -timeout client 50s, +timeout client 5s, "
          "+server srv2", category="structure")),
    ("more slots and another default-server", snap(ready(), options="maxconn 5"),
     snap(ready(), FREE, options="maxconn 6"),
     Plan("reload", reason="structure changed: -default-server maxconn 5, "
          "+default-server maxconn 6, +server srv2", category="structure")),
    ("more slots and a new backend", snap(ready()), snap(ready(), FREE, extra={"be_x": (FREE,)}),
     Plan("reload", reason="structure changed: +server srv2, +backend be_x, +balance roundrobin"
          " (+1 more)", category="structure")),
    ("fewer slots", snap(ready(), FREE), snap(ready()), Plan(
        "reload", reason="structure changed: -server srv2", category="structure")),
    ("more slots, default-server from a defaults section",
     snap(ready(), defaults="    default-server check\n"),
     snap(ready(), FREE, defaults="    default-server check\n"),
     Plan("reload", reason="structure changed: +server srv2", category="structure")),
    ("more slots, an option the Runtime API would split", snap(ready(), options="sni str(a);b"),
     snap(ready(), FREE, options="sni str(a);b"),
     Plan("reload", reason="server slots added, not at run time: backend be_http: "
          "default-server option 'str(a);b'", category="structure")),
    ("ready -> not ready", snap(ready()), snap(maint()),
     Plan("runtime", (f"{S} state maint",), reason="1 server slot(s) changed")),
    ("not ready -> ready", snap(maint()), snap(ready()),
     Plan("runtime", (f"{S} weight 256", f"{S} state ready"), reason="1 server slot(s) changed")),
    ("ready -> draining", snap(ready()), snap(drain()),
     Plan("runtime", (f"{S} weight 0", f"{S} state drain"), reason="1 server slot(s) changed")),
    ("draining -> ready", snap(drain()), snap(ready()),
     Plan("runtime", (f"{S} weight 256", f"{S} state ready"), reason="1 server slot(s) changed")),
    ("weight", snap(ready(weight=256)), snap(ready(weight=128)),
     Plan("runtime", (f"{S} weight 128",), reason="1 server slot(s) changed")),
    ("new endpoint in a free slot", snap(FREE), snap(ready()),
     Plan("runtime", (f"{S} addr 10.0.0.1 port 8080", f"{S} weight 256", f"{S} state ready"),
          reason="1 server slot(s) changed")),
    ("endpoint gone: slot freed", snap(ready()), snap(FREE),
     Plan("runtime", (f"{S} state maint",), reason="1 server slot(s) changed")),
    ("not-ready endpoint placed in a free slot", snap(FREE), snap(maint("10.0.0.7")),
     Plan("runtime", (f"{S} addr 10.0.0.7 port 8080",), reason="1 server slot(s) changed")),
    ("slot reused by another address", snap(ready("10.0.0.1")), snap(ready("10.0.0.2")),
     Plan("runtime", (f"{S} addr 10.0.0.2 port 8080",), reason="1 server slot(s) changed")),
    ("IPv6 address", snap(FREE), snap(ready("fd00::5")),
     Plan("runtime", (f"{S} addr fd00::5 port 8080", f"{S} weight 256", f"{S} state ready"),
          reason="1 server slot(s) changed")),
    ("only changed slots, every backend", snap(ready(), ready("10.0.0.2"),
                                             extra={"be_tcp": (FREE,)}),
     snap(ready(), maint("10.0.0.2"), extra={"be_tcp": (ready(),)}),
     Plan("runtime", ("set server be_http/srv2 state maint",
                      "set server be_tcp/srv1 addr 10.0.0.1 port 8080",
                      "set server be_tcp/srv1 weight 256", "set server be_tcp/srv1 state ready"),
          reason="2 server slot(s) changed")),
    ("certificate rotated", snap(ready(), certs={"a.pem": "1"}),
     snap(ready(), certs={"a.pem": "2"}),
     Plan("runtime", certificates=("a.pem",), reason="certificate a.pem rotated")),
    ("certificate rotated + endpoint", snap(ready(), certs={"a.pem": "1"}),
     snap(maint(), certs={"a.pem": "2"}),
     Plan("runtime", (f"{S} state maint",), ("a.pem",),
          reason="1 server slot(s) changed; certificate a.pem rotated")),
    ("certificate added", snap(ready()), snap(ready(), certs={"a.pem": "1"}),
     Plan("reload", reason="certificate a.pem added", category="certificate")),
    ("certificate no longer used", snap(ready(), certs={"a.pem": "1"}), snap(ready()),
     Plan("none")),
]


@pytest.mark.parametrize(("applied", "desired", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(applied: Snapshot | None, desired: Snapshot, expected: Plan) -> None:
    assert decide(applied, desired) == expected


def test_slot_layout_mismatch_reloads() -> None:
    """Same text but servers.json names other slots: the runtime path cannot be trusted."""
    applied = snap(ready())
    desired = Snapshot(applied.config, {"be_http": {"srv9": ready()}})
    plan = decide(applied, desired)
    assert (plan.action, plan.category) == ("reload", "structure")
    assert "server slots" in plan.reason


def test_slots_inserted_before_running_ones_reload() -> None:
    """Only appended slots keep the running servers' ids: anything else reloads."""
    applied = snap(ready())
    grown = snap(FREE, ready())
    desired = Snapshot(grown.config.replace("server srv1 127.0.0.1:1", "server srv0 127.0.0.1:1"),
                       {"be_http": {"srv0": FREE, "srv1": ready()}})
    assert decide(applied, desired).action == "reload"


def test_added_slots_missing_from_the_config_reload() -> None:
    """servers.json grows but the config does not: nothing to add, the runtime path cannot
    be trusted."""
    applied = snap(ready())
    desired = Snapshot(snap(ready(), FREE, timeout="5s").config,
                       {"be_http": {"srv1": ready(), "srv2": FREE, "srv3": FREE}})
    assert decide(applied, desired).action == "reload"
    same_text = Snapshot(applied.config, {"be_http": {"srv1": ready(), "srv2": FREE}})
    assert decide(applied, same_text).category == "structure"


def _lb_render(n: int, previous: dict[str, dict[str, str]],
               **spec: Any) -> tuple[Snapshot, dict[str, dict[str, str]]]:
    lb = parse_loadbalancer(lb_object(**spec))
    graph = build_loadbalancer_graph(lb, state(n, previous=previous))
    rendered = render_haproxy(graph)
    pools = parse_pools(rendered.server_state)
    return (Snapshot(rendered.config, pools),
            {b: {slot: s.endpoint or "" for slot, s in slots.items()}
             for b, slots in pools.items()})


@pytest.mark.parametrize("spec", [
    {},
    {"healthCheck": {"type": "HTTP", "path": "/healthz"},
     "limits": {"maxConnectionsPerServer": 50}, "algorithm": "leastconn"},
    {"upstreamTLS": {"verify": False, "sni": "web.example"}, "healthCheck": {"type": "TCP"},
     "sessionPersistence": {"type": "Cookie"}, "algorithm": "source"},
], ids=["plain", "checks+maxconn+leastconn", "tls+cookie+source"])
def test_scaling_past_the_slots_of_a_real_render_is_a_runtime_plan(spec: dict[str, Any]) -> None:
    """5 -> 9 -> 40 endpoints: slots grow 8 -> 16 -> 64, each step adds the new slots
    with the rendered default-server options and ids in config order, never a reload."""
    applied, previous = _lb_render(5, {}, **spec)
    for n in (9, 40):
        desired, previous = _lb_render(n, previous, **spec)
        plan = decide(applied, desired)
        assert plan.action == "runtime", plan.reason
        running = list(applied.pools["be_http"])
        slots = list(desired.pools["be_http"])
        assert [(a.slot, a.id) for a in plan.added] == [
            (s, i) for i, s in enumerate(slots, 1) if i > len(running)]
        default = next((line.split()[1:] for line in desired.config.split("\n")
                        if line.split()[:1] == ["default-server"]), [])
        assert bool(default) == bool(spec)
        adds = [c for c in plan.commands if c.startswith("add server")]
        assert len(adds) == len(slots) - len(running)
        assert all(c.split()[6:] == default for c in adds), adds[0]
        assert ("enable health be_http/" + slots[-1] in plan.commands) == ("check" in default)
        ready = sum(1 for s in desired.pools["be_http"].values() if s.state == "ready")
        assert ready == n
        applied = desired


def test_comment_only_change_still_reloads_with_a_clear_reason() -> None:
    applied = snap(ready())
    desired = Snapshot("# hello\n" + applied.config, applied.pools)
    assert decide(applied, desired) == Plan("reload", reason="structure changed: comments only",
                                            category="structure")


def test_long_structure_diffs_are_summarized() -> None:
    applied = snap(ready())
    desired = Snapshot(applied.config + "".join(f"    option o{i}\n" for i in range(6)),
                       applied.pools)
    plan = decide(applied, desired)
    assert plan.reason.endswith("(+3 more)")


@pytest.mark.parametrize(("old", "new"), [
    (ready(), maint()), (maint(), ready()), (ready(), drain()), (drain(), ready()),
    (FREE, ready()), (ready(), FREE), (ready(weight=1), ready(weight=2)),
])
def test_commands_reverse_cleanly(old: Slot, new: Slot) -> None:
    forth = slot_commands("b", "s", old, new)
    back = slot_commands("b", "s", new, old)
    assert forth and back
    assert slot_commands("b", "s", new, new) == []


def test_structure_and_hashes_match_the_renderer() -> None:
    lb = parse_loadbalancer(lb_object())
    graph = build_loadbalancer_graph(lb, state(3, extra=[endpoint("t", "10.244.0.9",
                                                                   ready=False)]))
    rendered = render_haproxy(graph)
    assert config_hash(rendered.config) == rendered.config_hash
    assert structure_hash(rendered.config) == rendered.structure_hash
    masked = structure(rendered.config)
    for pool in graph.pools:
        for s in pool.servers:
            assert server_line(s) not in masked
            assert f"    server {s.slot}\n" in masked
    # And servers.json parses into the same slots the config has.
    pools = parse_pools(rendered.server_state)
    assert list(pools["be_http"]) == [s.slot for s in graph.pools[0].servers]


def _servers(**slot: Any) -> dict[str, Any]:
    base = {"slot": "srv1", "endpoint": "web/a:80", "address": "10.0.0.1", "port": 80,
            "weight": 10, "state": "ready"}
    base.update(slot)
    return {"pools": {"be_http": [base]}}


@pytest.mark.parametrize(("servers", "message"), [
    ({}, "no 'pools'"),
    ({"pools": {"be http": []}}, "invalid backend name"),
    ({"pools": {"be_http": {}}}, "is not a list"),
    ({"pools": {"be_http": ["x"]}}, "is not an object"),
    (_servers(slot="srv1; show info"), "invalid slot name"),
    (_servers(state="up"), "state 'up'"),
    (_servers(address="10.0.0.1 port 1;x"), "invalid address"),
    (_servers(address="evil.example"), "invalid address"),
    (_servers(port=0), "invalid port"),
    (_servers(weight=257), "invalid weight"),
    (_servers(address=None), "has no address"),
])
def test_parse_pools_rejects_what_could_inject_commands(servers: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_pools(servers)


def test_parse_pools_accepts_free_slots() -> None:
    pools = parse_pools({"pools": {"be_tcp": [{"slot": "srv1", "endpoint": None,
                                               "address": None, "port": None, "weight": 0,
                                               "state": "maint"}]}})
    assert pools == {"be_tcp": {"srv1": FREE}}


# Every character str.splitlines() splits at but HAProxy does not (it splits at \n only).
NOT_HAPROXY_LINE_BREAKS = ["\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
                           "\u2029"]


@pytest.mark.parametrize("separator", NOT_HAPROXY_LINE_BREAKS,
                         ids=[f"U+{ord(c):04X}" for c in NOT_HAPROXY_LINE_BREAKS])
def test_a_value_that_looks_like_a_server_line_after_a_separator_is_not_cut(
        separator: str) -> None:
    """Two configs that differ only inside a header value must differ in structure, so the
    agent reloads: before, splitlines() cut the value at the separator and masked the
    rest as if it were a server line, and the agent applied nothing."""
    def config(weight: int) -> str:
        value = f"a{separator}    server x 10.0.0.1:80 weight {weight}"
        return f"backend b\n    http-request set-header X-A '{value}'\n"

    assert structure_hash(config(1)) != structure_hash(config(2))
    applied = Snapshot(config(1), {"b": {}})
    plan = decide(applied, Snapshot(config(2), {"b": {}}))
    assert (plan.action, plan.category) == ("reload", "structure")


@pytest.mark.parametrize("tail", [
    " 10.0.0.1:80 weight 1 check", " 10.0.0.1:80 weight 1 backup", " 10.0.0.1:80",
    "\t10.0.0.1:80 weight 1", " 10.0.0.1:80 weight 1 ", " 10.0.0.1:80 weight 1\u2028x",
])
def test_only_server_lines_in_the_renderers_form_are_cut(tail: str) -> None:
    """A server line with anything the Runtime API cannot set stays whole in the structure:
    a change of it reloads."""
    cfg = f"backend b\n    server s1{tail}\n"
    assert structure(cfg) == cfg
    assert structure("backend b\n    server s1 10.0.0.1:80 weight 1\n") == \
        "backend b\n    server s1\n"


def test_parse_pools_takes_over_unchanged_slots_and_checks_changed_ones() -> None:
    """A flip at 8,192 slots re-parses one slot, not all: equal slot objects at the same
    place keep their parsed Slot (the planner then skips them by identity); a changed
    one is checked as ever."""
    before = _servers()
    before["pools"]["be_http"].append({"slot": "srv2", "endpoint": None, "address": None,
                                       "port": None, "weight": 0, "state": "maint"})
    parsed = parse_pools(before)
    after = {"pools": {"be_http": [dict(before["pools"]["be_http"][0], state="maint"),
                                   dict(before["pools"]["be_http"][1])]}}
    again = parse_pools(after, (before, parsed))
    assert again == parse_pools(after)
    assert again["be_http"]["srv2"] is parsed["be_http"]["srv2"]
    assert again["be_http"]["srv1"].state == "maint"
    bad = {"pools": {"be_http": [dict(before["pools"]["be_http"][0], address="1.2.3.4;x"),
                                 dict(before["pools"]["be_http"][1])]}}
    with pytest.raises(PlanError, match="invalid address"):
        parse_pools(bad, (before, parsed))
    plan = decide(Snapshot("", parsed), Snapshot("", again))
    assert plan.commands == ("set server be_http/srv1 state maint",)


def test_a_reverseproxy_pool_outgrowing_its_slots_is_a_runtime_plan() -> None:
    """The same for a ReverseProxy's route pools (its backends carry the routing's
    header rules and rewrites before the servers)."""
    rp = parse_reverseproxy(rp_object(hosts=[{"hostname": "www.example.test", "routes": [
        {"name": "web", "match": {"path": {"type": "Prefix", "value": "/app"}},
         "rewrite": {"pathPrefix": "/"}, "requestHeaders": {"set": {"X-A": "1"}},
         "retries": {"attempts": 2, "retryOn": ["connect-failure"]},
         "backends": [{"service": "web", "port": 80}]}]}]))
    previous: dict[str, dict[str, str]] = {}
    snapshots = []
    for n in (3, 9):
        rendered = render_haproxy(build_reverseproxy_graph(rp, state(n, previous=previous)))
        pools = parse_pools(rendered.server_state)
        previous = {b: {s: slot.endpoint or "" for s, slot in ss.items()}
                    for b, ss in pools.items()}
        snapshots.append(Snapshot(rendered.config, pools))
    plan = decide(*snapshots)
    (pool,) = snapshots[1].pools
    assert plan.action == "runtime", plan.reason
    assert [(a.backend, a.slot, a.id) for a in plan.added] == [
        (pool, f"srv{i}", i) for i in range(9, 17)]
