"""ProxyGraph -> haproxy.cfg and the server-state document the agent applies. Pure.

Two hashes come out: the config hash (the whole file) and the structure hash (the
file with each server line cut to its slot name). When only the structure hash is
unchanged, everything that moved is runtime-settable (address, port, weight, state)
and the agent applies it through the Runtime API with no reload.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2

from roundhouse.graph import DRAIN, MAINT, ProxyGraph, Server
from roundhouse.model.values import format_duration_ms

STATUS_PORT = 8404
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
        return json.dumps(self.server_state, indent=1, sort_keys=True) + "\n"


def status_port(graph: ProxyGraph) -> int:
    """8404 unless a listener took it: then the next free port, deterministically."""
    used = {f.port for f in graph.frontends}
    port = STATUS_PORT
    while port in used:
        port += 1
    return port


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


def _masked_server_line(server: Server) -> str:
    return f"server {server.slot}"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("roundhouse.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # haproxy.cfg, not HTML; every value is validated upstream
    )


def _render(graph: ProxyGraph, options: RenderOptions, *, masked: bool) -> str:
    template = _environment().get_template("haproxy.cfg.j2")
    return template.render(
        g=graph,
        o=options,
        ms=format_duration_ms,
        stats_port=status_port(graph),
        stick_max_ms=STICK_TABLE_MAX_MS,
        server_line=_masked_server_line if masked else server_line,
    )


def render_haproxy(graph: ProxyGraph, options: RenderOptions | None = None) -> RenderedConfig:
    options = options or RenderOptions()
    config = _render(graph, options, masked=False)
    structure = _render(graph, options, masked=True)
    config_hash = hashlib.sha256(config.encode()).hexdigest()[:16]
    structure_hash = hashlib.sha256(structure.encode()).hexdigest()[:16]
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
            {"file": c.file, "secret": c.secret, "fingerprint": c.fingerprint}
            for c in graph.certificates
        ],
    }
