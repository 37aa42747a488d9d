"""What it takes to go from the applied state to the desired one. Pure: no I/O.

- nothing: same structure, same server slots, same certificates;
- runtime: same structure (config equal once each server line is cut to its slot
  name): the exact `set server` commands for the slots that changed, and the
  certificates to hot-swap. Also when the only structural difference is server slots
  appended to existing backends (a pool outgrew its slots): each is created with
  `add server` as the free slot the config renders, then filled like any other slot;
- reload: anything else, with a human reason and a metrics category.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from roundhouse.render.structure import structure
from roundhouse.server_state import DRAIN, MAINT, STATES

# Reload reasons, a small fixed set (a metrics label).
STRUCTURE, CERTIFICATE, RECOVERY, FALLBACK = "structure", "certificate", "recovery", "fallback"
RELOAD_CATEGORIES = (STRUCTURE, CERTIFICATE, RECOVERY, FALLBACK)

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ADDRESS = re.compile(r"^[0-9A-Fa-f.:]+$")


class PlanError(ValueError):
    """The desired state is malformed (servers.json does not match the contract)."""


@dataclass(frozen=True)
class Slot:
    """What HAProxy can change at run time about one server slot."""

    endpoint: str | None
    address: str | None
    port: int | None
    weight: int
    state: str  # ready | drain | maint

    @property
    def active(self) -> bool:
        return self.endpoint is not None and self.address is not None and self.state != MAINT


Pools = Mapping[str, Mapping[str, Slot]]  # backend -> slot name -> slot (in config order)


@dataclass(frozen=True)
class Snapshot:
    """A configuration as the planner sees it: text, server slots, certificate digests.

    Certificates are sha256 digests of the PEM bundles, never the PEM itself.
    """

    config: str
    pools: Pools
    certificates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Added:
    """A server slot created at run time: HAProxy must then hold it with this id (the
    position a reload of the config gives it: hashing and `balance first` use the id)."""

    backend: str
    slot: str
    id: int
    options: tuple[str, ...] = ()  # the backend's default-server words


@dataclass(frozen=True)
class Plan:
    action: Literal["none", "runtime", "reload"]
    commands: tuple[str, ...] = ()  # runtime: `add server`, `set server ...`, in order
    certificates: tuple[str, ...] = ()  # runtime: files to hot-swap
    reason: str = ""  # human: why (logged, reported)
    category: str = ""  # reload: one of RELOAD_CATEGORIES
    added: tuple[Added, ...] = ()  # runtime: slots the commands create


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_pools(servers: Mapping[str, Any], previous: tuple[Mapping[str, Any], Pools] | None
                = None) -> dict[str, dict[str, Slot]]:
    """servers.json `pools` -> typed slots; PlanError when it breaks the contract.

    `previous`: an earlier servers.json and its parsed pools. A slot whose object is
    equal to the one at the same place there is taken over without checking it again,
    so a change of one slot costs a comparison per slot, not a parse (8,192 slots: 3 ms
    instead of 40).
    """
    raw = servers.get("pools")
    if not isinstance(raw, Mapping):
        raise PlanError("servers.json has no 'pools' object")
    before = previous[0].get("pools") if previous else None
    pools: dict[str, dict[str, Slot]] = {}
    for backend, slots in raw.items():
        if not isinstance(backend, str) or not _NAME.match(backend):
            raise PlanError(f"servers.json: invalid backend name {backend!r}")
        if not isinstance(slots, list):
            raise PlanError(f"servers.json: pool {backend!r} is not a list")
        old_raw = before.get(backend) if isinstance(before, Mapping) else None
        old_pool = previous[1].get(backend) if previous else None
        old_items = list(old_pool.items()) if old_pool is not None else []
        if not isinstance(old_raw, list) or len(old_raw) != len(old_items):
            old_raw, old_items = [], []
        pool: dict[str, Slot] = {}
        for i, s in enumerate(slots):
            if i < len(old_raw) and old_raw[i] == s:
                name, slot = old_items[i]
                if name not in pool:
                    pool[name] = slot
                    continue
            name, slot = _parse_slot(backend, i, s)
            pool[name] = slot
        pools[backend] = pool
    return pools


def _parse_slot(backend: str, i: int, s: Any) -> tuple[str, Slot]:
    where = f"servers.json: pools.{backend}[{i}]"
    if not isinstance(s, Mapping):
        raise PlanError(f"{where} is not an object")
    name = s.get("slot")
    if not isinstance(name, str) or not _NAME.match(name):
        raise PlanError(f"{where}: invalid slot name {name!r}")
    state = s.get("state", MAINT)
    if state not in STATES:
        raise PlanError(f"{where}: state {state!r} is not one of {', '.join(STATES)}")
    address, port, weight = s.get("address"), s.get("port"), s.get("weight", 0)
    if address is not None and (not isinstance(address, str)
                                or not _ADDRESS.match(address)):
        raise PlanError(f"{where}: invalid address {address!r}")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise PlanError(f"{where}: invalid port {port!r}")
    if not isinstance(weight, int) or not 0 <= weight <= 256:
        raise PlanError(f"{where}: invalid weight {weight!r}")
    endpoint = s.get("endpoint")
    if (address is None or port is None) and endpoint is not None:
        raise PlanError(f"{where}: endpoint {endpoint!r} has no address and port")
    return name, Slot(endpoint if isinstance(endpoint, str) else None, address, port,
                      weight, state)


def decide(applied: Snapshot | None, desired: Snapshot) -> Plan:
    if applied is None:
        return Plan("reload", reason="recovery: no record of the configuration HAProxy runs",
                    category=RECOVERY)
    added: tuple[Added, ...] = ()
    add_commands: list[str] = []
    if structure(applied.config) != structure(desired.config):
        growth = _growth(applied, desired)
        if growth is None:
            return Plan("reload", reason="structure changed: " + _structure_diff(
                applied.config, desired.config), category=STRUCTURE)
        if isinstance(growth, str):
            return Plan("reload", reason=f"server slots added, not at run time: {growth}",
                        category=STRUCTURE)
        added = growth
        for a in added:
            add_commands.extend(_add_commands(a, desired))
    elif _slot_layout(applied.pools) != _slot_layout(desired.pools):
        return Plan("reload", reason="structure changed: server slots differ from the running "
                    "ones", category=STRUCTURE)
    new_certs = sorted(set(desired.certificates) - set(applied.certificates))
    if new_certs:
        return Plan("reload", reason=f"certificate {', '.join(new_certs)} added",
                    category=CERTIFICATE)
    swaps = tuple(sorted(f for f, d in desired.certificates.items()
                         if applied.certificates[f] != d))
    commands: list[str] = []
    for backend, slots in applied.pools.items():
        wanted = desired.pools[backend]
        for name, old in slots.items():
            new = wanted[name]
            if new is not old and new != old:  # parse_pools reuses unchanged slots
                commands.extend(slot_commands(backend, name, old, new))
    if not commands and not swaps and not added:
        return Plan("none")
    parts = []
    if commands:
        changed = {c.split()[2] for c in commands}
        parts.append(f"{len(changed)} server slot(s) changed")
    if added:
        parts.append(f"{len(added)} server slot(s) added")
    if swaps:
        parts.append(f"certificate {', '.join(swaps)} rotated")
    return Plan("runtime", tuple(commands + add_commands), swaps, "; ".join(parts),
                added=added)


def slot_commands(backend: str, slot: str, old: Slot, new: Slot) -> list[str]:
    """The `set server` commands that turn slot `old` into `new` (none when equal).

    The rendered config writes drain as `weight 0` on a running server; at run time
    drain is `weight 0` plus the drain state, which is equivalent and reverses cleanly.
    """
    target = f"set server {backend}/{slot}"
    out: list[str] = []
    if not new.active:
        if old.active or old.state != new.state:
            out.append(f"{target} state {MAINT}")
        if new.address is not None and new.port is not None and (
                (new.address, new.port) != (old.address, old.port)):
            out.append(f"{target} addr {new.address} port {new.port}")
        return out
    assert new.address is not None and new.port is not None
    if (new.address, new.port) != (old.address, old.port):
        out.append(f"{target} addr {new.address} port {new.port}")
    effective_old = 0 if not old.active or old.state == DRAIN else old.weight
    effective_new = 0 if new.state == DRAIN else new.weight
    if effective_old != effective_new or old.state != new.state or not old.active:
        out.append(f"{target} weight {effective_new}")
    if old.state != new.state or not old.active:
        out.append(f"{target} state {new.state}")
    return out


# What a free slot is, before `add server` creates it: the rendered
# `server <slot> 127.0.0.1:1 disabled` with the backend's default-server options.
_FREE = Slot(None, None, None, 0, MAINT)
_PLACEHOLDER = "127.0.0.1:1"
# default-server words passed on to `add server` as they are: no quoting, no `;` (the
# Runtime API splits commands there), nothing the CLI would read differently.
_OPTION_WORD = re.compile(r"^[A-Za-z0-9_.:/@()=,+-]+$")
_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|"
                      r"userlist|ring|cache|program|http-errors|mailers)\b(?:\s+(\S+))?")


def _growth(applied: Snapshot, desired: Snapshot) -> tuple[Added, ...] | str | None:
    """The server slots `desired` appends to the running backends, when that is its only
    difference: the same backends, each keeping its running slots in order, and the same
    config once the new server lines are taken out. None when the difference is anything
    else; a reason (str) when it is only growth but cannot be done at run time."""
    if set(applied.pools) != set(desired.pools):
        return None
    new: dict[str, set[str]] = {}
    for backend, slots in desired.pools.items():
        running = list(applied.pools[backend])
        wanted = list(slots)
        if wanted[:len(running)] != running:
            return None
        if len(wanted) > len(running):
            new[backend] = set(wanted[len(running):])
    if not new:
        return None
    kept: list[str] = []
    added: list[Added] = []
    options: dict[str, list[str]] = {}
    section, name, position = "", "", 0
    for line in structure(desired.config).split("\n"):
        m = _SECTION.match(line)
        if m:
            section, name, position = m.group(1), m.group(2) or "", 0
        words = line.split()
        if words[:1] == ["server"] and section == "backend":
            position += 1
            if len(words) == 2 and words[1] in new.get(name, ()):
                added.append(Added(name, words[1], position, tuple(options.get(name, ()))))
                continue
        elif words[:1] == ["default-server"] and section == "backend":
            options[name] = words[1:]
        elif words[:1] == ["default-server"]:
            return None  # inherited from a defaults section: not what `add server` gets
        kept.append(line)
    if "\n".join(kept) != structure(applied.config):
        return None
    if sorted((a.backend, a.slot) for a in added) != sorted(
            (b, s) for b, slots in new.items() for s in slots):
        return None  # servers.json names slots the config does not have
    for a in added:
        bad = [w for w in a.options if not _OPTION_WORD.match(w)]
        if bad:
            return f"backend {a.backend}: default-server option {bad[0]!r}"
    return tuple(added)


def _add_commands(a: Added, desired: Snapshot) -> list[str]:
    """`add server` for slot `a` in its free form, then the commands that fill it."""
    options = a.options
    target = f"{a.backend}/{a.slot}"
    # Dynamic servers inherit no default-server line: pass it whole.
    out = [" ".join([f"add server {target} {_PLACEHOLDER} id {a.id}", *options])]
    if "check" in options:
        out.append(f"enable health {target}")  # checks start disabled on a dynamic server
    if "agent-check" in options:
        out.append(f"enable agent {target}")
    # A free slot has no cookie yet; setting its address derives the dynamic cookie
    # (HAProxy 2.6 computes none at `add server`).
    out.extend(slot_commands(a.backend, a.slot, _FREE, desired.pools[a.backend][a.slot]))
    return out


def _slot_layout(pools: Pools) -> list[tuple[str, list[str]]]:
    return sorted((backend, list(slots)) for backend, slots in pools.items())


def _structure_diff(old: str, new: str, limit: int = 3) -> str:
    changes: list[str] = []
    # split("\n"): HAProxy's lines (splitlines() would also cut at \u2028 and the like).
    for line in difflib.unified_diff(structure(old).split("\n"), structure(new).split("\n"),
                                     lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        text = " ".join(line[1:].split())
        if text and not text.startswith("#"):
            changes.append(f"{line[0]}{text}")
    if not changes:
        return "comments only"
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more
