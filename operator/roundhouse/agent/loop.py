"""The agent's main loop: latest ConfigMap in, apply, report; retry what failed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from roundhouse.agent.agent import Agent, ApplyResult
from roundhouse.agent.runtime import RuntimeAPIError
from roundhouse.agent.source import Source, SourceError

log = logging.getLogger(__name__)


class Latest:
    """A one-item mailbox: a burst of ConfigMap updates collapses into the newest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: dict[str, Any] | None = None

    def put(self, item: dict[str, Any]) -> None:
        with self._cond:
            self._item = item
            self._cond.notify()

    def get(self, timeout: float) -> dict[str, Any] | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


def wait_for_haproxy(agent: Agent, stop: threading.Event, timeout: float) -> bool:
    """HAProxy may start after the agent: wait for its sockets, with backoff, up to `timeout`."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        try:
            procs = agent.client.wait_until_up(timeout=min(5.0, max(0.1, deadline -
                                                                   time.monotonic())))
            log.info("HAProxy is up: master %d, worker(s) %s", procs.master_pid,
                     ", ".join(map(str, procs.serving)))
            return True
        except RuntimeAPIError as err:
            if time.monotonic() >= deadline:
                log.warning("HAProxy still not reachable (%s); going on without it", err)
                return False
            log.info("waiting for HAProxy: %s", err)
    return False


def apply_configmap(agent: Agent, source: Source, configmap: dict[str, Any]) -> ApplyResult:
    try:
        desired = source.desired_from(configmap)
    except SourceError as err:
        agent.error = str(err)
        log.warning("desired configuration not applied: %s", err)
        return ApplyResult("error", error=str(err))
    try:
        return agent.apply(desired)
    except Exception as err:  # e.g. the runtime directory is full: report, retry later
        log.exception("applying configuration %s failed", desired.config_hash)
        agent.error = f"applying the configuration failed: {type(err).__name__}: {err}"
        return ApplyResult("error", error=agent.error)


def run(agent: Agent, source: Source, stop: threading.Event, *, retry_seconds: float = 2.0,
        startup_wait: float = 60.0) -> None:
    latest = Latest()

    def watch() -> None:
        for configmap in source.changes(stop):
            latest.put(configmap)

    threading.Thread(target=watch, name="configmap-watch", daemon=True).start()
    wait_for_haproxy(agent, stop, startup_wait)
    current: dict[str, Any] | None = None
    retry_at: float | None = None
    delay = retry_seconds
    while not stop.is_set():
        timeout = 1.0 if retry_at is None else max(0.05, min(1.0, retry_at - time.monotonic()))
        item = latest.get(timeout)
        if item is not None:
            current = item
        elif current is None or retry_at is None or time.monotonic() < retry_at:
            continue
        result = apply_configmap(agent, source, current)
        agent.refresh_limits()  # a reload may have started a worker with other limits
        source.report(agent.status())
        if result.action == "error":  # transient (HAProxy or a Secret away): try again
            retry_at = time.monotonic() + delay
            delay = min(delay * 2, 60.0)
        else:
            retry_at, delay = None, retry_seconds
