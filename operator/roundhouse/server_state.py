"""The state of one HAProxy server slot: one vocabulary for the graph, the renderer and
the agent. Pure and dependency-free, so the agent (its own process) can import it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

READY = "ready"  # takes traffic
DRAIN = "drain"  # terminating: keeps its connections and sticky clients, gets no new ones
MAINT = "maint"  # free slot, not ready, or not allowed to connect: gets nothing
STATES = (READY, DRAIN, MAINT)


SlotMap = dict[str, dict[str, str]]  # backend -> slot name -> endpoint key ("" when free)


def slot_map(server_state: Mapping[str, Any]) -> SlotMap:
    """Which endpoint holds which slot, from servers.json's `pools` (parsed or as
    rendered): what the next render keeps, so endpoints keep their slots."""
    return {pool: {s["slot"]: s.get("endpoint") or "" for s in servers}
            for pool, servers in (server_state.get("pools") or {}).items()}
