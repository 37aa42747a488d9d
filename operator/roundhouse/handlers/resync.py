"""The resync: every resource reconciled again once per RESYNC_SECONDS, with every child
written again (drift repair: a child deleted or edited by hand, a certificate to renew).

Not a kopf timer: a timer is an asyncio task per resource, and kopf puts a finalizer on
every resource that has one (a write more per create, another per delete, and deletion
blocked while the operator is down). Here one loop walks the resources kopf's indexes
hold, each at its own offset in the period (a hash of its key), so 1,000 resources
resync at about 3 a second instead of together.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from roundhouse.handlers.state import DEBOUNCER, RECONCILER
from roundhouse.reconciler import Indexes

RESYNC_SECONDS = 300.0
TICK_SECONDS = 1.0
BODIES = {"LoadBalancer": "rh_loadbalancers", "ReverseProxy": "rh_reverseproxies"}
_NEEDED = ("rh_services", "rh_slices", "rh_secrets", "rh_configmaps", "rh_proxy_pods",
           "rh_rp_claims", *BODIES.values())
Key = tuple[str, str, str]  # (kind, namespace, name)


def slot_of(key: Key, slots: int) -> int:
    """The resource's tick within the period: stable across restarts and replicas."""
    return zlib.crc32("/".join(key).encode()) % slots


def due(keys: Iterable[Key], after: int, upto: int, slots: int) -> list[Key]:
    """The keys whose slot falls in the ticks (after, upto], counted from the start."""
    if upto - after >= slots:
        return list(keys)
    ticks = {t % slots for t in range(after + 1, upto + 1)}
    return [k for k in keys if slot_of(k, slots) in ticks]


class Resync:
    def __init__(self, period: float = RESYNC_SECONDS, tick: float = TICK_SECONDS,
                 schedule: Callable[[Key, Any], None] | None = None) -> None:
        self.period, self.tick = period, tick
        self.slots = max(1, round(period / tick))
        self._indexes: dict[str, Any] = {}
        self._schedule = schedule or DEBOUNCER.schedule

    def remember(self, kwargs: Mapping[str, Any]) -> None:
        """Keep kopf's indexes (live mappings, the same for the operator's lifetime),
        from any handler's kwargs."""
        if not self._indexes and all(k in kwargs for k in _NEEDED):
            self._indexes = {k: kwargs[k] for k in _NEEDED}

    def forget(self) -> None:
        self._indexes = {}

    def keys(self) -> list[Key]:
        if not self._indexes:
            return []
        return [(kind, namespace, name) for kind, index in BODIES.items()
                for namespace, name in list(self._indexes[index].keys())]

    async def run(self) -> None:
        """Forever: the first round one period after the start (every resource was just
        reconciled as it resumed), then each resource once per period."""
        loop = asyncio.get_running_loop()
        start, done = loop.time(), self.slots  # tick count; the first period is skipped
        while True:
            await asyncio.sleep(self.tick)
            now = int((loop.time() - start) / self.tick)
            if now <= done:
                continue
            for key in due(self.keys(), done, now, self.slots):
                self._resync(key)
            done = now

    def _resync(self, key: Key) -> None:
        idx = Indexes.from_kwargs(self._indexes)
        kind, namespace, name = key
        bodies = self._indexes[BODIES[kind]]

        async def run() -> None:
            body = idx.first(bodies, (namespace, name))  # None: deleted meanwhile
            if body is None:
                return
            RECONCILER.forget_applied(key)
            # An invalid spec is in its status already; a resync has nothing to add.
            with contextlib.suppress(kopf.PermanentError):
                await RECONCILER.reconcile(kind, body, idx, trigger="resync")
        self._schedule(key, run)


RESYNC = Resync()
