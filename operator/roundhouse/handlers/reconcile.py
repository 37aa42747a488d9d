"""The resources' own events: a new or changed spec is reconciled (the resync is
resync.py, dependencies dependencies.py).

kopf's change handlers (on.create/update/resume) are not used: they keep their state in
annotations, so every create cost a write of the resource itself, every retry another
(kopf wakes a delayed handler by patching the object), and each of those writes came
back as a watch event to process. Here a watch event whose spec generation was not seen
yet schedules a reconcile through the same Debouncer as the dependency triggers, which
retries failures with its own backoff and writes nothing to the resource but its status.
A listing (the start of a term as leader, a re-list) reconciles what it has not seen.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from roundhouse import API_GROUP, API_VERSION
from roundhouse.handlers.dependencies import schedule
from roundhouse.handlers.state import RECONCILER
from roundhouse.resources import KINDS

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (kind, namespace, name)
# The (uid, generation) each resource was last scheduled for: its own status writes and
# edits of its labels or annotations (which the reconcile does not read) leave it as is.
SEEN: dict[Key, tuple[str, int]] = {}


def trigger_of(event_type: str | None) -> str:
    """The metrics' name for what started it: a listing is a resume, as in kopf."""
    return {None: "resume", "ADDED": "create"}.get(event_type, "update")


def _register(kind: str, plural: str) -> None:
    resource = (API_GROUP, API_VERSION, plural)

    @kopf.on.event(*resource, id="reconcile")
    async def changed(namespace: str, name: str, meta: kopf.Meta, type: str | None = None,
                      **kwargs: Any) -> None:
        key = (kind, namespace, name)
        if type == "DELETED":
            # Children carry owner references: the garbage collector deletes them.
            SEEN.pop(key, None)
            RECONCILER.forget(kind, namespace, name)
            log.info("%s %s/%s deleted; its children are garbage-collected", kind, namespace,
                     name)
            return
        mark = (str(meta.get("uid") or ""), int(meta.get("generation") or 0))
        if SEEN.get(key) == mark:
            return
        SEEN[key] = mark
        schedule(namespace, [(kind, name)], kwargs, trigger=trigger_of(type))


def reset() -> None:
    """A new term as leader lists every resource afresh: each is reconciled once more."""
    SEEN.clear()


for _kind, _plural in KINDS.items():
    _register(_kind, _plural)
