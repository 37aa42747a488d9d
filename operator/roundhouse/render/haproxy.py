"""ProxyGraph -> haproxy.cfg and the server-state document the agent applies. Pure.

Two hashes come out: the config hash (the whole file) and the structure hash (the
file with each server line cut to its slot name). When only the structure hash is
unchanged, everything that moved is runtime-settable (address, port, weight, state)
and the agent applies it through the Runtime API with no reload.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2

from roundhouse.graph.types import Pool, ProxyGraph, RedirectRule, RouteRule, Server
from roundhouse.model.pcre2 import full_match
from roundhouse.model.pod import STATUS_PORT
from roundhouse.model.rules import REQUEST_BODY_BYTES
from roundhouse.model.values import format_duration_ms
from roundhouse.render import structure
from roundhouse.render.accesslog import access_log_lines
from roundhouse.server_state import DRAIN, MAINT

PLACEHOLDER = "127.0.0.1:1"  # a free slot points nowhere useful and is disabled
STICK_TABLE_MAX_MS = 24 * 86_400_000  # HAProxy timers stop at 2^31 ms (~24.8 days)


@dataclass(frozen=True)
class RenderOptions:
    runtime_dir: str = "/var/run/roundhouse"  # runtime socket, shared with the agent
    cert_dir: str = "/var/run/roundhouse/certs"  # PEM bundles the agent writes
    bind_address: str = ""  # "" = all IPv4 addresses


@dataclass(frozen=True)
class RenderedConfig:
    config: str
    config_hash: str
    structure_hash: str
    server_state: dict[str, Any]
    status_port: int

    def server_state_json(self) -> str:
        """servers.json with one server slot per line: readable in `kubectl get -o yaml`
        and in diffs, and written by json's C encoder line by line (indent= would use
        its pure-Python one, which took 70 ms at 8,192 slots)."""
        head = {k: v for k, v in self.server_state.items() if k != "pools"}
        pools = ",\n".join(
            f" {json.dumps(name)}: [\n" + ",\n".join(map(_slot_json, slots)) + "\n ]"
            for name, slots in sorted(self.server_state["pools"].items()))
        return (json.dumps(head, sort_keys=True)[:-1] + ',\n"pools": {\n' + pools
                + "\n}}\n")


def _slot_json(slot: dict[str, Any]) -> str:
    """One slot's line of servers.json; a flip changes one slot, so the others come from
    the cache (json.dumps per slot was 100 ms at 8,192 slots)."""
    return _slot_json_cached(slot["slot"], slot["endpoint"], slot["address"], slot["port"],
                             slot["weight"], slot["state"])


@functools.lru_cache(maxsize=1 << 17)
def _slot_json_cached(slot: str, endpoint: str | None, address: str | None, port: int | None,
                      weight: int, state: str) -> str:
    return "  " + json.dumps({"address": address, "endpoint": endpoint, "port": port,
                              "slot": slot, "state": state, "weight": weight},
                             separators=(", ", ": "))


# File descriptors beyond two per connection (client and server side): listeners, sockets,
# pollers and wake-up pipes per thread. Generous, so that on a node with enough of them the
# maxconn HAProxy derives is never below limits.maxConnections, even with many threads.
FD_RESERVE = 1024


def fd_hard_limit(max_connections: int) -> int:
    """The `fd-hard-limit` for `max_connections`: HAProxy derives its global maxconn from
    min(this, the process's open-files limit), about (limit - reserved) / 2."""
    return 2 * max_connections + FD_RESERVE


def status_port(graph: ProxyGraph) -> int:
    """Fixed, never moved: the model refuses a listener on it, so the Pod's probes and
    containerPort stay put whatever the listeners (moving it would roll every Pod)."""
    return STATUS_PORT


def servers(pool: Pool) -> str:
    """The pool's server lines, each after a newline: one call from the template rather
    than a loop of thousands there, and each line cached, since a flip changes one."""
    return "".join(map(_indented_server_line, pool.servers))


@functools.lru_cache(maxsize=1 << 17)
def _indented_server_line(server: Server) -> str:
    return "\n    " + server_line(server)


def server_line(server: Server) -> str:
    if server.endpoint is None or server.address is None:
        return f"server {server.slot} {PLACEHOLDER} disabled"
    host = f"[{server.address}]" if ":" in server.address else server.address
    line = f"server {server.slot} {host}:{server.port} weight {server.weight}"
    if server.state == DRAIN:
        line = f"server {server.slot} {host}:{server.port} weight 0"
    elif server.state == MAINT:
        line += " disabled"
    return line


_BARE = re.compile(r"^[A-Za-z0-9._~/:@+,()=-]+$")


def quote(value: str) -> str:
    """One haproxy.cfg word: bare when plain, else quoted so nothing is interpreted.

    Single quotes are literal in haproxy.cfg; a value holding one is double-quoted with
    the characters HAProxy interprets there escaped (backslash, quote, '$').
    """
    if _BARE.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def log_format_literal(value: str) -> str:
    """A literal inside a log-format string (header values, redirect targets)."""
    return value.replace("%", "%%")


def header_value(value: str) -> str:
    """A header value as one log-format word; an empty one as an empty expression
    (an empty quoted word would be no argument at all)."""
    return quote(log_format_literal(value)) if value else "%[str()]"


def _full_match(pattern: str) -> str:
    """The model checked exactly this form with PCRE2 (pcre2.match_error)."""
    return quote(full_match(pattern))


def header_acls(rule: RouteRule) -> list[str]:
    """One named ACL line per header match of a route rule.

    Named, not anonymous: a line holds at most 64 words, and 16 anonymous header terms
    (6 words each) on the route's set-var line would pass that limit.
    """
    lines = []
    # req.fhdr: the whole header line, not split at commas; urlp: the first value of a
    # query parameter (Gateway API matches the first one too).
    named = [(f"{rule.id}_h{i}", f"req.fhdr({h.name})", h) for i, h in enumerate(rule.headers)]
    named += [(f"{rule.id}_q{i}", f"urlp({h.name})", h) for i, h in enumerate(rule.query_params)]
    for acl_name, fetch, h in named:
        acl = f"acl {acl_name} {quote(fetch)}"
        if h.type == "RegularExpression":
            lines.append(f"{acl} -m reg {_full_match(h.value)}")
        elif h.value in ("{", "}"):
            # A lone brace, quoted or not, may open or close an anonymous ACL: match
            # it as a regular expression instead.
            lines.append(f"{acl} -m reg {_full_match(re.escape(h.value))}")
        elif h.value:
            # "--": a value that looks like a flag (-i, -f file) is still the value.
            lines.append(f"{acl} -m str -- {quote(h.value)}")
        else:
            lines.append(f"{acl} -m len 0")
    return lines


def route_conditions(rule: RouteRule) -> str:
    """The ACL terms (after the host's) of a route rule, each with a leading space: at
    most 2 + 16 words, whatever the spec (header_acls names the header matches)."""
    terms = []
    if rule.path_type == "Exact":
        terms.append(f"{{ path -m str {quote(rule.path)} }}")
    elif rule.path_type == "Prefix" and rule.path:
        terms.append(f"{rule.id}_path")  # two named ACL lines: the prefix, or prefix + "/"
    elif rule.path_type == "RegularExpression":
        terms.append(f"{{ path -m reg {_full_match(rule.path)} }}")
    if rule.method:
        terms.append(f"{{ method {rule.method} }}")
    terms.extend(f"{rule.id}_h{i}" for i in range(len(rule.headers)))
    terms.extend(f"{rule.id}_q{i}" for i in range(len(rule.query_params)))
    return "".join(f" {t}" for t in terms)


def redirect_location(r: RedirectRule) -> str:
    """The log-format Location of a redirect route; tests/unit/routing_oracle.py mirrors it."""
    if r.hostname:
        authority = r.hostname + (f":{r.port}" if r.port else "")
    elif r.strip_port:
        authority = "%[req.hdr(host),field(1,:)]" + (f":{r.port}" if r.port else "")
    else:
        authority = "%[req.hdr(host)]"
    # pathq: path and query; regsub keeps only the query ("?..." or nothing).
    query = "%[pathq,regsub(^[^?]*,)]"
    if r.replace_prefix is not None:
        # The matched prefix (whole segments) becomes the replacement: what follows stays.
        prefix, replacement = r.replace_prefix
        rest = f"%[path,regsub(^{re.escape(prefix)},)]" if prefix else "%[path]"
        joined = replacement.rstrip("/")
        target = log_format_literal(joined) + rest + query
        if not prefix:
            target = log_format_literal(joined) + "%[path]" + query
        return quote(f"{r.scheme}://{authority}{target}")
    target = (log_format_literal(r.path) + query) if r.path else "%[pathq]"
    return quote(f"{r.scheme}://{authority}{target}")


# The CRD's retryOn names -> HAProxy retry-on keywords (only this one differs).
_RETRY_ON = {"connect-failure": "conn-failure"}


def retry_on(keywords: tuple[str, ...]) -> str:
    return " ".join(_RETRY_ON.get(k, k) for k in keywords)


def upstream_tls(pool: Pool) -> str:
    """default-server options for TLS to the servers: verified unless verify is false."""
    u = pool.upstream_tls
    if u is None:
        return ""
    if u.verify:
        out = f" ssl verify required ca-file {u.ca_file or '@system-ca'}"
    else:
        out = " ssl verify none"
    if u.sni:
        out += f" sni str({u.sni})"
    if pool.health_check:
        out += " check-ssl" + (f" check-sni {u.sni}" if u.sni else "")
    return out


CLIENTS_TABLE = "rh_clients"  # never a pool name: those start with be_ or rt_
SOURCES_PER_LINE = 16  # an ACL line holds at most 64 words: repeat the line, it ORs


def source_acl(name: str, ranges: tuple[str, ...]) -> list[str]:
    """`acl <name> src ...` lines matching any of `ranges` (allowedSourceRanges)."""
    return [f"acl {name} src " + " ".join(ranges[i:i + SOURCES_PER_LINE])
            for i in range(0, len(ranges), SOURCES_PER_LINE)]


def check_host(pool: Pool) -> str:
    """The Host header of HTTP checks. HTTP/1.1 requires one, and HAProxy adds none: Go's
    net/http, nginx and Tomcat answer 400 without it, which would mark every server down."""
    hc = pool.health_check
    if hc and hc.host:
        return hc.host
    return pool.upstream_tls.sni if pool.upstream_tls and pool.upstream_tls.sni else "localhost"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("roundhouse.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # haproxy.cfg, not HTML; every value is validated upstream
    )


def _render(graph: ProxyGraph, options: RenderOptions) -> str:
    template = _environment().get_template("haproxy.cfg.j2")
    return template.render(
        g=graph,
        o=options,
        ms=format_duration_ms,
        stats_port=status_port(graph),
        stick_max_ms=STICK_TABLE_MAX_MS,
        servers=servers,
        q=quote,
        lf=log_format_literal,
        re_escape=re.escape,
        conditions=route_conditions,
        header_acls=header_acls,
        location=redirect_location,
        upstream_tls=upstream_tls,
        check_host=check_host,
        clients_table=CLIENTS_TABLE,
        source_acl=source_acl,
        retry_on=retry_on,
        hv=header_value,
        fd_hard_limit=fd_hard_limit,
        access_log=access_log_lines,
        body_bytes=REQUEST_BODY_BYTES,
    )


def render_haproxy(graph: ProxyGraph, options: RenderOptions | None = None) -> RenderedConfig:
    options = options or RenderOptions()
    config = _render(graph, options)
    config_hash = structure.config_hash(config)
    structure_hash = structure.structure_hash(config)  # not a second, masked render
    return RenderedConfig(
        config=config,
        config_hash=config_hash,
        structure_hash=structure_hash,
        server_state=_server_state(graph, config_hash, structure_hash),
        status_port=status_port(graph),
    )


def _server_state(graph: ProxyGraph, config_hash: str, structure_hash: str) -> dict[str, Any]:
    return {
        "version": 1,
        "configHash": config_hash,
        "structureHash": structure_hash,
        "pools": {
            p.name: [
                {
                    "slot": s.slot,
                    "endpoint": s.endpoint,
                    "address": s.address,
                    "port": s.port,
                    "weight": s.weight,
                    "state": s.state if s.endpoint else MAINT,
                }
                for s in p.servers
            ]
            for p in graph.pools
        },
        "certificates": [
            # "kind" only when not a serving pair: LoadBalancer documents stay unchanged.
            {"file": c.file, "secret": c.secret, "fingerprint": c.fingerprint}
            | ({"kind": c.kind} if c.kind != "pair" else {})
            for c in graph.certificates
        ],
    }
