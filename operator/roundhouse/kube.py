"""The API transport: one kubernetes ApiClient and the REST paths of the kinds we touch.

Reads go through kopf indexes; writes go through apply.py and status.py, which use this.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from roundhouse import API_GROUP, API_VERSION

# kind -> (api prefix, plural); the fixed set of kinds Roundhouse reads or writes.
_PATHS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "LoadBalancer": (f"/apis/{API_GROUP}/{API_VERSION}", "loadbalancers"),
    "ReverseProxy": (f"/apis/{API_GROUP}/{API_VERSION}", "reverseproxies"),
}
FIELD_MANAGER = "roundhouse"

_client: kubernetes.client.ApiClient | None = None


def client() -> kubernetes.client.ApiClient:
    global _client
    if _client is None:
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        _client = kubernetes.client.ApiClient()
    return _client


def object_path(kind: str, namespace: str, name: str, subresource: str = "") -> str:
    prefix, plural = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}/{name}"
    return f"{path}/{subresource}" if subresource else path


def _request(method: str, path: str, body: Any, content_type: str,
             query: list[tuple[str, str]]) -> dict[str, Any]:
    api = client()
    _, url, headers, payload, _ = api.param_serialize(
        method, path, query_params=query, body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=payload)
    data: bytes = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status < 300:
        raise ApiException(status=response.status, reason=response.reason,
                           body=data.decode(errors="replace") if data else None)
    return json.loads(data) if data else {}


async def request(method: str, path: str, body: Any = None,
                  content_type: str = "application/json",
                  query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """One API call off the event loop (the kubernetes client is synchronous).

    `body`: a dict for JSON content types (the client serializes it), a str otherwise.
    """
    return await asyncio.to_thread(_request, method, path, body, content_type, query or [])


def status_code(error: BaseException) -> int | None:
    return error.status if isinstance(error, ApiException) else None
