"""Debounced re-reconciles: a burst of dependency events becomes few reconciles.

An event after a quiet spell runs at once: one Pod turning NotReady must not wait for
a quiet period that is already there (propagation is what users measure us by). Events
that follow within QUIET of a run are coalesced into one later run, ~100 ms after the
last of them but never more than 500 ms after the first, so a rolling restart costs a
few reconciles, not one per EndpointSlice update, and a steady stream still propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)
QUIET = 0.1
MAX_WAIT = 0.5
Action = Callable[[], Awaitable[object]]
_PRUNE_ABOVE = 1024  # keys remembered for their last run before old ones are dropped


class Debouncer:
    def __init__(self, quiet: float = QUIET, max_wait: float = MAX_WAIT) -> None:
        self.quiet = quiet
        self.max_wait = max_wait
        self._first: dict[Hashable, float] = {}
        self._deadline: dict[Hashable, float] = {}
        self._action: dict[Hashable, Action] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self._last_run: dict[Hashable, float] = {}  # when each key's latest run started

    def schedule(self, key: Hashable, action: Action) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._action[key] = action  # the latest wins: reconciles are level-based
        if key in self._tasks:
            self._deadline[key] = min(now + self.quiet, self._first[key] + self.max_wait)
            return
        busy = now - self._last_run.get(key, -self.quiet) < self.quiet
        self._first[key] = now
        self._deadline[key] = now + self.quiet if busy else now
        self._tasks[key] = loop.create_task(self._run(key))

    async def _run(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._deadline[key] - loop.time()) > 0:
            await asyncio.sleep(delay)
        action = self._action.pop(key)
        for table in (self._first, self._deadline, self._tasks):
            table.pop(key, None)
        self._last_run[key] = loop.time()
        self._prune(loop.time())
        try:
            await action()
        except Exception:  # a trigger has no kopf retry: the resync timer is the backstop
            log.exception("re-reconcile of %s failed", key)

    def _prune(self, now: float) -> None:
        if len(self._last_run) > _PRUNE_ABOVE:
            for key in [k for k, t in self._last_run.items() if now - t >= self.quiet]:
                del self._last_run[key]
