"""kopf handlers for both kinds: reconcile on create/update/resume (the resync is resync.py).

One set of functions, registered per kind: a LoadBalancer and a ReverseProxy are
reconciled the same way (see reconciler.py).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from roundhouse import API_GROUP, API_VERSION, metrics
from roundhouse.handlers.resync import RESYNC
from roundhouse.handlers.state import RECONCILER
from roundhouse.reconciler import RETRY_DELAY, Indexes
from roundhouse.resources import KINDS

log = logging.getLogger(__name__)


def _register(kind: str, plural: str) -> None:
    resource = (API_GROUP, API_VERSION, plural)

    # Explicit ids: the default (the qualified name) has "<locals>" in it, which is
    # not valid in the annotation keys kopf keeps its progress in.
    @kopf.on.resume(*resource, id="reconcile")
    @kopf.on.create(*resource, id="reconcile")
    @kopf.on.update(*resource, id="reconcile")
    async def reconcile(body: kopf.Body, reason: Any = None, **kwargs: Any) -> None:
        trigger = str(getattr(reason, "value", reason) or "update")  # kopf.Reason
        RESYNC.remember(kwargs)
        try:
            waiting = await RECONCILER.reconcile(kind, body, Indexes.from_kwargs(kwargs),
                                                 trigger=trigger)
        except kopf.PermanentError:
            raise
        except Exception:  # kopf retries anything but a PermanentError
            metrics.count_retry(kind, trigger)
            raise
        if waiting:
            metrics.count_retry(kind, trigger)
            raise kopf.TemporaryError("waiting for: " + "; ".join(waiting), delay=RETRY_DELAY)

    # On the DELETED event, not a deletion handler: that would need a finalizer on every
    # resource (a write per create and per delete, deletion blocked while we are down).
    @kopf.on.event(*resource, id="forget")
    async def forget(namespace: str, name: str, type: str | None = None, **_: Any) -> None:
        if type != "DELETED":
            return
        # Children carry owner references: the garbage collector deletes them.
        RECONCILER.forget(kind, namespace, name)
        log.info("%s %s/%s deleted; its children are garbage-collected", kind, namespace, name)


for _kind, _plural in KINDS.items():
    _register(_kind, _plural)
