"""Spaced re-reconciles: a stream of dependency events becomes one reconcile at a time,
each with the latest state, never more often than the operator can afford.

An event runs its reconcile at once unless one started recently; then the run waits
until SPACING after that start, or twice as long as that reconcile took if that is
longer (a resource of 8,000 endpoints costs ~150 ms of rendering: it may then use at
most about half a core). Events meanwhile are coalesced into that one pending run
(reconciles are level-based: the latest action wins). So an isolated Pod readiness
change propagates with no added wait, and a rolling restart costs one reconcile per
spacing, not one per EndpointSlice update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

import kopf

from roundhouse import metrics

log = logging.getLogger(__name__)
SPACING = 0.1
Action = Callable[[], Awaitable[object]]
_PRUNE_ABOVE = 1024  # keys remembered for their last run before old ones are dropped


class Debouncer:
    def __init__(self, spacing: float = SPACING) -> None:
        self.spacing = spacing
        self._action: dict[Hashable, Action] = {}
        self._pending: dict[Hashable, asyncio.Task[None]] = {}
        self._running: dict[Hashable, asyncio.Future[None]] = {}
        self._last: dict[Hashable, tuple[float, float]] = {}  # key -> (start, seconds)

    def schedule(self, key: Hashable, action: Action) -> None:
        self._action[key] = action  # the latest wins: reconciles are level-based
        metrics.trigger_scheduled(coalesced=key in self._pending)
        if key not in self._pending:
            self._pending[key] = asyncio.get_running_loop().create_task(self._run(key))

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
        try:
            await action()
        except (kopf.TemporaryError, kopf.PermanentError) as err:
            # Expected and already in the status (a refused child, a missing Secret): one
            # line per retry, not a traceback.
            log.warning("re-reconcile of %s: %s", key, err)
        except Exception:  # a trigger has no kopf retry: the resync timer is the backstop
            log.exception("re-reconcile of %s failed", key)
        finally:
            del self._running[key]
            done.set_result(None)
            self._last[key] = (start, loop.time() - start)
            self._prune(loop.time())

    def _prune(self, now: float) -> None:
        if len(self._last) > _PRUNE_ABOVE:
            for key in [k for k, (t, c) in self._last.items()
                        if now - t >= max(self.spacing, 2 * c)]:
                del self._last[key]
