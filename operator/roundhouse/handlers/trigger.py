"""Spaced re-reconciles: a stream of dependency events becomes one reconcile at a time,
each with the latest state, never more often than the operator can afford.

An event runs its reconcile at once unless one started recently; then the run waits
until SPACING after that start, or twice as long as that reconcile cost if that is
longer (a resource of 8,000 endpoints costs ~150 ms of rendering: it may then use at
most about half a core). The cost is what the action returns (the reconciler returns
its seconds of rendering), else the run's wall time: a reconcile that spent a second
queued behind 400 API writes of a fan-out has cost no CPU, and spacing the next change
by two seconds would only delay it. A run that reports no cost (a reconcile that
rendered nothing: an agent's report, a proxy Pod's readiness) spaces nothing: the next
change goes at once, spaced only from the last run that rendered (each readiness flip
is followed by its agents' reports; spacing from those held the next flip back by up to
100 ms). Events meanwhile are coalesced into that one
pending run (reconciles are level-based: the latest action wins). So an isolated Pod readiness
change propagates with no added wait, and a rolling restart costs one reconcile per
spacing, not one per EndpointSlice update.

A run that fails (the API server refused a child, timed out or was unreachable) is
tried again after RETRY_DELAYS (1, 2, 5, 10 s, then every 10 s) until one succeeds:
no kopf handler stands behind a trigger, so without this the resource would wait for
the resync timer, minutes away. A new event runs sooner, at the usual spacing; only a
success resets the backoff. An invalid spec is never retried: only a new spec fixes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

import kopf

from roundhouse import metrics

log = logging.getLogger(__name__)
SPACING = 0.1
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0)  # the last one repeats
Action = Callable[[], Awaitable[object]]
_PRUNE_ABOVE = 1024  # keys remembered for their last run before old ones are dropped


class Debouncer:
    def __init__(self, spacing: float = SPACING,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.spacing = spacing
        self.retry_delays = retry_delays
        self._action: dict[Hashable, Action] = {}
        self._pending: dict[Hashable, asyncio.Task[None]] = {}
        self._running: dict[Hashable, asyncio.Future[None]] = {}
        self._last: dict[Hashable, tuple[float, float]] = {}  # key -> (start, seconds)
        self._failures: dict[Hashable, int] = {}  # key -> failed runs in a row
        self._retries: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # waiting or running, for stop()

    def schedule(self, key: Hashable, action: Action) -> None:
        retry = self._retries.pop(key, None)
        if retry is not None:  # this run replaces the retry; it sets its own if it fails
            retry.cancel()
        self._action[key] = action  # the latest wins: reconciles are level-based
        metrics.trigger_scheduled(coalesced=key in self._pending)
        if key not in self._pending:
            task = asyncio.get_running_loop().create_task(self._run(key))
            self._pending[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Cancel every pending run and retry, and forget the state: the operator stops
        reconciling (it lost its Lease); nothing scheduled before may write afterwards."""
        for handle in self._retries.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        self._action.clear()
        self._pending.clear()
        self._running.clear()
        self._last.clear()
        self._failures.clear()
        self._retries.clear()

    def retrying(self) -> int:
        """How many keys wait for a retry (tests, metrics)."""
        return len(self._retries)

    async def _run(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        while True:
            running = self._running.get(key)
            if running is not None:  # one run at a time; how long it took sets the gap
                await asyncio.wait({running})
                continue
            start, cost = self._last.get(key, (float("-inf"), 0.0))
            delay = start + max(self.spacing, 2 * cost) - loop.time()
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        action = self._action.pop(key)
        del self._pending[key]  # events from now on schedule the next run
        metrics.trigger_started()
        done: asyncio.Future[None] = loop.create_future()
        self._running[key] = done
        start = loop.time()
        reported: float | None = None
        try:
            result = await action()
            reported = result if isinstance(result, float) else None
        except kopf.PermanentError as err:  # an invalid spec, already in the status
            self._failures.pop(key, None)
            log.warning("re-reconcile of %s: %s", key, err)
        except kopf.TemporaryError as err:
            # Expected and already in the status (a refused child, a missing Secret): one
            # line per retry, not a traceback.
            log.warning("re-reconcile of %s: %s; retrying in %gs", key, err,
                        self._retry_later(key, action))
        except Exception:  # the API server unreachable, a timeout, a bug
            log.exception("re-reconcile of %s failed; retrying in %gs", key,
                          self._retry_later(key, action))
        else:
            self._failures.pop(key, None)
        finally:
            done.set_result(None)
            if self._running.get(key) is done:  # else stop() has forgotten it
                del self._running[key]
                if reported != 0.0:  # a free run leaves the spacing to the last costly one
                    self._last[key] = (start, loop.time() - start if reported is None
                                       else reported)
                self._prune(loop.time())

    def _retry_later(self, key: Hashable, action: Action) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
        metrics.count_retry(str(key[0]) if isinstance(key, tuple) else "?", "dependency")
        if key not in self._pending:  # an event meanwhile already runs it again
            self._retries[key] = asyncio.get_running_loop().call_later(
                delay, self._retry, key, action)
        return delay

    def _retry(self, key: Hashable, action: Action) -> None:
        self._retries.pop(key, None)
        self.schedule(key, action)

    def _prune(self, now: float) -> None:
        if len(self._last) > _PRUNE_ABOVE:
            for key in [k for k, (t, c) in self._last.items()
                        if now - t >= max(self.spacing, 2 * c)]:
                del self._last[key]
