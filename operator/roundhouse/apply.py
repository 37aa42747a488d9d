"""The only module that writes children to the API: server-side apply, idempotent.

Server-side apply with one field manager makes every write a declaration of the
whole desired object: re-applying is a no-op, and fields others own are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from roundhouse import kube

log = logging.getLogger(__name__)


class ApplyError(RuntimeError):
    def __init__(self, kind: str, name: str, status: int | None, detail: str) -> None:
        self.status = status
        super().__init__(f"applying {kind} {name!r} failed ({status}): {detail}")


def fingerprint(objects: Iterable[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(objects), sort_keys=True).encode()).hexdigest()


async def apply_object(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    path = kube.object_path(obj["kind"], meta["namespace"], meta["name"])
    try:
        return await kube.request(
            "PATCH", path, body=json.dumps(obj), content_type="application/apply-patch+yaml",
            query=[("fieldManager", kube.FIELD_MANAGER), ("force", "true")],
        )
    except Exception as error:  # ApiException carries the API server's message
        detail = getattr(error, "body", None) or str(error)
        with contextlib.suppress(TypeError, ValueError):
            detail = json.loads(detail).get("message", detail)
        raise ApplyError(obj["kind"], meta["name"], kube.status_code(error), str(detail)) from error


async def apply_all(objects: Iterable[dict[str, Any]]) -> None:
    """Apply in order (RBAC and config before the workload that uses them)."""
    for obj in objects:
        await apply_object(obj)
        log.debug("applied %s %s/%s", obj["kind"], obj["metadata"]["namespace"],
                  obj["metadata"]["name"])
