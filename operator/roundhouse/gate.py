"""A semaphore whose urgent waiters go first: proxy configs before everything else.

When a Service shared by 200 LoadBalancers changes, 200 reconciles each write their proxy
ConfigMap (what moves traffic) and then their status. Through a first-come semaphore the
early reconciles' status writes queue in front of the later ones' ConfigMaps, so the
last proxy learns of the change after about 300 writes instead of 200. Here an urgent
waiter is served before every normal one.

Normal waiters are not starved: one that has waited AGE seconds is served before urgent
ones that came later (a steady stream of config writes delays a status by at most AGE).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

AGE = 0.5


@dataclass
class _Waiter:
    since: float
    future: asyncio.Future[None]


class PriorityGate:
    def __init__(self, slots: int, age: float = AGE) -> None:
        self._free = slots
        self._age = age
        self._urgent: collections.deque[_Waiter] = collections.deque()
        self._normal: collections.deque[_Waiter] = collections.deque()

    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    async def acquire(self, urgent: bool = False) -> None:
        if self._free > 0 and not self.waiting():
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.time(), loop.create_future())
        (self._urgent if urgent else self._normal).append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release()  # the slot was handed over just as the caller gave up
            elif waiter in (queue := self._urgent if urgent else self._normal):
                queue.remove(waiter)  # else release() has dropped it already
            raise

    def release(self) -> None:
        """Hand the slot to the next waiter (the oldest normal one if it is overdue, else
        the oldest urgent one, else the oldest normal one), or free it."""
        queue = self._next_queue()
        while queue:
            waiter = queue.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
            queue = self._next_queue()
        self._free += 1

    def _next_queue(self) -> collections.deque[_Waiter] | None:
        if self._normal and (not self._urgent or self._overdue(self._normal[0])):
            return self._normal
        return self._urgent or None

    def _overdue(self, waiter: _Waiter) -> bool:
        return asyncio.get_running_loop().time() - waiter.since >= self._age
