"""kopf handlers for LoadBalancer: reconcile on create/update/resume and on a resync timer."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from roundhouse.handlers.state import RECONCILER
from roundhouse.reconciler import RETRY_DELAY, Indexes

log = logging.getLogger(__name__)
RESYNC_SECONDS = 300
LB = ("roundhouse.dev", "v1alpha1", "loadbalancers")


@kopf.on.resume(*LB)
@kopf.on.create(*LB)
@kopf.on.update(*LB)
async def reconcile_loadbalancer(body: kopf.Body, **kwargs: Any) -> None:
    waiting = await RECONCILER.reconcile(body, Indexes.from_kwargs(kwargs))
    if waiting:
        raise kopf.TemporaryError("waiting for: " + "; ".join(waiting), delay=RETRY_DELAY)


@kopf.timer(*LB, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync_loadbalancer(body: kopf.Body, **kwargs: Any) -> None:
    """Repairs drift (a deleted child, a hand-edited ConfigMap) and renews certificates."""
    RECONCILER.last_applied.pop((body["metadata"]["namespace"], body["metadata"]["name"]), None)
    # An invalid spec was already reported in status by the create/update handler.
    with contextlib.suppress(kopf.PermanentError):
        await RECONCILER.reconcile(body, Indexes.from_kwargs(kwargs))


@kopf.on.delete(*LB, optional=True)
async def forget_loadbalancer(namespace: str, name: str, **_: Any) -> None:
    # Children carry owner references: the garbage collector deletes them.
    RECONCILER.forget(namespace, name)
    log.info("LoadBalancer %s/%s deleted; its children are garbage-collected", namespace, name)
