"""Debounced re-reconciles: a burst of dependency events becomes one reconcile.

Waits ~100 ms after the last event, but never more than 500 ms after the first,
so a steady stream of endpoint changes still propagates quickly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)
QUIET = 0.1
MAX_WAIT = 0.5
Action = Callable[[], Awaitable[object]]


class Debouncer:
    def __init__(self, quiet: float = QUIET, max_wait: float = MAX_WAIT) -> None:
        self.quiet = quiet
        self.max_wait = max_wait
        self._first: dict[Hashable, float] = {}
        self._deadline: dict[Hashable, float] = {}
        self._action: dict[Hashable, Action] = {}
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}

    def schedule(self, key: Hashable, action: Action) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if key not in self._tasks:
            self._first[key] = now
            self._tasks[key] = loop.create_task(self._run(key))
        self._action[key] = action  # the latest wins: reconciles are level-based
        self._deadline[key] = min(now + self.quiet, self._first[key] + self.max_wait)

    async def _run(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._deadline[key] - loop.time()) > 0:
            await asyncio.sleep(delay)
        action = self._action.pop(key)
        for table in (self._first, self._deadline, self._tasks):
            table.pop(key, None)
        try:
            await action()
        except Exception:  # a trigger has no kopf retry: the resync timer is the backstop
            log.exception("re-reconcile of %s failed", key)
