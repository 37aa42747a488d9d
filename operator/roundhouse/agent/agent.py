"""Apply a desired state (haproxy.cfg, servers.json, PEM bundles) to the HAProxy beside us.

- endpoint-only changes: `set server` commands, never a reload;
- a rotated certificate the running config already loads: `set ssl cert` + commit,
  falling back to a reload;
- anything structural: stage config + certificates, check them with `haproxy -c`
  (when the binary is available), move them into place, reload through the master
  CLI and wait for the new worker. A config HAProxy rejects is never left in place:
  the old one keeps serving and the error is recorded (and reported).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from roundhouse.agent.files import RuntimeFiles, check_cert_file_name, read_text
from roundhouse.agent.metrics import AgentMetrics
from roundhouse.agent.plan import (
    CERTIFICATE,
    FALLBACK,
    Plan,
    PlanError,
    Snapshot,
    decide,
    digest,
    parse_pools,
)
from roundhouse.agent.runtime import (
    ProcessLimits,
    RuntimeAPIError,
    RuntimeClient,
    SocketUnavailable,
)
from roundhouse.render.structure import config_hash, structure_hash

log = logging.getLogger(__name__)

_CRT_BASE = re.compile(r"^\s*crt-base\s+(\S+)", re.MULTILINE)
_ALERT = re.compile(r"^\[(?:ALERT|WARNING)\]\s*(?:\(\d+\)\s*)?:\s*", re.MULTILINE)


@dataclass(frozen=True, repr=False)
class DesiredState:
    """What the operator wants running: the ConfigMap's two keys plus the PEM bundles.

    `certificates` maps a file name under crt-base to its PEM bundle (tls.crt + tls.key).
    It is secret material: repr() shows only digests.
    """

    config: str
    servers: Mapping[str, Any]
    certificates: Mapping[str, str] = field(default_factory=dict)
    # servers.json as received, if it came as text: written and digested as it is
    # (encoding a megabyte of JSON again took longer than everything else on a flip)
    servers_source: str | None = None

    def __repr__(self) -> str:
        return (f"DesiredState(config_hash={self.config_hash!r}, "
                f"certificates={sorted(self.certificates)!r})")

    @property
    def config_hash(self) -> str:
        value = self.servers.get("configHash")
        return value if isinstance(value, str) and value else config_hash(self.config)

    @property
    def structure_hash(self) -> str:
        value = self.servers.get("structureHash")
        return value if isinstance(value, str) and value else structure_hash(self.config)

    def certificate_digests(self) -> dict[str, str]:
        return {f: digest(pem) for f, pem in sorted(self.certificates.items())}

    def snapshot(self, previous: tuple[Mapping[str, Any], Snapshot] | None = None) -> Snapshot:
        """`previous`: the servers.json and snapshot applied before, whose unchanged slots
        are taken over rather than parsed again."""
        for file in self.certificates:
            check_cert_file_name(file)
        reuse = (previous[0], previous[1].pools) if previous else None
        return Snapshot(self.config, parse_pools(self.servers, reuse),
                        self.certificate_digests())

    @functools.cached_property
    def servers_text(self) -> str:
        """servers.json as the agent writes it: as received, else in canonical form
        (computed once: it is a megabyte at 8,192 slots, and the digest and the file both
        need it)."""
        return self.servers_source if self.servers_source is not None else _canonical(
            self.servers)

    @functools.cached_property
    def servers_digest(self) -> str:
        return digest(self.servers_text)

    def key(self) -> str:
        return digest("\0".join([self.config, self.servers_digest,
                                 json.dumps(self.certificate_digests(), sort_keys=True)]))


@dataclass(frozen=True)
class ApplyResult:
    action: Literal["none", "runtime", "reload", "rejected", "error"]
    reason: str = ""
    error: str | None = None
    commands: tuple[str, ...] = ()
    seconds: float = 0.0
    worker: int | None = None  # the worker PID after a reload


@dataclass(frozen=True)
class AgentStatus:
    """What the agent reports to the status ConfigMap (the operator parses this JSON)."""

    config_hash: str | None
    structure_hash: str | None
    error: str | None
    reloads: int
    time: dt.datetime
    limits: ProcessLimits | None = None  # None: HAProxy not asked yet (or not running)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "configHash": self.config_hash,
            "structureHash": self.structure_hash,
            "error": self.error,
            "reloads": self.reloads,
            "time": self.time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.limits is not None:
            # The operator compares maxconn with spec.limits.maxConnections.
            body |= {"maxconn": self.limits.max_connections,
                     "maxsock": self.limits.max_sockets,
                     "ulimitN": self.limits.open_files}
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


class _CertificateSwapFailed(Exception):
    pass


class Agent:
    """Owns `runtime_dir` (config, servers.json, certs) and drives HAProxy's sockets in it."""

    def __init__(self, runtime_dir: str | Path, *, haproxy_bin: str | None = "haproxy",
                 client: RuntimeClient | None = None, metrics: AgentMetrics | None = None,
                 reload_timeout: float = 30.0, check_timeout: float = 30.0,
                 retry_rejected_after: float = 300.0) -> None:
        self.files = RuntimeFiles(runtime_dir)
        self.client = client or RuntimeClient(runtime_dir)
        self.metrics = metrics or AgentMetrics()
        self.haproxy = shutil.which(haproxy_bin) if haproxy_bin else None
        if haproxy_bin and self.haproxy is None:
            log.warning("%s not found: configurations are checked by the reload itself "
                        "(a rejected one is rolled back)", haproxy_bin)
        self.reload_timeout = reload_timeout
        self.check_timeout = check_timeout
        self.retry_rejected_after = retry_rejected_after
        self.reloads = 0
        self.error: str | None = None
        self.limits: ProcessLimits | None = None
        self._applied: Snapshot | None = None
        self._applied_servers: Mapping[str, Any] = {}  # servers.json of _applied
        self._hashes: tuple[str, str] | None = None  # (configHash, structureHash) applied
        self._rejected: tuple[str, str, float] | None = None  # (desired key, why, when)
        self._lock = threading.Lock()
        self.load()

    # -- state ---------------------------------------------------------------------------

    @property
    def applied(self) -> Snapshot | None:
        return self._applied

    def status(self) -> AgentStatus:
        config, structure = self._hashes or (None, None)
        return AgentStatus(config, structure, self.error, self.reloads, dt.datetime.now(dt.UTC),
                           self.limits)

    def refresh_limits(self) -> ProcessLimits | None:
        """Ask the serving worker what it runs with; the last answer if it cannot say now."""
        try:
            limits = self.client.limits()
        except RuntimeAPIError as err:
            log.debug("cannot read HAProxy's limits: %s", err)
            return self.limits
        if limits != self.limits:
            log.info("HAProxy runs with maxconn %d (open-files limit %d, maxsock %d)",
                     limits.max_connections, limits.open_files, limits.max_sockets)
        self.limits = limits
        return limits

    def load(self) -> bool:
        """Adopt what is on disk as applied, if the agent's own record vouches for it."""
        state = self.files.read_state()
        config = read_text(self.files.config)
        servers_text = read_text(self.files.servers)
        self._applied = self._hashes = None
        if not state or config is None or servers_text is None:
            return False
        self.reloads = int(state.get("reloads") or 0)
        try:
            servers = json.loads(servers_text)
            certs = {f: digest(self.files.read_cert(f) or "")
                     for f in state.get("certificates") or {}}
            # The record holds the digest of the text written, without the newline the
            # file ends with (an older agent wrote it in canonical form, and recorded the
            # digest of that same text).
            if (state.get("config") != digest(config) or state.get("servers") != digest(
                    servers_text.removesuffix("\n")) or certs != state.get("certificates")):
                log.info("files in %s differ from the agent's record: will reload",
                         self.files.root)
                return False
            self._applied = Snapshot(config, parse_pools(servers), certs)
            self._applied_servers = servers
        except (ValueError, PlanError) as err:
            log.info("cannot adopt the files in %s (%s): will reload", self.files.root, err)
            return False
        self._hashes = (str(state.get("configHash") or config_hash(config)),
                        str(state.get("structureHash") or structure_hash(config)))
        return True

    def _record(self, desired: DesiredState, snapshot: Snapshot) -> None:
        """Make `desired` the applied state, on disk and in memory."""
        before = self.files.read_state() or {}
        record = {
            "config": digest(desired.config),
            "servers": desired.servers_digest,
            "certificates": dict(snapshot.certificates),
            "configHash": desired.config_hash,
            "structureHash": desired.structure_hash,
            "reloads": self.reloads,
        }
        # The record holds the digests of the files on disk (cleared while a reload
        # is pending), so it says whether they need writing without reading them back.
        if (before.get("config"), before.get("servers")) != (record["config"],
                                                             record["servers"]):
            self.files.write_config(desired.config, desired.servers_text)
        if before != record:
            self.files.write_state(record)
        removed = self.files.remove_stale_certs(set(desired.certificates))
        if removed:
            log.info("removed certificate files no longer used: %s", ", ".join(removed))
        self._applied = snapshot
        self._applied_servers = desired.servers
        self._hashes = (desired.config_hash, desired.structure_hash)
        self._rejected = None
        self.error = None
        self.metrics.last_apply.set_to_current_time()

    # -- first start ---------------------------------------------------------------------

    def install(self, desired: DesiredState) -> ApplyResult:
        """Write config + certificates for an HAProxy that is not running yet (--once)."""
        with self._lock:
            start = time.monotonic()
            try:
                snapshot = desired.snapshot()
            except (PlanError, ValueError) as err:
                return self._reject(desired, f"invalid desired state: {err}", start)
            with self.files.staging() as staging:
                staging.write(desired.config, desired.certificates)
                problem = self._check(staging.check_config, staging.dir)
                if problem:
                    return self._reject(desired, problem, start)
                staging.install(desired.certificates)
            self._record(desired, snapshot)
            log.info("installed configuration %s with %d certificate(s)", desired.config_hash,
                     len(desired.certificates))
            return ApplyResult("reload", "initial configuration",
                               seconds=time.monotonic() - start)

    # -- apply ---------------------------------------------------------------------------

    def apply(self, desired: DesiredState) -> ApplyResult:
        with self._lock:
            start = time.monotonic()
            try:
                snapshot = desired.snapshot(
                    (self._applied_servers, self._applied) if self._applied else None)
            except (PlanError, ValueError) as err:
                return self._reject(desired, f"invalid desired state: {err}", start)
            key = desired.key()
            if (self._rejected and self._rejected[0] == key
                    and start - self._rejected[2] < self.retry_rejected_after):
                return ApplyResult("rejected", error=self._rejected[1])  # known bad: skip
            plan = decide(self._applied, snapshot)
            if plan.action == "none":
                self._record(desired, snapshot)
                return ApplyResult("none", seconds=time.monotonic() - start)
            if plan.action == "runtime":
                try:
                    return self._apply_runtime(plan, desired, snapshot, start)
                except _CertificateSwapFailed as err:
                    plan = Plan("reload", reason=f"certificate hot-swap failed ({err})",
                                category=CERTIFICATE)
                except SocketUnavailable as err:  # HAProxy away: a reload would not help
                    self.error = f"cannot reach HAProxy: {err}"
                    log.warning("%s", self.error)
                    return ApplyResult("error", plan.reason, self.error,
                                       seconds=time.monotonic() - start)
                except RuntimeAPIError as err:
                    plan = Plan("reload", reason=f"runtime update failed ({err})",
                                category=FALLBACK)
            return self._reload(plan, desired, snapshot, start)

    def _apply_runtime(self, plan: Plan, desired: DesiredState, snapshot: Snapshot,
                       start: float) -> ApplyResult:
        for file in plan.certificates:
            pem = desired.certificates[file]
            try:
                self.client.replace_certificate(self._haproxy_cert_name(desired.config, file),
                                                pem)
            except SocketUnavailable:
                raise
            except (RuntimeAPIError, ValueError) as err:
                raise _CertificateSwapFailed(str(err)) from err
            self.files.write_cert(file, pem)
            self.metrics.runtime_commands.inc()
            log.info("certificate %s hot-swapped (set/commit ssl cert), no reload", file)
        for command in plan.commands:
            self.client.server_command(command)
            self.metrics.runtime_commands.inc()
        if plan.added:
            self._verify_added(plan, snapshot)
        self._record(desired, snapshot)
        seconds = time.monotonic() - start
        log.info("applied %s at run time, no reload: %s (%d command(s), %.1f ms)",
                 desired.config_hash, plan.reason, len(plan.commands) + len(plan.certificates),
                 seconds * 1000)
        return ApplyResult("runtime", plan.reason, commands=plan.commands, seconds=seconds)

    def _verify_added(self, plan: Plan, snapshot: Snapshot) -> None:
        """HAProxy accepted every `add server`: check it now holds each new slot as a
        reload of the config on disk would (same id, same address), or fall back to one."""
        for backend in sorted({a.backend for a in plan.added}):
            running = {s.server: s for s in self.client.servers_state(backend)}
            for a in (a for a in plan.added if a.backend == backend):
                got, want = running.get(a.slot), snapshot.pools[backend][a.slot]
                if got is None or got.id != a.id or (
                        want.address is not None
                        and (got.address, got.port) != (want.address, want.port)):
                    raise RuntimeAPIError(
                        f"added server {backend}/{a.slot} is not as configured (id {a.id}, "
                        f"{want.address}:{want.port}): HAProxy shows {got}")

    def _reload(self, plan: Plan, desired: DesiredState, snapshot: Snapshot,
                start: float) -> ApplyResult:
        previous_config = read_text(self.files.config)
        previous_servers = read_text(self.files.servers)
        previous_certs = {f: self.files.read_cert(f) for f in desired.certificates}
        with self.files.staging() as staging:
            staging.write(desired.config, desired.certificates)
            problem = self._check(staging.check_config, staging.dir)
            if problem:
                return self._reject(desired, problem, start)
            log.info("reloading HAProxy for %s: %s", desired.config_hash, plan.reason)
            self.files.clear_state()  # until the reload succeeds, disk != what runs
            staging.install(desired.certificates)
            self.files.write_config(desired.config, desired.servers_text)
        try:
            procs = self.client.reload(self.reload_timeout)
        except RuntimeAPIError as err:
            self._restore(previous_config, previous_servers, previous_certs)
            if isinstance(err, SocketUnavailable):
                self.error = f"cannot reach HAProxy to reload: {err}"
                log.warning("%s", self.error)
                return ApplyResult("error", plan.reason, self.error,
                                   seconds=time.monotonic() - start)
            return self._reject(desired, f"reload failed, HAProxy kept the previous "
                                f"configuration: {err}", start)
        self.reloads += 1
        self.metrics.reload(plan.category)
        self._record(desired, snapshot)
        seconds = time.monotonic() - start
        worker = procs.workers[-1] if procs.workers else None
        log.info("reloaded HAProxy (%s): %s; worker %s up in %.0f ms", plan.category,
                 plan.reason, worker, seconds * 1000)
        return ApplyResult("reload", plan.reason, seconds=seconds, worker=worker)

    def _restore(self, config: str | None, servers: str | None,
                 certs: Mapping[str, str | None]) -> None:
        for file, pem in certs.items():
            if pem is None:
                self.files.cert_path(file).unlink(missing_ok=True)
            else:
                self.files.write_cert(file, pem)
        servers = servers.removesuffix("\n") if servers is not None else None
        if config is not None and servers is not None:
            self.files.write_config(config, servers)
        if self._applied is not None and self._hashes is not None:
            self.files.write_state({
                "config": digest(self._applied.config),
                "servers": digest(servers if servers is not None else _canonical({})),
                "certificates": dict(self._applied.certificates),
                "configHash": self._hashes[0],
                "structureHash": self._hashes[1],
                "reloads": self.reloads,
            })

    def _reject(self, desired: DesiredState, why: str, start: float) -> ApplyResult:
        self._rejected = (desired.key(), why, time.monotonic())
        self.error = why
        self.metrics.rejected_configs.inc()
        log.error("configuration %s not applied: %s", desired.config_hash, why)
        return ApplyResult("rejected", error=why, seconds=time.monotonic() - start)

    # -- helpers ---------------------------------------------------------------------------

    def _check(self, config: Path, staging_dir: Path) -> str | None:
        """`haproxy -c` on the staged copy; None when valid (or no binary to check with)."""
        if self.haproxy is None:
            return None
        try:
            result = subprocess.run([self.haproxy, "-c", "-f", str(config)],
                                    capture_output=True, text=True, check=False,
                                    timeout=self.check_timeout)
        except subprocess.TimeoutExpired:
            return f"haproxy -c did not finish within {self.check_timeout:.0f}s"
        if result.returncode == 0:
            return None
        output = (result.stdout + result.stderr).replace(str(config), "haproxy.cfg")
        output = output.replace(str(staging_dir), "<staging>")
        alerts = [_ALERT.sub("", line).strip() for line in output.splitlines()
                  if "[ALERT]" in line]
        detail = "; ".join(alerts[:3]) or output.strip()[:300] or f"exit {result.returncode}"
        return f"haproxy -c rejected the configuration: {detail}"[:600]

    def _haproxy_cert_name(self, config: str, file: str) -> str:
        """The name HAProxy knows a certificate by: crt-base + '/' + file."""
        m = _CRT_BASE.search(config)
        base = m.group(1).rstrip("/") if m else str(self.files.cert_dir)
        return f"{base}/{check_cert_file_name(file)}"


def _canonical(servers: Any) -> str:
    return json.dumps(servers, sort_keys=True)
