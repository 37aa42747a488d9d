"""The only module that writes to the API: children by server-side apply (idempotent),
the status subresource, and Events. What to write is decided purely elsewhere
(pipeline.py for children, status.py for the status and its Events).

Server-side apply with one field manager makes every write a declaration of the
whole desired object: re-applying is a no-op, and fields others own are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from roundhouse import API_GROUP, kube
from roundhouse.render import objects
from roundhouse.status import Event

log = logging.getLogger(__name__)


class ApplyError(RuntimeError):
    def __init__(self, kind: str, name: str, status: int | None, detail: str,
                 fields: tuple[str, ...] = ()) -> None:
        self.status = status
        self.fields = fields  # the resource's fields that caused it, when known
        cause = f" (caused by {', '.join(fields)} of this resource)" if fields else ""
        super().__init__(f"applying {kind} {name!r} failed ({status}): {detail}{cause}")


def apply_error(obj: dict[str, Any], status: int | None, body: str) -> ApplyError:
    """The API server's refusal of a child, with its message and the fields of the
    resource behind the child's fields it names (details.causes[].field)."""
    detail, causes = body, list[Any]()
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        parsed = json.loads(body)
        detail = str(parsed.get("message", body))
        causes = (parsed.get("details") or {}).get("causes") or []
    fields = tuple(dict.fromkeys(
        f for c in causes if isinstance(c, dict)
        if (f := objects.resource_field(obj["kind"], str(c.get("field", ""))))))
    return ApplyError(obj["kind"], obj["metadata"]["name"], status, detail, fields)


ChildKey = tuple[str, str]  # (kind, name): unique among one resource's children
Applied = dict[ChildKey, str]  # what was last applied: child -> fingerprint
OwnerKey = tuple[str, str, str]  # (kind, namespace, name) of the resource (Gateway too)
# Each child carries the fingerprint of the form it was applied in, so a new term as leader
# (a restart, an upgrade, a failover) knows what is in place from one list per kind, and
# does not re-apply every child of every resource (no-op writes the API server still pays).
FINGERPRINT = f"{API_GROUP}/applied"
# Secret: a Gateway's certificate copies (issued Secrets are written without a fingerprint,
# so they are left out), which a new term must know to delete once no longer served.
CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
               "PodDisruptionBudget", "Deployment", "Secret")
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=roundhouse"


def fingerprint(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def content_digest(obj: Mapping[str, Any]) -> str:
    """A ConfigMap's content (data and binaryData), to tell the watch event of its own
    write from someone else's edit."""
    content = [dict(obj.get("data") or {}), dict(obj.get("binaryData") or {})]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def child_key(obj: dict[str, Any]) -> ChildKey:
    return obj["kind"], obj["metadata"]["name"]


def with_fingerprint(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                        FINGERPRINT: digest}}}


async def applied_children(namespaces: Iterable[str]) -> dict[OwnerKey, Applied]:
    """What was applied before this process led, from the children's fingerprints: one
    list per kind (per namespace when the operator watches only some). Children without
    one (written by an older version) are left out, so they are applied once more."""
    found: dict[OwnerKey, Applied] = {}
    scopes: list[str | None] = list(namespaces) or [None]
    for kind in CHILD_KINDS:
        for namespace in scopes:
            for item in await kube.list_metadata(kind, namespace, MANAGED_SELECTOR):
                meta = item.get("metadata") or {}
                labels = meta.get("labels") or {}
                digest = (meta.get("annotations") or {}).get(FINGERPRINT)
                owner = (labels.get(f"{API_GROUP}/owner-kind"),
                         labels.get(f"{API_GROUP}/owner-name"))
                if digest and owner[0] and owner[1]:
                    key = (str(owner[0]), str(meta.get("namespace")), str(owner[1]))
                    found.setdefault(key, {})[(kind, str(meta.get("name")))] = digest
    return found


async def apply_object(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    path = kube.object_path(obj["kind"], meta["namespace"], meta["name"])
    try:
        # The applied object comes back whole (a proxy ConfigMap: up to a megabyte); nothing
        # reads it, so it is not parsed.
        await kube.request(
            "PATCH", path, body=obj, content_type="application/apply-patch+yaml",
            query=[("fieldManager", kube.FIELD_MANAGER), ("force", "true")], parse=False,
            # A proxy's config moves traffic (a backend gone, a new one): it goes before
            # status writes and other children queued by other reconciles. (The agents'
            # report ConfigMap, written once per resource, rides along.)
            urgent=obj["kind"] == "ConfigMap",
        )
    except Exception as error:  # ApiException carries the API server's message
        body = getattr(error, "body", None) or str(error)
        raise apply_error(obj, kube.status_code(error), str(body)) from error


async def drop_config_map_keys(namespace: str, name: str, keys: Iterable[str]) -> None:
    """Remove `keys` from a ConfigMap's data (a merge patch: others' keys stay).
    The ConfigMap already gone: nothing to drop."""
    path = kube.object_path("ConfigMap", namespace, name)
    try:
        await kube.request("PATCH", path, body={"data": dict.fromkeys(keys)},
                           content_type="application/merge-patch+json")
    except Exception as error:
        status = kube.status_code(error)
        if status != 404:
            raise ApplyError("ConfigMap", name, status, str(error)) from error


async def apply_changed(objects: Iterable[dict[str, Any]], applied: Applied,
                        digests: dict[ChildKey, str] | None = None) -> list[ChildKey]:
    """Apply, in order (RBAC and config before the workload that uses them), each child
    whose desired form differs from the last one applied; `applied` is updated as each
    write succeeds. A readiness flip changes only the proxy ConfigMap, so it costs one
    write, not one per child: the agent sees it sooner. `digests`: the children's
    fingerprints when already computed. Returns what was written."""
    written: list[ChildKey] = []
    for obj in objects:
        key = child_key(obj)
        digest = (digests or {}).get(key) or fingerprint(obj)
        if applied.get(key) == digest:
            continue
        await apply_object(with_fingerprint(obj, digest))
        applied[key] = digest
        written.append(key)
        log.debug("applied %s %s/%s", obj["kind"], obj["metadata"]["namespace"],
                  obj["metadata"]["name"])
    return written


async def write_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch the status subresource. A 404 means the object is gone: nothing to do."""
    try:
        await kube.request("PATCH", kube.object_path(kind, namespace, name, "status"),
                           body={"status": status},
                           content_type="application/merge-patch+json")
    except Exception as error:
        if kube.status_code(error) != 404:
            raise


async def write_cluster_status(kind: str, name: str, status: dict[str, Any]) -> None:
    """write_status for a cluster-scoped object (a GatewayClass)."""
    try:
        await kube.request("PATCH", kube.cluster_object_path(kind, name, "status"),
                           body={"status": status},
                           content_type="application/merge-patch+json")
    except Exception as error:
        if kube.status_code(error) != 404:
            raise


async def delete_object(kind: str, namespace: str, name: str) -> None:
    """Delete one object; already gone is fine."""
    try:
        await kube.request("DELETE", kube.object_path(kind, namespace, name), parse=False)
    except Exception as error:
        status = kube.status_code(error)
        if status != 404:
            raise ApplyError(kind, name, status, str(error)) from error


async def read_object(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One object as the API server holds it now; None when it is gone."""
    try:
        return await kube.request("GET", kube.object_path(kind, namespace, name))
    except Exception as error:
        if kube.status_code(error) == 404:
            return None
        raise


def post_events(body: Any, events: Iterable[Event]) -> None:
    """Post Events on the resource: kopf queues them and sends them in the background."""
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
