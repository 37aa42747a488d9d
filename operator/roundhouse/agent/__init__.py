"""The per-proxy agent: applies the operator's rendered config to the HAProxy beside it.

Endpoint changes go through the Runtime API (no reload); structural changes are
validated, then applied with a hitless master-worker reload; rotated certificates
are hot-swapped with `set ssl cert` + `commit ssl cert`.
"""

from roundhouse.agent.agent import Agent, AgentStatus, ApplyResult, DesiredState
from roundhouse.agent.plan import Plan, Snapshot, decide

__all__ = ["Agent", "AgentStatus", "ApplyResult", "DesiredState", "Plan", "Snapshot", "decide"]
