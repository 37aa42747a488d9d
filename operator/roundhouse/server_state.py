"""The state of one HAProxy server slot: one vocabulary for the graph, the renderer and
the agent. Pure and dependency-free, so the agent (its own process) can import it."""

from __future__ import annotations

READY = "ready"  # takes traffic
DRAIN = "drain"  # terminating: keeps its connections and sticky clients, gets no new ones
MAINT = "maint"  # free slot, not ready, or not allowed to connect: gets nothing
STATES = (READY, DRAIN, MAINT)
