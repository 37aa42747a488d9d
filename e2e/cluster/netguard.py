"""Make sure fake Pod and Service IPs can never leave this machine.

kwok hands out Pod IPs from the pod CIDR and the API server allocates Service
IPs; nothing listens on them, but a stray client (or the API server's own
proxy) could try to connect. The default route leaves the machine, so both
ranges get an `unreachable` route before any component starts.

Several clusters may run at once and share these routes, so the routes this
module adds are reference counted in a small lock-protected registry: a route
is removed when the last cluster that used it stops, and a route that existed
before any of our clusters is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
GUARDED_CIDRS: tuple[str, ...] = (POD_CIDR, SERVICE_CIDR)
# One address inside each guarded CIDR, checked with `ip route get`.
PROBE_ADDRESSES: tuple[str, ...] = ("10.244.0.5", "10.96.0.1")
_STARTUP_GRACE_SECONDS = 600.0


class NetworkGuardError(RuntimeError):
    """The unreachable routes could not be put in place or verified."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _registry_path() -> Path:
    # Routes belong to a network namespace, so the registry does too.
    netns = os.stat("/proc/self/ns/net").st_ino
    return Path(tempfile.gettempdir()) / f"roundhouse-routes-netns{netns}.json"


@contextlib.contextmanager
def _locked_registry() -> Iterator[dict[str, list[str]]]:
    """Yield {cidr: [owner, ...]} for routes we added; saved on exit under a flock."""
    path = _registry_path()
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data: dict[str, list[str]] = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            data = {}
        yield data
        path.write_text(json.dumps(data))


def unreachable_route_present(cidr: str) -> bool:
    out = _ip("route", "show", "type", "unreachable").stdout
    return any(line.split()[:2] == ["unreachable", cidr] for line in out.splitlines())


def _has_process_in(directory: Path) -> bool:
    # Every component runs with the cluster's work dir as its cwd.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                    return True
    return False


def _owner_alive(owner: str) -> bool:
    """An owner is a cluster work dir: alive while starting (young) or while it has processes.

    A cluster killed with SIGKILL leaves its work dir behind but no processes.
    """
    path = Path(owner)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return age < _STARTUP_GRACE_SECONDS or _has_process_in(path)


def _live_owners(owners: Sequence[str]) -> list[str]:
    return [o for o in owners if _owner_alive(o)]


def acquire(owner: str, cidrs: Sequence[str] = GUARDED_CIDRS) -> list[str]:
    """Ensure unreachable routes for `cidrs`; return the CIDRs registered to `owner`."""
    registered: list[str] = []
    with _locked_registry() as registry:
        for cidr in cidrs:
            owners = _live_owners(registry.get(cidr, []))
            if cidr not in registry and unreachable_route_present(cidr):
                continue  # pre-existing route that is not ours: leave it alone
            if not unreachable_route_present(cidr):
                res = _ip("route", "add", "unreachable", cidr)
                if res.returncode != 0:
                    raise NetworkGuardError(
                        f"ip route add unreachable {cidr}: {res.stderr.strip()}"
                    )
            registry[cidr] = [*owners, owner]
            registered.append(cidr)
    return registered


def release(owner: str, cidrs: Sequence[str]) -> list[str]:
    """Drop `owner` from `cidrs`; delete each route nobody else uses. Returns deleted CIDRs."""
    deleted: list[str] = []
    with _locked_registry() as registry:
        for cidr in cidrs:
            owners = [o for o in _live_owners(registry.get(cidr, [])) if o != owner]
            if owners:
                registry[cidr] = owners
                continue
            registry.pop(cidr, None)
            if unreachable_route_present(cidr):
                _ip("route", "del", "unreachable", cidr)
                deleted.append(cidr)
    return deleted


def verify(addresses: Sequence[str] = PROBE_ADDRESSES) -> None:
    """Raise unless the kernel says every probe address is unreachable."""
    for address in addresses:
        res = _ip("route", "get", address)
        text = (res.stdout + res.stderr).strip()
        # iproute2 reports an unreachable route as an error ("No route to host", exit 2).
        blocked = "unreachable" in text or "No route to host" in text
        if not blocked or " via " in res.stdout or " dev " in res.stdout:
            raise NetworkGuardError(
                f"refusing to start: `ip route get {address}` is not unreachable: {text!r}"
            )
